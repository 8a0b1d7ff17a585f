// Rule verifiers: turn a completion into a reward by checking its final answer and its format.
//
// The completion text (as sampled, EOS included) is parsed with DeepSeek's output grammar for the
// trajectory's mode (actor::ParseCompletion). Format rules:
//   thinking modes (think-high, think-max): the grammar holds and the reasoning is non-empty;
//   non-think: the grammar of chat mode holds (so no reasoning markers appear).
// The final answer is the content of the parsed message: the text inside the last \boxed{...} when
// there is one, otherwise the whole content, trimmed. Answer kinds:
//   kExact    the answer equals `expected` after trimming whitespace;
//   kInteger  the last integer in the answer equals `expected` (an integer).
//   kVerbatim the whole completion equals `expected` byte for byte; no parsing, no trimming and
//             no format check (tasks without a chat format, e.g. learner/synthetic_tasks.h).
// Reward: `correct_reward` for a correct answer with a valid format, `incorrect_reward` for a wrong
// answer with a valid format, `format_error_reward` when the format check fails (the answer is
// then not scored).
// Thread-safe: pure functions.
#pragma once

#include <optional>
#include <string>
#include <string_view>

#include "absl/status/statusor.h"
#include "actor/chat_encoding.h"

namespace v4rl::reward {

enum class AnswerKind { kExact, kInteger, kVerbatim };

struct VerifierSpec {
  AnswerKind kind = AnswerKind::kExact;
  std::string expected;
  double correct_reward = 1.0;
  double incorrect_reward = 0.0;
  double format_error_reward = -0.5;

  // InvalidArgument naming the field: kInteger with a non-integer `expected`.
  absl::Status Validate() const;
};

struct Verdict {
  double reward = 0;
  bool format_ok = false;
  bool correct = false;
  std::string answer;       // the extracted final answer ("" on a format error)
  std::string explanation;  // one line: why this reward
};

// `mode` and `effort` are the trajectory's reasoning mode (chat = non-think).
Verdict Verify(const VerifierSpec& spec, std::string_view completion, actor::ThinkingMode mode);

// The final answer of a content string: the last \boxed{...} (nested braces allowed), else the
// whole content, trimmed.
std::string ExtractFinalAnswer(std::string_view content);
// The last (optionally negative) integer in `text`, if any.
std::optional<std::string> LastInteger(std::string_view text);

}  // namespace v4rl::reward
