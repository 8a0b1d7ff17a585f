// CudaDecoder's CUDA-graph steps (CudaDecodeStepOptions::cuda_graphs): which steps qualify, the
// recording of one step's launches per (input count, position bound, FP8 simulation), and the
// replay: upload the step's token ids, positions and per-sequence state table, launch, read the
// logits (and routed experts) the graph left in its memory.
#include <algorithm>
#include <cstring>
#include <optional>
#include <tuple>
#include <utility>

#include "absl/cleanup/cleanup.h"
#include "core/status.h"
#include "model/decode_cuda_state.h"

namespace v4rl::model {
namespace cuda_internal {
namespace {

// Row r's state pointers for every layer: table[l · rows + r].
std::vector<kc::DecodeRowState> StateTable(const std::vector<StepSpan>& spans, int64_t layers) {
  const int64_t rows = static_cast<int64_t>(spans.size());
  std::vector<kc::DecodeRowState> table(layers * rows);
  for (int64_t l = 0; l < layers; ++l) {
    for (int64_t r = 0; r < rows; ++r) {
      const LayerState& s = spans[r].sequence->layers[l];
      kc::DecodeRowState& row = table[l * rows + r];
      row.ring = s.ring.data;
      row.entries = s.entries.data;
      row.comp_kv = s.comp_kv.data;
      row.comp_score = s.comp_score.data;
      row.index_keys = s.index_keys.data;
      row.index_kv = s.index_kv.data;
      row.index_score = s.index_score.data;
    }
  }
  return table;
}

TensorView Bytes(const void* data, int64_t bytes, core::Device device) {
  return TensorView::Contiguous(const_cast<void*>(data), DType::kU8, {bytes}, device);
}

// Records the step body (embedding, blocks, final norm, head) with `graph`'s inputs.
absl::Status RecordStep(CudaModel::Impl& m, DecodeGraph& graph, int64_t position_bound,
                        const std::vector<StepSpan>& spans, const CudaDecodeStepOptions& options) {
  const ModelConfig& config = m.config;
  const int64_t rows = graph.ids.size(0);
  DecodeStepState st;
  st.spans = spans;
  st.positions = graph.positions;
  st.options = &options;
  st.table = static_cast<const kc::DecodeRowState*>(graph.table.view().data);
  st.position_bound = position_bound;
  m.batch = 1;
  m.seq_len = rows;
  m.num_tokens = rows;
  m.options = CudaForwardOptions();
  m.options.device_moe_dispatch = true;
  m.options.fp8_simulation = options.fp8_simulation;
  m.token_ids = graph.ids;
  m.routed = nullptr;
  m.routed_on_device = &graph.routed;
  m.captures = nullptr;
  m.capture = nullptr;
  m.decode = &st;
  absl::Cleanup reset = [&m] {
    m.decode = nullptr;
    m.routed_on_device = nullptr;
  };
  auto body = [&]() -> absl::Status {
    V4RL_ASSIGN_OR_RETURN(const Tensor x, DecodeLayers(m, st));
    // Single tokens: the head reads every row (each input's last token is its only one).
    graph.logits = Dev(DType::kF32, {rows, config.vocab_size});
    return kc::Gemm(*m.gemm, x.view(), m.weights.head.view(), graph.logits.view());
  };
  V4RL_ASSIGN_OR_RETURN(graph.graph, kc::CudaGraph::Capture(body));
  return absl::OkStatus();
}

}  // namespace
}  // namespace cuda_internal

std::optional<DecodeGraphKey> CudaDecoder::Impl::GraphKey(
    const std::vector<StepSpan>& spans, const CudaDecodeStepOptions& options) const {
  const CudaModel::Impl& m = *model->impl_;
  if (!options.cuda_graphs || !options.batched_decode || !options.device_moe_dispatch ||
      !options.routing_replay.empty() || !options.index_replay.empty() || spans.size() > 512 ||
      m.profile.enabled || !BatchedDecodeKernelsFit(m.config) ||
      !std::all_of(spans.begin(), spans.end(), [](const StepSpan& s) { return s.count == 1; })) {
    return std::nullopt;
  }
  int64_t end = 0;
  for (const StepSpan& s : spans) end = std::max(end, s.position + 1);
  return DecodeGraphKey{static_cast<int64_t>(spans.size()), DecodePositionBound(end),
                        options.fp8_simulation};
}

bool CudaDecoder::Impl::ReplayStep(const std::optional<DecodeGraphKey>& key) {
  const bool replay = key.has_value() && (graphs.count(*key) > 0 || previous_key == key);
  previous_key = key;
  return replay;
}

absl::StatusOr<CudaDecodeStepOutput> CudaDecoder::Impl::GraphStep(
    absl::Span<const CudaDecodeInput> inputs, const std::vector<StepSpan>& spans,
    const CudaDecodeStepOptions& options, const DecodeGraphKey& key) {
  CudaModel::Impl& m = *model->impl_;
  const ModelConfig& config = m.config;
  const int64_t rows = static_cast<int64_t>(spans.size());
  const int64_t layers = static_cast<int64_t>(m.weights.layers.size());
  const int64_t bound = std::get<1>(key);
  std::vector<int32_t> ids_and_positions(2 * rows);  // graph->inputs' layout
  for (int64_t r = 0; r < rows; ++r) {
    ids_and_positions[r] = inputs[r].tokens[0];
    ids_and_positions[rows + r] = static_cast<int32_t>(spans[r].position);
  }
  std::unique_ptr<DecodeGraph>& graph = graphs[key];
  const bool record = graph == nullptr;
  if (record) {
    if (graphs.size() > kMaxGraphs) {  // evict the least recently used other graph
      auto oldest = graphs.end();
      for (auto it = graphs.begin(); it != graphs.end(); ++it) {
        if (it->second != nullptr &&
            (oldest == graphs.end() || it->second->last_use < oldest->second->last_use)) {
          oldest = it;
        }
      }
      if (oldest != graphs.end()) graphs.erase(oldest);
    }
    graph = std::make_unique<DecodeGraph>();
    graph->inputs = Dev(DType::kI32, {2, rows});
    graph->ids = graph->positions = graph->inputs;
    graph->ids.mutable_view() = graph->inputs.view().Select(0, 0);
    graph->positions.mutable_view() = graph->inputs.view().Select(0, 1);
    graph->table =
        Dev(DType::kU8, {layers * rows * static_cast<int64_t>(sizeof(kc::DecodeRowState))});
  }
  graph->last_use = ++graph_clock;
  // Inputs first (the recording reads nothing, but later replays read these addresses).
  V4RL_RETURN_IF_ERROR(
      kc::Copy(Bytes(ids_and_positions.data(), 2 * rows * 4, core::Device::kCpu),
               Bytes(graph->inputs.view().data, 2 * rows * 4, core::Device::kCuda)));
  std::vector<kc::DecodeRowState> table = StateTable(spans, layers);
  if (table.size() != graph->host_table.size() ||
      !std::equal(table.begin(), table.end(), graph->host_table.begin(),
                  [](const kc::DecodeRowState& a, const kc::DecodeRowState& b) {
                    return std::memcmp(&a, &b, sizeof(a)) == 0;
                  })) {
    const int64_t bytes = static_cast<int64_t>(table.size() * sizeof(kc::DecodeRowState));
    V4RL_RETURN_IF_ERROR(kc::Copy(Bytes(table.data(), bytes, core::Device::kCpu),
                                  Bytes(graph->table.view().data, bytes, core::Device::kCuda)));
    graph->host_table = std::move(table);
  }
  if (record) {
    if (absl::Status s = RecordStep(m, *graph, bound, spans, options); !s.ok()) {
      graphs.erase(key);
      return s;
    }
    ++graphs_recorded;
  }
  V4RL_RETURN_IF_ERROR(graph->graph->Launch());
  for (const StepSpan& s : spans) s.sequence->num_tokens += 1;

  CudaDecodeStepOutput output;
  const TensorView logits = graph->logits.view();
  if (options.device_logits) {  // a copy of its own: the next replay overwrites the graph's
    output.logits = Dev(DType::kF32, {rows, config.vocab_size});
  } else {
    output.logits = Tensor::Empty(DType::kF32, {rows, config.vocab_size});
  }
  V4RL_RETURN_IF_ERROR(kc::Copy(logits, output.logits.view()));
  if (options.return_routing) {
    for (const Tensor& idx : graph->routed) {
      Tensor ids_host = Tensor::Empty(DType::kI32, {rows, config.num_experts_per_tok});
      V4RL_RETURN_IF_ERROR(kc::Copy(idx.view(), ids_host.view()));
      output.routed_experts.push_back(std::move(ids_host));
    }
  }
  V4RL_RETURN_IF_ERROR(kc::Synchronize());
  return output;
}

}  // namespace v4rl::model
