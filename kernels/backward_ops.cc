#include "kernels/backward_ops.h"

#include <initializer_list>
#include <string>
#include <utility>

#include "core/logging.h"
#include "core/thread_pool.h"
#include "kernels/cpu/attention_backward.h"
#include "kernels/cpu/compressor_backward.h"
#include "kernels/cpu/elementwise_backward.h"
#include "kernels/cpu/linear_backward.h"
#include "kernels/cpu/mhc_backward.h"
#include "kernels/cpu/routing.h"
#include "kernels/op_checks.h"
#include "kernels/ops.h"

namespace v4rl::kernels {
namespace {

using core::DType;

using internal::AsRows;
using internal::CheckContiguousF32;
using internal::CheckCpuF32;
using internal::CheckShape;
using internal::Present;
using internal::Rows;

void CheckTopkIdx(const char* op, const TensorView& idx, int64_t rows, int64_t num_experts) {
  V4RL_CHECK(idx.dtype == DType::kI32 && idx.is_contiguous() && idx.rank == 2 &&
             idx.shape[0] == rows)
      << op << ": topk_idx must be contiguous i32 [" << rows << ", k], got " << idx.DebugString();
  for (int64_t i = 0; i < idx.numel(); ++i) {
    const int32_t id = idx.data_as<int32_t>()[i];
    V4RL_CHECK(id >= 0 && id < num_experts) << op << ": topk_idx entry " << i << " = " << id;
  }
}

void CheckSameRows(const char* op, const char* a_name, const Rows& a, const char* b_name,
                   const Rows& b) {
  V4RL_CHECK(a.rows == b.rows && a.cols == b.cols)
      << op << ": " << a_name << " [" << a.rows << ", " << a.cols << "] vs " << b_name << " ["
      << b.rows << ", " << b.cols << "]";
}

float* OptionalData(const TensorView& v) { return Present(v) ? v.data_as<float>() : nullptr; }

core::ThreadPool* Pool() { return OpsThreadPool(); }

}  // namespace

void LinearBackward(const TensorView& x, const TensorView& w, const TensorView& dy,
                    const TensorView& dx, const TensorView& dw) {
  const char* op = "LinearBackward";
  const Rows a = AsRows(op, "x", x);
  const Rows b = AsRows(op, "w", w);
  const Rows g = AsRows(op, "dy", dy);
  V4RL_CHECK(a.cols == b.cols && g.rows == a.rows && g.cols == b.rows)
      << op << ": x " << x.DebugString() << ", w " << w.DebugString() << ", dy "
      << dy.DebugString();
  Rows gx{nullptr, 0, 0, 0}, gw{nullptr, 0, 0, 0};
  if (Present(dx)) {
    gx = AsRows(op, "dx", dx);
    CheckSameRows(op, "dx", gx, "x", a);
  }
  if (Present(dw)) {
    gw = AsRows(op, "dw", dw);
    CheckSameRows(op, "dw", gw, "w", b);
  }
  cpu::LinearBackwardRef<float>(a.data, a.ld, b.data, b.ld, g.data, g.ld, gx.data, gx.ld, gw.data,
                                gw.ld, a.rows, b.rows, a.cols, Pool());
}

void RmsNormBackward(const TensorView& x, const TensorView& weight, float eps, const TensorView& dy,
                     const TensorView& dx, const TensorView& dweight) {
  const char* op = "RmsNormBackward";
  const Rows a = AsRows(op, "x", x);
  const Rows g = AsRows(op, "dy", dy);
  const Rows d = AsRows(op, "dx", dx);
  CheckSameRows(op, "dy", g, "x", a);
  CheckSameRows(op, "dx", d, "x", a);
  V4RL_CHECK(d.data != a.data && d.data != g.data) << op << ": dx must not alias x or dy";
  const float* w = nullptr;
  if (Present(weight)) {
    CheckContiguousF32(op, "weight", weight);
    CheckShape(op, "weight", weight, {a.cols});
    w = weight.data_as<float>();
  }
  if (Present(dweight)) {
    V4RL_CHECK(w != nullptr) << op << ": dweight without weight";
    CheckContiguousF32(op, "dweight", dweight);
    CheckShape(op, "dweight", dweight, {a.cols});
  }
  cpu::RmsNormBackwardRef<float>(a.data, a.ld, w, eps, g.data, g.ld, d.data, d.ld,
                                 OptionalData(dweight), a.rows, a.cols, Pool());
}

void ApplyRopeBackward(const TensorView& grad, const TensorView& cos, const TensorView& sin,
                       bool inverse) {
  const char* op = "ApplyRopeBackward";
  CheckCpuF32(op, "grad", grad);
  V4RL_CHECK(grad.rank == 3 && grad.strides[2] == 1)
      << op << ": grad must be [M, heads, head_dim] with a contiguous last dim, got "
      << grad.DebugString();
  CheckContiguousF32(op, "cos", cos);
  CheckContiguousF32(op, "sin", sin);
  V4RL_CHECK(cos.rank == 2 && cos.shape[0] == grad.shape[0] && 2 * cos.shape[1] <= grad.shape[2])
      << op << ": cos " << cos.DebugString() << " does not fit grad " << grad.DebugString();
  CheckShape(op, "sin", sin, {cos.shape[0], cos.shape[1]});
  cpu::RopeBackwardRef<float>(grad.data_as<float>(), grad.shape[0], grad.shape[1], grad.strides[0],
                              grad.strides[1], grad.shape[2], 2 * cos.shape[1],
                              cos.data_as<float>(), sin.data_as<float>(), inverse, Pool());
}

void SparseAttentionBackward(const SparseAttentionBackwardArgs& args) {
  const char* op = "SparseAttentionBackward";
  cpu::SparseAttentionBackwardParams<float> p;
  internal::CheckSparseAttentionInputs(op, args, &p);
  const int64_t num_q = p.num_q, num_heads = p.num_heads, head_dim = p.head_dim;
  CheckContiguousF32(op, "dsink", args.dsink);
  CheckShape(op, "dsink", args.dsink, {num_heads});
  for (const auto& [name, v] : {std::pair{"dout", &args.dout}, std::pair{"dq", &args.dq}}) {
    CheckContiguousF32(op, name, *v);
    CheckShape(op, name, *v, {num_q, num_heads, head_dim});
  }
  CheckContiguousF32(op, "dkv", args.dkv);
  CheckShape(op, "dkv", args.dkv, {p.num_kv, head_dim});
  V4RL_CHECK_EQ(Present(args.comp_kv), Present(args.dcomp_kv))
      << op << ": dcomp_kv must be given exactly when comp_kv is";
  if (Present(args.comp_kv)) {
    CheckContiguousF32(op, "dcomp_kv", args.dcomp_kv);
    CheckShape(op, "dcomp_kv", args.dcomp_kv, {p.num_comp, head_dim});
    p.dcomp_kv = args.dcomp_kv.data_as<float>();
  }
  p.dout = args.dout.data_as<float>();
  p.dq = args.dq.data_as<float>();
  p.dkv = args.dkv.data_as<float>();
  p.dsink = args.dsink.data_as<float>();
  cpu::SparseAttentionBackwardRef<float>(p, Pool());
}

void CompressPoolBackward(const TensorView& kv, const TensorView& score, int64_t ratio,
                          bool overlap, int64_t first_entry, const TensorView& dout,
                          const TensorView& dkv, const TensorView& dscore) {
  const char* op = "CompressPoolBackward";
  for (const auto& [name, v] : {std::pair{"kv", &kv}, std::pair{"score", &score},
                                std::pair{"dkv", &dkv}, std::pair{"dscore", &dscore}}) {
    CheckContiguousF32(op, name, *v);
  }
  CheckContiguousF32(op, "dout", dout);
  V4RL_CHECK(kv.rank == 2 && score.SameShape(kv.shape_vector()) &&
             dkv.SameShape(kv.shape_vector()) && dscore.SameShape(kv.shape_vector()))
      << op << ": kv " << kv.DebugString() << ", score " << score.DebugString() << ", dkv "
      << dkv.DebugString() << ", dscore " << dscore.DebugString();
  V4RL_CHECK(ratio > 0 && kv.shape[0] % ratio == 0)
      << op << ": rows " << kv.shape[0] << " are not whole windows of " << ratio;
  V4RL_CHECK(!overlap || kv.shape[1] % 2 == 0) << op << ": overlap needs an even width";
  const int64_t head_dim = overlap ? kv.shape[1] / 2 : kv.shape[1];
  const int64_t num_windows = kv.shape[0] / ratio;
  V4RL_CHECK(first_entry >= 0 && first_entry <= num_windows) << op << ": first_entry";
  CheckShape(op, "dout", dout, {num_windows - first_entry, head_dim});
  cpu::CompressPoolBackwardRef<float>(kv.data_as<float>(), score.data_as<float>(), num_windows,
                                      ratio, head_dim, overlap, first_entry, dout.data_as<float>(),
                                      dkv.data_as<float>(), dscore.data_as<float>(), Pool());
}

void SqrtSoftplusBackward(const TensorView& x, const TensorView& dy, const TensorView& dx) {
  const char* op = "SqrtSoftplusBackward";
  CheckContiguousF32(op, "x", x);
  CheckContiguousF32(op, "dy", dy);
  CheckContiguousF32(op, "dx", dx);
  V4RL_CHECK(x.numel() == dy.numel() && x.numel() == dx.numel())
      << op << ": x " << x.DebugString() << ", dy " << dy.DebugString() << ", dx "
      << dx.DebugString();
  cpu::SqrtSoftplusBackwardRef<float>(x.data_as<float>(), dy.data_as<float>(), dx.data_as<float>(),
                                      x.numel());
}

void SwiGluClampBackward(const TensorView& gate, const TensorView& up, float limit,
                         const TensorView& dy, const TensorView& dgate, const TensorView& dup) {
  const char* op = "SwiGluClampBackward";
  for (const auto& [name, v] :
       {std::pair{"gate", &gate}, std::pair{"up", &up}, std::pair{"dy", &dy},
        std::pair{"dgate", &dgate}, std::pair{"dup", &dup}}) {
    CheckContiguousF32(op, name, *v);
    V4RL_CHECK_EQ(v->numel(), gate.numel())
        << op << ": " << name << " " << v->DebugString() << " vs gate " << gate.DebugString();
  }
  cpu::SwiGluClampBackwardRef<float>(gate.data_as<float>(), up.data_as<float>(), limit,
                                     dy.data_as<float>(), dgate.data_as<float>(),
                                     dup.data_as<float>(), gate.numel());
}

void RoutingWeights(const TensorView& scores, const TensorView& topk_idx, float route_scale,
                    float denom_eps, const TensorView& weights) {
  const char* op = "RoutingWeights";
  CheckContiguousF32(op, "scores", scores);
  CheckContiguousF32(op, "weights", weights);
  V4RL_CHECK_EQ(scores.rank, 2) << op << ": scores " << scores.DebugString();
  CheckTopkIdx(op, topk_idx, scores.shape[0], scores.shape[1]);
  CheckShape(op, "weights", weights, {scores.shape[0], topk_idx.shape[1]});
  cpu::RoutingWeightsRef<float>(scores.data_as<float>(), topk_idx.data_as<int32_t>(),
                                scores.shape[0], scores.shape[1], topk_idx.shape[1], route_scale,
                                denom_eps, weights.data_as<float>());
}

void RoutingWeightsBackward(const TensorView& scores, const TensorView& topk_idx, float route_scale,
                            float denom_eps, const TensorView& dweights,
                            const TensorView& dscores) {
  const char* op = "RoutingWeightsBackward";
  CheckContiguousF32(op, "scores", scores);
  CheckContiguousF32(op, "dweights", dweights);
  CheckContiguousF32(op, "dscores", dscores);
  V4RL_CHECK_EQ(scores.rank, 2) << op << ": scores " << scores.DebugString();
  CheckTopkIdx(op, topk_idx, scores.shape[0], scores.shape[1]);
  CheckShape(op, "dweights", dweights, {scores.shape[0], topk_idx.shape[1]});
  CheckShape(op, "dscores", dscores, {scores.shape[0], scores.shape[1]});
  cpu::RoutingWeightsBackwardRef<float>(scores.data_as<float>(), topk_idx.data_as<int32_t>(),
                                        scores.shape[0], scores.shape[1], topk_idx.shape[1],
                                        route_scale, denom_eps, dweights.data_as<float>(),
                                        dscores.data_as<float>());
}

void MhcCoefficientsBackward(const TensorView& mixes, const TensorView& base,
                             const TensorView& scale, int64_t sinkhorn_iters, float eps,
                             const TensorView& dpre, const TensorView& dpost,
                             const TensorView& dcomb, const TensorView& dmixes,
                             const TensorView& dbase, const TensorView& dscale) {
  const char* op = "MhcCoefficientsBackward";
  for (const auto& [name, v] :
       {std::pair{"mixes", &mixes}, std::pair{"base", &base}, std::pair{"scale", &scale},
        std::pair{"dpre", &dpre}, std::pair{"dpost", &dpost}, std::pair{"dcomb", &dcomb},
        std::pair{"dmixes", &dmixes}, std::pair{"dbase", &dbase}, std::pair{"dscale", &dscale}}) {
    CheckContiguousF32(op, name, *v);
  }
  V4RL_CHECK_EQ(dpre.rank, 2) << op << ": dpre " << dpre.DebugString();
  const int64_t num_tokens = dpre.shape[0];
  const int64_t n = dpre.shape[1];
  CheckShape(op, "mixes", mixes, {num_tokens, (2 + n) * n});
  CheckShape(op, "dmixes", dmixes, {num_tokens, (2 + n) * n});
  CheckShape(op, "base", base, {(2 + n) * n});
  CheckShape(op, "dbase", dbase, {(2 + n) * n});
  CheckShape(op, "scale", scale, {3});
  CheckShape(op, "dscale", dscale, {3});
  CheckShape(op, "dpost", dpost, {num_tokens, n});
  CheckShape(op, "dcomb", dcomb, {num_tokens, n, n});
  V4RL_CHECK_GE(sinkhorn_iters, 1) << op;
  cpu::MhcCoefficientsBackwardRef<float>(
      mixes.data_as<float>(), base.data_as<float>(), scale.data_as<float>(), num_tokens, n,
      sinkhorn_iters, eps, dpre.data_as<float>(), dpost.data_as<float>(), dcomb.data_as<float>(),
      dmixes.data_as<float>(), dbase.data_as<float>(), dscale.data_as<float>(), Pool());
}

void HcHeadPreBackward(const TensorView& mixes, const TensorView& base, const TensorView& scale,
                       const TensorView& dpre, const TensorView& dmixes, const TensorView& dbase,
                       const TensorView& dscale) {
  const char* op = "HcHeadPreBackward";
  for (const auto& [name, v] :
       {std::pair{"mixes", &mixes}, std::pair{"base", &base}, std::pair{"scale", &scale},
        std::pair{"dpre", &dpre}, std::pair{"dmixes", &dmixes}, std::pair{"dbase", &dbase},
        std::pair{"dscale", &dscale}}) {
    CheckContiguousF32(op, name, *v);
  }
  V4RL_CHECK_EQ(mixes.rank, 2) << op << ": mixes " << mixes.DebugString();
  const int64_t num_tokens = mixes.shape[0], n = mixes.shape[1];
  CheckShape(op, "dpre", dpre, {num_tokens, n});
  CheckShape(op, "dmixes", dmixes, {num_tokens, n});
  CheckShape(op, "base", base, {n});
  CheckShape(op, "dbase", dbase, {n});
  CheckShape(op, "scale", scale, {1});
  CheckShape(op, "dscale", dscale, {1});
  cpu::HcHeadPreBackwardRef<float>(mixes.data_as<float>(), base.data_as<float>(),
                                   scale.data_as<float>(), num_tokens, n, dpre.data_as<float>(),
                                   dmixes.data_as<float>(), dbase.data_as<float>(),
                                   dscale.data_as<float>());
}

void MhcCollapseBackward(const TensorView& streams, const TensorView& pre, const TensorView& dout,
                         const TensorView& dstreams, const TensorView& dpre) {
  const char* op = "MhcCollapseBackward";
  for (const auto& [name, v] :
       {std::pair{"streams", &streams}, std::pair{"pre", &pre}, std::pair{"dout", &dout},
        std::pair{"dstreams", &dstreams}, std::pair{"dpre", &dpre}}) {
    CheckContiguousF32(op, name, *v);
  }
  V4RL_CHECK_EQ(streams.rank, 3) << op << ": streams " << streams.DebugString();
  const int64_t num_tokens = streams.shape[0], n = streams.shape[1], hidden = streams.shape[2];
  CheckShape(op, "pre", pre, {num_tokens, n});
  CheckShape(op, "dpre", dpre, {num_tokens, n});
  CheckShape(op, "dout", dout, {num_tokens, hidden});
  CheckShape(op, "dstreams", dstreams, {num_tokens, n, hidden});
  cpu::MhcCollapseBackwardRef<float>(streams.data_as<float>(), pre.data_as<float>(),
                                     dout.data_as<float>(), num_tokens, n, hidden,
                                     dstreams.data_as<float>(), dpre.data_as<float>(), Pool());
}

void MhcExpandBackward(const TensorView& streams, const TensorView& y, const TensorView& post,
                       const TensorView& comb, const TensorView& dout, const TensorView& dstreams,
                       const TensorView& dy, const TensorView& dpost, const TensorView& dcomb) {
  const char* op = "MhcExpandBackward";
  for (const auto& [name, v] :
       {std::pair{"streams", &streams}, std::pair{"y", &y}, std::pair{"post", &post},
        std::pair{"comb", &comb}, std::pair{"dout", &dout}, std::pair{"dstreams", &dstreams},
        std::pair{"dy", &dy}, std::pair{"dpost", &dpost}, std::pair{"dcomb", &dcomb}}) {
    CheckContiguousF32(op, name, *v);
  }
  V4RL_CHECK_EQ(streams.rank, 3) << op << ": streams " << streams.DebugString();
  const int64_t num_tokens = streams.shape[0], n = streams.shape[1], hidden = streams.shape[2];
  CheckShape(op, "dout", dout, {num_tokens, n, hidden});
  CheckShape(op, "dstreams", dstreams, {num_tokens, n, hidden});
  CheckShape(op, "y", y, {num_tokens, hidden});
  CheckShape(op, "dy", dy, {num_tokens, hidden});
  CheckShape(op, "post", post, {num_tokens, n});
  CheckShape(op, "dpost", dpost, {num_tokens, n});
  CheckShape(op, "comb", comb, {num_tokens, n, n});
  CheckShape(op, "dcomb", dcomb, {num_tokens, n, n});
  V4RL_CHECK(dstreams.data != dout.data) << op << ": dstreams must not alias dout";
  cpu::MhcExpandBackwardRef<float>(
      streams.data_as<float>(), y.data_as<float>(), post.data_as<float>(), comb.data_as<float>(),
      dout.data_as<float>(), num_tokens, n, hidden, dstreams.data_as<float>(), dy.data_as<float>(),
      dpost.data_as<float>(), dcomb.data_as<float>(), Pool());
}

}  // namespace v4rl::kernels
