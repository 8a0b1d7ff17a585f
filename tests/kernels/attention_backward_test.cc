// Sparse attention backward against finite differences of SparseAttentionRef in float64, for
// the three key sets of V4 (window only; window + indexer-selected compressed entries; window +
// every visible compressed entry), plus thread-count independence in float.
#include "kernels/cpu/attention_backward.h"

#include <vector>

#include "core/thread_pool.h"
#include "gtest/gtest.h"
#include "kernels/cpu/attention.h"
#include "tests/testing/finite_difference.h"

namespace v4rl::kernels::cpu {
namespace {

using testing::Dot;
using testing::GradientMatches;
using testing::NumericalGradient;
using testing::RandomDoubles;

enum class Keys { kWindow, kSelected, kAllVisible };

struct Problem {
  int64_t num_q = 7, heads = 2, dim = 5, num_comp = 3, topk = 2, window = 3, ratio = 2;
  int64_t q_pos0 = 0, kv_pos0 = 0;
  Keys keys = Keys::kWindow;
  std::vector<double> q, kv, comp_kv, sink, upstream;
  std::vector<int32_t> comp_idx;
  int64_t num_kv() const { return q_pos0 + num_q - kv_pos0; }
};

Problem MakeProblem(Keys keys, int64_t q_pos0) {
  Problem p;
  p.keys = keys;
  p.q_pos0 = q_pos0;
  p.kv_pos0 = q_pos0 > 0 ? 1 : 0;  // with an offset, raw KV starts before the first query
  p.q = RandomDoubles(p.num_q * p.heads * p.dim, 101);
  p.kv = RandomDoubles(p.num_kv() * p.dim, 102);
  p.comp_kv = RandomDoubles(p.num_comp * p.dim, 103);
  p.sink = RandomDoubles(p.heads, 104);
  p.upstream = RandomDoubles(p.num_q * p.heads * p.dim, 105);
  // Picks per query: ascending ids with -1 padding, some queries with none.
  p.comp_idx = {-1, -1, 0, -1, 0, -1, 0, 1, 1, 2, 0, 2, 0, 1};
  return p;
}

template <typename T>
SparseAttentionParams<T> ForwardParams(const Problem& p) {
  SparseAttentionParams<T> a;
  a.num_q = p.num_q;
  a.num_heads = p.heads;
  a.head_dim = p.dim;
  a.num_kv = p.num_kv();
  a.q_pos0 = p.q_pos0;
  a.kv_pos0 = p.kv_pos0;
  a.window = p.window;
  a.scale = T(0.7);
  if (p.keys != Keys::kWindow) {
    a.num_comp = p.num_comp;
    if (p.keys == Keys::kSelected) {
      a.comp_idx = p.comp_idx.data();
      a.comp_topk = p.topk;
    } else {
      a.comp_ratio = p.ratio;
    }
  }
  return a;
}

double Objective(const Problem& p, const std::vector<double>& q, const std::vector<double>& kv,
                 const std::vector<double>& comp_kv, const std::vector<double>& sink) {
  SparseAttentionParams<double> a = ForwardParams<double>(p);
  std::vector<double> out(p.num_q * p.heads * p.dim);
  a.q = q.data();
  a.kv = kv.data();
  a.comp_kv = p.keys == Keys::kWindow ? nullptr : comp_kv.data();
  a.sink = sink.data();
  a.out = out.data();
  SparseAttentionRef<double>(a, nullptr);
  return Dot(p.upstream, out);
}

struct Grads {
  std::vector<double> dq, dkv, dcomp_kv, dsink;
};

Grads Analytic(const Problem& p, core::ThreadPool* pool) {
  Grads g{std::vector<double>(p.q.size()), std::vector<double>(p.kv.size()),
          std::vector<double>(p.comp_kv.size()), std::vector<double>(p.sink.size())};
  const SparseAttentionParams<double> f = ForwardParams<double>(p);
  SparseAttentionBackwardParams<double> b;
  b.q = p.q.data();
  b.kv = p.kv.data();
  b.comp_kv = p.keys == Keys::kWindow ? nullptr : p.comp_kv.data();
  b.comp_idx = f.comp_idx;
  b.sink = p.sink.data();
  b.dout = p.upstream.data();
  b.dq = g.dq.data();
  b.dkv = g.dkv.data();
  b.dcomp_kv = p.keys == Keys::kWindow ? nullptr : g.dcomp_kv.data();
  b.dsink = g.dsink.data();
  b.num_q = f.num_q;
  b.num_heads = f.num_heads;
  b.head_dim = f.head_dim;
  b.num_kv = f.num_kv;
  b.num_comp = f.num_comp;
  b.comp_topk = f.comp_topk;
  b.q_pos0 = f.q_pos0;
  b.kv_pos0 = f.kv_pos0;
  b.window = f.window;
  b.comp_ratio = f.comp_ratio;
  b.scale = f.scale;
  SparseAttentionBackwardRef<double>(b, pool);
  return g;
}

class SparseAttentionBackwardTest : public ::testing::TestWithParam<std::tuple<Keys, int64_t>> {};

TEST_P(SparseAttentionBackwardTest, MatchesFiniteDifferences) {
  const Problem p = MakeProblem(std::get<0>(GetParam()), std::get<1>(GetParam()));
  core::ThreadPool pool(2);
  const Grads g = Analytic(p, &pool);
  auto numeric_q = NumericalGradient(
      [&](const std::vector<double>& z) { return Objective(p, z, p.kv, p.comp_kv, p.sink); }, p.q);
  auto numeric_kv = NumericalGradient(
      [&](const std::vector<double>& z) { return Objective(p, p.q, z, p.comp_kv, p.sink); }, p.kv);
  auto numeric_sink = NumericalGradient(
      [&](const std::vector<double>& z) { return Objective(p, p.q, p.kv, p.comp_kv, z); }, p.sink);
  EXPECT_TRUE(GradientMatches("dq", g.dq, numeric_q));
  EXPECT_TRUE(GradientMatches("dkv", g.dkv, numeric_kv));
  EXPECT_TRUE(GradientMatches("dsink", g.dsink, numeric_sink));
  if (p.keys != Keys::kWindow) {
    auto numeric_comp = NumericalGradient(
        [&](const std::vector<double>& z) { return Objective(p, p.q, p.kv, z, p.sink); },
        p.comp_kv);
    EXPECT_TRUE(GradientMatches("dcomp_kv", g.dcomp_kv, numeric_comp));
  }
}

INSTANTIATE_TEST_SUITE_P(KeySets, SparseAttentionBackwardTest,
                         ::testing::Combine(::testing::Values(Keys::kWindow, Keys::kSelected,
                                                              Keys::kAllVisible),
                                            ::testing::Values(int64_t{0}, int64_t{2})));

TEST(SparseAttentionBackward, UnselectedCompressedEntriesGetNoGradient) {
  Problem p = MakeProblem(Keys::kSelected, 0);
  for (int32_t& id : p.comp_idx) {
    if (id == 2) id = -1;  // nobody picks entry 2
  }
  const Grads g = Analytic(p, nullptr);
  for (int64_t d = 0; d < p.dim; ++d) EXPECT_EQ(g.dcomp_kv[2 * p.dim + d], 0.0);
}

TEST(SparseAttentionBackward, FloatResultsDoNotDependOnThreadCountOrChunks) {
  const Problem p = MakeProblem(Keys::kSelected, 2);
  auto to_float = [](const std::vector<double>& v) {
    return std::vector<float>(v.begin(), v.end());
  };
  const std::vector<float> q = to_float(p.q), kv = to_float(p.kv), comp = to_float(p.comp_kv),
                           sink = to_float(p.sink), up = to_float(p.upstream);
  auto run = [&](core::ThreadPool* pool, int64_t chunk_items) {
    std::vector<float> dq(q.size()), dkv(kv.size()), dcomp(comp.size()), dsink(sink.size());
    const SparseAttentionParams<float> f = ForwardParams<float>(p);
    SparseAttentionBackwardParams<float> b;
    b.q = q.data();
    b.kv = kv.data();
    b.comp_kv = comp.data();
    b.comp_idx = f.comp_idx;
    b.sink = sink.data();
    b.dout = up.data();
    b.dq = dq.data();
    b.dkv = dkv.data();
    b.dcomp_kv = dcomp.data();
    b.dsink = dsink.data();
    b.num_q = f.num_q;
    b.num_heads = f.num_heads;
    b.head_dim = f.head_dim;
    b.num_kv = f.num_kv;
    b.num_comp = f.num_comp;
    b.comp_topk = f.comp_topk;
    b.q_pos0 = f.q_pos0;
    b.kv_pos0 = f.kv_pos0;
    b.window = f.window;
    b.scale = f.scale;
    b.chunk_items = chunk_items;
    SparseAttentionBackwardRef<float>(b, pool);
    dq.insert(dq.end(), dkv.begin(), dkv.end());
    dq.insert(dq.end(), dcomp.begin(), dcomp.end());
    dq.insert(dq.end(), dsink.begin(), dsink.end());
    return dq;
  };
  core::ThreadPool pool(3);
  const std::vector<float> serial = run(nullptr, 0);
  EXPECT_EQ(serial, run(&pool, 0));
  // Scratch chunks of 3 (query, head) items, splitting queries: the same sums in the same order.
  EXPECT_EQ(serial, run(&pool, 3));
}

}  // namespace
}  // namespace v4rl::kernels::cpu
