#include "model/decode_state.h"

#include "absl/strings/str_format.h"
#include "core/thread_pool.h"

namespace v4rl::model {
namespace {

using core::DType;
using core::Tensor;

CompressorDecodeState MakeCompressorState(int64_t ratio, bool overlap, int64_t width) {
  const int64_t slots = (overlap ? 2 : 1) * ratio;
  return {Tensor::Zeros(DType::kF32, {slots, width}), Tensor::Zeros(DType::kF32, {slots, width})};
}

int64_t Bytes(const Tensor& t) { return t.defined() ? t.view().nbytes() : 0; }

}  // namespace

int64_t DecodeState::AllocatedBytes() const {
  int64_t bytes = 0;
  for (const LayerDecodeState& layer : layers) {
    bytes += Bytes(layer.window_kv) + Bytes(layer.entries) + Bytes(layer.indexer_keys);
    bytes += Bytes(layer.compressor.kv) + Bytes(layer.compressor.score);
    bytes += Bytes(layer.indexer_compressor.kv) + Bytes(layer.indexer_compressor.score);
  }
  return bytes;
}

void ForEachSpan(size_t num_spans, const std::function<void(size_t)>& fn) {
  core::ThreadPool::Default().ParallelFor(0, static_cast<int64_t>(num_spans), 1,
                                          [&](int64_t begin, int64_t end) {
                                            for (int64_t s = begin; s < end; ++s) fn(s);
                                          });
}

absl::StatusOr<DecodeState> CreateDecodeState(const ModelConfig& config, int64_t capacity) {
  if (capacity < 1 || capacity > config.max_position_embeddings) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "decode state capacity %d must be in [1, max_position_embeddings = %d]", capacity,
        config.max_position_embeddings));
  }
  DecodeState state;
  state.capacity = capacity;
  state.layers.resize(config.num_layers);
  const int64_t dim = config.head_dim;
  for (int64_t l = 0; l < config.num_layers; ++l) {
    LayerDecodeState& layer = state.layers[l];
    layer.type = config.layer_types[l];
    layer.window_kv = Tensor::Zeros(DType::kF32, {config.sliding_window, dim});
    if (layer.type == AttentionType::kSliding) continue;
    const int64_t ratio = config.CompressRatio(layer.type);
    const bool overlap = layer.type == AttentionType::kCompressedSparse;
    layer.entries = Tensor::Zeros(DType::kF32, {capacity / ratio, dim});
    layer.compressor = MakeCompressorState(ratio, overlap, (overlap ? 2 : 1) * dim);
    if (!overlap) continue;
    layer.indexer_keys = Tensor::Zeros(DType::kF32, {capacity / ratio, config.index_head_dim});
    layer.indexer_compressor = MakeCompressorState(ratio, true, 2 * config.index_head_dim);
  }
  return state;
}

}  // namespace v4rl::model
