// CudaModel::Impl::AttentionDecodeGraph: the attention of a CudaDecoder step whose inputs are all
// single tokens, in the form a CUDA graph can record (model/decode_cuda.h, kernels/cuda/graph.h):
// the same kernels and arithmetic as AttentionDecode's batched path (attention_decode_cuda.cc),
// but every position-dependent choice — which compressor window a token completes, where its
// K=V row lands in the ring, each item of the decode kernels — is made on the device from the
// step's positions and the per-sequence state table (kernels/cuda/decode_graph.h), and every
// size from the step's position bound, so one recording serves the later steps of its bucket.
#include <algorithm>
#include <cmath>
#include <functional>
#include <vector>

#include "core/status.h"
#include "kernels/cuda/decode_attention.h"
#include "kernels/cuda/decode_graph.h"
#include "kernels/cuda/elementwise.h"
#include "kernels/cuda/graph.h"
#include "kernels/cuda/indexer.h"
#include "model/decode_cuda_state.h"

namespace v4rl::model {
namespace cuda_internal {
namespace {

// The step's new compressor rows into the states; the windows they complete become entries
// (pooled on the device for every row, normalised, rotated at their window's first position,
// quantised, then stored for the rows that completed one). The append also writes the entries'
// RoPE rows (the bits of RopeTableAt at their positions, which the launch-by-launch path uses),
// saving a table launch per compressor.
absl::Status CompressAppendOnDevice(CudaModel::Impl& m, const DecodeStepState& st,
                                    const kc::DecodeRowState* table, const CompressorWeights& w,
                                    const CompressorRows& rows, int64_t ratio, bool overlap,
                                    bool indexer) {
  const int64_t n = rows.kv.size(0);
  const int64_t dim = overlap ? rows.kv.size(1) / 2 : rows.kv.size(1);
  const int64_t half = m.config.rope_head_dim / 2;
  const Tensor entries = Dev(DType::kBF16, {n, dim});
  const Tensor cos = Dev(DType::kF32, {n, half});
  const Tensor sin = Dev(DType::kF32, {n, half});
  V4RL_RETURN_IF_ERROR(kc::DecodeCompressAppend(
      table, indexer, st.positions.view(), rows.kv.view(), rows.score.view(), ratio, overlap,
      entries.view(), /*entry_positions=*/TensorView(), m.compress_rope.inv_freq.view(), cos.view(),
      sin.view()));
  V4RL_RETURN_IF_ERROR(kc::RmsNormRope(entries.view(), w.norm.view(), m.eps(), cos.view(),
                                       sin.view(), 1, entries.view()));
  V4RL_RETURN_IF_ERROR(indexer ? m.IndexerFp4(entries.view()) : m.KvQat(entries.view()));
  return kc::DecodeCompressCommit(table, indexer, st.positions.view(), entries.view(), ratio);
}

}  // namespace
}  // namespace cuda_internal

absl::Status CudaModel::Impl::AttentionDecodeGraph(const AttentionWeights& w, AttentionType type,
                                                   const TensorView& x, const TensorView& out) {
  DecodeStepState& st = *decode;
  const int64_t heads = config.num_heads, dim = config.head_dim, n = num_tokens;
  const int64_t window = config.sliding_window;
  const bool sliding = type == AttentionType::kSliding;
  const bool csa = type == AttentionType::kCompressedSparse;
  const int64_t ratio = sliding ? 0 : config.CompressRatio(type);
  const kc::DecodeRowState* table = st.table + st.layer * n;
  const TensorView cos = st.cos(type), sin = st.sin(type);
  V4RL_ASSIGN_OR_RETURN(DecodeQueryKv qkv, DecodeProjections(w, type, x));
  const AttentionProjections& p = qkv.projections;

  // Up to three chains that read the projections and write nothing another reads, as parallel
  // branches of the graph (kc::RunConcurrently): the queries and the K=V row; the compressor's
  // new entries; for CSA the indexer's new keys, then its queries' scores over every key and the
  // picks (at long context the longest chain: the others run beside it).
  Tensor picks;
  std::vector<std::function<absl::Status()>> chains;
  chains.push_back([&] { return DecodeQueryRows(w, type, &qkv); });
  if (!sliding) {
    chains.push_back([&] {
      return CompressAppendOnDevice(*this, st, table, w.compressor, p.comp, ratio, csa, false);
    });
  }
  if (csa) {
    chains.push_back([&]() -> absl::Status {
      V4RL_RETURN_IF_ERROR(CompressAppendOnDevice(*this, st, table, w.indexer.compressor, p.index,
                                                  ratio, true, true));
      const int64_t ih = config.index_n_heads, id = config.index_head_dim;
      V4RL_ASSIGN_OR_RETURN(const Tensor iq,
                            DecodeIndexerQuery(w.indexer, qkv.qr, cos, sin, *side_gemm));
      // Scores over the bound's ld entries a row (-inf past a row's own; IndexerSelect ranks them
      // last and attention skips picks past its entries).
      const int64_t ld = st.position_bound / ratio;
      const Tensor scores = Dev(DType::kF32, {n, ld});
      const Tensor items =
          Dev(DType::kU8, {n * static_cast<int64_t>(sizeof(kc::DecodeIndexerItem))});
      auto* indexer_items = static_cast<kc::DecodeIndexerItem*>(items.view().data);
      V4RL_RETURN_IF_ERROR(kc::BuildDecodeIndexerItems(table, st.positions.view(), iq.view(),
                                                       p.index_weights.view(), scores.view(), ratio,
                                                       indexer_items));
      const float score_scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(id)));
      V4RL_RETURN_IF_ERROR(
          kc::DecodeIndexerScoresOnDevice(indexer_items, n, ih, id, ld, score_scale));
      picks = Dev(DType::kI32, {n, std::min(config.index_topk, ld)});
      return kc::IndexerSelect(scores.view(), /*q_pos0=*/ld * ratio, ratio, picks.view());
    });
  }
  V4RL_RETURN_IF_ERROR(kc::RunConcurrently(chains));
  const Tensor& q = qkv.q;
  const TensorView kv_rows = qkv.kv.view();

  // Every row's K=V row into its ring and its item in one launch (the attention never reads the
  // slot of the row's own position: decode_graph.h), then the attention of every row over its
  // ring, own row and entries.
  const Tensor attn = Dev(DType::kBF16, {n, heads, dim});
  const Tensor items = Dev(DType::kU8, {n * static_cast<int64_t>(sizeof(kc::DecodeAttentionItem))});
  auto* attention_items = static_cast<kc::DecodeAttentionItem*>(items.view().data);
  V4RL_RETURN_IF_ERROR(kc::DecodeRingWriteAndAttentionItems(
      table, st.positions.view(), q.view(), kv_rows, attn.view(), window, ratio,
      csa ? picks.view() : TensorView(), attention_items));
  const int64_t comp_keys = sliding ? 0 : csa ? picks.size(1) : st.position_bound / ratio;
  const int64_t max_keys = std::min(st.position_bound, window) + comp_keys;
  V4RL_RETURN_IF_ERROR(kc::DecodeAttentionOnDevice(
      attention_items, n, max_keys, w.sink.data<float>(), heads, dim, window,
      static_cast<float>(1.0 / std::sqrt(static_cast<double>(dim)))));
  V4RL_RETURN_IF_ERROR(kc::ApplyRope(attn.view(), cos, sin, /*inverse=*/true));
  return OutputProjection(w, attn, out);
}

}  // namespace v4rl::model
