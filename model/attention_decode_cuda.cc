// CudaModel::Impl::AttentionDecode: the attention of a CudaDecoder step (model/decode_cuda.h)
// against each sequence's state in the block pool — new K=V rows, compressor rows appended and
// completed windows pooled into entries, the indexer's picks (one batched launch for single-token
// inputs), then attention through the batched decode kernels or, for longer inputs (prefill
// chunks), the prefill kernels over the ring's rows and the new ones.
#include <algorithm>
#include <cmath>
#include <vector>

#include "absl/strings/str_format.h"
#include "core/status.h"
#include "kernels/cuda/attention.h"
#include "kernels/cuda/compressor.h"
#include "kernels/cuda/decode_attention.h"
#include "kernels/cuda/elementwise.h"
#include "kernels/cuda/indexer.h"
#include "kernels/cuda/rows.h"
#include "model/decode_cuda_state.h"

namespace v4rl::model {
namespace cuda_internal {
namespace {

// Appends the step's compressor rows (values, gate scores of x biased at each row's position;
// ProjectAttentionInput) to each sequence's pending rows; every window completed becomes an
// entry (pooled, normalised, rotated at w·m).
absl::Status CompressAppend(CudaModel::Impl& m, DecodeStepState& st, const CompressorWeights& w,
                            const CompressorRows& rows, int64_t ratio, bool overlap, bool indexer) {
  const int64_t width = rows.kv.size(1);
  const int64_t entry_dim = overlap ? width / 2 : width;
  const Tensor& kv = rows.kv;
  const Tensor& score = rows.score;
  const int64_t open_slot = overlap ? ratio : 0;
  auto state = [&](const StepSpan& s, TensorView* skv, TensorView* ssc, TensorView* ent) {
    const LayerState& l = s.sequence->layers[st.layer];
    *skv = indexer ? l.index_kv : l.comp_kv;
    *ssc = indexer ? l.index_score : l.comp_score;
    *ent = indexer ? l.index_keys : l.entries;
  };
  struct Job {
    size_t span;
    int64_t work_row, lead, work_windows, first_entry, open_window, num_entries, base_window,
        entry_row;
  };
  std::vector<Job> jobs;
  std::vector<kc::RowCopy> copies;
  int64_t work_rows = 0, total_entries = 0;
  for (size_t i = 0; i < st.spans.size(); ++i) {
    const StepSpan& s = st.spans[i];
    TensorView skv, ssc, ent;
    state(s, &skv, &ssc, &ent);
    const int64_t open_window = s.position / ratio, open_rows = s.position % ratio;
    const int64_t end_window = (s.position + s.count) / ratio;
    if (end_window == open_window) {  // still inside the open window: append in place
      copies.push_back(
          {Ptr(kv.view(), s.row), Ptr(skv, open_slot + open_rows), s.count * RowBytes(kv.view())});
      copies.push_back({Ptr(score.view(), s.row), Ptr(ssc, open_slot + open_rows),
                        s.count * RowBytes(score.view())});
      continue;
    }
    const bool has_previous = overlap && open_window >= 1;
    Job job;
    job.span = i;
    job.lead = (has_previous ? ratio : 0) + open_rows;
    const int64_t rows = job.lead + s.count;
    job.work_row = work_rows;
    work_rows += (rows + ratio - 1) / ratio * ratio;
    job.work_windows = rows / ratio;
    job.first_entry = has_previous ? 1 : 0;
    job.open_window = open_window;
    job.num_entries = job.work_windows - job.first_entry;
    job.base_window = open_window - job.first_entry;
    job.entry_row = total_entries;
    total_entries += job.num_entries;
    jobs.push_back(job);
  }
  Tensor work_kv, work_score;
  if (!jobs.empty()) {
    work_kv = Dev(DType::kBF16, {work_rows, width});
    work_score = Dev(DType::kF32, {work_rows, width});
  }
  for (const Job& job : jobs) {
    const StepSpan& s = st.spans[job.span];
    TensorView skv, ssc, ent;
    state(s, &skv, &ssc, &ent);
    const int64_t from = job.first_entry ? 0 : open_slot;  // prev window + open rows are adjacent
    if (job.lead > 0) {
      copies.push_back(
          {Ptr(skv, from), Ptr(work_kv.view(), job.work_row), job.lead * RowBytes(skv)});
      copies.push_back(
          {Ptr(ssc, from), Ptr(work_score.view(), job.work_row), job.lead * RowBytes(ssc)});
    }
    copies.push_back({Ptr(kv.view(), s.row), Ptr(work_kv.view(), job.work_row + job.lead),
                      s.count * RowBytes(kv.view())});
    copies.push_back({Ptr(score.view(), s.row), Ptr(work_score.view(), job.work_row + job.lead),
                      s.count * RowBytes(score.view())});
  }
  V4RL_RETURN_IF_ERROR(kc::BatchCopy(copies));
  if (jobs.empty()) return absl::OkStatus();

  // Pool, normalise, rotate every new entry; then entries and the rows later entries need go
  // back to the states.
  // Every sequence's completed windows in one launch (work rows are whole windows per job).
  const Tensor entries = Dev(DType::kBF16, {total_entries, entry_dim});
  std::vector<kc::PoolEntry> pool;
  pool.reserve(total_entries);
  for (const Job& job : jobs) {
    for (int64_t w = job.first_entry; w < job.work_windows; ++w) {
      pool.push_back({static_cast<int32_t>(job.work_row / ratio + w), overlap && w >= 1});
    }
  }
  V4RL_RETURN_IF_ERROR(kc::CompressPoolEntries(work_kv.view(), work_score.view(), ratio, overlap,
                                               pool, entries.view()));
  const int64_t half = m.config.rope_head_dim / 2;
  std::vector<int32_t> entry_positions;  // entry w sits at position w · ratio
  entry_positions.reserve(total_entries);
  for (const Job& job : jobs) {
    for (int64_t e = 0; e < job.num_entries; ++e) {
      entry_positions.push_back(static_cast<int32_t>((job.open_window + e) * ratio));
    }
  }
  const Tensor dcos = Dev(DType::kF32, {total_entries, half});
  const Tensor dsin = Dev(DType::kF32, {total_entries, half});
  V4RL_RETURN_IF_ERROR(
      kc::RopeTableAt(m.compress_rope.inv_freq.view(), entry_positions, dcos.view(), dsin.view()));
  V4RL_RETURN_IF_ERROR(kc::RmsNormRope(entries.view(), w.norm.view(), m.eps(), dcos.view(),
                                       dsin.view(), 1, entries.view()));
  V4RL_RETURN_IF_ERROR(indexer ? m.IndexerFp4(entries.view()) : m.KvQat(entries.view()));
  copies.clear();
  for (const Job& job : jobs) {
    const StepSpan& s = st.spans[job.span];
    TensorView skv, ssc, ent;
    state(s, &skv, &ssc, &ent);
    copies.push_back({Ptr(entries.view(), job.entry_row), Ptr(ent, job.open_window),
                      job.num_entries * RowBytes(ent)});
    const int64_t end = s.position + s.count, end_window = end / ratio;
    auto work_row = [&](int64_t position) {
      return job.work_row + position - job.base_window * ratio;
    };
    if (overlap) {  // the last complete window: series A of the next entry
      copies.push_back({Ptr(work_kv.view(), work_row((end_window - 1) * ratio)), Ptr(skv, 0),
                        ratio * RowBytes(skv)});
      copies.push_back({Ptr(work_score.view(), work_row((end_window - 1) * ratio)), Ptr(ssc, 0),
                        ratio * RowBytes(ssc)});
    }
    if (end % ratio > 0) {
      copies.push_back({Ptr(work_kv.view(), work_row(end_window * ratio)), Ptr(skv, open_slot),
                        (end % ratio) * RowBytes(skv)});
      copies.push_back({Ptr(work_score.view(), work_row(end_window * ratio)), Ptr(ssc, open_slot),
                        (end % ratio) * RowBytes(ssc)});
    }
  }
  return kc::BatchCopy(copies);
}

}  // namespace
}  // namespace cuda_internal

absl::StatusOr<CudaModel::Impl::DecodeQueryKv> CudaModel::Impl::DecodeProjections(
    const AttentionWeights& w, AttentionType type, const TensorView& x) {
  const DecodeStepState& st = *decode;
  // As Attention: the fused input GEMMs, the compressors' gate bias at each row's position.
  DecodeQueryKv out;
  Tensor xq_storage;
  V4RL_ASSIGN_OR_RETURN(const TensorView xq, Fp8Operand(x, &xq_storage));
  V4RL_ASSIGN_OR_RETURN(out.projections,
                        ProjectAttentionInput(w, type, x, xq, st.positions.view()));
  out.qr = Dev(DType::kBF16, {num_tokens, config.q_lora_rank});
  V4RL_RETURN_IF_ERROR(kc::RmsNorm(out.projections.qr, w.q_norm.view(), eps(), out.qr.view()));
  V4RL_RETURN_IF_ERROR(Fp8OperandInPlace(out.qr.view()));
  return out;
}

absl::Status CudaModel::Impl::DecodeQueryRows(const AttentionWeights& w, AttentionType type,
                                              DecodeQueryKv* qkv) {
  const DecodeStepState& st = *decode;
  const int64_t heads = config.num_heads, dim = config.head_dim, n = num_tokens;
  const TensorView cos = st.cos(type), sin = st.sin(type);
  qkv->q = Dev(DType::kBF16, {n, heads, dim});
  V4RL_RETURN_IF_ERROR(
      kc::Gemm(*gemm, qkv->qr.view(), w.wq_b.view(), qkv->q.view().Reshape({n, heads * dim})));
  // Each head normalised, then rotated (one launch); the K=V row likewise with kv_norm.
  V4RL_RETURN_IF_ERROR(
      kc::RmsNormRope(qkv->q.view(), TensorView(), eps(), cos, sin, heads, qkv->q.view()));
  qkv->kv = Dev(DType::kBF16, {n, dim});
  V4RL_RETURN_IF_ERROR(
      kc::RmsNormRope(qkv->projections.kv, w.kv_norm.view(), eps(), cos, sin, 1, qkv->kv.view()));
  return KvQat(qkv->kv.view());
}

absl::StatusOr<CudaModel::Impl::DecodeQueryKv> CudaModel::Impl::DecodeQueryAndKv(
    const AttentionWeights& w, AttentionType type, const TensorView& x) {
  V4RL_ASSIGN_OR_RETURN(DecodeQueryKv out, DecodeProjections(w, type, x));
  V4RL_RETURN_IF_ERROR(DecodeQueryRows(w, type, &out));
  return out;
}

absl::StatusOr<Tensor> CudaModel::Impl::DecodeIndexerQuery(const IndexerWeights& w,
                                                           const Tensor& qr, const TensorView& cos,
                                                           const TensorView& sin,
                                                           kc::GemmHandle& handle) {
  const int64_t ih = config.index_n_heads, id = config.index_head_dim, n = num_tokens;
  Tensor iq = Dev(DType::kBF16, {n, ih, id});
  V4RL_RETURN_IF_ERROR(kc::Gemm(handle, qr.view(), w.wq_b.view(), iq.view().Reshape({n, ih * id})));
  V4RL_RETURN_IF_ERROR(kc::ApplyRope(iq.view(), cos, sin, /*inverse=*/false));
  V4RL_RETURN_IF_ERROR(IndexerFp4(iq.view().Reshape({n * ih, id})));
  return iq;
}

absl::Status CudaModel::Impl::AttentionDecode(const AttentionWeights& w, AttentionType type,
                                              const TensorView& x, const TensorView& out) {
  DecodeStepState& st = *decode;
  if (st.table != nullptr) return AttentionDecodeGraph(w, type, x, out);
  const int64_t heads = config.num_heads, dim = config.head_dim, n = num_tokens;
  const int64_t window = config.sliding_window;
  const bool sliding = type == AttentionType::kSliding;
  const TensorView cos = st.cos(type), sin = st.sin(type);
  V4RL_ASSIGN_OR_RETURN(const DecodeQueryKv qkv, DecodeQueryAndKv(w, type, x));
  const AttentionProjections& p = qkv.projections;
  const Tensor& qr = qkv.qr;
  const Tensor& q = qkv.q;
  const TensorView kv_rows = qkv.kv.view();
  profile.Mark("attn.proj");

  // New entries; for CSA the indexer's keys and picks.
  const bool compressed = !sliding;
  const bool csa = type == AttentionType::kCompressedSparse;
  // Single-token spans go through the batched decode kernels (one launch for all of them).
  const bool batched = st.options->batched_decode && BatchedDecodeKernelsFit(config);
  auto one_token = [&](const StepSpan& s) { return batched && s.count == 1; };
  const int64_t ratio = compressed ? config.CompressRatio(type) : 0;
  if (compressed) {
    V4RL_RETURN_IF_ERROR(CompressAppend(*this, st, w.compressor, p.comp, ratio, csa, false));
    profile.Mark("attn.compress");
  }
  std::vector<TensorView> picks(st.spans.size());
  Tensor picks_storage, workspace, decode_storage;
  if (csa) {
    V4RL_RETURN_IF_ERROR(
        CompressAppend(*this, st, w.indexer.compressor, p.index, ratio, true, true));
    profile.Mark("attn.index_compress");
    const std::vector<TensorView>& replays = st.options->index_replay;
    if (static_cast<size_t>(st.layer) < replays.size() && replays[st.layer].data != nullptr) {
      const TensorView replay = replays[st.layer];
      if (replay.dtype != DType::kI32 || !replay.is_contiguous() || replay.rank != 2 ||
          replay.shape[0] != n) {
        return absl::InvalidArgumentError(
            absl::StrFormat("index_replay[%d] must be contiguous i32 [%d, k], got %s", st.layer, n,
                            replay.DebugString()));
      }
      int64_t unused = 0;
      V4RL_ASSIGN_OR_RETURN(picks_storage, Upload(Tensor::CopyOf(replay), DType::kI32, &unused));
      for (size_t i = 0; i < st.spans.size(); ++i) {
        picks[i] =
            picks_storage.view().Slice(0, st.spans[i].row, st.spans[i].row + st.spans[i].count);
      }
    } else {
      const int64_t ih = config.index_n_heads, id = config.index_head_dim;
      V4RL_ASSIGN_OR_RETURN(const Tensor iq, DecodeIndexerQuery(w.indexer, qr, cos, sin, *gemm));
      const Tensor& head_weights = p.index_weights;  // scaled by ih^-0.5
      // Single-token spans: scores of every sequence in one launch, then one selection.
      std::vector<kc::DecodeIndexerItem> items;
      std::vector<size_t> item_spans;
      int64_t ld = 0;
      for (size_t i = 0; i < st.spans.size(); ++i) {
        if (one_token(st.spans[i])) {
          ld = std::max(ld, (st.spans[i].position + 1) / ratio);
        }
      }
      Tensor decode_scores, decode_picks;
      if (ld > 0) {
        decode_scores = Dev(DType::kF32, {static_cast<int64_t>(st.spans.size()), ld});
        for (size_t i = 0; i < st.spans.size(); ++i) {
          const StepSpan& s = st.spans[i];
          if (!one_token(s)) continue;
          kc::DecodeIndexerItem item;
          item.q = Ptr(iq.view(), s.row);
          item.weights = reinterpret_cast<const float*>(Ptr(head_weights.view(), s.row));
          item.keys = s.sequence->layers[st.layer].index_keys.data;
          item.scores = decode_scores.data<float>() + static_cast<int64_t>(items.size()) * ld;
          item.num_keys = (s.position + 1) / ratio;
          items.push_back(item);
          item_spans.push_back(i);
        }
        const int64_t rows = static_cast<int64_t>(items.size());
        const int64_t k = std::min(config.index_topk, ld);
        decode_picks = Dev(DType::kI32, {rows, k});
        V4RL_RETURN_IF_ERROR(kc::DecodeIndexerScores(
            items, ih, id, ld, static_cast<float>(1.0 / std::sqrt(static_cast<double>(id)))));
        V4RL_RETURN_IF_ERROR(kc::IndexerSelect(decode_scores.view().Slice(0, 0, rows),
                                               /*q_pos0=*/ld * ratio, ratio, decode_picks.view()));
        for (size_t r = 0; r < item_spans.size(); ++r) {
          picks[item_spans[r]] = decode_picks.view().Slice(0, r, r + 1);
        }
      }
      decode_storage = decode_picks;
      int64_t total = 0, work = 1;
      std::vector<int64_t> offsets(st.spans.size()), topks(st.spans.size());
      for (size_t i = 0; i < st.spans.size(); ++i) {
        const StepSpan& s = st.spans[i];
        if (one_token(s)) continue;
        const int64_t entries = (s.position + s.count) / ratio;
        topks[i] = std::min(config.index_topk, entries);
        offsets[i] = total;
        total += s.count * topks[i];
        const int64_t chunk = IndexerQueryChunk(st.options->indexer_q_chunk, s.count, ih, entries);
        if (topks[i] > 0) {
          work = std::max(work, kc::IndexerTopKWorkspaceFloats(chunk, ih, entries));
        }
      }
      picks_storage = Dev(DType::kI32, {std::max<int64_t>(total, 1)});
      workspace = Dev(DType::kF32, {work});
      for (size_t i = 0; i < st.spans.size(); ++i) {
        const StepSpan& s = st.spans[i];
        if (one_token(s) || topks[i] == 0) continue;
        const int64_t entries = (s.position + s.count) / ratio;
        picks[i] = picks_storage.view()
                       .Slice(0, offsets[i], offsets[i] + s.count * topks[i])
                       .Reshape({s.count, topks[i]});
        kc::IndexerTopKArgs args;
        args.q = iq.view().Slice(0, s.row, s.row + s.count);
        args.weights = head_weights.view().Slice(0, s.row, s.row + s.count);
        args.keys = s.sequence->layers[st.layer].index_keys.Slice(0, 0, entries);
        args.topk_idx = picks[i];
        args.workspace = workspace.view();
        args.q_pos0 = s.position;
        args.ratio = ratio;
        args.score_scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(id)));
        args.q_chunk = IndexerQueryChunk(st.options->indexer_q_chunk, s.count, ih, entries);
        V4RL_RETURN_IF_ERROR(kc::IndexerTopK(*gemm, args));
      }
    }
  }

  if (csa) profile.Mark("attn.indexer");
  // Each sequence's raw rows in position order: the cached positions the first new token's
  // window reaches (from the ring), then the new rows.
  const Tensor attn = Dev(DType::kBF16, {n, heads, dim});
  std::vector<kc::DecodeAttentionItem> items;
  for (size_t i = 0; i < st.spans.size(); ++i) {
    const StepSpan& s = st.spans[i];
    if (!one_token(s)) continue;
    const LayerState& state = s.sequence->layers[st.layer];
    kc::DecodeAttentionItem item;
    item.q = Ptr(q.view(), s.row);
    item.ring = state.ring.data;
    item.own_kv = Ptr(kv_rows, s.row);
    item.out = Ptr(attn.view(), s.row);
    item.position = s.position;
    const int64_t entries = compressed ? (s.position + 1) / ratio : 0;
    if (entries > 0) {
      item.comp = state.entries.data;
      item.num_comp = entries;
      if (csa) {
        item.comp_idx = picks[i].data_as<const int32_t>();
        item.comp_topk = picks[i].shape[1];
      }
    }
    items.push_back(item);
  }
  V4RL_RETURN_IF_ERROR(
      kc::DecodeAttention(items, w.sink.data<float>(), heads, dim, window,
                          static_cast<float>(1.0 / std::sqrt(static_cast<double>(dim)))));
  profile.Mark("attn.decode_kernel");
  std::vector<int64_t> row_offsets(st.spans.size()), cached(st.spans.size());
  int64_t total_rows = 0;
  for (size_t i = 0; i < st.spans.size(); ++i) {
    if (one_token(st.spans[i])) continue;
    cached[i] = std::min(st.spans[i].position, window - 1);
    row_offsets[i] = total_rows;
    total_rows += cached[i] + st.spans[i].count;
  }
  const Tensor rows = Dev(DType::kBF16, {std::max<int64_t>(total_rows, 1), dim});
  const int64_t row_bytes = dim * 2;
  std::vector<kc::RowCopy> copies;
  for (size_t i = 0; i < st.spans.size(); ++i) {
    const StepSpan& s = st.spans[i];
    if (one_token(s)) continue;
    const TensorView ring = s.sequence->layers[st.layer].ring;
    int64_t p = s.position - cached[i], dst = row_offsets[i];
    while (p < s.position) {  // at most two runs (the ring wraps once)
      const int64_t slot = p % window, run = std::min(s.position - p, window - slot);
      copies.push_back({Ptr(ring, slot), Ptr(rows.view(), dst), run * row_bytes});
      p += run;
      dst += run;
    }
    copies.push_back({Ptr(kv_rows, s.row), Ptr(rows.view(), dst), s.count * row_bytes});
  }
  V4RL_RETURN_IF_ERROR(kc::BatchCopy(copies));
  for (size_t i = 0; i < st.spans.size(); ++i) {
    const StepSpan& s = st.spans[i];
    if (one_token(s)) continue;
    const LayerState& state = s.sequence->layers[st.layer];
    kc::SparseAttentionArgs args;
    args.q = q.view().Slice(0, s.row, s.row + s.count);
    args.kv = rows.view().Slice(0, row_offsets[i], row_offsets[i] + cached[i] + s.count);
    args.sink = w.sink.view();
    args.out = attn.view().Slice(0, s.row, s.row + s.count);
    args.q_pos0 = s.position;
    args.kv_pos0 = s.position - cached[i];
    args.window = window;
    args.scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(dim)));
    const int64_t entries = compressed ? (s.position + s.count) / ratio : 0;
    if (entries > 0) {
      args.comp_kv = state.entries.Slice(0, 0, entries);
      if (csa) {
        args.comp_idx = picks[i];
      } else {
        args.comp_ratio = ratio;
      }
    }
    V4RL_RETURN_IF_ERROR(kc::SparseAttention(args));
  }
  profile.Mark("attn.prefill_kernels");
  // Ring update after the reads: the last `window` new rows take their slots.
  copies.clear();
  for (const StepSpan& s : st.spans) {
    const TensorView ring = s.sequence->layers[st.layer].ring;
    int64_t p = s.position + std::max<int64_t>(0, s.count - window);
    const int64_t end = s.position + s.count;
    while (p < end) {
      const int64_t slot = p % window, run = std::min(end - p, window - slot);
      copies.push_back({Ptr(kv_rows, s.row + p - s.position), Ptr(ring, slot), run * row_bytes});
      p += run;
    }
  }
  V4RL_RETURN_IF_ERROR(kc::BatchCopy(copies));
  V4RL_RETURN_IF_ERROR(kc::ApplyRope(attn.view(), cos, sin, /*inverse=*/true));
  profile.Mark("attn.ring_rope");
  return OutputProjection(w, attn, out);
}

}  // namespace v4rl::model
