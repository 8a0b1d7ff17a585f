#include "model/backward_cuda.h"

#include <cmath>
#include <functional>
#include <utility>
#include <vector>

#include "absl/strings/str_format.h"
#include "core/status.h"
#include "kernels/cuda/attention_backward.h"
#include "kernels/cuda/blas.h"
#include "kernels/cuda/compressor_backward.h"
#include "kernels/cuda/device.h"
#include "kernels/cuda/elementwise_backward.h"
#include "kernels/cuda/expert_backward.h"
#include "kernels/cuda/grouped_gemm.h"
#include "kernels/cuda/linear_backward.h"
#include "kernels/cuda/mhc_backward.h"
#include "kernels/cuda/model_backward_misc.h"
#include "kernels/cuda/moe.h"
#include "kernels/cuda/token_losses.h"
#include "kernels/ops.h"
#include "model/backward_cuda_impl.h"
#include "model/params.h"

namespace v4rl::model {
namespace kc = kernels::cuda;
using core::DType;
using core::Tensor;
using core::TensorView;

// Routing weights are renormalised with transformers' epsilon (as model/moe_backward.cc).
constexpr float kRoutingDenomEps = 1e-20f;

namespace {

using cuda_reference::DeviceRopeTables;
using cuda_reference::Rows2;
using cuda_reference::Run;

// The mixes' weight gradient dfn += dmixesᵀ · normed, then the site's whole stream gradient
// (model/mhc_backward.cc: the expand's, the collapse's and the mixes' through the stream RMS) in
// one pass over the streams, written over dstreams (kc::MhcStreamsBackward; without dout and comb
// for hc_head). rms_inv: [N] f32, the stream RMS the expand's (or collapse's) backward stored.
void StreamsBackward(Run& run, const TensorView& streams, const TensorView& dout,
                     const Tensor& comb, const Tensor& pre, const Tensor& dcollapsed,
                     const Tensor& normed, const Tensor& fn, const Tensor& dmixes,
                     const Tensor& mixes, const Tensor& rms_inv, const TensorView& dstreams,
                     const Tensor& dfn) {
  const int64_t num_tokens = streams.shape[0];
  run.Linear(Rows2(normed, num_tokens), fn.view(), dmixes.view(), TensorView(), dfn.view());
  run.Do([&] {
    kc::MhcStreamsBackwardArgs a;
    a.streams = streams;
    a.dout = dout;
    a.comb = comb.defined() ? comb.view() : TensorView();
    a.pre = pre.view();
    a.dcollapsed = dcollapsed.view();
    a.fn = fn.view();
    a.dmixes = dmixes.view();
    a.mixes = mixes.view();
    a.rms_inv = rms_inv.view();
    a.dstreams = dstreams;
    return kc::MhcStreamsBackward(a);
  });
}

// model/backward.cc SiteBackward + model/mhc_backward.cc MhcPost/PreBackward.
Tensor SiteBackward(Run& run, const MhcWeights& w, const Tensor& norm, const ModelConfig& config,
                    const Tensor& streams, const MhcActivations& host_acts, const Tensor& y,
                    const Tensor& dstreams_out,
                    const std::function<void(const Tensor&, const Tensor&)>& sub_backward,
                    MhcWeights* g, const Tensor& dnorm) {
  const int64_t num_tokens = streams.size(0);
  const int64_t n = config.hc_mult, hidden = config.hidden_size;
  const float eps = static_cast<float>(config.rms_norm_eps);
  const Tensor post = run.Up(host_acts.post), comb = run.Up(host_acts.comb);
  // dy is overwritten by the expand's backward (no zero fill, no read). The sublayers' backward
  // reads it only in products (attention: wo_b's GEMMs; MoE: the shared expert's w2 GEMMs and
  // the picks' gather for the experts' GEMMs): written in their dtype. The stream gradient waits
  // for the mixes' (StreamsBackward); this pass stores the stream RMS it needs.
  Tensor dy = run.ProductNew({num_tokens, hidden});
  Tensor dpost = run.Z({num_tokens, n});
  Tensor dcomb = run.Z({num_tokens, n, n});
  Tensor rms_inv = run.New({num_tokens});
  run.Do([&] {
    return kc::MhcExpandBackward(streams.view(), y.view(), post.view(), comb.view(),
                                 dstreams_out.view(), TensorView(), dy.view(), dpost.view(),
                                 dcomb.view(), kc::DxWrite::kOverwrite, rms_inv.view(), eps);
  });
  Tensor dsub_in = run.Z({num_tokens, hidden});
  run.Mark("bwd.mhc");
  sub_backward(dy, dsub_in);
  Tensor dcollapsed = run.New({num_tokens, hidden});  // overwritten: no zero fill
  const Tensor collapsed = run.Up(host_acts.collapsed);
  run.RmsNorm(collapsed.view(), norm.view(), eps, dsub_in.view(), dcollapsed.view(), dnorm.view(),
              kc::DxWrite::kOverwrite);
  // MhcPreBackward: the collapse, the gates and Sinkhorn, then the mixes.
  const Tensor pre = run.Up(host_acts.pre), mixes = run.Up(host_acts.mixes);
  Tensor dpre = run.Z({num_tokens, n});
  run.Do([&] {  // dpre only: StreamsBackward writes the stream gradient
    return kc::MhcCollapseBackward(streams.view(), pre.view(), dcollapsed.view(), TensorView(),
                                   dpre.view());
  });
  Tensor dmixes = run.Z({num_tokens, (2 + n) * n});
  run.Do([&] {
    return kc::MhcCoefficientsBackward(
        mixes.view(), w.base.view(), w.scale.view(), config.hc_sinkhorn_iters,
        static_cast<float>(config.hc_eps), dpre.view(), dpost.view(), dcomb.view(), dmixes.view(),
        g->base.view(), g->scale.view());
  });
  // Only the mixes' weight gradient reads normed: as the forward saved it (bf16 under bf16
  // products).
  const Tensor normed = run.ProductInput(host_acts.normed);
  Tensor dstreams = run.New({num_tokens, n, hidden});  // overwritten: no zero fill
  StreamsBackward(run, streams.view(), dstreams_out.view(), comb, pre, dcollapsed, normed, w.fn,
                  dmixes, mixes, rms_inv, dstreams.view(), g->fn);
  run.Mark("bwd.mhc");
  return dstreams;
}

// model/compressor_backward.cc. x: [B·T, H] the layer input as the weight gradients read it (bf16
// under bf16 products).
void CompressorBackward(Run& run, const CompressorWeights& w, int64_t ratio, bool overlap,
                        const RopeTable& rope, float eps, int64_t batch, int64_t seq_len,
                        const TensorView& x, const CompressorActivations& host_acts,
                        const Tensor& dentries, const Tensor& dx, CompressorWeights* g) {
  const int64_t num_tokens = batch * seq_len;
  const int64_t width = w.wkv.size(0);
  const int64_t num_entries = host_acts.entries.size(1);
  const int64_t entry_dim = host_acts.entries.size(2);
  if (num_entries == 0) return;
  Tensor cos, sin;
  DeviceRopeTables(run, rope, 0, ratio, num_entries, &cos, &sin);
  for (int64_t b = 0; b < batch; ++b) {
    run.Do([&] {
      return kc::RopeBackward(
          dentries.view().Select(0, b).Reshape({num_entries, 1, entry_dim}), cos.view(),
          sin.view(), /*inverse=*/false);
    });
  }
  const Tensor pooled = run.Up(host_acts.pooled);
  Tensor dpooled = run.New({batch, num_entries, entry_dim});  // overwritten: no zero fill
  run.RmsNorm(Rows2(pooled, batch * num_entries), w.norm.view(), eps,
              Rows2(dentries, batch * num_entries), Rows2(dpooled, batch * num_entries),
              g->norm.view(), kc::DxWrite::kOverwrite);
  const Tensor kv = run.Up(host_acts.kv), score = run.Up(host_acts.score);
  Tensor dkv = run.Z({num_tokens, width});
  Tensor dscore = run.Z({num_tokens, width});
  for (int64_t b = 0; b < batch; ++b) {
    const int64_t first = b * seq_len, last = first + num_entries * ratio;
    run.Do([&] {
      return kc::CompressPoolBackward(kv.view().Slice(0, first, last),
                                      score.view().Slice(0, first, last), num_entries, ratio,
                                      overlap, /*first_entry=*/0, dpooled.view().Select(0, b),
                                      dkv.view().Slice(0, first, last),
                                      dscore.view().Slice(0, first, last));
    });
  }
  run.Do([&] {
    return kc::ApeBackward(dscore.view(), seq_len, ratio, g->ape.view().Reshape({ratio, width}));
  });
  run.Linear(x, w.wkv.view(), dkv.view(), dx.view(), g->wkv.view());
  run.Linear(x, w.wgate.view(), dscore.view(), dx.view(), g->wgate.view());
}

// model/attention_backward.cc.
void AttentionBackward(Run& run, const AttentionWeights& w, AttentionType type,
                       const ModelConfig& config, const RopeTable& rope, int64_t batch,
                       int64_t seq_len, const Tensor& x, const AttentionActivations& host_acts,
                       const Tensor& dout, const Tensor& dx, AttentionWeights* g) {
  const int64_t num_tokens = batch * seq_len;
  const int64_t heads = config.num_heads, dim = config.head_dim;
  const float eps = static_cast<float>(config.rms_norm_eps);
  Tensor cos, sin;
  DeviceRopeTables(run, rope, 0, 1, seq_len, &cos, &sin);
  auto rotate_back_each_sequence = [&](const Tensor& grad, bool inverse) {
    const TensorView rows = grad.view().Reshape({num_tokens, grad.numel() / (num_tokens * dim), dim});
    for (int64_t b = 0; b < batch; ++b) {
      run.Do([&] {
        return kc::RopeBackward(rows.Slice(0, b * seq_len, (b + 1) * seq_len), cos.view(),
                                sin.view(), inverse);
      });
    }
  };

  // Grouped output projection.
  const int64_t groups = config.o_groups;
  const int64_t group_in = heads * dim / groups;
  const int64_t rank = config.o_lora_rank;
  // Only wo_a's weight gradient reads o: as the forward saved it (bf16 under bf16 products).
  const Tensor u = run.Up(host_acts.u), o = run.ProductInput(host_acts.o);
  // The GEMM overwrites it; only the groups' products read it: in their dtype (bf16 under bf16
  // products: the GEMM rounds each value once, the bits a copy of the f32 values would have).
  Tensor du = run.ProductNew({num_tokens, groups * rank});
  run.Linear(u.view(), w.wo_b.view(), dout.view(), du.view(), g->wo_b.view(),
             /*overwrite_dx=*/true);
  // The groups' GEMMs overwrite disjoint column blocks that cover dattn: no zero fill. Only the
  // attention backward's products read it: in their dtype (bf16 under bf16 products, rounded at
  // the GEMM's store and again after the RoPE dims' rotation, with no f32 copy to convert).
  Tensor dattn = Run::New(run.product_dtype(), {num_tokens, heads, dim});
  const TensorView o_groups = o.view().Reshape({num_tokens, groups, group_in});
  const TensorView do_groups = dattn.view().Reshape({num_tokens, groups, group_in});
  const TensorView w_groups = w.wo_a.view().Reshape({groups, rank, group_in});
  const TensorView dw_groups = g->wo_a.view().Reshape({groups, rank, group_in});
  const TensorView du_groups = du.view().Reshape({num_tokens, groups, rank});
  for (int64_t gi = 0; gi < groups; ++gi) {
    run.Linear(o_groups.Select(1, gi), w_groups.Select(0, gi), du_groups.Select(1, gi),
               do_groups.Select(1, gi), dw_groups.Select(0, gi), /*overwrite_dx=*/true);
  }
  rotate_back_each_sequence(dattn, /*inverse=*/true);
  run.Mark("bwd.attn.output");

  // Sparse attention, one sequence at a time.
  const bool compressed = type != AttentionType::kSliding;
  const int64_t num_entries = compressed ? host_acts.compressor.entries.size(1) : 0;
  const Tensor attn = run.Up(host_acts.attn), lse = run.Up(host_acts.lse);
  Tensor topk;
  if (num_entries > 0 && type == AttentionType::kCompressedSparse) {
    topk = run.Up(host_acts.indexer.topk);
  }
  Tensor dq = run.Z({num_tokens, heads, dim});
  Tensor dkv = run.Z({num_tokens, 1, dim});
  Tensor dentries;
  if (num_entries > 0) dentries = run.Z({batch, num_entries, dim});
  // With bf16 GEMM math the products run on tensor cores: q, kv and the entries as the forward
  // saved them (bf16 then) and a bf16 copy of the output gradient (out and lse stay f32).
  const Tensor q_in = run.ProductInput(host_acts.q), kv_in = run.ProductInput(host_acts.kv);
  const Tensor entries_in =
      num_entries > 0 ? run.ProductInput(host_acts.compressor.entries) : Tensor();
  const Tensor dattn_in = run.ProductOperand(dattn);
  const TensorView kv_rows = kv_in.view().Reshape({num_tokens, dim});
  const TensorView dkv_rows = dkv.view().Reshape({num_tokens, dim});
  const TensorView q3 = q_in.view().Reshape({num_tokens, heads, dim});
  const TensorView attn3 = attn.view().Reshape({num_tokens, heads, dim});
  const TensorView lse2 = lse.view().Reshape({num_tokens, heads});
  for (int64_t b = 0; b < batch; ++b) {
    const int64_t first = b * seq_len, last = (b + 1) * seq_len;
    kc::SparseAttentionBackwardArgs args;
    args.q = q3.Slice(0, first, last);
    args.kv = kv_rows.Slice(0, first, last);
    args.sink = w.sink.view();
    args.out = attn3.Slice(0, first, last);
    args.lse = lse2.Slice(0, first, last);
    args.dout = dattn_in.view().Slice(0, first, last);
    args.tensor_cores = run.bf16_products() && dim % 32 == 0 && dim <= 512;
    args.dq = dq.view().Slice(0, first, last);
    args.dkv = dkv_rows.Slice(0, first, last);
    args.dsink = g->sink.view();
    args.window = config.sliding_window;
    args.scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(dim)));
    if (num_entries > 0) {
      args.comp_kv = entries_in.view().Select(0, b);
      args.dcomp_kv = dentries.view().Select(0, b);
      if (type == AttentionType::kCompressedSparse) {
        args.comp_idx = topk.view().Select(0, b);
      } else {
        args.comp_ratio = config.CompressRatio(type);
      }
    }
    run.Do([&] { return kc::SparseAttentionBackward(args); });
  }
  run.Mark("bwd.attn.core");

  // Query path: RoPE, per-head unweighted RMSNorm (its input as the GPU forward saved it, or
  // recomputed as on the CPU), wq_b, q_norm, wq_a.
  rotate_back_each_sequence(dq, /*inverse=*/false);
  // Only products read qr (wq_b's gradient, the q_raw recomputation): as the forward saved it.
  const Tensor qr = run.ProductInput(host_acts.qr), qr_raw = run.Up(host_acts.qr_raw);
  Tensor q_raw;
  if (host_acts.q_raw.defined()) {
    q_raw = run.Up(host_acts.q_raw);
  } else {
    q_raw = run.New({num_tokens, heads * dim});
    run.Forward(qr.view(), w.wq_b.view(), q_raw.view());
  }
  // The norms' input gradients that only a GEMM reads (dq_raw, dqr_raw, dkv_raw) are written in
  // the products' dtype by the norm's backward itself (no zero fill, no bf16 copy; the same
  // bf16 values as the copy of the f32 gradient).
  Tensor dq_raw = run.ProductNew({num_tokens, heads * dim});
  run.RmsNorm(q_raw.view().Reshape({num_tokens * heads, dim}), TensorView(), eps,
              dq.view().Reshape({num_tokens * heads, dim}),
              dq_raw.view().Reshape({num_tokens * heads, dim}), TensorView(),
              kc::DxWrite::kOverwrite);
  Tensor dqr = run.New({num_tokens, config.q_lora_rank});  // the GEMM overwrites it
  run.Linear(qr.view(), w.wq_b.view(), dq_raw.view(), dqr.view(), g->wq_b.view(),
             /*overwrite_dx=*/true);
  Tensor dqr_raw = run.ProductNew({num_tokens, config.q_lora_rank});
  run.RmsNorm(qr_raw.view(), w.q_norm.view(), eps, dqr.view(), dqr_raw.view(), g->q_norm.view(),
              kc::DxWrite::kOverwrite);
  // x as every weight gradient of this layer reads it (one bf16 copy under bf16 products).
  Tensor x_copy;
  const TensorView x_product = run.ProductRows(x.view(), &x_copy);
  run.Linear(x_product, w.wq_a.view(), dqr_raw.view(), dx.view(), g->wq_a.view());

  // Shared K=V path: RoPE, kv_norm, wkv.
  rotate_back_each_sequence(dkv, /*inverse=*/false);
  const Tensor kv_raw = run.Up(host_acts.kv_raw);
  Tensor dkv_raw = run.ProductNew({num_tokens, dim});
  run.RmsNorm(Rows2(kv_raw, num_tokens), w.kv_norm.view(), eps, dkv_rows, dkv_raw.view(),
              g->kv_norm.view(), kc::DxWrite::kOverwrite);
  run.Linear(x_product, w.wkv.view(), dkv_raw.view(), dx.view(), g->wkv.view());
  run.Mark("bwd.attn.proj");

  if (num_entries > 0) {
    CompressorBackward(run, w.compressor, config.CompressRatio(type),
                       type == AttentionType::kCompressedSparse, rope, eps, batch, seq_len,
                       x_product, host_acts.compressor, dentries, dx, &g->compressor);
    run.Mark("bwd.attn.compressor");
  }
}

// model/moe_backward.cc.
void MoeBackward(Run& run, const MoeWeights& w, const ModelConfig& config, const Tensor& x,
                 const MoeActivations& host_acts, const Tensor& dout, const Tensor& dx,
                 MoeWeights* g) {
  const int64_t num_tokens = x.size(0);
  const int64_t hidden = config.hidden_size;
  const int64_t inter = config.moe_intermediate_size;
  const int64_t k = config.num_experts_per_tok;
  const int64_t experts = config.num_routed_experts;
  const float limit = static_cast<float>(config.swiglu_limit);
  // x as the shared expert's and the router's weight gradients read it (one bf16 copy for all
  // three under bf16 products).
  Tensor x_copy;
  const TensorView x_product = run.ProductRows(x.view(), &x_copy);

  if (config.num_shared_experts > 0) {
    const int64_t shared = w.shared_w1.size(0);
    const Tensor act = run.ProductInput(host_acts.shared_act), gate = run.Up(host_acts.shared_gate),
                 up = run.Up(host_acts.shared_up);
    Tensor dact = run.New({num_tokens, shared});  // the GEMM overwrites it
    run.Linear(act.view(), w.shared_w2.view(), dout.view(), dact.view(), g->shared_w2.view(),
               /*overwrite_dx=*/true);
    // Overwritten, in the products' dtype (only the GEMMs below read them), as the routed ones.
    Tensor dgate = run.ProductNew({num_tokens, shared});
    Tensor dup = run.ProductNew({num_tokens, shared});
    run.Do([&] {
      return kc::SwiGluClampBackward(gate.view(), up.view(), limit, dact.view(), dgate.view(),
                                     dup.view(), kc::DxWrite::kOverwrite);
    });
    run.Linear(x_product, w.shared_w1.view(), dgate.view(), dx.view(), g->shared_w1.view());
    run.Linear(x_product, w.shared_w3.view(), dup.view(), dx.view(), g->shared_w3.view());
  }

  // Routed picks in plan order (expert-major), as the CPU: the forward's plan on the device
  // (N·k rows, dropped picks' rows past the real ones) or, after a forward on the CPU, its host
  // plan uploaded (a pageable upload waits for every queued launch).
  const kernels::plan::MoeDispatchPlan& plan = host_acts.plan;
  Tensor slots = host_acts.device_slots, pick_of_slot = host_acts.device_pick_of_slot,
         device_offsets = host_acts.device_offsets;
  std::vector<int64_t> host_offsets;  // for per-expert cuBLAS only (Run::HostOffsets)
  int64_t num_picks = num_tokens * k;
  if (!slots.defined() || !pick_of_slot.defined() || !device_offsets.defined()) {
    num_picks = static_cast<int64_t>(plan.slots.size());
    host_offsets = plan.expert_offsets;
    slots = Run::New(DType::kI32, {num_tokens * k});
    pick_of_slot = Run::New(DType::kI32, {num_tokens * k});
    run.Do([&] { return kc::UploadMoePlan(plan, slots.view(), pick_of_slot.view()); });
    device_offsets = run.ExpertOffsetsOnDevice(plan.expert_offsets);
  }
  Tensor dweights = run.Z({num_tokens, k});
  if (num_picks > 0) {
    const TensorView pick_slots = slots.view().Slice(0, 0, num_picks);  // the picks' slots
    const Tensor topk_weight = run.Up(host_acts.topk_weight);
    const Tensor act = run.Up(host_acts.expert_act);
    // Per-expert cuBLAS (where the Hopper kernels do not apply) takes the offsets on the host.
    auto offsets = [&] { return run.HostOffsets(device_offsets.view(), &host_offsets).data(); };
    // With bf16 products every GEMM operand is bf16, written so by the step that makes it (the
    // gather, the routing-weight step, the SwiGLU backward) instead of copied from f32, and the
    // weights are their mirrors (Run::ProductWeight); the elementwise steps read f32. bf16 GEMMs
    // run on the Hopper grouped kernels where they apply (one launch for all experts, outputs
    // overwritten: kc::GroupedGemmInputGradDeviceOffsets, GroupedGemmWeightGradDeviceOffsets),
    // otherwise on cuBLAS per expert (kc::GroupedLinearBackward).
    const Tensor picked_dout = Run::New(run.product_dtype(), {num_picks, hidden});
    run.Do([&] { return kc::MoeGather(dout.view(), pick_slots, k, picked_dout.view()); });
    const TensorView w1 = run.ProductWeight(w.w1.view()), w3 = run.ProductWeight(w.w3.view()),
                     w2 = run.ProductWeight(w.w2.view());
    // dw[e] = dy[rows of e]ᵀ · x[rows of e], overwritten.
    auto weight_grad = [&](const TensorView& dy, const TensorView& x, const TensorView& w_e,
                           const TensorView& dw) {
      run.Do([&] {
        return kc::GroupedGemmWeightGradApplies(dy, x, dw)
                   ? kc::GroupedGemmWeightGradDeviceOffsets(dy, x, device_offsets.view(), dw)
                   : kc::GroupedLinearBackward(run.blas(), x, w_e, dy, offsets(), TensorView(), dw,
                                               /*overwrite_dw=*/true);
      });
    };
    // u = g · w2 per expert (no dw2 yet: act is not read); then dweight = <u, act>, u *= w,
    // weighted = w · act; dw2.
    const bool u_hopper = kc::GroupedGemmInputGradApplies(picked_dout.view(), w2);
    Tensor u = u_hopper ? run.New({num_picks, inter}) : run.Z({num_picks, inter});
    run.Do([&] {
      return u_hopper ? kc::GroupedGemmInputGradDeviceOffsets(picked_dout.view(), w2, TensorView(),
                                                              TensorView(), device_offsets.view(),
                                                              u.view())
                      : kc::GroupedLinearBackward(run.blas(), TensorView(), w2, picked_dout.view(),
                                                  offsets(), u.view(), TensorView(),
                                                  /*overwrite_dw=*/false);
    });
    const Tensor weighted_act = Run::New(run.product_dtype(), {num_picks, inter});
    run.Do([&] {
      return kc::ExpertWeightBackward(act.view(), pick_slots, topk_weight.view(), u.view(),
                                      weighted_act.view(), dweights.view());
    });
    weight_grad(picked_dout.view(), weighted_act.view(), w2, g->w2.view());
    const Tensor egate = run.Up(host_acts.expert_gate), eup = run.Up(host_acts.expert_up);
    // Overwritten, in the products' dtype (only the GEMMs below read them).
    const Tensor dgate = Run::New(run.product_dtype(), {num_picks, inter});
    const Tensor dup = Run::New(run.product_dtype(), {num_picks, inter});
    run.Do([&] {
      return kc::SwiGluClampBackward(egate.view(), eup.view(), limit, u.view(), dgate.view(),
                                     dup.view(), kc::DxWrite::kOverwrite);
    });
    const Tensor ex = run.ProductInput(host_acts.expert_x);
    // dexpert_x = dgate · w1 + dup · w3 (one pass over both on the Hopper kernel).
    const bool dx_hopper = kc::GroupedGemmInputGradApplies(dgate.view(), w1) &&
                           kc::GroupedGemmInputGradApplies(dup.view(), w3);
    Tensor dexpert_x = dx_hopper ? run.New({num_picks, hidden}) : run.Z({num_picks, hidden});
    if (dx_hopper) {
      run.Do([&] {
        return kc::GroupedGemmInputGradDeviceOffsets(dgate.view(), w1, dup.view(), w3,
                                                     device_offsets.view(), dexpert_x.view());
      });
    } else {
      for (const auto& [dy, w_e] : {std::pair{dgate.view(), w1}, std::pair{dup.view(), w3}}) {
        run.Do([&] {
          return kc::GroupedLinearBackward(run.blas(), TensorView(), w_e, dy, offsets(),
                                           dexpert_x.view(), TensorView(), /*overwrite_dw=*/false);
        });
      }
    }
    weight_grad(dgate.view(), ex.view(), w1, g->w1.view());
    weight_grad(dup.view(), ex.view(), w3, g->w3.view());
    run.Do([&] {
      return kc::MoeGatherBackward(dexpert_x.view(), pick_of_slot.view(), k, dx.view());
    });
  } else {
    // No picks: the expert stacks' gradients (not zero-filled up front) are zeros.
    for (Tensor* grad : {&g->w1, &g->w2, &g->w3}) {
      if (grad->view().data != nullptr) run.Do([&] { return kc::FillZero(grad->view()); });
    }
  }

  // Router: renormalised weights -> scores of the picks -> sqrt(softplus) -> gate projection.
  const Tensor scores = run.Up(host_acts.scores), logits = run.Up(host_acts.logits);
  const Tensor topk_idx = run.Up(host_acts.topk_idx);
  Tensor dscores = run.Z({num_tokens, experts});
  run.Do([&] {
    return kc::RoutingWeightsBackward(scores.view(), topk_idx.view(),
                                      static_cast<float>(config.routed_scaling_factor),
                                      kRoutingDenomEps, dweights.view(), dscores.view());
  });
  Tensor dlogits = run.Z({num_tokens, experts});
  run.Do([&] { return kc::SqrtSoftplusBackward(logits.view(), dscores.view(), dlogits.view()); });
  run.Linear(x_product, w.gate.view(), dlogits.view(), dx.view(), g->gate.view());
}

// Copies every parameter of `host` the passes read into the same slot of `device` (f32; tid2eid
// i32), each slot allocated on first use; slots of the two walks correspond one to one.
absl::Status UploadParams(const ModelConfig& config, const ModelWeights& host,
                          ModelWeights* device) {
  ModelWeights from = host;  // shallow: VisitParams needs a mutable walk
  std::vector<const Tensor*> host_slots;
  VisitParams(config, &from, /*include_mtp=*/false,
              [&](const ParamSpec&, Tensor* slot) { host_slots.push_back(slot); });
  absl::Status status;
  size_t index = 0;
  VisitParams(config, device, /*include_mtp=*/false, [&](const ParamSpec& spec, Tensor* slot) {
    const Tensor& source = *host_slots[index++];
    if (!status.ok()) return;
    if (!source.defined()) {
      *slot = Tensor();
      return;
    }
    const bool usable =
        spec.is_index_table ? source.dtype() == DType::kI32 : core::IsFloatingPoint(source.dtype());
    if (!usable) {
      status = absl::InvalidArgumentError(absl::StrFormat(
          "CudaBackward: parameter %s is %s, expected %s", spec.name, source.view().DebugString(),
          spec.is_index_table ? "i32" : "floating point"));
      return;
    }
    if (slot->defined() && slot->view().device == core::Device::kCuda &&
        slot->view().SameShape(source.view().shape_vector())) {
      // Refresh in place: the device buffers (and views of them) stay valid.
      const Tensor staged = source.dtype() == slot->dtype() && source.view().is_contiguous()
                                ? source
                                : (spec.is_index_table ? Tensor::CopyOf(source.view())
                                                       : core::ToFloat32(source.view()));
      status = kc::Copy(staged.view(), slot->view());
      return;
    }
    Run run(nullptr);
    *slot = run.Up(source);
    status = run.status();
  });
  return status;
}

// Refills the bf16 mirror of every matrix parameter (rank >= 2) from the f32 device copies,
// reusing each mirror's buffer while its parameter keeps its device address and size.
absl::Status RefreshBf16Mirrors(const ModelConfig& config, ModelWeights* weights,
                                Bf16Mirrors* mirrors) {
  Bf16Mirrors refreshed;
  absl::Status status;
  VisitParams(config, weights, /*include_mtp=*/false, [&](const ParamSpec&, Tensor* slot) {
    const TensorView& v = slot->view();
    if (!status.ok() || !slot->defined() || v.rank < 2 || v.dtype != DType::kF32) return;
    const char* key = static_cast<const char*>(v.data);
    if (refreshed.count(key) > 0) return;  // a tied parameter
    Bf16Mirror mirror;
    mirror.bytes = static_cast<int64_t>(v.nbytes());
    const auto old = mirrors->find(key);
    mirror.bf16 = old != mirrors->end() && old->second.bytes == mirror.bytes
                      ? old->second.bf16
                      : Run::New(DType::kBF16, v.shape_vector());
    status = kc::F32ToBf16(v, mirror.bf16.view());
    refreshed[key] = std::move(mirror);
  });
  V4RL_RETURN_IF_ERROR(status);
  *mirrors = std::move(refreshed);
  return absl::OkStatus();
}

// dlogits as Backward takes it: contiguous [batch, seq_len, vocab], f32 on the host, f32 or bf16
// on the device.
absl::Status CheckDlogits(const TensorView& dlogits, int64_t batch, int64_t seq_len,
                          int64_t vocab) {
  const bool on_device = dlogits.device == core::Device::kCuda;
  const bool dtype_ok =
      dlogits.dtype == DType::kF32 || (on_device && dlogits.dtype == DType::kBF16);
  if (dtype_ok && dlogits.is_contiguous() && dlogits.SameShape({batch, seq_len, vocab})) {
    return absl::OkStatus();
  }
  return absl::InvalidArgumentError(absl::StrFormat(
      "CudaBackward: dlogits must be contiguous [B, T, V] = [%d, %d, %d], f32 on the host or "
      "f32/bf16 on the device, got %s",
      batch, seq_len, vocab, dlogits.DebugString()));
}

// dlogits (CheckDlogits) as [rows, vocab] on the device for the head's GEMMs: a device tensor as it
// is (bf16 goes to bf16 products without a copy; under f32 products it is widened to f32), a host
// one uploaded. *copy keeps a copy alive.
TensorView HeadDlogits(Run& run, const TensorView& dlogits, int64_t rows, int64_t vocab,
                       Tensor* copy) {
  const TensorView dl = dlogits.Reshape({rows, vocab});
  if (dl.device != core::Device::kCuda) {
    *copy = run.Up(Tensor::CopyOf(dl));
    return copy->view();
  }
  if (dl.dtype == DType::kBF16 && !run.bf16_products()) {
    *copy = run.New({rows, vocab});
    run.Do([&] { return kc::Bf16ToF32(dl, copy->view()); });
    return copy->view();
  }
  return dl;
}

}  // namespace

CudaBackward::CudaBackward(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
CudaBackward::~CudaBackward() = default;

kc::GemmMath CudaBackward::gemm_math() const { return impl_->blas->math(); }

absl::StatusOr<std::unique_ptr<CudaBackward>> CudaBackward::Create(const Model& model,
                                                                   kc::GemmMath gemm_math) {
  if (kc::DeviceCount() == 0) return absl::FailedPreconditionError("no CUDA device");
  auto impl = std::make_unique<Impl>();
  impl->model = &model;
  V4RL_ASSIGN_OR_RETURN(impl->blas, kc::BlasHandle::Create(gemm_math));
  impl->weights = model.weights;  // shallow copy; UpdateWeights replaces every slot it reads
  std::unique_ptr<CudaBackward> result(new CudaBackward(std::move(impl)));
  V4RL_RETURN_IF_ERROR(result->UpdateWeights());
  return result;
}

absl::Status CudaBackward::UpdateWeights() {
  const Model& model = *impl_->model;
  V4RL_RETURN_IF_ERROR(UploadParams(model.config, model.weights, &impl_->weights));
  if (model.config.tie_word_embeddings) impl_->weights.head = impl_->weights.embed;
  if (impl_->blas->math() == kc::GemmMath::kBf16Inputs) {
    V4RL_RETURN_IF_ERROR(RefreshBf16Mirrors(model.config, &impl_->weights, &impl_->bf16_mirrors));
  }
  return kc::Synchronize();
}

absl::StatusOr<ModelWeights> CudaBackward::DeviceGradients(const TensorView& input_ids,
                                                           const ForwardOutput& forward,
                                                           const TensorView& dlogits) {
  const Model& model = *impl_->model;
  const ModelConfig& config = model.config;
  const ModelWeights& w = impl_->weights;
  if (input_ids.rank != 2 || input_ids.device != core::Device::kCpu ||
      (input_ids.dtype != DType::kI32 && input_ids.dtype != DType::kI64)) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "CudaBackward: input_ids must be CPU i32/i64 [B, T], got %s", input_ids.DebugString()));
  }
  const int64_t batch = input_ids.shape[0], seq_len = input_ids.shape[1];
  const int64_t num_tokens = batch * seq_len;
  const int64_t n = config.hc_mult, hidden = config.hidden_size;
  if (!forward.hidden.defined() || !forward.streams.defined() ||
      !forward.hc_head.collapsed.defined() ||
      static_cast<int64_t>(forward.blocks.size()) != config.num_layers ||
      (config.num_layers > 0 && !forward.blocks[0].ffn_out.defined())) {
    return absl::InvalidArgumentError(
        "CudaBackward needs a forward with return_hidden, return_streams and save_activations");
  }
  V4RL_RETURN_IF_ERROR(CheckDlogits(dlogits, batch, seq_len, config.vocab_size));
  Run run(impl_->blas.get(), &impl_->bf16_mirrors);
  const float eps = static_cast<float>(config.rms_norm_eps);
  Tensor dlogits_copy;
  const TensorView dl = HeadDlogits(run, dlogits, num_tokens, config.vocab_size, &dlogits_copy);

  // Device gradients in the ZeroGradients layout, zeroed on the device (no host tensors), but
  // for the routed experts' stacks: MoeBackward writes each of them whole exactly once (GEMMs
  // with beta 0, zeros for experts without picks), so they skip the fill (6.4 GB of f32 at the
  // mid config) and their GEMMs the read.
  ModelWeights g;
  VisitParams(config, &g, /*include_mtp=*/false, [&](const ParamSpec& spec, Tensor* slot) {
    if (!IsTrainable(spec)) return;
    *slot = spec.is_routed_experts ? Run::New(DType::kF32, spec.shape) : run.Z(spec.shape);
  });
  if (config.tie_word_embeddings) g.head = g.embed;

  // Token ids as contiguous i32 [B·T].
  Tensor host_ids = Tensor::Empty(DType::kI32, {num_tokens});
  for (int64_t b = 0; b < batch; ++b) {
    for (int64_t t = 0; t < seq_len; ++t) {
      const int64_t offset = b * input_ids.strides[0] + t * input_ids.strides[1];
      host_ids.data<int32_t>()[b * seq_len + t] =
          input_ids.dtype == DType::kI64
              ? static_cast<int32_t>(input_ids.data_as<int64_t>()[offset])
              : input_ids.data_as<int32_t>()[offset];
    }
  }

  run.Mark("bwd.setup");
  // Head: logits = hidden · headᵀ; hidden = norm(hc_head collapse of the final streams).
  {
    const Tensor hid = run.Up(forward.hidden);
    Tensor dhidden = run.New({num_tokens, hidden});  // the GEMM overwrites it
    run.Linear(Rows2(hid, num_tokens), w.head.view(), dl, dhidden.view(), g.head.view(),
               /*overwrite_dx=*/true);
    const Tensor collapsed = run.Up(forward.hc_head.collapsed);
    Tensor dcollapsed = run.New({num_tokens, hidden});  // overwritten: no zero fill
    run.RmsNorm(collapsed.view(), w.norm.view(), eps, dhidden.view(), dcollapsed.view(),
                g.norm.view(), kc::DxWrite::kOverwrite);
    const Tensor streams = run.UpStreams(forward.streams);
    const TensorView streams3 = streams.view().Reshape({num_tokens, n, hidden});
    Tensor dstreams = run.New({num_tokens, n, hidden});  // overwritten by StreamsBackward
    const Tensor pre = run.Up(forward.hc_head.pre), mixes = run.Up(forward.hc_head.mixes);
    Tensor dpre = run.Z({num_tokens, n});
    Tensor rms_inv = run.New({num_tokens});
    run.Do([&] {  // dpre and the stream RMS only: StreamsBackward writes the stream gradient
      return kc::MhcCollapseBackward(streams3, pre.view(), dcollapsed.view(), TensorView(),
                                     dpre.view(), kc::DxWrite::kAdd, rms_inv.view(), eps);
    });
    Tensor dmixes = run.Z({num_tokens, n});
    run.Do([&] {
      return kc::HcHeadPreBackward(mixes.view(), w.hc_head.base.view(), w.hc_head.scale.view(),
                                   dpre.view(), dmixes.view(), g.hc_head.base.view(),
                                   g.hc_head.scale.view());
    });
    const Tensor normed = run.ProductInput(forward.hc_head.normed);
    StreamsBackward(run, streams3, TensorView(), Tensor(), pre, dcollapsed, normed, w.hc_head.fn,
                    dmixes, mixes, rms_inv, dstreams.view(), g.hc_head.fn);
    run.Mark("bwd.head");

    // Blocks, last first, activations uploaded one block at a time.
    for (int64_t l = config.num_layers - 1; l >= 0; --l) {
      const LayerWeights& layer = w.layers[l];
      LayerWeights* gl = &g.layers[l];
      const RopeTable& rope = model.rope(layer.attention_type);
      const BlockActivations& acts = forward.blocks[l];
      const Tensor streams_mid = run.UpStreams(acts.streams_mid);
      // ffn_in and attn_in feed only products: as the forward saved them (bf16 under bf16
      // products).
      const Tensor ffn_out = run.Up(acts.ffn_out), ffn_in = run.ProductInput(acts.ffn_in);
      Tensor dstreams_mid = SiteBackward(
          run, layer.hc_ffn, layer.ffn_norm, config, streams_mid, acts.ffn_hc, ffn_out, dstreams,
          [&](const Tensor& dy, const Tensor& dx) {
            MoeBackward(run, layer.ffn, config, ffn_in, acts.moe, dy, dx, &gl->ffn);
            run.Mark("bwd.moe");
          },
          &gl->hc_ffn, gl->ffn_norm);
      const Tensor streams_in = run.UpStreams(acts.streams_in);
      const Tensor attn_out = run.Up(acts.attn_out), attn_in = run.ProductInput(acts.attn_in);
      dstreams = SiteBackward(
          run, layer.hc_attn, layer.attn_norm, config, streams_in, acts.attn_hc, attn_out,
          dstreams_mid,
          [&](const Tensor& dy, const Tensor& dx) {
            AttentionBackward(run, layer.attn, layer.attention_type, config, rope, batch, seq_len,
                              attn_in, acts.attn, dy, dx, &gl->attn);
          },
          &gl->hc_attn, gl->attn_norm);
      V4RL_RETURN_IF_ERROR(run.status());
    }

    // Embedding: every stream started as a copy of the token's row.
    const Tensor ids = run.Up(host_ids);
    run.Do([&] { return kc::EmbeddingBackward(dstreams.view(), ids.view(), g.embed.view()); });
    run.Mark("bwd.embed");
  }
  run.Report("train backward", num_tokens);
  V4RL_RETURN_IF_ERROR(run.status());
  V4RL_RETURN_IF_ERROR(kc::Synchronize());
  return g;
}

absl::Status CudaBackward::Backward(const TensorView& input_ids, const ForwardOutput& forward,
                                    const TensorView& dlogits, ModelWeights* grads) {
  V4RL_ASSIGN_OR_RETURN(ModelWeights g, DeviceGradients(input_ids, forward, dlogits));
  // Add the device gradients to the host ones.
  const ModelConfig& config = impl_->model->config;
  absl::Status status;
  ModelWeights host = *grads;  // shallow: the slots share the caller's buffers
  std::vector<Tensor*> device_slots;
  VisitParams(config, &g, false, [&](const ParamSpec&, Tensor* slot) {
    device_slots.push_back(slot);
  });
  size_t index = 0;
  VisitParams(config, &host, false, [&](const ParamSpec& spec, Tensor* slot) {
    const Tensor& device = *device_slots[index++];
    if (!slot->defined() || !device.defined() || !status.ok()) return;
    Tensor copy = Tensor::Empty(DType::kF32, device.view().shape_vector());
    status = kc::Copy(device.view(), copy.view());
    if (!status.ok()) return;
    if (!slot->view().SameShape(copy.view().shape_vector()) || slot->dtype() != DType::kF32) {
      status = absl::InvalidArgumentError("CudaBackward: gradient slot " + spec.name +
                                          " is not f32 " + copy.view().DebugString());
      return;
    }
    float* dst = slot->data<float>();
    const float* src = copy.data<float>();
    for (int64_t i = 0; i < copy.numel(); ++i) dst[i] += src[i];
  });
  return status;
}

namespace {

// Forward, the masked cross entropy and its gradient: returns the loss and sets *dlogits, a
// contiguous [B, T, V] device tensor in the dtype the head's GEMMs read. Under bf16 products a
// new bf16 tensor (the kernel rounds each gradient once, and the backward needs no f32-to-bf16
// copy of it), and forward->logits is released (Backward does not read it); under f32 products
// the f32 gradient overwrites forward->logits in place (no second [B·T, V] buffer).
absl::StatusOr<double> MaskedLossAndDlogits(CudaBackward& backward, const Model& model,
                                            const TensorView& input_ids,
                                            const TensorView& loss_mask,
                                            const ForwardOptions& forward_options,
                                            ForwardOutput* forward, Tensor* dlogits) {
  if (input_ids.rank != 2 || input_ids.shape[1] < 2) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "input_ids must be [batch, seq_len] with seq_len >= 2 for a next-token loss, got %s",
        input_ids.DebugString()));
  }
  const int64_t batch = input_ids.shape[0], seq_len = input_ids.shape[1];
  if (loss_mask.device != core::Device::kCpu || loss_mask.dtype != DType::kF32 ||
      !loss_mask.is_contiguous() || !loss_mask.SameShape({batch, seq_len})) {
    return absl::InvalidArgumentError(
        absl::StrFormat("loss_mask must be a contiguous f32 host [%d, %d], got %s", batch, seq_len,
                        loss_mask.DebugString()));
  }
  ForwardOptions options = forward_options;
  options.return_hidden = true;
  options.return_streams = true;
  options.save_activations = true;
  V4RL_ASSIGN_OR_RETURN(*forward, backward.Forward(input_ids, options));

  // Position t of a sequence predicts token t + 1; the last position has no target.
  const int64_t rows = batch * seq_len, vocab = model.config.vocab_size;
  Tensor targets = Tensor::Zeros(DType::kI32, {rows});
  Tensor mask = Tensor::Zeros(DType::kF32, {rows});
  double mask_total = 0;
  for (int64_t b = 0; b < batch; ++b) {
    for (int64_t t = 0; t + 1 < seq_len; ++t) {
      const int64_t offset = b * input_ids.strides[0] + (t + 1) * input_ids.strides[1];
      targets.data<int32_t>()[b * seq_len + t] =
          input_ids.dtype == DType::kI64
              ? static_cast<int32_t>(input_ids.data_as<int64_t>()[offset])
              : input_ids.data_as<int32_t>()[offset];
      const float weight = loss_mask.data_as<float>()[b * seq_len + t];
      mask.data<float>()[b * seq_len + t] = weight;
      mask_total += weight;
    }
    if (loss_mask.data_as<float>()[b * seq_len + seq_len - 1] != 0.0f) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "loss_mask[%d, %d] must be 0: the last position has no next token", b, seq_len - 1));
    }
  }
  auto device = [](DType dtype, absl::Span<const int64_t> shape) {
    return Tensor::Empty(dtype, shape, kc::CachingDeviceAllocator());
  };
  const Tensor device_targets = device(DType::kI32, {rows});
  const Tensor device_mask = device(DType::kF32, {rows});
  const Tensor losses = device(DType::kF32, {rows});
  V4RL_RETURN_IF_ERROR(kc::Copy(targets.view(), device_targets.view()));
  V4RL_RETURN_IF_ERROR(kc::Copy(mask.view(), device_mask.view()));
  const bool bf16_dlogits = backward.gemm_math() == kc::GemmMath::kBf16Inputs;
  *dlogits = bf16_dlogits ? device(DType::kBF16, {batch, seq_len, vocab}) : forward->logits;
  V4RL_RETURN_IF_ERROR(kc::MaskedCrossEntropy(
      forward->logits.view().Reshape({rows, vocab}), device_targets.view(), device_mask.view(),
      mask_total > 0 ? static_cast<float>(1.0 / mask_total) : 0.0f, losses.view(),
      dlogits->view().Reshape({rows, vocab})));
  if (bf16_dlogits) forward->logits = Tensor();  // back to the cache for the backward
  Tensor host_losses = Tensor::Empty(DType::kF32, {rows});
  V4RL_RETURN_IF_ERROR(kc::Copy(losses.view(), host_losses.view()));
  double loss = 0;
  for (int64_t r = 0; r < rows; ++r) loss += host_losses.data<float>()[r];
  return loss;
}

}  // namespace

absl::StatusOr<double> CudaMaskedNextTokenLoss(CudaBackward& backward, const Model& model,
                                               const TensorView& input_ids,
                                               const TensorView& loss_mask,
                                               const ForwardOptions& forward_options,
                                               ModelWeights* grads,
                                               std::vector<Tensor>* routed_experts) {
  ForwardOutput forward;
  Tensor dlogits;
  V4RL_ASSIGN_OR_RETURN(const double loss,
                        MaskedLossAndDlogits(backward, model, input_ids, loss_mask, forward_options,
                                             &forward, &dlogits));
  V4RL_RETURN_IF_ERROR(backward.Backward(input_ids, forward, dlogits.view(), grads));
  if (routed_experts != nullptr) *routed_experts = forward.routed_experts;
  return loss;
}

absl::StatusOr<double> CudaMaskedNextTokenLossOnDevice(CudaBackward& backward, const Model& model,
                                                       const TensorView& input_ids,
                                                       const TensorView& loss_mask,
                                                       const ForwardOptions& forward_options,
                                                       ModelWeights* device_grads) {
  ForwardOutput forward;
  Tensor dlogits;
  V4RL_ASSIGN_OR_RETURN(const double loss,
                        MaskedLossAndDlogits(backward, model, input_ids, loss_mask, forward_options,
                                             &forward, &dlogits));
  V4RL_ASSIGN_OR_RETURN(*device_grads,
                        backward.DeviceGradients(input_ids, forward, dlogits.view()));
  return loss;
}

Tensor NextTokenLossMask(int64_t batch, int64_t seq_len) {
  Tensor mask = Tensor::Zeros(DType::kF32, {batch, seq_len});
  for (int64_t b = 0; b < batch; ++b) {
    for (int64_t t = 0; t + 1 < seq_len; ++t) mask.data<float>()[b * seq_len + t] = 1.0f;
  }
  return mask;
}

absl::StatusOr<NextTokenLossResult> CudaNextTokenLossAndGradients(
    CudaBackward& backward, const Model& model, const TensorView& input_ids,
    const NextTokenLossOptions& options) {
  if (options.backward.recompute) {
    return absl::InvalidArgumentError("the CUDA backward does not recompute yet");
  }
  if (input_ids.rank != 2) {
    return absl::InvalidArgumentError(
        absl::StrFormat("input_ids must be [batch, seq_len], got %s", input_ids.DebugString()));
  }
  const Tensor mask = NextTokenLossMask(input_ids.shape[0], input_ids.shape[1]);
  ForwardOptions forward_options;
  forward_options.return_routing = true;
  forward_options.routing_replay = options.routing_replay;
  forward_options.index_replay = options.index_replay;
  NextTokenLossResult result;
  result.grads = ZeroGradients(model.config);
  V4RL_ASSIGN_OR_RETURN(
      result.loss, CudaMaskedNextTokenLoss(backward, model, input_ids, mask.view(), forward_options,
                                           &result.grads, &result.routed_experts));
  return result;
}

}  // namespace v4rl::model
