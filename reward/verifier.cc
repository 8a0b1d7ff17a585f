#include "reward/verifier.h"

#include <cctype>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_format.h"
#include "actor/chat_parse.h"

namespace v4rl::reward {

absl::Status VerifierSpec::Validate() const {
  if (kind == AnswerKind::kInteger) {
    int64_t value;
    if (!absl::SimpleAtoi(expected, &value)) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "verifier: expected must be an integer for integer answers, got \"%s\"", expected));
    }
  }
  return absl::OkStatus();
}

std::string ExtractFinalAnswer(std::string_view content) {
  constexpr std::string_view kBoxed = "\\boxed{";
  const size_t start = content.rfind(kBoxed);
  if (start != std::string_view::npos) {
    int depth = 1;
    for (size_t i = start + kBoxed.size(); i < content.size(); ++i) {
      if (content[i] == '{') ++depth;
      if (content[i] == '}' && --depth == 0) {
        return std::string(
            absl::StripAsciiWhitespace(std::string(content.substr(start + kBoxed.size(),
                                                                  i - start - kBoxed.size()))));
      }
    }
  }
  return std::string(absl::StripAsciiWhitespace(std::string(content)));
}

std::optional<std::string> LastInteger(std::string_view text) {
  size_t end = text.size();
  while (end > 0 && !std::isdigit(static_cast<unsigned char>(text[end - 1]))) --end;
  if (end == 0) return std::nullopt;
  size_t begin = end;
  while (begin > 0 && std::isdigit(static_cast<unsigned char>(text[begin - 1]))) --begin;
  if (begin > 0 && text[begin - 1] == '-') --begin;
  return std::string(text.substr(begin, end - begin));
}

Verdict Verify(const VerifierSpec& spec, std::string_view completion, actor::ThinkingMode mode) {
  Verdict verdict;
  if (spec.kind == AnswerKind::kVerbatim) {
    verdict.format_ok = true;
    verdict.answer = std::string(completion);
    verdict.correct = completion == spec.expected;
    verdict.reward = verdict.correct ? spec.correct_reward : spec.incorrect_reward;
    verdict.explanation = verdict.correct ? "completion equals the expected text"
                                          : "completion differs from the expected text";
    return verdict;
  }
  absl::StatusOr<actor::Message> parsed = actor::ParseCompletion(completion, mode);
  if (!parsed.ok()) {
    verdict.reward = spec.format_error_reward;
    verdict.explanation = absl::StrFormat("format: %s", parsed.status().message());
    return verdict;
  }
  if (mode == actor::ThinkingMode::kThinking &&
      absl::StripAsciiWhitespace(parsed->reasoning_content).empty()) {
    verdict.reward = spec.format_error_reward;
    verdict.explanation = "format: thinking mode needs non-empty reasoning before </think>";
    return verdict;
  }
  verdict.format_ok = true;
  verdict.answer = ExtractFinalAnswer(parsed->content);
  if (spec.kind == AnswerKind::kExact) {
    verdict.correct = verdict.answer == absl::StripAsciiWhitespace(spec.expected);
  } else {
    const std::optional<std::string> integer = LastInteger(verdict.answer);
    int64_t got, want;
    verdict.correct = integer && absl::SimpleAtoi(*integer, &got) &&
                      absl::SimpleAtoi(spec.expected, &want) && got == want;
  }
  verdict.reward = verdict.correct ? spec.correct_reward : spec.incorrect_reward;
  verdict.explanation = absl::StrFormat("answer \"%s\" %s \"%s\"", verdict.answer,
                                        verdict.correct ? "matches" : "does not match",
                                        spec.expected);
  return verdict;
}

}  // namespace v4rl::reward
