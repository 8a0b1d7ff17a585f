// Supervised fine-tuning data: JSON-lines datasets of token ids and the padded batches the
// train step consumes, with the loss restricted to completion tokens.
//
// Dataset line: {"prompt_ids": [0, 15, ...], "completion_ids": [17, 1]}. Every id must lie in
// [0, vocab_size); errors name the file, the 1-based line and the field.
// Thread-safe: pure functions.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "core/tensor.h"
#include "learner/synthetic_tasks.h"

namespace v4rl::learner {

// Parses JSONL text; `what` names it in errors ("data.jsonl:3: ..."). Lines longer than 16 MiB
// and inputs without examples are errors; blank lines are skipped.
absl::StatusOr<std::vector<SftExample>> ParseSftJsonl(std::string_view text, const std::string& what,
                                                      int64_t vocab_size);
// Reads a JSONL dataset file (at most 4 GiB) and parses it.
absl::StatusOr<std::vector<SftExample>> ReadSftJsonl(const std::string& path, int64_t vocab_size);

// One training batch. Position t of row b predicts token t+1: loss_mask[b, t] is 1 exactly when
// token t+1 is a completion token of that row.
struct SftBatch {
  core::Tensor input_ids;  // [B, T] i32, right-padded with kPadId
  core::Tensor loss_mask;  // [B, T] f32 in {0, 1}
  int64_t num_target_tokens = 0;
};

// Packs examples (prompt + completion) into a batch of width max length.
SftBatch MakeSftBatch(const std::vector<const SftExample*>& examples);

// The next-token target of every position, [B·T] i32 in row order: position (b, t) predicts
// input_ids[b, t + 1]; each row's last position gets 0 (loss_mask is 0 there).
std::vector<int32_t> NextTokenTargets(const SftBatch& batch);

}  // namespace v4rl::learner
