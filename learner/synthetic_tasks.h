// Synthetic verifiable tasks for tests and demos: multi-digit addition ("123+45=" -> "168") and
// string reversal ("abc>" -> "cba"), over a small character vocabulary so tiny models can learn
// them in minutes on a CPU.
//
// Token ids: 0 = BOS, 1 = EOS, 2 = PAD (the V4 convention for 0 and 1), then one id per
// character of kCharacters. Examples are a pure function of (task, seed, index); the train and
// eval splits are disjoint by construction (a hash of the prompt decides the split).
// Thread-safe: all functions are pure.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"

namespace v4rl::learner {

inline constexpr int32_t kBosId = 0;
inline constexpr int32_t kEosId = 1;
inline constexpr int32_t kPadId = 2;
inline constexpr std::string_view kCharacters = "0123456789+=>abcdefghijklmnopqrstuvwxyz ";
// Vocabulary size of the character tokenizer (3 specials + characters).
inline constexpr int32_t kCharVocabSize = 3 + static_cast<int32_t>(kCharacters.size());

// InvalidArgument naming the character when it is not in kCharacters.
absl::StatusOr<std::vector<int32_t>> EncodeChars(std::string_view text);
// Specials decode to "<bos>", "<eos>", "<pad>"; ids out of range to "<?>".
std::string DecodeChars(const std::vector<int32_t>& ids);

struct SftExample {
  std::vector<int32_t> prompt;      // BOS + prompt characters
  std::vector<int32_t> completion;  // answer characters + EOS; the loss covers these
};

enum class TaskSplit { kTrain, kEval };

struct SyntheticTaskSpec {
  std::string name = "addition";  // "addition" or "reverse"
  int min_digits = 1;              // addition: operand digits; reverse: string length
  int max_digits = 3;
  uint64_t seed = 1;

  // InvalidArgument naming the field on unknown names or bad ranges.
  absl::Status Validate() const;
};

// The `index`-th example of `split` (skips candidates that belong to the other split).
SftExample MakeSyntheticExample(const SyntheticTaskSpec& spec, TaskSplit split, uint64_t index);
// Expected completion (without EOS) for a prompt, or an error if the prompt is malformed.
absl::StatusOr<std::string> SolveSyntheticPrompt(const SyntheticTaskSpec& spec,
                                                 std::string_view prompt_text);

}  // namespace v4rl::learner
