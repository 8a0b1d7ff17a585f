// Private to model/decode_cuda.cc and model/attention_decode_cuda.cc: one sequence's decode
// state in the CudaDecoder's block pool (per layer: the window ring, compressed entries,
// compressor rows still pooling, indexer keys) and the state of one decode step that
// CudaModel::Impl::AttentionDecode reads (model/forward_cuda_impl.h).
#pragma once

#include <algorithm>
#include <cstdint>
#include <vector>

#include "model/decode_cuda.h"
#include "model/forward_cuda_impl.h"

namespace v4rl::model {
namespace cuda_internal {

// Device views of one sequence's state for one layer (inside the pool).
struct LayerState {
  TensorView ring;                   // [window, D] bf16
  TensorView entries;                // [capacity / m, D] bf16 (CSA, HCA)
  TensorView comp_kv, comp_score;    // [(2|1)·m, c·D] bf16 / f32 (CSA, HCA)
  TensorView index_keys;             // [capacity / m, di] bf16 (CSA)
  TensorView index_kv, index_score;  // [2m, 2·di] bf16 / f32 (CSA)
};

struct Sequence {
  int64_t first_block = 0, blocks = 0;
  int64_t capacity = 0, num_tokens = 0;
  std::vector<LayerState> layers;
};

struct StepSpan {
  int64_t row = 0, count = 0, position = 0;
  Sequence* sequence = nullptr;
};

struct DecodeStepState {
  std::vector<StepSpan> spans;
  Tensor positions;                   // [N] i32 device
  Tensor main_cos, main_sin;          // [N, rd / 2] f32 device
  Tensor compress_cos, compress_sin;  // [N, rd / 2] f32 device
  const CudaDecodeStepOptions* options = nullptr;
  int64_t layer = 0;
};

// The address of row `row` of a view whose rows are its first dimension, and a row's bytes.
inline char* Ptr(const TensorView& v, int64_t row) {
  return static_cast<char*>(v.data) + row * (v.nbytes() / std::max<int64_t>(v.shape[0], 1));
}
inline int64_t RowBytes(const TensorView& v) {
  return core::DTypeBytes(v.dtype, v.numel() / v.shape[0]);
}

}  // namespace cuda_internal
}  // namespace v4rl::model
