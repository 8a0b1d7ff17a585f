// CudaDecoder (model/decode_cuda.h): the block pool, sequences (add, fork, remove) and the decode
// step's setup and head; each layer's attention against the states is
// model/attention_decode_cuda.cc.
#include "model/decode_cuda.h"

#include <algorithm>
#include <map>
#include <set>

#include "absl/cleanup/cleanup.h"
#include "absl/strings/str_format.h"
#include "core/status.h"
#include "kernels/cuda/elementwise.h"
#include "kernels/cuda/rows.h"
#include "model/decode_cuda_state.h"

namespace v4rl::model {
namespace cuda_internal {
namespace {

// Lays one sequence's state out from `base` (nullptr: sizes only); returns its bytes.
int64_t Layout(const ModelConfig& config, int64_t capacity, char* base,
               std::vector<LayerState>* layers) {
  int64_t offset = 0;
  auto take = [&](DType dtype, std::initializer_list<int64_t> shape) {
    int64_t numel = 1;
    for (int64_t d : shape) numel *= d;
    offset = (offset + 255) / 256 * 256;
    const TensorView view = TensorView::Contiguous(base != nullptr ? base + offset : nullptr,
                                                   dtype, shape, core::Device::kCuda);
    offset += core::DTypeBytes(dtype, numel);
    return view;
  };
  const int64_t dim = config.head_dim, idim = config.index_head_dim;
  if (layers != nullptr) layers->assign(config.num_layers, {});
  for (int64_t l = 0; l < config.num_layers; ++l) {
    LayerState s;
    const AttentionType type = config.layer_types[l];
    s.ring = take(DType::kBF16, {config.sliding_window, dim});
    if (type != AttentionType::kSliding) {
      const int64_t m = config.CompressRatio(type);
      const bool overlap = type == AttentionType::kCompressedSparse;
      const int64_t slots = (overlap ? 2 : 1) * m, width = (overlap ? 2 : 1) * dim;
      s.entries = take(DType::kBF16, {capacity / m, dim});
      s.comp_kv = take(DType::kBF16, {slots, width});
      s.comp_score = take(DType::kF32, {slots, width});
      if (overlap) {
        s.index_keys = take(DType::kBF16, {capacity / m, idim});
        s.index_kv = take(DType::kBF16, {2 * m, 2 * idim});
        s.index_score = take(DType::kF32, {2 * m, 2 * idim});
      }
    }
    if (layers != nullptr) (*layers)[l] = s;
  }
  return (offset + 255) / 256 * 256;
}

}  // namespace

absl::StatusOr<Tensor> DecodeLayers(CudaModel::Impl& m, DecodeStepState& st) {
  const ModelConfig& config = m.config;
  const int64_t n = st.positions.size(0), half = config.rope_head_dim / 2;
  for (Tensor* table : {&st.main_cos, &st.main_sin, &st.compress_cos, &st.compress_sin}) {
    *table = Dev(DType::kF32, {n, half});
  }
  // Both tables in one launch (the bits of a RopeTableAt each).
  V4RL_RETURN_IF_ERROR(kc::RopeTablesAt(
      st.positions.view(), m.main_rope.inv_freq.view(), st.main_cos.view(), st.main_sin.view(),
      m.compress_rope.inv_freq.view(), st.compress_cos.view(), st.compress_sin.view()));
  m.profile.Mark("setup");
  Tensor streams = Dev(m.stream_dtype(), {n, config.hc_mult, config.hidden_size});
  V4RL_RETURN_IF_ERROR(
      kc::EmbedStreams(m.weights.embed.view(), m.token_ids.view(), streams.view()));
  for (m.layer_index = 0; m.layer_index < m.weights.layers.size(); ++m.layer_index) {
    st.layer = static_cast<int64_t>(m.layer_index);
    V4RL_ASSIGN_OR_RETURN(streams, m.Block(m.weights.layers[m.layer_index], streams));
  }
  m.profile.Mark("other");
  return m.FinalHidden(streams);
}

}  // namespace cuda_internal

CudaDecoder::CudaDecoder(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
CudaDecoder::~CudaDecoder() = default;

int64_t CudaDecoder::SequenceBytes(const ModelConfig& config, int64_t capacity) {
  return Layout(config, capacity, nullptr, nullptr);
}

absl::StatusOr<std::unique_ptr<CudaDecoder>> CudaDecoder::Create(CudaModel* model,
                                                                 int64_t pool_bytes,
                                                                 int64_t block_bytes) {
  if (model == nullptr || pool_bytes < 1 || block_bytes < 1) {
    return absl::InvalidArgumentError("CudaDecoder needs a model and positive pool/block sizes");
  }
  block_bytes = (block_bytes + 255) / 256 * 256;
  auto impl = std::make_unique<Impl>();
  impl->model = model;
  impl->block_bytes = block_bytes;
  const int64_t blocks = (pool_bytes + block_bytes - 1) / block_bytes;
  impl->pool = Tensor::Empty(DType::kU8, {blocks * block_bytes}, kc::DeviceAllocator());
  impl->used.assign(blocks, false);
  return std::unique_ptr<CudaDecoder>(new CudaDecoder(std::move(impl)));
}

absl::StatusOr<int64_t> CudaDecoder::AddSequence(int64_t capacity) {
  Impl& d = *impl_;
  const ModelConfig& config = d.model->impl_->config;
  if (capacity < 1 || capacity > config.max_position_embeddings) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "sequence capacity %d must be in [1, max_position_embeddings = %d]", capacity,
        config.max_position_embeddings));
  }
  const int64_t need = (SequenceBytes(config, capacity) + d.block_bytes - 1) / d.block_bytes;
  const int64_t total = static_cast<int64_t>(d.used.size());
  int64_t run = 0;
  for (int64_t b = 0; b < total; ++b) {
    run = d.used[b] ? 0 : run + 1;
    if (run == need) {
      auto sequence = std::make_unique<Sequence>();
      sequence->first_block = b + 1 - need;
      sequence->blocks = need;
      sequence->capacity = capacity;
      for (int64_t i = sequence->first_block; i <= b; ++i) d.used[i] = true;
      char* base = static_cast<char*>(d.pool.view().data) + sequence->first_block * d.block_bytes;
      Layout(config, capacity, base, &sequence->layers);
      const int64_t id = d.next_id++;
      d.sequences[id] = std::move(sequence);
      return id;
    }
  }
  return absl::ResourceExhaustedError(absl::StrFormat(
      "decode pool: no run of %d free blocks for a sequence of capacity %d (%d of %d free)",
      need, capacity, free_blocks(), total));
}

absl::StatusOr<int64_t> CudaDecoder::ForkSequence(int64_t sequence) {
  auto it = impl_->sequences.find(sequence);
  if (it == impl_->sequences.end()) {
    return absl::NotFoundError(absl::StrFormat("no decode sequence %d", sequence));
  }
  const Sequence& from = *it->second;
  V4RL_ASSIGN_OR_RETURN(const int64_t id, AddSequence(from.capacity));
  Sequence& to = *impl_->sequences[id];
  char* pool = static_cast<char*>(impl_->pool.view().data);
  const int64_t bytes = SequenceBytes(impl_->model->impl_->config, from.capacity);
  V4RL_RETURN_IF_ERROR(kc::Copy(
      TensorView::Contiguous(pool + from.first_block * impl_->block_bytes, DType::kU8, {bytes},
                             core::Device::kCuda),
      TensorView::Contiguous(pool + to.first_block * impl_->block_bytes, DType::kU8, {bytes},
                             core::Device::kCuda)));
  to.num_tokens = from.num_tokens;
  return id;
}

absl::Status CudaDecoder::RemoveSequence(int64_t sequence) {
  auto it = impl_->sequences.find(sequence);
  if (it == impl_->sequences.end()) {
    return absl::NotFoundError(absl::StrFormat("no decode sequence %d", sequence));
  }
  for (int64_t i = 0; i < it->second->blocks; ++i) impl_->used[it->second->first_block + i] = false;
  impl_->sequences.erase(it);
  return absl::OkStatus();
}

absl::StatusOr<int64_t> CudaDecoder::num_tokens(int64_t sequence) const {
  auto it = impl_->sequences.find(sequence);
  if (it == impl_->sequences.end()) {
    return absl::NotFoundError(absl::StrFormat("no decode sequence %d", sequence));
  }
  return it->second->num_tokens;
}

int64_t CudaDecoder::graphs_recorded() const { return impl_->graphs_recorded; }
int64_t CudaDecoder::graphs_held() const { return static_cast<int64_t>(impl_->graphs.size()); }
int64_t CudaDecoder::num_blocks() const { return static_cast<int64_t>(impl_->used.size()); }
int64_t CudaDecoder::free_blocks() const {
  return static_cast<int64_t>(std::count(impl_->used.begin(), impl_->used.end(), false));
}

absl::StatusOr<CudaDecodeStepOutput> CudaDecoder::Step(absl::Span<const CudaDecodeInput> inputs,
                                                       const CudaDecodeStepOptions& options) {
  Impl& d = *impl_;
  CudaModel::Impl& m = *d.model->impl_;
  const ModelConfig& config = m.config;
  if (inputs.empty()) return absl::InvalidArgumentError("decode step has no inputs");
  m.profile.Start();
  DecodeStepState st;
  std::set<int64_t> seen;
  int64_t num_tokens = 0;
  for (size_t i = 0; i < inputs.size(); ++i) {
    const CudaDecodeInput& input = inputs[i];
    auto it = d.sequences.find(input.sequence);
    if (it == d.sequences.end()) {
      return absl::InvalidArgumentError(
          absl::StrFormat("decode input %d: no sequence %d", i, input.sequence));
    }
    if (!seen.insert(input.sequence).second) {
      return absl::InvalidArgumentError(
          absl::StrFormat("decode input %d repeats sequence %d", i, input.sequence));
    }
    const int64_t count = static_cast<int64_t>(input.tokens.size());
    if (count == 0) return absl::InvalidArgumentError(absl::StrFormat("decode input %d has no tokens", i));
    Sequence& sequence = *it->second;
    if (sequence.num_tokens + count > sequence.capacity) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "decode input %d: %d tokens after %d would exceed the sequence's capacity %d", i, count,
          sequence.num_tokens, sequence.capacity));
    }
    for (int64_t t = 0; t < count; ++t) {
      if (input.tokens[t] < 0 || input.tokens[t] >= config.vocab_size) {
        return absl::InvalidArgumentError(
            absl::StrFormat("decode input %d: token %d = %d is outside the vocabulary [0, %d)", i,
                            t, input.tokens[t], config.vocab_size));
      }
    }
    st.spans.push_back({num_tokens, count, sequence.num_tokens, &sequence});
    num_tokens += count;
  }
  const std::optional<DecodeGraphKey> graph_key = d.GraphKey(st.spans, options);
  if (d.ReplayStep(graph_key)) return d.GraphStep(inputs, st.spans, options, *graph_key);
  const int64_t k = config.num_experts_per_tok;
  if (!options.routing_replay.empty()) {
    if (options.routing_replay.size() != m.weights.layers.size()) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "routing_replay has %d layers, expected %d", options.routing_replay.size(),
          m.weights.layers.size()));
    }
  }
  // Ids and positions of the step's tokens (one upload each).
  Tensor ids = Tensor::Empty(DType::kI32, {num_tokens});
  Tensor positions = Tensor::Empty(DType::kI32, {num_tokens});
  for (size_t i = 0; i < inputs.size(); ++i) {
    const StepSpan& s = st.spans[i];
    for (int64_t t = 0; t < s.count; ++t) {
      ids.data<int32_t>()[s.row + t] = inputs[i].tokens[t];
      positions.data<int32_t>()[s.row + t] = static_cast<int32_t>(s.position + t);
    }
  }
  int64_t unused = 0;
  V4RL_ASSIGN_OR_RETURN(m.token_ids, Upload(ids, DType::kI32, &unused));
  V4RL_ASSIGN_OR_RETURN(st.positions, Upload(positions, DType::kI32, &unused));
  st.options = &options;

  // The model's per-call state: one "sequence" of the step's N tokens for the token-wise ops.
  m.batch = 1;
  m.seq_len = num_tokens;
  m.num_tokens = num_tokens;
  m.options = CudaForwardOptions();
  m.options.routing_replay = options.routing_replay;
  for (TensorView& replay : m.options.routing_replay) {
    if (replay.rank == 2 && replay.is_contiguous()) replay = replay.Reshape({1, num_tokens, k});
  }
  m.options.indexer_q_chunk = options.indexer_q_chunk;
  m.options.device_moe_dispatch = options.device_moe_dispatch && num_tokens <= 512;
  m.options.fp8_simulation = options.fp8_simulation;
  CudaDecodeStepOutput output;
  m.routed = options.return_routing ? &output.routed_experts : nullptr;
  m.captures = nullptr;
  m.capture = nullptr;
  m.decode = &st;
  absl::Cleanup reset = [&m] { m.decode = nullptr; };

  const int64_t hidden = config.hidden_size;
  V4RL_ASSIGN_OR_RETURN(const Tensor x, DecodeLayers(m, st));
  for (StepSpan& s : st.spans) s.sequence->num_tokens += s.count;

  // The head (every row, or each input's last).
  Tensor head_in = x;
  if (!options.all_logits) {
    head_in = Dev(DType::kBF16, {static_cast<int64_t>(inputs.size()), hidden});
    std::vector<kc::RowCopy> copies;
    for (size_t i = 0; i < st.spans.size(); ++i) {
      copies.push_back({Ptr(x.view(), st.spans[i].row + st.spans[i].count - 1),
                        Ptr(head_in.view(), static_cast<int64_t>(i)), hidden * 2});
    }
    V4RL_RETURN_IF_ERROR(kc::BatchCopy(copies));
  }
  const int64_t rows = head_in.size(0);
  const Tensor logits = Dev(DType::kF32, {rows, config.vocab_size});
  V4RL_RETURN_IF_ERROR(kc::Gemm(*m.gemm, head_in.view(), m.weights.head.view(), logits.view()));
  for (Tensor& routed : output.routed_experts) {
    routed.mutable_view() = routed.view().Reshape({num_tokens, k});
  }
  if (options.device_logits) {
    output.logits = logits;
  } else {
    output.logits = Tensor::Empty(DType::kF32, {rows, config.vocab_size});
    V4RL_RETURN_IF_ERROR(kc::Copy(logits.view(), output.logits.view()));
  }
  V4RL_RETURN_IF_ERROR(kc::Synchronize());
  m.profile.Mark("head");
  m.profile.Report("decode step", num_tokens);
  return output;
}

}  // namespace v4rl::model
