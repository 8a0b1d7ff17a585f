#include "learner/synthetic_tasks.h"

#include <algorithm>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "core/rng.h"

namespace v4rl::learner {
namespace {

// FNV-1a over the prompt text: the split is a property of the prompt itself.
uint64_t PromptHash(std::string_view text) {
  uint64_t hash = 1469598103934665603ull;
  for (char c : text) hash = (hash ^ static_cast<uint8_t>(c)) * 1099511628211ull;
  return hash;
}

TaskSplit SplitOf(std::string_view prompt_text) {
  return PromptHash(prompt_text) % 10 == 0 ? TaskSplit::kEval : TaskSplit::kTrain;
}

// Random number with `digits` digits (no leading zero unless digits == 1).
uint64_t RandomNumber(const core::Rng& rng, uint64_t counter, int digits) {
  uint64_t low = 1;
  for (int i = 1; i < digits; ++i) low *= 10;
  const uint64_t high = low * 10;
  if (digits == 1) low = 0;
  return low + static_cast<uint64_t>(rng.UniformDouble(counter) * (high - low));
}

// Candidate `attempt` of the task: prompt text (without BOS) and answer text (without EOS).
std::pair<std::string, std::string> Candidate(const SyntheticTaskSpec& spec, uint64_t attempt) {
  const core::Rng rng = core::Rng(spec.seed).Fork(attempt);
  const int span = spec.max_digits - spec.min_digits + 1;
  auto digits = [&](uint64_t counter) {
    return spec.min_digits + static_cast<int>(rng.UniformDouble(counter) * span);
  };
  if (spec.name == "addition") {
    const uint64_t a = RandomNumber(rng, 2, digits(0)), b = RandomNumber(rng, 3, digits(1));
    return {absl::StrCat(a, "+", b, "="), absl::StrCat(a + b)};
  }
  const int length = digits(0);
  std::string text;
  for (int i = 0; i < length; ++i) {
    text += static_cast<char>('a' + static_cast<int>(rng.UniformDouble(10 + i) * 26));
  }
  std::string reversed(text.rbegin(), text.rend());
  return {text + ">", reversed};
}

}  // namespace

absl::StatusOr<std::vector<int32_t>> EncodeChars(std::string_view text) {
  std::vector<int32_t> ids;
  ids.reserve(text.size());
  for (char c : text) {
    const size_t position = kCharacters.find(c);
    if (position == std::string_view::npos) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "character '%c' (0x%02x) is not in the synthetic vocabulary \"%s\"", c,
          static_cast<uint8_t>(c), std::string(kCharacters)));
    }
    ids.push_back(3 + static_cast<int32_t>(position));
  }
  return ids;
}

std::string DecodeChars(const std::vector<int32_t>& ids) {
  std::string text;
  for (int32_t id : ids) {
    if (id == kBosId) {
      text += "<bos>";
    } else if (id == kEosId) {
      text += "<eos>";
    } else if (id == kPadId) {
      text += "<pad>";
    } else if (id >= 3 && id < kCharVocabSize) {
      text += kCharacters[id - 3];
    } else {
      text += "<?>";
    }
  }
  return text;
}

absl::Status SyntheticTaskSpec::Validate() const {
  std::string problems;
  if (name != "addition" && name != "reverse") {
    absl::StrAppendFormat(&problems, " name must be \"addition\" or \"reverse\" (got \"%s\");", name);
  }
  if (min_digits < 1 || max_digits < min_digits || max_digits > 18) {
    absl::StrAppendFormat(&problems,
                          " digits must satisfy 1 <= min_digits <= max_digits <= 18 (got %d..%d);",
                          min_digits, max_digits);
  }
  if (problems.empty()) return absl::OkStatus();
  problems.pop_back();
  return absl::InvalidArgumentError("synthetic task:" + problems);
}

SftExample MakeSyntheticExample(const SyntheticTaskSpec& spec, TaskSplit split, uint64_t index) {
  // Walk candidates in order and keep those of the wanted split; each split gets its own
  // counter space so example `index` does not depend on the other split.
  const uint64_t stream = split == TaskSplit::kTrain ? 0 : (uint64_t{1} << 62);
  // 64 candidates per index: the eval split (1 in 10) almost always has one among them.
  for (uint64_t attempt = index * 64;; ++attempt) {
    auto [prompt, answer] = Candidate(spec, stream + attempt);
    if (SplitOf(prompt) != split) continue;
    // Candidates use only kCharacters, so encoding cannot fail.
    const std::vector<int32_t> prompt_ids = *EncodeChars(prompt);
    SftExample example;
    example.prompt.push_back(kBosId);
    example.prompt.insert(example.prompt.end(), prompt_ids.begin(), prompt_ids.end());
    example.completion = *EncodeChars(answer);
    example.completion.push_back(kEosId);
    return example;
  }
}

absl::StatusOr<std::string> SolveSyntheticPrompt(const SyntheticTaskSpec& spec,
                                                 std::string_view prompt_text) {
  if (spec.name == "addition") {
    const size_t plus = prompt_text.find('+');
    if (plus == std::string_view::npos || prompt_text.empty() || prompt_text.back() != '=') {
      return absl::InvalidArgumentError(
          absl::StrFormat("addition prompt must look like \"12+34=\", got \"%s\"",
                          std::string(prompt_text)));
    }
    uint64_t a, b;
    if (!absl::SimpleAtoi(std::string(prompt_text.substr(0, plus)), &a) ||
        !absl::SimpleAtoi(std::string(prompt_text.substr(plus + 1, prompt_text.size() - plus - 2)), &b)) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "addition prompt operands must be decimal numbers, got \"%s\"", std::string(prompt_text)));
    }
    return absl::StrCat(a + b);
  }
  if (prompt_text.empty() || prompt_text.back() != '>') {
    return absl::InvalidArgumentError(absl::StrFormat(
        "reverse prompt must end with '>', got \"%s\"", std::string(prompt_text)));
  }
  std::string text(prompt_text.substr(0, prompt_text.size() - 1));
  std::reverse(text.begin(), text.end());
  return text;
}

}  // namespace v4rl::learner
