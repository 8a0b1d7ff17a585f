#include "model/forward_cuda.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include "absl/strings/str_format.h"
#include "core/status.h"
#include "kernels/cuda/attention.h"
#include "kernels/cuda/column_split.h"
#include "kernels/cuda/compressor.h"
#include "kernels/cuda/elementwise.h"
#include "kernels/cuda/graph.h"
#include "kernels/cuda/grouped_gemm.h"
#include "kernels/cuda/indexer.h"
#include "kernels/cuda/mhc.h"
#include "kernels/cuda/moe.h"
#include "kernels/cuda/quant_sim.h"
#include "kernels/plan/moe_dispatch.h"
#include "model/forward_cuda_impl.h"

namespace v4rl::model {
namespace kc = kernels::cuda;
using core::DType;
using core::Tensor;
using core::TensorView;
using namespace cuda_internal;

namespace {

// One weight of a fused group (FusedLayerWeights): its host tensor, where its device view goes,
// and its field name for errors.
struct FusedPart {
  std::string field;
  const Tensor* host;
  Tensor* device;
};

// Uploads the row concatenation of `parts` (each [rows_i, K] on the host, any dtype Upload
// converts) as one [Σ rows_i, K] bf16 device tensor, rounded as each part's own upload would be,
// and points every part's device tensor at its rows (views sharing the buffer).
absl::Status UploadFused(const std::vector<FusedPart>& parts, Tensor* fused, int64_t* bytes) {
  const Tensor& first = *parts.front().host;
  const int64_t k = first.defined() && first.rank() == 2 ? first.size(1) : 0;
  int64_t rows = 0;
  for (const FusedPart& part : parts) {
    const Tensor& host = *part.host;
    if (k == 0 || !host.defined() || host.rank() != 2 || host.size(1) != k) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "%s must be a [rows, %d] matrix (fused with %s), got %s", part.field, k,
          parts.front().field, host.defined() ? host.view().DebugString() : "no tensor"));
    }
    rows += host.size(0);
  }
  Tensor concat = Tensor::Empty(DType::kF32, {rows, k});
  int64_t row = 0;
  for (const FusedPart& part : parts) {
    const Tensor f32 = core::ToFloat32(part.host->view());
    std::memcpy(concat.data<float>() + row * k, f32.data<float>(), f32.numel() * sizeof(float));
    row += f32.size(0);
  }
  V4RL_ASSIGN_OR_RETURN(*fused, Upload(concat, DType::kBF16, bytes));
  row = 0;
  for (const FusedPart& part : parts) {
    const int64_t count = part.host->size(0);
    *part.device = *fused;
    part.device->mutable_view() = fused->view().Slice(0, row, row + count);
    row += count;
  }
  return absl::OkStatus();
}

}  // namespace

CudaModel::CudaModel(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
CudaModel::~CudaModel() = default;
int64_t CudaModel::weight_bytes() const { return impl_->weight_bytes; }

absl::Status CudaModel::Impl::UploadWeights(const ModelWeights& host) {
  int64_t* bytes = &weight_bytes;
  auto bf16 = [&](const Tensor& t, Tensor* out) -> absl::Status {
    V4RL_ASSIGN_OR_RETURN(*out, Upload(t, DType::kBF16, bytes));
    return absl::OkStatus();
  };
  auto f32 = [&](const Tensor& t, Tensor* out) -> absl::Status {
    V4RL_ASSIGN_OR_RETURN(*out, Upload(t, DType::kF32, bytes));
    return absl::OkStatus();
  };
  // fn in the split bf16 form (kernels/cuda/mhc.h): the mixes run as one GEMM per site.
  auto mhc = [&](const auto& from, auto* to) -> absl::Status {
    V4RL_ASSIGN_OR_RETURN(to->fn, Upload(kc::SplitMhcFn(from.fn.view()), DType::kBF16, bytes));
    V4RL_RETURN_IF_ERROR(f32(from.base, &to->base));
    return f32(from.scale, &to->scale);
  };
  // wkv and wgate travel in the layer's fused attention groups.
  auto compressor = [&](const CompressorWeights& from, CompressorWeights* to) -> absl::Status {
    V4RL_RETURN_IF_ERROR(f32(from.ape, &to->ape));
    return f32(from.norm, &to->norm);
  };
  V4RL_RETURN_IF_ERROR(bf16(host.embed, &weights.embed));
  V4RL_RETURN_IF_ERROR(bf16(host.head, &weights.head));
  V4RL_RETURN_IF_ERROR(f32(host.norm, &weights.norm));
  V4RL_RETURN_IF_ERROR(mhc(host.hc_head, &weights.hc_head));
  weights.layers.resize(host.layers.size());
  fused.assign(host.layers.size(), {});
  for (size_t l = 0; l < host.layers.size(); ++l) {
    const LayerWeights& from = host.layers[l];
    LayerWeights& to = weights.layers[l];
    FusedLayerWeights& f = fused[l];
    to.attention_type = from.attention_type;
    to.mlp_type = from.mlp_type;
    V4RL_RETURN_IF_ERROR(f32(from.attn_norm, &to.attn_norm));
    V4RL_RETURN_IF_ERROR(f32(from.ffn_norm, &to.ffn_norm));
    V4RL_RETURN_IF_ERROR(mhc(from.hc_attn, &to.hc_attn));
    V4RL_RETURN_IF_ERROR(mhc(from.hc_ffn, &to.hc_ffn));
    const AttentionWeights& a = from.attn;
    AttentionWeights& b = to.attn;
    // The products of the attention input, grouped by the GEMM output dtype (FusedLayerWeights).
    const std::string at = absl::StrFormat("layers[%d].attn.", l);
    std::vector<FusedPart> attn_bf16 = {{at + "wq_a", &a.wq_a, &b.wq_a},
                                        {at + "wkv", &a.wkv, &b.wkv}};
    std::vector<FusedPart> attn_f32;
    if (from.attention_type != AttentionType::kSliding) {
      attn_bf16.push_back({at + "compressor.wkv", &a.compressor.wkv, &b.compressor.wkv});
      attn_f32.push_back({at + "compressor.wgate", &a.compressor.wgate, &b.compressor.wgate});
    }
    if (from.attention_type == AttentionType::kCompressedSparse) {
      const IndexerWeights& i = a.indexer;
      IndexerWeights& j = b.indexer;
      attn_bf16.push_back({at + "indexer.compressor.wkv", &i.compressor.wkv, &j.compressor.wkv});
      attn_f32.push_back(
          {at + "indexer.compressor.wgate", &i.compressor.wgate, &j.compressor.wgate});
      attn_f32.push_back({at + "indexer.weights_proj", &i.weights_proj, &j.weights_proj});
    }
    V4RL_RETURN_IF_ERROR(UploadFused(attn_bf16, &f.attn_bf16, bytes));
    if (!attn_f32.empty()) V4RL_RETURN_IF_ERROR(UploadFused(attn_f32, &f.attn_f32, bytes));
    V4RL_RETURN_IF_ERROR(f32(a.q_norm, &b.q_norm));
    V4RL_RETURN_IF_ERROR(bf16(a.wq_b, &b.wq_b));
    V4RL_RETURN_IF_ERROR(f32(a.kv_norm, &b.kv_norm));
    V4RL_RETURN_IF_ERROR(bf16(a.wo_a, &b.wo_a));
    V4RL_RETURN_IF_ERROR(bf16(a.wo_b, &b.wo_b));
    V4RL_RETURN_IF_ERROR(f32(a.sink, &b.sink));
    V4RL_RETURN_IF_ERROR(compressor(a.compressor, &b.compressor));
    V4RL_RETURN_IF_ERROR(bf16(a.indexer.wq_b, &b.indexer.wq_b));
    V4RL_RETURN_IF_ERROR(compressor(a.indexer.compressor, &b.indexer.compressor));
    const MoeWeights& m = from.ffn;
    MoeWeights& n = to.ffn;
    V4RL_RETURN_IF_ERROR(bf16(m.gate, &n.gate));
    V4RL_RETURN_IF_ERROR(f32(m.bias, &n.bias));
    V4RL_ASSIGN_OR_RETURN(n.tid2eid, Upload(m.tid2eid, DType::kI32, bytes));
    V4RL_RETURN_IF_ERROR(bf16(m.w1, &n.w1));
    V4RL_RETURN_IF_ERROR(bf16(m.w3, &n.w3));
    V4RL_RETURN_IF_ERROR(bf16(m.w2, &n.w2));
    if (m.shared_w1.defined() || m.shared_w3.defined()) {  // [gate | up] from one GEMM
      const std::string ffn = absl::StrFormat("layers[%d].ffn.", l);
      V4RL_RETURN_IF_ERROR(UploadFused({{ffn + "shared_w1", &m.shared_w1, &n.shared_w1},
                                        {ffn + "shared_w3", &m.shared_w3, &n.shared_w3}},
                                       &f.shared_w13, bytes));
    }
    V4RL_RETURN_IF_ERROR(bf16(m.shared_w2, &n.shared_w2));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<CudaModel>> CudaModel::Create(const Model& model) {
  if (kc::DeviceCount() == 0) return absl::FailedPreconditionError("no CUDA device");
  auto impl = std::make_unique<Impl>();
  impl->config = model.config;
  V4RL_RETURN_IF_ERROR(impl->UploadWeights(model.weights));
  const int64_t half = model.config.rope_head_dim / 2;
  int64_t unused = 0;
  V4RL_ASSIGN_OR_RETURN(
      impl->main_rope.inv_freq,
      Upload(Tensor::FromFloats({half}, model.main_rope.inv_freq()), DType::kF32, &unused));
  V4RL_ASSIGN_OR_RETURN(
      impl->compress_rope.inv_freq,
      Upload(Tensor::FromFloats({half}, model.compress_rope.inv_freq()), DType::kF32, &unused));
  V4RL_ASSIGN_OR_RETURN(impl->gemm, kc::GemmHandle::Create());
  V4RL_ASSIGN_OR_RETURN(impl->side_gemm, kc::GemmHandle::Create());
  return std::unique_ptr<CudaModel>(new CudaModel(std::move(impl)));
}

absl::StatusOr<Tensor> CudaModel::Impl::FinalHidden(const Tensor& streams) {
  const Tensor pre = Dev(DType::kF32, {num_tokens, config.hc_mult});
  const Tensor x = Dev(DType::kBF16, {num_tokens, config.hidden_size});
  kc::MhcPreArgs head;
  head.streams = streams.view();
  head.fn = weights.hc_head.fn.view();
  head.fn_split = true;
  head.gemm = gemm.get();
  head.base = weights.hc_head.base.view();
  head.scale = weights.hc_head.scale.view();
  head.pre = pre.view();
  head.collapsed = x.view();
  head.norm_weight = weights.norm.view();  // the model norm, fused
  head.norm_eps = eps();
  head.hc_eps = static_cast<float>(config.hc_eps);
  V4RL_RETURN_IF_ERROR(kc::HcHeadPre(head));
  return x;
}

absl::StatusOr<TensorView> CudaModel::Impl::Fp8Operand(const TensorView& x, Tensor* storage) {
  if (!options.fp8_simulation) return x;
  *storage = Dev(x.dtype, x.shape_vector());
  V4RL_RETURN_IF_ERROR(kc::CopyOnDevice(x, storage->view()));
  V4RL_RETURN_IF_ERROR(Fp8OperandInPlace(storage->view()));
  return storage->view();
}

absl::Status CudaModel::Impl::Fp8OperandInPlace(const TensorView& x) {
  if (!options.fp8_simulation) return absl::OkStatus();
  return kc::BlockQuantDequant(x, x.shape[x.rank - 1], 128, kc::SimFormat::kFp8E4M3);
}

absl::Status CudaModel::Impl::KvQat(const TensorView& rows) {
  if (!options.fp8_simulation) return absl::OkStatus();
  return kc::BlockQuantDequant(rows, config.head_dim - config.rope_head_dim, 64,
                               kc::SimFormat::kFp8E4M3);
}

absl::Status CudaModel::Impl::WeightedFp8ExpertActivations(const TensorView& act,
                                                           const Tensor& pick_of_slot,
                                                           const Tensor& weight) {
  if (!options.fp8_simulation) return absl::OkStatus();
  V4RL_RETURN_IF_ERROR(kc::MoeScalePicks(act, pick_of_slot.view(), weight.view()));
  return Fp8OperandInPlace(act);
}

absl::Status CudaModel::Impl::IndexerFp4(const TensorView& rows) {
  if (!options.fp8_simulation) return absl::OkStatus();
  V4RL_RETURN_IF_ERROR(kc::Hadamard(rows));
  return kc::BlockQuantDequant(rows, rows.shape[rows.rank - 1], 32, kc::SimFormat::kFp4E2M1);
}

absl::Status CudaModel::Impl::RotateSequences(const TensorView& x, const RopeTables& rope,
                                              bool inverse) {
  for (int64_t b = 0; b < batch; ++b) {
    V4RL_RETURN_IF_ERROR(kc::ApplyRope(x.Slice(0, b * seq_len, (b + 1) * seq_len), rope.cos.view(),
                                       rope.sin.view(), inverse));
  }
  return absl::OkStatus();
}

absl::StatusOr<AttentionProjections> CudaModel::Impl::ProjectAttentionInput(
    const AttentionWeights& w, AttentionType type, const TensorView& x, const TensorView& xq,
    const TensorView& positions) {
  const FusedLayerWeights& f = fused[layer_index];
  const int64_t n = num_tokens, q_cols = w.wq_a.size(0), kv_cols = w.wkv.size(0);
  AttentionProjections p;
  p.bf16_out = Dev(DType::kBF16, {n, f.attn_bf16.size(0)});
  const TensorView out = p.bf16_out.view();
  if (!options.fp8_simulation) {
    V4RL_RETURN_IF_ERROR(kc::Gemm(*gemm, x, f.attn_bf16.view(), out));
  } else {  // wq_a and wkv read the quantised copy, the compressors x itself
    const int64_t split = q_cols + kv_cols, end = f.attn_bf16.size(0);
    V4RL_RETURN_IF_ERROR(
        kc::Gemm(*gemm, xq, f.attn_bf16.view().Slice(0, 0, split), out.Slice(1, 0, split)));
    if (end > split) {
      V4RL_RETURN_IF_ERROR(
          kc::Gemm(*gemm, x, f.attn_bf16.view().Slice(0, split, end), out.Slice(1, split, end)));
    }
  }
  p.qr = out.Slice(1, 0, q_cols);
  p.kv = out.Slice(1, q_cols, q_cols + kv_cols);
  if (type == AttentionType::kSliding) return p;
  // Compressor rows, gate scores and head weights out of the fused outputs into buffers of
  // their own (the pooling and the indexer take contiguous rows), bias and scale applied.
  const Tensor scores = Dev(DType::kF32, {n, f.attn_f32.size(0)});
  V4RL_RETURN_IF_ERROR(kc::Gemm(*gemm, x, f.attn_f32.view(), scores.view()));
  std::vector<kc::ColumnSlice> slices;
  int64_t bf16_col = q_cols + kv_cols, f32_col = 0;
  auto rows = [&](const CompressorWeights& c, CompressorRows* to) {
    const int64_t width = c.wkv.size(0);
    to->kv = Dev(DType::kBF16, {n, width});
    to->score = Dev(DType::kF32, {n, width});
    slices.push_back({out.Slice(1, bf16_col, bf16_col + width), to->kv.view(), TensorView()});
    slices.push_back(
        {scores.view().Slice(1, f32_col, f32_col + width), to->score.view(), c.ape.view()});
    bf16_col += width;
    f32_col += width;
  };
  rows(w.compressor, &p.comp);
  if (type == AttentionType::kCompressedSparse) {
    rows(w.indexer.compressor, &p.index);
    const int64_t heads = w.indexer.weights_proj.size(0);
    p.index_weights = Dev(DType::kF32, {n, heads});
    slices.push_back({scores.view().Slice(1, f32_col, f32_col + heads), p.index_weights.view(),
                      TensorView(),
                      static_cast<float>(1.0 / std::sqrt(static_cast<double>(heads)))});
  }
  V4RL_RETURN_IF_ERROR(kc::SplitColumns(slices, positions, seq_len));
  return p;
}

absl::StatusOr<Tensor> CudaModel::Impl::Compress(const CompressorWeights& w, int64_t ratio,
                                                 bool overlap, const RopeTables& rope,
                                                 const CompressorRows& rows) {
  const int64_t width = rows.kv.size(1);
  const int64_t entry_dim = overlap ? width / 2 : width;
  const int64_t num_entries = seq_len / ratio;
  const Tensor& kv = rows.kv;
  const Tensor& score = rows.score;
  Tensor entries = Dev(DType::kBF16, {batch, num_entries, entry_dim});
  if (num_entries == 0) return entries;
  // Pool each sequence's complete windows, normalise, rotate entry w at position w · ratio.
  for (int64_t b = 0; b < batch; ++b) {
    const int64_t first = b * seq_len, last = first + num_entries * ratio;
    V4RL_RETURN_IF_ERROR(kc::CompressPool(kv.view().Slice(0, first, last),
                                          score.view().Slice(0, first, last), ratio, overlap,
                                          /*first_entry=*/0, entries.view().Select(0, b)));
  }
  V4RL_RETURN_IF_ERROR(kc::RmsNorm(entries.view(), w.norm.view(), eps(), entries.view()));
  const int64_t half = config.rope_head_dim / 2;
  const Tensor cos = Dev(DType::kF32, {num_entries, half});
  const Tensor sin = Dev(DType::kF32, {num_entries, half});
  V4RL_RETURN_IF_ERROR(kc::RopeTableFill(rope.inv_freq.view(), 0, ratio, cos.view(), sin.view()));
  for (int64_t b = 0; b < batch; ++b) {
    V4RL_RETURN_IF_ERROR(kc::ApplyRope(
        entries.view().Select(0, b).Reshape({num_entries, 1, entry_dim}), cos.view(), sin.view(),
        /*inverse=*/false));
  }
  return entries;
}

absl::StatusOr<Tensor> CudaModel::Impl::IndexerTopK(const IndexerWeights& w, const RopeTables& rope,
                                                    const AttentionProjections& p,
                                                    const TensorView& qr) {
  const int64_t heads = config.index_n_heads, dim = config.index_head_dim;
  const int64_t ratio = config.csa_compress_ratio;
  V4RL_ASSIGN_OR_RETURN(const Tensor keys,
                        Compress(w.compressor, ratio, /*overlap=*/true, rope, p.index));
  const int64_t num_entries = keys.size(1);
  V4RL_RETURN_IF_ERROR(IndexerFp4(keys.view().Reshape({batch * num_entries, dim})));
  const int64_t topk = std::min(config.index_topk, num_entries);
  Tensor picks = Dev(DType::kI32, {batch, seq_len, topk});
  if (topk == 0) return picks;
  // Queries from the q latent, rotated; the head weights (scaled by heads^-0.5) come with p.
  const Tensor q = Dev(DType::kBF16, {num_tokens, heads, dim});
  V4RL_RETURN_IF_ERROR(
      kc::Gemm(*gemm, qr, w.wq_b.view(), q.view().Reshape({num_tokens, heads * dim})));
  V4RL_RETURN_IF_ERROR(RotateSequences(q.view(), rope, /*inverse=*/false));
  V4RL_RETURN_IF_ERROR(IndexerFp4(q.view().Reshape({num_tokens * heads, dim})));
  const Tensor& head_weights = p.index_weights;
  const int64_t chunk = IndexerQueryChunk(options.indexer_q_chunk, seq_len, heads, num_entries);
  const Tensor workspace =
      Dev(DType::kF32, {kc::IndexerTopKWorkspaceFloats(chunk, heads, num_entries)});
  for (int64_t b = 0; b < batch; ++b) {
    const int64_t first = b * seq_len, last = first + seq_len;
    kc::IndexerTopKArgs args;
    args.q = q.view().Slice(0, first, last);
    args.weights = head_weights.view().Slice(0, first, last);
    args.keys = keys.view().Select(0, b);
    args.topk_idx = picks.view().Select(0, b);
    args.workspace = workspace.view();
    args.q_pos0 = 0;
    args.ratio = ratio;
    args.score_scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(dim)));
    args.q_chunk = chunk;
    V4RL_RETURN_IF_ERROR(kc::IndexerTopK(*gemm, args));
  }
  return picks;
}

absl::Status CudaModel::Impl::Attention(const AttentionWeights& w, AttentionType type,
                                        const TensorView& x, const TensorView& out) {
  const int64_t heads = config.num_heads, dim = config.head_dim;
  const RopeTables& rope = this->rope(type);
  Tensor xq_storage;  // x as the FP8 GEMMs see it (the compressors read x itself)
  V4RL_ASSIGN_OR_RETURN(const TensorView xq, Fp8Operand(x, &xq_storage));
  V4RL_ASSIGN_OR_RETURN(const AttentionProjections p,
                        ProjectAttentionInput(w, type, x, xq, /*positions=*/TensorView()));
  // Query path: low-rank latent, normalised; per-head unweighted RMSNorm; RoPE.
  const Tensor qr = Dev(DType::kBF16, {num_tokens, config.q_lora_rank});
  V4RL_RETURN_IF_ERROR(kc::RmsNorm(p.qr, w.q_norm.view(), eps(), qr.view()));
  V4RL_RETURN_IF_ERROR(Fp8OperandInPlace(qr.view()));  // read by wq_b and the indexer's wq_b
  const Tensor q = Dev(DType::kBF16, {num_tokens, heads, dim});
  V4RL_RETURN_IF_ERROR(
      kc::Gemm(*gemm, qr.view(), w.wq_b.view(), q.view().Reshape({num_tokens, heads * dim})));
  V4RL_RETURN_IF_ERROR(kc::RmsNorm(q.view(), TensorView(), eps(), q.view()));
  V4RL_RETURN_IF_ERROR(RotateSequences(q.view(), rope, /*inverse=*/false));
  // The single K=V head.
  const Tensor kv = Dev(DType::kBF16, {num_tokens, 1, dim});
  V4RL_RETURN_IF_ERROR(
      kc::RmsNorm(p.kv, w.kv_norm.view(), eps(), kv.view().Reshape({num_tokens, dim})));
  V4RL_RETURN_IF_ERROR(RotateSequences(kv.view(), rope, /*inverse=*/false));
  V4RL_RETURN_IF_ERROR(KvQat(kv.view().Reshape({num_tokens, dim})));
  // Compressed entries and, for CSA, the indexer's picks.
  const bool compressed = type != AttentionType::kSliding;
  Tensor entries, picks;
  if (compressed) {
    V4RL_ASSIGN_OR_RETURN(entries,
                          Compress(w.compressor, config.CompressRatio(type),
                                   type == AttentionType::kCompressedSparse, rope, p.comp));
    V4RL_RETURN_IF_ERROR(KvQat(entries.view().Reshape({batch * entries.size(1), dim})));
  }
  if (type == AttentionType::kCompressedSparse) {
    if (layer_index < options.index_replay.size() &&
        options.index_replay[layer_index].data != nullptr) {
      const TensorView replay = options.index_replay[layer_index];
      if (replay.dtype != DType::kI32 || !replay.is_contiguous() || replay.rank != 3 ||
          replay.shape[0] != batch || replay.shape[1] != seq_len ||
          replay.shape[2] > entries.size(1)) {
        return absl::InvalidArgumentError(
            absl::StrFormat("index_replay[%d] must be contiguous i32 [%d, %d, <= %d], got %s",
                            layer_index, batch, seq_len, entries.size(1), replay.DebugString()));
      }
      int64_t unused = 0;
      V4RL_ASSIGN_OR_RETURN(picks, Upload(Tensor::CopyOf(replay), DType::kI32, &unused));
    } else {
      V4RL_ASSIGN_OR_RETURN(picks, IndexerTopK(w.indexer, rope, p, qr.view()));
    }
  }
  if (capture != nullptr && compressed) {
    V4RL_ASSIGN_OR_RETURN(capture->comp_entries, Download(entries.view()));
    if (picks.defined()) {
      capture->index_picks = Tensor::Empty(DType::kI32, picks.view().shape_vector());
      V4RL_RETURN_IF_ERROR(kc::Copy(picks.view(), capture->index_picks.view()));
    }
  }
  // Sparse attention over window ∪ compressed keys, one sequence at a time; then the values'
  // rotation is undone at the query position.
  const Tensor attn = Dev(DType::kBF16, {num_tokens, heads, dim});
  const TensorView kv_rows = kv.view().Reshape({num_tokens, dim});
  for (int64_t b = 0; b < batch; ++b) {
    const int64_t first = b * seq_len, last = first + seq_len;
    kc::SparseAttentionArgs args;
    args.q = q.view().Slice(0, first, last);
    args.kv = kv_rows.Slice(0, first, last);
    args.sink = w.sink.view();
    args.out = attn.view().Slice(0, first, last);
    args.window = config.sliding_window;
    args.scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(dim)));
    if (compressed && entries.size(1) > 0) {
      args.comp_kv = entries.view().Select(0, b);
      if (type == AttentionType::kCompressedSparse) {
        args.comp_idx = picks.view().Select(0, b);
      } else {
        args.comp_ratio = config.CompressRatio(type);
      }
    }
    V4RL_RETURN_IF_ERROR(kc::SparseAttention(args));
  }
  V4RL_RETURN_IF_ERROR(RotateSequences(attn.view(), rope, /*inverse=*/true));
  return OutputProjection(w, attn, out);
}

absl::Status CudaModel::Impl::OutputProjection(const AttentionWeights& w, const Tensor& attn,
                                               const TensorView& out) {
  const int64_t heads = config.num_heads, dim = config.head_dim;
  const int64_t groups = config.o_groups, rank = config.o_lora_rank;
  const int64_t group_in = heads * dim / groups;
  const Tensor u = Dev(DType::kBF16, {num_tokens, groups * rank});
  // Group g: u[:, g] = attn[:, g] · wo_a[g]ᵀ, every group in one batched GEMM over
  // [groups, num_tokens, ·] views of the token-major activations.
  const TensorView o_groups = attn.view().Reshape({num_tokens, groups, group_in}).Transpose(0, 1);
  const TensorView w_groups = w.wo_a.view().Reshape({groups, rank, group_in});
  const TensorView u_groups = u.view().Reshape({num_tokens, groups, rank}).Transpose(0, 1);
  V4RL_RETURN_IF_ERROR(kc::StridedBatchedGemm(*gemm, o_groups, w_groups, u_groups));
  V4RL_RETURN_IF_ERROR(Fp8OperandInPlace(u.view()));  // wo_a is bf16 officially, wo_b FP8
  return kc::Gemm(*gemm, u.view(), w.wo_b.view(), out);
}

absl::Status CudaModel::Impl::Moe(const MoeWeights& w, MlpType type, const TensorView& x,
                                  const TensorView& out) {
  Tensor xq_storage;  // x as the experts see it (the router reads x itself)
  V4RL_ASSIGN_OR_RETURN(const TensorView xq, Fp8Operand(x, &xq_storage));
  // The routing and routed experts beside the shared experts: parallel branches of a recorded
  // decode step (kc::RunConcurrently), one after the other elsewhere.
  RoutedExpertRows routed_rows;
  Tensor shared_out;
  V4RL_RETURN_IF_ERROR(kc::RunConcurrently({
      [&]() -> absl::Status {
        V4RL_ASSIGN_OR_RETURN(routed_rows, RoutedExperts(w, type, x, xq));
        return absl::OkStatus();
      },
      [&]() -> absl::Status {
        V4RL_ASSIGN_OR_RETURN(shared_out, SharedExperts(w, xq));
        return absl::OkStatus();
      },
  }));
  // With the FP8 simulation the weights were applied before the down projection.
  return kc::MoeCombine(routed_rows.expert_out.view(), routed_rows.pick_of_slot.view(),
                        routed_rows.weight.view(),
                        shared_out.defined() ? shared_out.view() : TensorView(), out,
                        /*weighted=*/!options.fp8_simulation);
}

absl::StatusOr<RoutedExpertRows> CudaModel::Impl::RoutedExperts(const MoeWeights& w, MlpType type,
                                                                const TensorView& x,
                                                                const TensorView& xq) {
  const int64_t experts = config.num_routed_experts, k = config.num_experts_per_tok;
  const int64_t hidden = config.hidden_size, inter = config.moe_intermediate_size;
  const float limit = static_cast<float>(config.swiglu_limit);
  // Router.
  const Tensor logits = Dev(DType::kF32, {num_tokens, experts});
  V4RL_RETURN_IF_ERROR(kc::Gemm(*gemm, x, w.gate.view(), logits.view()));
  const Tensor idx = Dev(DType::kI32, {num_tokens, k});
  RoutedExpertRows rows;
  rows.weight = Dev(DType::kF32, {num_tokens, k});
  kc::RouteArgs route;
  route.logits = logits.view();
  route.bias = w.bias.view();
  route.tid2eid = w.tid2eid.view();
  route.token_ids = token_ids.view();
  route.topk_idx = idx.view();
  route.topk_weight = rows.weight.view();
  route.hash = type == MlpType::kHashMoe;
  route.route_scale = static_cast<float>(config.routed_scaling_factor);
  Tensor replay;
  if (layer_index < options.routing_replay.size()) {
    const TensorView ids = options.routing_replay[layer_index];
    if (ids.dtype != DType::kI32 || !ids.is_contiguous() || !ids.SameShape({batch, seq_len, k})) {
      return absl::InvalidArgumentError(
          absl::StrFormat("routing_replay[%d] must be contiguous i32 [%d, %d, %d], got %s",
                          layer_index, batch, seq_len, k, ids.DebugString()));
    }
    for (int64_t i = 0; i < ids.numel(); ++i) {
      const int32_t id = ids.data_as<int32_t>()[i];
      if (id < 0 || id >= experts) {
        return absl::InvalidArgumentError(
            absl::StrFormat("routing_replay[%d] entry %d is expert %d, expected [0, %d)",
                            layer_index, i, id, experts));
      }
    }
    int64_t unused = 0;
    V4RL_ASSIGN_OR_RETURN(replay, Upload(Tensor::CopyOf(ids), DType::kI32, &unused));
    route.replay_idx = replay.view().Reshape({num_tokens, k});
  }
  V4RL_RETURN_IF_ERROR(kc::RouteTopK(route));
  if (options.device_moe_dispatch) {
    V4RL_RETURN_IF_ERROR(MoeDevicePlan(w, xq, idx, &rows));
    return rows;
  }
  // Dispatch plan on the host (the CPU's order), then gather, experts, combine on the device.
  Tensor host_idx = Tensor::Empty(DType::kI32, {num_tokens, k});
  V4RL_RETURN_IF_ERROR(kc::Copy(idx.view(), host_idx.view()));
  if (routed != nullptr) {
    Tensor ids = host_idx;
    ids.mutable_view() = ids.view().Reshape({batch, seq_len, k});
    routed->push_back(ids);
  }
  const kernels::plan::MoeDispatchPlan plan =
      kernels::plan::BuildMoeDispatchPlan(host_idx.data<int32_t>(), num_tokens, k, experts);
  const int64_t picks = static_cast<int64_t>(plan.slots.size());
  const Tensor slots = Dev(DType::kI32, {num_tokens * k});
  rows.pick_of_slot = Dev(DType::kI32, {num_tokens * k});
  V4RL_RETURN_IF_ERROR(kc::UploadMoePlan(plan, slots.view(), rows.pick_of_slot.view()));
  const Tensor xp = Dev(DType::kBF16, {picks, hidden});
  V4RL_RETURN_IF_ERROR(kc::MoeGather(xq, slots.view(), k, xp.view()));
  const Tensor gate = Dev(DType::kBF16, {picks, inter});
  const Tensor up = Dev(DType::kBF16, {picks, inter});
  V4RL_RETURN_IF_ERROR(
      kc::GroupedGemm(*gemm, xp.view(), w.w1.view(), plan.expert_offsets, gate.view()));
  V4RL_RETURN_IF_ERROR(
      kc::GroupedGemm(*gemm, xp.view(), w.w3.view(), plan.expert_offsets, up.view()));
  V4RL_RETURN_IF_ERROR(kc::SwiGluClamp(gate.view(), up.view(), limit, gate.view()));
  V4RL_RETURN_IF_ERROR(WeightedFp8ExpertActivations(gate.view(), rows.pick_of_slot, rows.weight));
  rows.expert_out = Dev(DType::kF32, {picks, hidden});
  V4RL_RETURN_IF_ERROR(kc::GroupedGemm(*gemm, gate.view(), w.w2.view(), plan.expert_offsets,
                                       rows.expert_out.view()));
  return rows;
}

absl::Status CudaModel::Impl::MoeDevicePlan(const MoeWeights& w, const TensorView& x,
                                            const Tensor& idx, RoutedExpertRows* rows) {
  const int64_t experts = config.num_routed_experts, k = config.num_experts_per_tok;
  const int64_t hidden = config.hidden_size, inter = config.moe_intermediate_size;
  const float limit = static_cast<float>(config.swiglu_limit);
  if (routed_on_device != nullptr) routed_on_device->push_back(idx);
  if (routed != nullptr) {  // a host copy only when asked (it waits for the device)
    Tensor ids = Tensor::Empty(DType::kI32, {batch, seq_len, k});
    V4RL_RETURN_IF_ERROR(kc::Copy(idx.view().Reshape({batch, seq_len, k}), ids.view()));
    routed->push_back(ids);
  }
  // Plan on the device; every buffer sized for N · k picks (rows past the real picks are zeros
  // in, ignored out).
  const int64_t slots_n = num_tokens * k;
  const Tensor offsets = Dev(DType::kI32, {experts + 1});
  const Tensor slots = Dev(DType::kI32, {slots_n});
  rows->pick_of_slot = Dev(DType::kI32, {slots_n});
  V4RL_RETURN_IF_ERROR(kc::BuildMoePlanOnDevice(idx.view(), experts, offsets.view(), slots.view(),
                                                rows->pick_of_slot.view()));
  const Tensor xp = Dev(DType::kBF16, {slots_n, hidden});
  V4RL_RETURN_IF_ERROR(kc::MoeGather(x, slots.view(), k, xp.view()));
  const Tensor gate = Dev(DType::kBF16, {slots_n, inter});
  // Gate, up and the clamped SwiGLU in one launch up to 32 rows an expert on average: on the H200
  // at the mid config it made decode steps 4% faster at batch 1 and ~1% at 64 (12 rows an expert)
  // but ~1.5% slower at 256 (48 rows an expert; its (I / 64, E) grid runs two waves where each of
  // the three calls' runs one), timed against the three calls in one call in session 10.
  constexpr int64_t kFusedSwiGluMaxRowsPerExpert = 32;
  if (inter % 128 == 0 && slots_n <= kFusedSwiGluMaxRowsPerExpert * experts &&
      kc::GroupedGemmSwiGluApplies(xp.view(), w.w1.view(), w.w3.view())) {
    // The bits of the three calls below wherever they take the wgmma kernel (I a multiple of
    // 128). Rows past offsets[E] stay unwritten instead of holding the SwiGLU of unwritten rows;
    // nothing reads them (the down projection and MoeScalePicks take the picks' rows, the FP8
    // quantisation works row by row).
    V4RL_RETURN_IF_ERROR(kc::GroupedGemmSwiGluDeviceOffsets(xp.view(), w.w1.view(), w.w3.view(),
                                                            offsets.view(), limit, gate.view()));
  } else {
    // Gate and up side by side in a recorded step: each grid's last wave leaves SMs idle that the
    // other's blocks take.
    const Tensor up = Dev(DType::kBF16, {slots_n, inter});
    V4RL_RETURN_IF_ERROR(kc::RunConcurrently({
        [&] {
          return kc::GroupedGemmDeviceOffsets(xp.view(), w.w1.view(), offsets.view(), gate.view());
        },
        [&] {
          return kc::GroupedGemmDeviceOffsets(xp.view(), w.w3.view(), offsets.view(), up.view());
        },
    }));
    V4RL_RETURN_IF_ERROR(kc::SwiGluClamp(gate.view(), up.view(), limit, gate.view()));
  }
  // The FP8 simulation's weighting and quantisation of the activation rows (in place, per row).
  V4RL_RETURN_IF_ERROR(WeightedFp8ExpertActivations(gate.view(), rows->pick_of_slot, rows->weight));
  rows->expert_out = Dev(DType::kF32, {slots_n, hidden});
  return kc::GroupedGemmDeviceOffsets(gate.view(), w.w2.view(), offsets.view(),
                                      rows->expert_out.view());
}

absl::StatusOr<Tensor> CudaModel::Impl::SharedExperts(const MoeWeights& w, const TensorView& x) {
  if (config.num_shared_experts == 0) return Tensor();
  const int64_t width = w.shared_w1.size(0);
  const float limit = static_cast<float>(config.swiglu_limit);
  // [gate | up] from one GEMM; the activation overwrites the gate columns in place.
  const Tensor gate_up = Dev(DType::kBF16, {num_tokens, 2 * width});
  V4RL_RETURN_IF_ERROR(
      kc::Gemm(*side_gemm, x, fused[layer_index].shared_w13.view(), gate_up.view()));
  const TensorView sg = gate_up.view().Slice(1, 0, width);
  const TensorView su = gate_up.view().Slice(1, width, 2 * width);
  V4RL_RETURN_IF_ERROR(kc::SwiGluClamp(sg, su, limit, sg));
  V4RL_RETURN_IF_ERROR(Fp8OperandInPlace(sg));
  Tensor shared_out = Dev(DType::kF32, {num_tokens, config.hidden_size});
  V4RL_RETURN_IF_ERROR(kc::Gemm(*side_gemm, sg, w.shared_w2.view(), shared_out.view()));
  return shared_out;
}

absl::StatusOr<Tensor> CudaModel::Impl::Block(const LayerWeights& layer, const Tensor& streams) {
  const int64_t n = config.hc_mult, hidden = config.hidden_size;
  auto site = [&](const MhcWeights& hc, const Tensor& in, const Tensor& norm, Tensor* pre,
                  Tensor* post, Tensor* comb, Tensor* x) -> absl::Status {
    *pre = Dev(DType::kF32, {num_tokens, n});
    *post = Dev(DType::kF32, {num_tokens, n});
    *comb = Dev(DType::kF32, {num_tokens, n, n});
    *x = Dev(DType::kBF16, {num_tokens, hidden});
    kc::MhcPreArgs args;
    args.streams = in.view();
    args.fn = hc.fn.view();
    args.fn_split = true;
    args.gemm = gemm.get();
    args.base = hc.base.view();
    args.scale = hc.scale.view();
    args.pre = pre->view();
    args.post = post->view();
    args.comb = comb->view();
    args.collapsed = x->view();
    args.norm_weight = norm.view();  // the site's norm, fused
    args.norm_eps = eps();
    args.hc_eps = static_cast<float>(config.hc_eps);
    args.sinkhorn_iters = config.hc_sinkhorn_iters;
    return kc::MhcPre(args);
  };
  capture = captures != nullptr ? &captures->emplace_back() : nullptr;
  // Attention site: collapse + norm, attend, expand + mix.
  Tensor pre, post, comb, x;
  profile.Mark("other");
  V4RL_RETURN_IF_ERROR(site(layer.hc_attn, streams, layer.attn_norm, &pre, &post, &comb, &x));
  profile.Mark("mhc");
  const Tensor attn_in = x;
  const Tensor attn_out = Dev(DType::kBF16, {num_tokens, hidden});
  V4RL_RETURN_IF_ERROR(
      decode != nullptr
          ? AttentionDecode(layer.attn, layer.attention_type, x.view(), attn_out.view())
          : Attention(layer.attn, layer.attention_type, x.view(), attn_out.view()));
  profile.Mark("attention");
  const Tensor mid = Dev(stream_dtype(), {num_tokens, n, hidden});
  V4RL_RETURN_IF_ERROR(
      kc::MhcPost(streams.view(), attn_out.view(), post.view(), comb.view(), mid.view()));
  // FFN site.
  V4RL_RETURN_IF_ERROR(site(layer.hc_ffn, mid, layer.ffn_norm, &pre, &post, &comb, &x));
  profile.Mark("mhc");
  const Tensor ffn_out = Dev(DType::kBF16, {num_tokens, hidden});
  V4RL_RETURN_IF_ERROR(Moe(layer.ffn, layer.mlp_type, x.view(), ffn_out.view()));
  profile.Mark("moe");
  Tensor out = Dev(stream_dtype(), {num_tokens, n, hidden});
  V4RL_RETURN_IF_ERROR(
      kc::MhcPost(mid.view(), ffn_out.view(), post.view(), comb.view(), out.view()));
  profile.Mark("mhc");
  if (capture != nullptr) {
    CudaBlockCapture& c = *capture;
    V4RL_ASSIGN_OR_RETURN(c.attn_in, Download(attn_in.view()));
    V4RL_ASSIGN_OR_RETURN(c.attn_out, Download(attn_out.view()));
    V4RL_ASSIGN_OR_RETURN(c.streams_mid, Download(mid.view()));
    V4RL_ASSIGN_OR_RETURN(c.ffn_in, Download(x.view()));
    V4RL_ASSIGN_OR_RETURN(c.ffn_out, Download(ffn_out.view()));
    V4RL_ASSIGN_OR_RETURN(c.streams_out, Download(out.view()));
  }
  return out;
}

absl::StatusOr<CudaForwardOutput> CudaModel::Forward(const TensorView& input_ids,
                                                     const CudaForwardOptions& options) {
  Impl& m = *impl_;
  const ModelConfig& config = m.config;
  if (input_ids.rank != 2 || (input_ids.dtype != DType::kI32 && input_ids.dtype != DType::kI64) ||
      input_ids.device != core::Device::kCpu || input_ids.shape[0] == 0 ||
      input_ids.shape[1] == 0) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "input_ids must be a non-empty CPU int32/int64 [batch, seq_len] tensor, got %s",
        input_ids.DebugString()));
  }
  m.batch = input_ids.shape[0];
  m.seq_len = input_ids.shape[1];
  m.num_tokens = m.batch * m.seq_len;
  m.options = options;
  Tensor ids = Tensor::Empty(DType::kI32, {m.num_tokens});
  for (int64_t b = 0; b < m.batch; ++b) {
    for (int64_t t = 0; t < m.seq_len; ++t) {
      const int64_t offset = b * input_ids.strides[0] + t * input_ids.strides[1];
      const int64_t id = input_ids.dtype == DType::kI64 ? input_ids.data_as<int64_t>()[offset]
                                                        : input_ids.data_as<int32_t>()[offset];
      if (id < 0 || id >= config.vocab_size) {
        return absl::InvalidArgumentError(
            absl::StrFormat("input_ids[%d, %d] = %d is outside the vocabulary [0, %d)", b, t, id,
                            config.vocab_size));
      }
      ids.data<int32_t>()[b * m.seq_len + t] = static_cast<int32_t>(id);
    }
  }
  int64_t unused = 0;
  V4RL_ASSIGN_OR_RETURN(m.token_ids, Upload(ids, DType::kI32, &unused));
  // RoPE tables of positions 0 .. T - 1 for both layer kinds.
  const int64_t half = config.rope_head_dim / 2;
  for (RopeTables* rope : {&m.main_rope, &m.compress_rope}) {
    rope->cos = Dev(DType::kF32, {m.seq_len, half});
    rope->sin = Dev(DType::kF32, {m.seq_len, half});
    V4RL_RETURN_IF_ERROR(
        kc::RopeTableFill(rope->inv_freq.view(), 0, 1, rope->cos.view(), rope->sin.view()));
  }
  CudaForwardOutput output;
  m.routed = options.return_routing ? &output.routed_experts : nullptr;
  m.profile.Start();
  m.captures = options.capture_blocks ? &output.blocks : nullptr;

  // Every residual stream starts as the token embedding.
  const int64_t n = config.hc_mult, hidden = config.hidden_size;
  Tensor streams = Dev(m.stream_dtype(), {m.num_tokens, n, hidden});
  V4RL_RETURN_IF_ERROR(
      kc::EmbedStreams(m.weights.embed.view(), m.token_ids.view(), streams.view()));
  if (!options.routing_replay.empty() && options.routing_replay.size() != m.weights.layers.size()) {
    return absl::InvalidArgumentError(absl::StrFormat("routing_replay has %d layers, expected %d",
                                                      options.routing_replay.size(),
                                                      m.weights.layers.size()));
  }
  for (m.layer_index = 0; m.layer_index < m.weights.layers.size(); ++m.layer_index) {
    V4RL_ASSIGN_OR_RETURN(streams, m.Block(m.weights.layers[m.layer_index], streams));
  }
  // hc_head collapse, model norm, head.
  V4RL_ASSIGN_OR_RETURN(const Tensor x, m.FinalHidden(streams));
  // All positions, or each sequence's last one (rows b·T + T - 1: a strided row view).
  const int64_t positions = options.last_position_logits ? 1 : m.seq_len;
  const TensorView head_in =
      options.last_position_logits
          ? x.view().Reshape({m.batch, m.seq_len, hidden}).Select(1, m.seq_len - 1)
          : x.view();
  const Tensor logits = Dev(DType::kF32, {m.batch * positions, config.vocab_size});
  V4RL_RETURN_IF_ERROR(kc::Gemm(*m.gemm, head_in, m.weights.head.view(), logits.view()));
  output.logits = Tensor::Empty(DType::kF32, {m.batch, positions, config.vocab_size});
  V4RL_RETURN_IF_ERROR(kc::Copy(logits.view().Reshape({m.batch, positions, config.vocab_size}),
                                output.logits.view()));
  V4RL_RETURN_IF_ERROR(kc::Synchronize());
  m.profile.Mark("head");
  m.profile.Report("forward", m.num_tokens);
  return output;
}

}  // namespace v4rl::model
