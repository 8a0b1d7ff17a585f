#include "kernels/ops.h"

#include <atomic>

#include "core/logging.h"
#include "core/thread_pool.h"
#include "kernels/cpu/attention.h"
#include "kernels/cpu/compressor.h"
#include "kernels/cpu/elementwise.h"
#include "kernels/cpu/indexer.h"
#include "kernels/cpu/linear.h"
#include "kernels/cpu/mhc.h"
#include "kernels/op_checks.h"

namespace v4rl::kernels {
namespace {

using core::DType;

using internal::AsRows;
using internal::CheckContiguousF32;
using internal::CheckCpuF32;
using internal::CheckShape;
using internal::Present;
using internal::Rows;

std::atomic<core::ThreadPool*> scoped_pool{nullptr};

core::ThreadPool* Pool() {
  core::ThreadPool* pool = scoped_pool.load(std::memory_order_acquire);
  return pool != nullptr ? pool : &core::ThreadPool::Default();
}

}  // namespace

ScopedOpsThreadPool::ScopedOpsThreadPool(core::ThreadPool* pool)
    : previous_(scoped_pool.exchange(pool, std::memory_order_acq_rel)) {}

ScopedOpsThreadPool::~ScopedOpsThreadPool() {
  scoped_pool.store(previous_, std::memory_order_release);
}

core::ThreadPool* OpsThreadPool() { return Pool(); }

void Linear(const TensorView& x, const TensorView& w, const TensorView& out) {
  const Rows a = AsRows("Linear", "x", x);
  const Rows b = AsRows("Linear", "w", w);
  const Rows c = AsRows("Linear", "out", out);
  V4RL_CHECK(a.cols == b.cols && c.rows == a.rows && c.cols == b.rows)
      << "Linear: x " << x.DebugString() << " · wᵀ " << w.DebugString() << " -> out "
      << out.DebugString();
  cpu::LinearRef(a.data, a.ld, b.data, b.ld, c.data, c.ld, a.rows, b.rows, a.cols, Pool());
}

void RmsNorm(const TensorView& x, const TensorView& weight, float eps, const TensorView& out) {
  const Rows a = AsRows("RmsNorm", "x", x);
  const Rows c = AsRows("RmsNorm", "out", out);
  V4RL_CHECK(a.rows == c.rows && a.cols == c.cols)
      << "RmsNorm: x " << x.DebugString() << " vs out " << out.DebugString();
  const float* w = nullptr;
  if (Present(weight)) {
    CheckContiguousF32("RmsNorm", "weight", weight);
    CheckShape("RmsNorm", "weight", weight, {a.cols});
    w = weight.data_as<float>();
  }
  cpu::RmsNormRef(a.data, a.ld, w, eps, c.data, c.ld, a.rows, a.cols, Pool());
}

void ApplyRope(const TensorView& x, const TensorView& cos, const TensorView& sin, bool inverse) {
  CheckCpuF32("ApplyRope", "x", x);
  V4RL_CHECK(x.rank == 3 && x.strides[2] == 1)
      << "ApplyRope: x must be [M, heads, head_dim] with a contiguous last dim, got "
      << x.DebugString();
  CheckContiguousF32("ApplyRope", "cos", cos);
  CheckContiguousF32("ApplyRope", "sin", sin);
  V4RL_CHECK(cos.rank == 2 && cos.shape[0] == x.shape[0] && 2 * cos.shape[1] <= x.shape[2])
      << "ApplyRope: cos " << cos.DebugString() << " does not fit x " << x.DebugString();
  CheckShape("ApplyRope", "sin", sin, {cos.shape[0], cos.shape[1]});
  cpu::RopeRef(x.data_as<float>(), x.shape[0], x.shape[1], x.strides[0], x.strides[1],
               x.shape[2], 2 * cos.shape[1], cos.data_as<float>(), sin.data_as<float>(), inverse,
               Pool());
}

void SparseAttention(const SparseAttentionArgs& args) {
  const char* op = "SparseAttention";
  cpu::SparseAttentionParams<float> p;
  internal::CheckSparseAttentionInputs(op, args, &p);
  const int64_t num_q = p.num_q, num_heads = p.num_heads;
  CheckContiguousF32(op, "out", args.out);
  CheckShape(op, "out", args.out, {num_q, num_heads, p.head_dim});
  p.out = args.out.data_as<float>();
  if (Present(args.lse)) {
    CheckContiguousF32(op, "lse", args.lse);
    CheckShape(op, "lse", args.lse, {num_q, num_heads});
    p.lse = args.lse.data_as<float>();
  }
  cpu::SparseAttentionRef(p, Pool());
}

void CompressPool(const TensorView& kv, const TensorView& score, int64_t ratio, bool overlap,
                  int64_t first_entry, const TensorView& out) {
  const char* op = "CompressPool";
  CheckContiguousF32(op, "kv", kv);
  CheckContiguousF32(op, "score", score);
  CheckContiguousF32(op, "out", out);
  V4RL_CHECK(kv.rank == 2 && score.SameShape(kv.shape_vector()))
      << op << ": kv " << kv.DebugString() << " vs score " << score.DebugString();
  V4RL_CHECK(ratio > 0 && kv.shape[0] % ratio == 0)
      << op << ": rows " << kv.shape[0] << " are not whole windows of " << ratio;
  const int64_t head_dim = overlap ? kv.shape[1] / 2 : kv.shape[1];
  V4RL_CHECK(!overlap || kv.shape[1] % 2 == 0) << op << ": overlap needs an even width";
  const int64_t num_windows = kv.shape[0] / ratio;
  V4RL_CHECK(first_entry >= 0 && first_entry <= num_windows) << op << ": first_entry";
  CheckShape(op, "out", out, {num_windows - first_entry, head_dim});
  cpu::CompressPoolRef(kv.data_as<float>(), score.data_as<float>(), num_windows, ratio, head_dim,
                       overlap, first_entry, out.data_as<float>(), Pool());
}

void IndexerTopK(const TensorView& q, const TensorView& weights, const TensorView& keys,
                 int64_t q_pos0, int64_t ratio, float score_scale, const TensorView& topk_idx) {
  const char* op = "IndexerTopK";
  CheckContiguousF32(op, "q", q);
  CheckContiguousF32(op, "weights", weights);
  CheckContiguousF32(op, "keys", keys);
  V4RL_CHECK_EQ(q.rank, 3) << op << ": q " << q.DebugString();
  const int64_t num_q = q.shape[0], num_heads = q.shape[1], head_dim = q.shape[2];
  CheckShape(op, "weights", weights, {num_q, num_heads});
  V4RL_CHECK(keys.rank == 2 && keys.shape[1] == head_dim)
      << op << ": keys " << keys.DebugString() << " vs q " << q.DebugString();
  V4RL_CHECK(topk_idx.dtype == DType::kI32 && topk_idx.is_contiguous() && topk_idx.rank == 2 &&
             topk_idx.shape[0] == num_q)
      << op << ": topk_idx must be contiguous i32 [num_q, k], got " << topk_idx.DebugString();
  V4RL_CHECK_GT(ratio, 0) << op;
  cpu::IndexerTopKParams p;
  p.q = q.data_as<float>();
  p.weights = weights.data_as<float>();
  p.keys = keys.data_as<float>();
  p.topk_idx = topk_idx.data_as<int32_t>();
  p.num_q = num_q;
  p.num_heads = num_heads;
  p.head_dim = head_dim;
  p.num_keys = keys.shape[0];
  p.topk = topk_idx.shape[1];
  p.q_pos0 = q_pos0;
  p.ratio = ratio;
  p.score_scale = score_scale;
  cpu::IndexerTopKRef(p, Pool());
}

void SqrtSoftplus(const TensorView& x, const TensorView& out) {
  CheckContiguousF32("SqrtSoftplus", "x", x);
  CheckContiguousF32("SqrtSoftplus", "out", out);
  V4RL_CHECK_EQ(x.numel(), out.numel()) << "SqrtSoftplus";
  cpu::SqrtSoftplusRef(x.data_as<float>(), out.data_as<float>(), x.numel());
}

void SwiGluClamp(const TensorView& gate, const TensorView& up, float limit,
                 const TensorView& out) {
  CheckContiguousF32("SwiGluClamp", "gate", gate);
  CheckContiguousF32("SwiGluClamp", "up", up);
  CheckContiguousF32("SwiGluClamp", "out", out);
  V4RL_CHECK(gate.numel() == up.numel() && gate.numel() == out.numel())
      << "SwiGluClamp: gate " << gate.DebugString() << " up " << up.DebugString() << " out "
      << out.DebugString();
  cpu::SwiGluClampRef(gate.data_as<float>(), up.data_as<float>(), limit, out.data_as<float>(),
                      gate.numel());
}

void MhcCoefficients(const TensorView& mixes, const TensorView& base, const TensorView& scale,
                     int64_t sinkhorn_iters, float eps, const TensorView& pre,
                     const TensorView& post, const TensorView& comb) {
  const char* op = "MhcCoefficients";
  for (const auto& [name, v] : {std::pair{"mixes", &mixes}, std::pair{"base", &base},
                                std::pair{"scale", &scale}, std::pair{"pre", &pre},
                                std::pair{"post", &post}, std::pair{"comb", &comb}}) {
    CheckContiguousF32(op, name, *v);
  }
  V4RL_CHECK_EQ(pre.rank, 2) << op << ": pre " << pre.DebugString();
  const int64_t num_tokens = pre.shape[0];
  const int64_t n = pre.shape[1];
  CheckShape(op, "mixes", mixes, {num_tokens, (2 + n) * n});
  CheckShape(op, "base", base, {(2 + n) * n});
  CheckShape(op, "scale", scale, {3});
  CheckShape(op, "post", post, {num_tokens, n});
  CheckShape(op, "comb", comb, {num_tokens, n, n});
  V4RL_CHECK_GE(sinkhorn_iters, 1) << op;
  cpu::MhcCoefficientsRef(mixes.data_as<float>(), base.data_as<float>(), scale.data_as<float>(),
                          num_tokens, n, sinkhorn_iters, eps, pre.data_as<float>(),
                          post.data_as<float>(), comb.data_as<float>(), Pool());
}

void HcHeadPre(const TensorView& mixes, const TensorView& base, const TensorView& scale,
               float eps, const TensorView& pre) {
  const char* op = "HcHeadPre";
  CheckContiguousF32(op, "mixes", mixes);
  CheckContiguousF32(op, "base", base);
  CheckContiguousF32(op, "scale", scale);
  CheckContiguousF32(op, "pre", pre);
  V4RL_CHECK_EQ(pre.rank, 2) << op << ": pre " << pre.DebugString();
  CheckShape(op, "mixes", mixes, {pre.shape[0], pre.shape[1]});
  CheckShape(op, "base", base, {pre.shape[1]});
  CheckShape(op, "scale", scale, {1});
  cpu::HcHeadPreRef(mixes.data_as<float>(), base.data_as<float>(), scale.data_as<float>(),
                    pre.shape[0], pre.shape[1], eps, pre.data_as<float>());
}

void MhcCollapse(const TensorView& streams, const TensorView& pre, const TensorView& out) {
  const char* op = "MhcCollapse";
  CheckContiguousF32(op, "streams", streams);
  CheckContiguousF32(op, "pre", pre);
  CheckContiguousF32(op, "out", out);
  V4RL_CHECK_EQ(streams.rank, 3) << op << ": streams " << streams.DebugString();
  const int64_t num_tokens = streams.shape[0], n = streams.shape[1], hidden = streams.shape[2];
  CheckShape(op, "pre", pre, {num_tokens, n});
  CheckShape(op, "out", out, {num_tokens, hidden});
  cpu::MhcCollapseRef(streams.data_as<float>(), pre.data_as<float>(), num_tokens, n, hidden,
                      out.data_as<float>(), Pool());
}

void MhcExpand(const TensorView& streams, const TensorView& y, const TensorView& post,
               const TensorView& comb, const TensorView& out) {
  const char* op = "MhcExpand";
  CheckContiguousF32(op, "streams", streams);
  CheckContiguousF32(op, "y", y);
  CheckContiguousF32(op, "post", post);
  CheckContiguousF32(op, "comb", comb);
  CheckContiguousF32(op, "out", out);
  V4RL_CHECK_EQ(streams.rank, 3) << op << ": streams " << streams.DebugString();
  const int64_t num_tokens = streams.shape[0], n = streams.shape[1], hidden = streams.shape[2];
  CheckShape(op, "y", y, {num_tokens, hidden});
  CheckShape(op, "post", post, {num_tokens, n});
  CheckShape(op, "comb", comb, {num_tokens, n, n});
  CheckShape(op, "out", out, {num_tokens, n, hidden});
  V4RL_CHECK(out.data != streams.data) << op << ": out must not alias streams";
  cpu::MhcExpandRef(streams.data_as<float>(), y.data_as<float>(), post.data_as<float>(),
                    comb.data_as<float>(), num_tokens, n, hidden, out.data_as<float>(), Pool());
}

}  // namespace v4rl::kernels
