// CudaBackward::Forward: the fp32 `reference` forward on the GPU, the device twin of
// model/forward.cc and the modules it calls (mhc.cc, attention.cc, compressor.cc, indexer.cc,
// moe.cc), op for op in the same order, saving the same activations as device tensors for
// CudaBackward::Backward. Every GEMM is an f32 cuBLAS GEMM (Run::Forward); the RoPE tables are
// the CPU's (RopeTable::Make, uploaded), so rotations use the same angles bit for bit.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "absl/strings/str_format.h"
#include "core/status.h"
#include "kernels/cuda/attention.h"
#include "kernels/cuda/compressor.h"
#include "kernels/cuda/elementwise.h"
#include "kernels/cuda/indexer.h"
#include "kernels/cuda/mhc.h"
#include "kernels/cuda/model_forward_misc.h"
#include "kernels/cuda/moe.h"
#include "kernels/plan/moe_dispatch.h"
#include "model/backward_cuda_impl.h"
#include "model/forward_inputs.h"

namespace v4rl::model {
namespace {

using core::DType;
using core::Tensor;
using core::TensorView;
using cuda_reference::DeviceRopeTables;
using cuda_reference::Run;
namespace kc = kernels::cuda;

// Queries scored per indexer GEMM: bounds the [chunk · heads, Nc] f32 dot products.
constexpr int64_t kIndexerQueryChunk = 256;

// model/mhc.cc NormalizeStreams + the mixes GEMM: streams [N, n, H] -> normed [N, n·H],
// mixes [N, M] with fn [M, n·H]. Only products read normed (here and the backward's weight
// gradient): the norm writes it in the products' dtype (bf16 under bf16 products, the same
// values as a bf16 copy of the f32 result, without the copy).
void StreamMixes(Run& run, const ModelConfig& config, const TensorView& streams, const Tensor& fn,
                 Tensor* normed, Tensor* mixes) {
  const int64_t num_tokens = streams.shape[0];
  const int64_t width = config.hc_mult * config.hidden_size;
  *normed = Run::New(run.product_dtype(), {num_tokens, width});
  run.Do([&] {
    return kc::RmsNorm(streams.Reshape({num_tokens, width}), TensorView(),
                       static_cast<float>(config.rms_norm_eps), normed->view());
  });
  *mixes = run.New({num_tokens, fn.size(0)});
  run.Forward(normed->view(), fn.view(), mixes->view());
}

// model/mhc.cc MhcPreForward. streams: [N, n, H] device, in Run::stream_dtype().
void MhcPre(Run& run, const MhcWeights& w, const ModelConfig& config, const TensorView& streams,
            MhcActivations* acts) {
  const int64_t num_tokens = streams.shape[0], n = config.hc_mult;
  StreamMixes(run, config, streams, w.fn, &acts->normed, &acts->mixes);
  acts->pre = run.New({num_tokens, n});
  acts->post = run.New({num_tokens, n});
  acts->comb = run.New({num_tokens, n, n});
  run.Do([&] {
    return kc::MhcCoefficients(acts->mixes.view(), w.base.view(), w.scale.view(),
                               config.hc_sinkhorn_iters, static_cast<float>(config.hc_eps),
                               acts->pre.view(), acts->post.view(), acts->comb.view());
  });
  acts->collapsed = run.New({num_tokens, config.hidden_size});
  run.Do([&] { return kc::MhcCollapse(streams, acts->pre.view(), acts->collapsed.view()); });
}

// model/compressor.cc. x: [B·T, H] device, f32 (bf16 under bf16 products: only products read it).
void Compressor(Run& run, const CompressorWeights& w, int64_t ratio, bool overlap,
                const RopeTable& rope, float eps, int64_t batch, int64_t seq_len,
                const TensorView& x, CompressorActivations* acts) {
  const int64_t num_tokens = batch * seq_len;
  const int64_t width = w.wkv.size(0);
  const int64_t entry_dim = overlap ? width / 2 : width;
  const int64_t num_entries = seq_len / ratio;

  // Values and gate scores for every token; the gate gets the bias of its slot in the window.
  acts->kv = run.New({num_tokens, width});
  acts->score = run.New({num_tokens, width});
  run.Forward(x, w.wkv.view(), acts->kv.view());
  run.Forward(x, w.wgate.view(), acts->score.view());
  run.Do([&] {
    return kc::AddPositionBias(acts->score.view(), w.ape.view().Reshape({ratio, width}), seq_len);
  });

  acts->pooled = run.New({batch, num_entries, entry_dim});
  acts->entries = run.New({batch, num_entries, entry_dim});
  if (num_entries == 0) return;
  // Pool the complete windows of each sequence.
  for (int64_t b = 0; b < batch; ++b) {
    const int64_t first = b * seq_len, last = first + num_entries * ratio;
    run.Do([&] {
      return kc::CompressPool(acts->kv.view().Slice(0, first, last),
                              acts->score.view().Slice(0, first, last), ratio, overlap,
                              /*first_entry=*/0, acts->pooled.view().Select(0, b));
    });
  }
  // Normalise, then rotate entry w at position w · ratio.
  run.Do(
      [&] { return kc::RmsNorm(acts->pooled.view(), w.norm.view(), eps, acts->entries.view()); });
  Tensor cos, sin;
  DeviceRopeTables(run, rope, 0, ratio, num_entries, &cos, &sin);
  for (int64_t b = 0; b < batch; ++b) {
    run.Do([&] {
      return kc::ApplyRope(acts->entries.view().Select(0, b).Reshape({num_entries, 1, entry_dim}),
                           cos.view(), sin.view(), /*inverse=*/false);
    });
  }
}

// model/indexer.cc. x: [B·T, H]; qr: [B·T, q_lora_rank]; cos, sin: the rope table of positions
// 0 .. T - 1.
void Indexer(Run& run, const IndexerWeights& w, const ModelConfig& config, const RopeTable& rope,
             const Tensor& cos, const Tensor& sin, int64_t batch, int64_t seq_len,
             const TensorView& x, const TensorView& qr, IndexerActivations* acts,
             const TensorView& replay_topk) {
  const int64_t num_tokens = batch * seq_len;
  const int64_t heads = config.index_n_heads, dim = config.index_head_dim;
  const int64_t ratio = config.csa_compress_ratio;
  Compressor(run, w.compressor, ratio, /*overlap=*/true, rope,
             static_cast<float>(config.rms_norm_eps), batch, seq_len, x, &acts->keys);
  const int64_t num_entries = acts->keys.entries.size(1);

  // Queries from the q latent, rotated at their positions.
  acts->q = run.New({num_tokens, heads, dim});
  run.Forward(qr, w.wq_b.view(), acts->q.view().Reshape({num_tokens, heads * dim}));
  for (int64_t b = 0; b < batch; ++b) {
    run.Do([&] {
      return kc::ApplyRope(acts->q.view().Slice(0, b * seq_len, (b + 1) * seq_len), cos.view(),
                           sin.view(), /*inverse=*/false);
    });
  }

  // Per-head weights scaled by heads^-0.5 (the GEMM's alpha: one rounding of the f32 dot
  // product times the scale, as the CPU's multiply after its Linear).
  acts->weights = run.New({num_tokens, heads});
  run.Forward(x, w.weights_proj.view(), acts->weights.view(),
              static_cast<float>(1.0 / std::sqrt(static_cast<double>(heads))));

  if (replay_topk.data != nullptr) {  // index replay (checked by Forward): the given picks
    acts->topk = run.Up(Tensor::CopyOf(replay_topk));
    return;
  }
  const int64_t topk = std::min(config.index_topk, num_entries);
  acts->topk = Run::New(DType::kI32, {batch, seq_len, topk});
  if (topk == 0) return;
  // Scores per chunk of queries: f32 dot products with every entry, the head-weighted ReLU sum,
  // then the CPU's selection (ascending ids, -1 padding).
  const float score_scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(dim)));
  const int64_t chunk = std::min(kIndexerQueryChunk, seq_len);
  Tensor dots = run.New({chunk * heads, num_entries});
  Tensor scores = run.New({chunk, num_entries});
  for (int64_t b = 0; b < batch; ++b) {
    const TensorView keys = acts->keys.entries.view().Select(0, b);
    for (int64_t c0 = 0; c0 < seq_len; c0 += chunk) {
      const int64_t rows = std::min(chunk, seq_len - c0);
      const int64_t first = b * seq_len + c0;
      const TensorView chunk_dots = dots.view().Slice(0, 0, rows * heads);
      const TensorView chunk_scores = scores.view().Slice(0, 0, rows);
      run.Forward(acts->q.view().Slice(0, first, first + rows).Reshape({rows * heads, dim}), keys,
                  chunk_dots);
      run.Do([&] {
        return kc::IndexerHeadScores(chunk_dots, acts->weights.view().Slice(0, first, first + rows),
                                     score_scale, chunk_scores);
      });
      run.Do([&] {
        return kc::IndexerSelect(chunk_scores, /*q_pos0=*/c0, ratio,
                                 acts->topk.view().Select(0, b).Slice(0, c0, c0 + rows));
      });
    }
  }
}

// model/attention.cc. x: [B·T, H] device, f32 (bf16 under bf16 products: only products read
// it); out: [B·T, H] f32 device.
void Attention(Run& run, const AttentionWeights& w, AttentionType type, const ModelConfig& config,
               const RopeTable& rope, int64_t batch, int64_t seq_len, const TensorView& x,
               AttentionActivations* acts, const TensorView& out,
               const TensorView& replay_index_topk) {
  const int64_t num_tokens = batch * seq_len;
  const int64_t heads = config.num_heads, dim = config.head_dim;
  const float eps = static_cast<float>(config.rms_norm_eps);
  Tensor cos, sin;
  DeviceRopeTables(run, rope, 0, 1, seq_len, &cos, &sin);
  auto rotate_each_sequence = [&](const Tensor& t, bool inverse) {
    for (int64_t b = 0; b < batch; ++b) {
      run.Do([&] {
        return kc::ApplyRope(t.view().Slice(0, b * seq_len, (b + 1) * seq_len), cos.view(),
                             sin.view(), inverse);
      });
    }
  };

  // x as every product of this layer reads it (one bf16 copy under bf16 products).
  Tensor x_copy;
  const TensorView x_product = run.ProductRows(x, &x_copy);

  // Query path: low-rank latent, normalised; per-head unweighted RMSNorm; RoPE.
  acts->qr_raw = run.New({num_tokens, config.q_lora_rank});
  run.Forward(x_product, w.wq_a.view(), acts->qr_raw.view());
  // Only products read qr (wq_b here and in the indexer, wq_b's gradient): in their dtype.
  acts->qr = Run::New(run.product_dtype(), {num_tokens, config.q_lora_rank});
  run.Do([&] { return kc::RmsNorm(acts->qr_raw.view(), w.q_norm.view(), eps, acts->qr.view()); });
  // q before its per-head norm is saved: the backward's norm gradient reads it (the CPU
  // recomputes it there instead).
  acts->q_raw = run.New({num_tokens, heads * dim});
  run.Forward(acts->qr.view(), w.wq_b.view(), acts->q_raw.view());
  // Under bf16 products only the attention's products read q and kv, as bf16 copies of the
  // normalised, rotated f32 values: with 8-wide rows one RmsNormRope launch a sequence writes those
  // bf16 values directly (kAfterRotation: the same bits, without the f32 tensor, the rotation's
  // pass over it and the copy); else RmsNorm into f32, ApplyRope, and the copy below.
  const bool fused_norm_rope =
      run.bf16_products() && dim % 8 == 0 && (dim - 2 * cos.size(1)) % 8 == 0;
  // x [num_tokens · rows_per_token, dim] normalised (weight may be empty) and rotated into a new
  // [num_tokens, rows_per_token, dim] tensor.
  auto norm_rope = [&](const TensorView& x_rows, const TensorView& weight, int64_t rows_per_token) {
    auto aligned = [](const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; };
    if (!fused_norm_rope || !aligned(x_rows.data) ||
        (weight.data != nullptr && !aligned(weight.data))) {
      Tensor out = run.New({num_tokens, rows_per_token, dim});
      run.Do([&] { return kc::RmsNorm(x_rows, weight, eps, out.view()); });
      rotate_each_sequence(out, /*inverse=*/false);
      return out;
    }
    Tensor out = Run::New(DType::kBF16, {num_tokens, rows_per_token, dim});
    const TensorView out_rows = out.view().Reshape({num_tokens * rows_per_token, dim});
    const int64_t rows = seq_len * rows_per_token;
    for (int64_t b = 0; b < batch; ++b) {
      run.Do([&] {
        return kc::RmsNormRope(x_rows.Slice(0, b * rows, (b + 1) * rows), weight, eps, cos.view(),
                               sin.view(), rows_per_token,
                               out_rows.Slice(0, b * rows, (b + 1) * rows),
                               kc::RopeRounding::kAfterRotation);
      });
    }
    return out;
  };
  acts->q = norm_rope(acts->q_raw.view().Reshape({num_tokens * heads, dim}), TensorView(), heads);

  // The single K=V head.
  acts->kv_raw = run.New({num_tokens, dim});
  run.Forward(x_product, w.wkv.view(), acts->kv_raw.view());
  acts->kv = norm_rope(acts->kv_raw.view(), w.kv_norm.view(), 1);
  acts->kv.mutable_view() = acts->kv.view().Reshape({num_tokens, dim});

  run.Mark("fwd.attn.proj");
  // Compressed entries (and, for CSA, the indexer's picks).
  const bool compressed = type != AttentionType::kSliding;
  if (compressed) {
    Compressor(run, w.compressor, config.CompressRatio(type),
               type == AttentionType::kCompressedSparse, rope, eps, batch, seq_len, x_product,
               &acts->compressor);
    run.Mark("fwd.attn.compressor");
  }
  if (type == AttentionType::kCompressedSparse) {
    Indexer(run, w.indexer, config, rope, cos, sin, batch, seq_len, x_product, acts->qr.view(),
            &acts->indexer, replay_index_topk);
    run.Mark("fwd.attn.indexer");
  }

  // Sparse attention over window ∪ compressed keys, one sequence at a time. With bf16 GEMM math
  // its two products run on tensor cores too: q, kv and the compressed entries go in as bf16
  // copies, which replace the f32 originals in the saved activations (only the attention's
  // products read them, here and in the backward); output and lse in f32.
  acts->attn = run.New({num_tokens, heads, dim});
  acts->lse = run.New({num_tokens, heads});
  const bool has_entries = compressed && acts->compressor.entries.size(1) > 0;
  acts->q = run.ProductOperand(acts->q);
  acts->kv = run.ProductOperand(acts->kv);
  if (has_entries) acts->compressor.entries = run.ProductOperand(acts->compressor.entries);
  const Tensor& q_in = acts->q;
  const Tensor& kv_in = acts->kv;
  const Tensor entries_in = has_entries ? acts->compressor.entries : Tensor();
  for (int64_t b = 0; b < batch; ++b) {
    const int64_t first = b * seq_len, last = (b + 1) * seq_len;
    kc::SparseAttentionArgs args;
    args.q = q_in.view().Slice(0, first, last);
    args.kv = kv_in.view().Slice(0, first, last);
    args.sink = w.sink.view();
    args.out = acts->attn.view().Slice(0, first, last);
    args.lse = acts->lse.view().Slice(0, first, last);
    args.window = config.sliding_window;
    args.scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(dim)));
    if (has_entries) {
      args.comp_kv = entries_in.view().Select(0, b);
      if (type == AttentionType::kCompressedSparse) {
        args.comp_idx = acts->indexer.topk.view().Select(0, b);
      } else {
        args.comp_ratio = config.CompressRatio(type);
      }
    }
    run.Do([&] { return kc::SparseAttention(args); });
  }
  run.Mark("fwd.attn.core");

  // Undo the values' rotation at the query position. Only the output projection's products read
  // o (here and its weight gradient): under bf16 products with 8-wide rows one RopeCopy a
  // sequence writes the bf16 values of the rotated f32 copy (the same bits, without the f32 copy,
  // the rotation's pass over it and the products' bf16 copies in both passes).
  if (fused_norm_rope) {
    acts->o = Run::New(DType::kBF16, {num_tokens, heads, dim});
    for (int64_t b = 0; b < batch; ++b) {
      run.Do([&] {
        return kc::RopeCopy(acts->attn.view().Slice(0, b * seq_len, (b + 1) * seq_len), cos.view(),
                            sin.view(), /*inverse=*/true,
                            acts->o.view().Slice(0, b * seq_len, (b + 1) * seq_len));
      });
    }
  } else {
    acts->o = run.New({num_tokens, heads, dim});
    run.Do([&] { return kc::Copy(acts->attn.view(), acts->o.view()); });
    rotate_each_sequence(acts->o, /*inverse=*/true);
  }

  // Grouped output projection: group g maps its heads' nh·D/G values to o_lora_rank.
  const int64_t groups = config.o_groups;
  const int64_t group_in = heads * dim / groups;
  const int64_t rank = config.o_lora_rank;
  acts->u = run.New({num_tokens, groups * rank});
  const TensorView o_groups = acts->o.view().Reshape({num_tokens, groups, group_in});
  const TensorView w_groups = w.wo_a.view().Reshape({groups, rank, group_in});
  const TensorView u_groups = acts->u.view().Reshape({num_tokens, groups, rank});
  for (int64_t g = 0; g < groups; ++g) {
    run.Forward(o_groups.Select(1, g), w_groups.Select(0, g), u_groups.Select(1, g));
  }
  run.Forward(acts->u.view(), w.wo_b.view(), out);
  run.Mark("fwd.attn.output");
}

// model/moe.cc MoeForward (with RouteTokens). x: [N, H] device, f32 (bf16 under bf16 products);
// token_ids: [N] i32 device; replay: [N, k] i32 CPU ids or an empty view; out: [N, H] f32 device.
// *routed gets the ids used ([N, k] i32 device, acts->topk_idx).
void Moe(Run& run, const MoeWeights& w, MlpType type, const ModelConfig& config,
         const TensorView& x, const Tensor& token_ids, const TensorView& replay,
         MoeActivations* acts, const TensorView& out, Tensor* routed) {
  const int64_t num_tokens = x.shape[0];
  const int64_t hidden = config.hidden_size, inter = config.moe_intermediate_size;
  const int64_t k = config.num_experts_per_tok, experts = config.num_routed_experts;
  const float limit = static_cast<float>(config.swiglu_limit);

  // x as the router's, the experts' and the shared expert's products read it (one bf16 copy
  // under bf16 products).
  Tensor x_copy;
  const TensorView x_product = run.ProductRows(x, &x_copy);

  // Router: logits, sqrt(softplus) scores, selection (replayed, hash or top-k), weights.
  acts->logits = run.New({num_tokens, experts});
  run.Forward(x_product, w.gate.view(), acts->logits.view());
  acts->scores = run.New({num_tokens, experts});
  acts->topk_idx = Run::New(DType::kI32, {num_tokens, k});
  acts->topk_weight = run.New({num_tokens, k});
  Tensor replay_ids;
  if (replay.data != nullptr) replay_ids = run.Up(Tensor::CopyOf(replay));
  kc::RouteArgs route;
  route.logits = acts->logits.view();
  route.bias = w.bias.view();
  route.tid2eid = w.tid2eid.view();
  route.token_ids = token_ids.view();
  route.replay_idx = replay_ids.view();
  route.scores = acts->scores.view();
  route.topk_idx = acts->topk_idx.view();
  route.topk_weight = acts->topk_weight.view();
  route.hash = type == MlpType::kHashMoe;
  route.route_scale = static_cast<float>(config.routed_scaling_factor);
  run.Do([&] { return kc::RouteTopK(route); });

  // Group the picks by expert on the device (kc::BuildMoePlanOnDevice: the CPU's plan, without the
  // host round trip that would drain the launch queue every layer). Every buffer holds N·k rows,
  // one a pick; a dropped pick (an expert id outside [0, E)) leaves a row past the real picks,
  // zeros in and ignored out. The ids reach the host once, after the whole pass (*routed is
  // their device tensor).
  *routed = acts->topk_idx;
  const int64_t num_picks = num_tokens * k;
  acts->device_offsets = Run::New(DType::kI32, {experts + 1});
  acts->device_slots = Run::New(DType::kI32, {num_picks});
  acts->device_pick_of_slot = Run::New(DType::kI32, {num_picks});
  const Tensor& slots = acts->device_slots;
  const Tensor& pick_of_slot = acts->device_pick_of_slot;
  const TensorView device_offsets = acts->device_offsets.view();
  run.Do([&] {
    return kc::BuildMoePlanOnDevice(acts->topk_idx.view(), experts, device_offsets, slots.view(),
                                    pick_of_slot.view());
  });
  // The picks' inputs in the products' dtype (bf16 under bf16 products: only products read them,
  // here and in the backward).
  acts->expert_x = Run::New(x_product.dtype, {num_picks, hidden});
  run.Do([&] { return kc::MoeGather(x_product, slots.view(), k, acts->expert_x.view()); });

  // Each expert on its contiguous block of picks: gate/up, clamped SwiGLU, down. An expert's
  // GEMMs are too small to fill the GPU, so they run on the BLAS lanes, several experts at once
  // (Run::ExpertsForward); the SwiGLU between the two waves covers every pick in one launch.
  acts->expert_gate = run.New({num_picks, inter});
  acts->expert_up = run.New({num_picks, inter});
  acts->expert_act = run.New({num_picks, inter});
  // With bf16 products the GEMMs read bf16: the picks' inputs as gathered, the weights' mirrors
  // (Run::ProductWeight).
  const Tensor& expert_x = acts->expert_x;
  const TensorView w1 = run.ProductWeight(w.w1.view()), w3 = run.ProductWeight(w.w3.view()),
                   w2 = run.ProductWeight(w.w2.view());
  std::vector<int64_t> host_offsets;  // fetched only for per-expert cuBLAS (Run::HostOffsets)
  run.ExpertsForward(expert_x.view(), w1, acts->expert_gate.view(), device_offsets, &host_offsets);
  run.ExpertsForward(expert_x.view(), w3, acts->expert_up.view(), device_offsets, &host_offsets);
  // The activation stays f32 for the backward's routing-weight step; under bf16 products the
  // down projection reads a bf16 copy the SwiGLU writes alongside (no second read of the f32).
  const Tensor expert_act =
      run.bf16_products() ? Run::New(DType::kBF16, {num_picks, inter}) : acts->expert_act;
  if (num_picks > 0) {
    run.Do([&] {
      return kc::SwiGluClamp(acts->expert_gate.view(), acts->expert_up.view(), limit,
                             acts->expert_act.view(),
                             run.bf16_products() ? expert_act.view() : TensorView());
    });
  }
  // The picks' outputs feed only the weighted combine below (the backward does not read them):
  // a temporary in the products' dtype, unweighted (the CPU saves expert_out weighted; this path
  // saves none and the combine applies the routing weights).
  const Tensor expert_out = Run::New(expert_act.dtype(), {num_picks, hidden});
  run.ExpertsForward(expert_act.view(), w2, expert_out.view(), device_offsets, &host_offsets);

  // Shared expert on every token.
  if (config.num_shared_experts > 0) {
    const int64_t shared = w.shared_w1.size(0);
    acts->shared_gate = run.New({num_tokens, shared});
    acts->shared_up = run.New({num_tokens, shared});
    // Only products read the activation (the down projection here, its weight gradient in the
    // backward): in their dtype, bf16 under bf16 products.
    acts->shared_act = run.ProductNew({num_tokens, shared});
    acts->shared_out = run.New({num_tokens, hidden});
    run.Forward(x_product, w.shared_w1.view(), acts->shared_gate.view());
    run.Forward(x_product, w.shared_w3.view(), acts->shared_up.view());
    run.Do([&] {
      return kc::SwiGluClamp(acts->shared_gate.view(), acts->shared_up.view(), limit,
                             acts->shared_act.view());
    });
    run.Forward(acts->shared_act.view(), w.shared_w2.view(), acts->shared_out.view());
  }

  // out = Σ_j weight_j · routed pick j (slot order) + shared.
  run.Do([&] {
    return kc::MoeCombine(expert_out.view(), pick_of_slot.view(), acts->topk_weight.view(),
                          acts->shared_out.defined() ? acts->shared_out.view() : TensorView(), out,
                          /*weighted=*/true);
  });
}

// model/forward.cc BlockForward. streams_in: [B·T, n, H] device in Run::stream_dtype() (bf16 under
// bf16 products, as the official code stores them; f32 otherwise); token_ids: [B·T] i32
// device; replay: [B·T, k] i32 CPU or empty; replay_index_topk: [B, T, k'] i32 CPU indexer
// picks or empty. Returns the block's output streams.
Tensor Block(Run& run, const LayerWeights& layer, const ModelConfig& config, const RopeTable& rope,
             int64_t batch, int64_t seq_len, const Tensor& streams_in, const Tensor& token_ids,
             const TensorView& replay, const TensorView& replay_index_topk, BlockActivations* acts,
             Tensor* routed) {
  const int64_t num_tokens = batch * seq_len;
  const int64_t hidden = config.hidden_size;
  const float eps = static_cast<float>(config.rms_norm_eps);
  acts->streams_in = streams_in;

  // Attention site: collapse, normalise, attend, expand + mix.
  MhcPre(run, layer.hc_attn, config, streams_in.view(), &acts->attn_hc);
  // attn_in and ffn_in feed only products (the layers' GEMMs and weight gradients, the MoE's
  // gather): written in the products' dtype, bf16 under bf16 products.
  acts->attn_in = Run::New(run.product_dtype(), {num_tokens, hidden});
  run.Do([&] {
    return kc::RmsNorm(acts->attn_hc.collapsed.view(), layer.attn_norm.view(), eps,
                       acts->attn_in.view());
  });
  acts->attn_out = run.New({num_tokens, hidden});
  run.Mark("fwd.mhc");
  Attention(run, layer.attn, layer.attention_type, config, rope, batch, seq_len,
            acts->attn_in.view(), &acts->attn, acts->attn_out.view(), replay_index_topk);
  acts->streams_mid = Run::New(run.stream_dtype(), streams_in.view().shape_vector());
  run.Do([&] {
    return kc::MhcPost(streams_in.view(), acts->attn_out.view(), acts->attn_hc.post.view(),
                       acts->attn_hc.comb.view(), acts->streams_mid.view());
  });

  // FFN site: collapse, normalise, MoE, expand + mix.
  MhcPre(run, layer.hc_ffn, config, acts->streams_mid.view(), &acts->ffn_hc);
  acts->ffn_in = Run::New(run.product_dtype(), {num_tokens, hidden});
  run.Do([&] {
    return kc::RmsNorm(acts->ffn_hc.collapsed.view(), layer.ffn_norm.view(), eps,
                       acts->ffn_in.view());
  });
  acts->ffn_out = run.New({num_tokens, hidden});
  run.Mark("fwd.mhc");
  Moe(run, layer.ffn, layer.mlp_type, config, acts->ffn_in.view(), token_ids, replay, &acts->moe,
      acts->ffn_out.view(), routed);
  run.Mark("fwd.moe");
  Tensor streams_out = Run::New(run.stream_dtype(), streams_in.view().shape_vector());
  run.Do([&] {
    return kc::MhcPost(acts->streams_mid.view(), acts->ffn_out.view(), acts->ffn_hc.post.view(),
                       acts->ffn_hc.comb.view(), streams_out.view());
  });
  return streams_out;
}

}  // namespace

absl::StatusOr<ForwardOutput> CudaBackward::Forward(const TensorView& input_ids,
                                                    const ForwardOptions& options) {
  const Model& model = *impl_->model;
  const ModelConfig& config = model.config;
  const ModelWeights& w = impl_->weights;
  V4RL_ASSIGN_OR_RETURN(const Tensor host_ids, TokenIds(input_ids, config.vocab_size, "input_ids"));
  const int64_t batch = input_ids.shape[0], seq_len = input_ids.shape[1];
  const int64_t num_tokens = batch * seq_len;
  const int64_t n = config.hc_mult, hidden = config.hidden_size;
  const int64_t k = config.num_experts_per_tok;
  V4RL_RETURN_IF_ERROR(CheckRoutingReplay(options.routing_replay, config, batch, seq_len));
  V4RL_RETURN_IF_ERROR(CheckIndexReplay(options.index_replay, config, batch, seq_len));
  Run run(impl_->blas.get(), &impl_->bf16_mirrors);
  const Tensor ids = run.Up(host_ids);

  // Every residual stream starts as a copy of the token embedding.
  Tensor streams = Run::New(run.stream_dtype(), {num_tokens, n, hidden});
  run.Do([&] { return kc::EmbedStreams(w.embed.view(), ids.view(), streams.view()); });

  ForwardOutput output;
  for (int64_t l = 0; l < config.num_layers; ++l) {
    const LayerWeights& layer = w.layers[l];
    BlockActivations acts;
    const TensorView replay = options.routing_replay.empty()
                                  ? TensorView()
                                  : options.routing_replay[l].Reshape({num_tokens, k});
    Tensor routed;
    streams = Block(
        run, layer, config, model.rope(layer.attention_type), batch, seq_len, streams, ids, replay,
        options.index_replay.empty() ? TensorView() : options.index_replay[l], &acts, &routed);
    V4RL_RETURN_IF_ERROR(run.status());
    if (options.return_routing) output.routed_experts.push_back(routed);
    if (options.save_activations) {
      output.blocks.push_back(std::move(acts));
    } else if (options.save_block_inputs) {
      output.blocks.emplace_back().streams_in = acts.streams_in;
    }
  }

  // hc_head collapse (model/mhc.cc HcHeadForward), model norm, head.
  HcHeadActivations head_acts;
  StreamMixes(run, config, streams.view(), w.hc_head.fn, &head_acts.normed, &head_acts.mixes);
  head_acts.pre = run.New({num_tokens, n});
  run.Do([&] {
    return kc::HcHeadCoefficients(head_acts.mixes.view(), w.hc_head.base.view(),
                                  w.hc_head.scale.view(), static_cast<float>(config.hc_eps),
                                  head_acts.pre.view());
  });
  head_acts.collapsed = run.New({num_tokens, hidden});
  run.Do([&] {
    return kc::MhcCollapse(streams.view(), head_acts.pre.view(), head_acts.collapsed.view());
  });
  Tensor hidden_state = run.New({num_tokens, hidden});
  run.Do([&] {
    return kc::RmsNorm(head_acts.collapsed.view(), w.norm.view(),
                       static_cast<float>(config.rms_norm_eps), hidden_state.view());
  });
  Tensor logits = run.New({num_tokens, config.vocab_size});
  run.Forward(hidden_state.view(), w.head.view(), logits.view());
  run.Mark("fwd.head");
  run.Report("train forward", num_tokens);
  V4RL_RETURN_IF_ERROR(run.status());
  // The routed ids to the host ([B, T, k] i32) now that every launch is queued: the first copy
  // waits for the pass, not a layer at a time.
  for (Tensor& routed : output.routed_experts) {
    Tensor host = Tensor::Empty(DType::kI32, {batch, seq_len, k});
    V4RL_RETURN_IF_ERROR(kc::Copy(routed.view(), host.view().Reshape({num_tokens, k})));
    routed = std::move(host);
  }
  V4RL_RETURN_IF_ERROR(kc::Synchronize());
  FinishForwardOutput(config, options, batch, seq_len, logits, hidden_state, streams,
                      std::move(head_acts), &output);
  return output;
}

}  // namespace v4rl::model
