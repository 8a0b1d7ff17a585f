#include "learner/sft_data.h"

#include <algorithm>

#include "absl/strings/str_format.h"
#include "core/file.h"
#include "core/json.h"
#include "core/status.h"

namespace v4rl::learner {
namespace {

constexpr size_t kMaxLineBytes = 16 << 20;

absl::StatusOr<std::vector<int32_t>> ReadIds(const nlohmann::json& line, const char* field,
                                             int64_t vocab_size, const std::string& where) {
  auto it = line.find(field);
  if (it == line.end() || !it->is_array()) {
    return absl::InvalidArgumentError(
        absl::StrFormat("%s: field '%s' must be an array of token ids", where, field));
  }
  std::vector<int32_t> ids;
  ids.reserve(it->size());
  for (size_t i = 0; i < it->size(); ++i) {
    const nlohmann::json& value = (*it)[i];
    if (!value.is_number_integer() || value.get<int64_t>() < 0 ||
        value.get<int64_t>() >= vocab_size) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "%s: %s[%d] = %s is not a token id in [0, %d)", where, field, i, value.dump(), vocab_size));
    }
    ids.push_back(static_cast<int32_t>(value.get<int64_t>()));
  }
  return ids;
}

}  // namespace

absl::StatusOr<std::vector<SftExample>> ParseSftJsonl(std::string_view text, const std::string& what,
                                                      int64_t vocab_size) {
  std::vector<SftExample> examples;
  int64_t line_number = 0;
  for (size_t start = 0; start < text.size();) {
    size_t end = text.find('\n', start);
    if (end == std::string_view::npos) end = text.size();
    const std::string_view line_text = text.substr(start, end - start);
    start = end + 1;
    ++line_number;
    const std::string where = absl::StrFormat("%s:%d", what, line_number);
    if (line_text.size() > kMaxLineBytes) {
      return absl::InvalidArgumentError(absl::StrFormat("%s: line longer than %d bytes", where, kMaxLineBytes));
    }
    if (line_text.find_first_not_of(" \t\r") == std::string_view::npos) continue;
    V4RL_ASSIGN_OR_RETURN(nlohmann::json line, core::ParseJson(line_text, where));
    if (!line.is_object()) {
      return absl::InvalidArgumentError(absl::StrFormat("%s: each line must be a JSON object", where));
    }
    SftExample example;
    V4RL_ASSIGN_OR_RETURN(example.prompt, ReadIds(line, "prompt_ids", vocab_size, where));
    V4RL_ASSIGN_OR_RETURN(example.completion, ReadIds(line, "completion_ids", vocab_size, where));
    if (example.completion.empty()) {
      return absl::InvalidArgumentError(absl::StrFormat("%s: completion_ids is empty", where));
    }
    examples.push_back(std::move(example));
  }
  if (examples.empty()) {
    return absl::InvalidArgumentError(absl::StrFormat("dataset %s has no examples", what));
  }
  return examples;
}

absl::StatusOr<std::vector<SftExample>> ReadSftJsonl(const std::string& path, int64_t vocab_size) {
  absl::StatusOr<std::string> text = core::ReadFile(path, int64_t{4} << 30);
  if (!text.ok()) {
    return absl::Status(text.status().code(),
                        absl::StrFormat("cannot open dataset %s: %s", path, text.status().message()));
  }
  return ParseSftJsonl(*text, path, vocab_size);
}

SftBatch MakeSftBatch(const std::vector<const SftExample*>& examples) {
  int64_t width = 1;
  for (const SftExample* e : examples) {
    width = std::max<int64_t>(width, e->prompt.size() + e->completion.size());
  }
  const int64_t rows = static_cast<int64_t>(examples.size());
  SftBatch batch;
  batch.input_ids = core::Tensor::Empty(core::DType::kI32, {rows, width});
  batch.loss_mask = core::Tensor::Zeros(core::DType::kF32, {rows, width});
  int32_t* ids = batch.input_ids.data<int32_t>();
  float* mask = batch.loss_mask.data<float>();
  std::fill(ids, ids + rows * width, kPadId);
  for (int64_t b = 0; b < rows; ++b) {
    const SftExample& e = *examples[b];
    const int64_t prompt_length = static_cast<int64_t>(e.prompt.size());
    std::copy(e.prompt.begin(), e.prompt.end(), ids + b * width);
    std::copy(e.completion.begin(), e.completion.end(), ids + b * width + prompt_length);
    // Token t+1 is a completion token for t in [prompt_length - 1, prompt_length + |c| - 2].
    for (size_t c = 0; c < e.completion.size(); ++c) {
      const int64_t t = prompt_length - 1 + static_cast<int64_t>(c);
      if (t < 0) continue;  // an empty prompt cannot predict its first completion token
      mask[b * width + t] = 1.0f;
      ++batch.num_target_tokens;
    }
  }
  return batch;
}

std::vector<int32_t> NextTokenTargets(const SftBatch& batch) {
  const int64_t rows = batch.input_ids.size(0), width = batch.input_ids.size(1);
  std::vector<int32_t> targets(rows * width, 0);
  const int32_t* ids = batch.input_ids.data<int32_t>();
  for (int64_t b = 0; b < rows; ++b) {
    for (int64_t t = 0; t + 1 < width; ++t) targets[b * width + t] = ids[b * width + t + 1];
  }
  return targets;
}

}  // namespace v4rl::learner
