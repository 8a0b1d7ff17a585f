// Muon (hybrid Newton-Schulz) and AdamW against float64 references written here, the
// parameter-to-optimizer assignment, the LR schedule and the loss-spike detector.
#include "learner/optimizer.h"

#include <cmath>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "learner/loss_spike_detector.h"
#include "learner/lr_schedule.h"
#include "tests/testing/random_tensor.h"
#include "tests/testing/status_matchers.h"

namespace v4rl::learner {
namespace {

using Matrix = std::vector<double>;  // row-major

// Eigen-decomposition of a symmetric n x n matrix by cyclic Jacobi rotations (test-only, small n).
void SymmetricEigen(Matrix a, int n, std::vector<double>& values, Matrix& vectors) {
  vectors.assign(n * n, 0.0);
  for (int i = 0; i < n; ++i) vectors[i * n + i] = 1.0;
  for (int sweep = 0; sweep < 100; ++sweep) {
    double off = 0;
    for (int p = 0; p < n; ++p)
      for (int q = p + 1; q < n; ++q) off += a[p * n + q] * a[p * n + q];
    if (off < 1e-26) break;
    for (int p = 0; p < n; ++p) {
      for (int q = p + 1; q < n; ++q) {
        if (std::fabs(a[p * n + q]) < 1e-300) continue;
        const double theta = (a[q * n + q] - a[p * n + p]) / (2 * a[p * n + q]);
        const double t = (theta >= 0 ? 1 : -1) / (std::fabs(theta) + std::sqrt(theta * theta + 1));
        const double c = 1 / std::sqrt(t * t + 1), s = t * c;
        for (int k = 0; k < n; ++k) {  // columns p, q
          const double akp = a[k * n + p], akq = a[k * n + q];
          a[k * n + p] = c * akp - s * akq;
          a[k * n + q] = s * akp + c * akq;
        }
        for (int k = 0; k < n; ++k) {  // rows p, q
          const double apk = a[p * n + k], aqk = a[q * n + k];
          a[p * n + k] = c * apk - s * aqk;
          a[q * n + k] = s * apk + c * aqk;
        }
        for (int k = 0; k < n; ++k) {
          const double vkp = vectors[k * n + p], vkq = vectors[k * n + q];
          vectors[k * n + p] = c * vkp - s * vkq;
          vectors[k * n + q] = s * vkp + c * vkq;
        }
      }
    }
  }
  values.resize(n);
  for (int i = 0; i < n; ++i) values[i] = a[i * n + i];
}

// For each right singular vector v_i of `in` [rows, cols], returns (sigma_i(in), ||out v_i||):
// Newton-Schulz is a matrix polynomial, so it keeps the singular vectors of its input.
std::vector<std::pair<double, double>> SingularValuePairs(const std::vector<float>& in,
                                                          const std::vector<float>& out, int rows,
                                                          int cols) {
  Matrix gram(cols * cols, 0.0);
  for (int i = 0; i < cols; ++i)
    for (int j = 0; j < cols; ++j)
      for (int r = 0; r < rows; ++r) gram[i * cols + j] += double(in[r * cols + i]) * in[r * cols + j];
  std::vector<double> values;
  Matrix vectors;
  SymmetricEigen(gram, cols, values, vectors);
  std::vector<std::pair<double, double>> pairs;
  for (int e = 0; e < cols; ++e) {
    double norm_sq = 0;
    for (int r = 0; r < rows; ++r) {
      double dot = 0;
      for (int c = 0; c < cols; ++c) dot += double(out[r * cols + c]) * vectors[c * cols + e];
      norm_sq += dot * dot;
    }
    pairs.emplace_back(std::sqrt(std::max(values[e], 0.0)), std::sqrt(norm_sq));
  }
  return pairs;
}

std::vector<float> RandomMatrix(int rows, int cols, uint64_t seed) {
  return testing::RandomNormal({rows, cols}, seed).ToFloatVector();
}

void ExpectOrthogonalised(const std::vector<float>& in, int rows, int cols) {
  std::vector<float> out(in.size());
  HybridNewtonSchulz(in, rows, cols, absl::MakeSpan(out));
  const auto pairs = SingularValuePairs(in, out, rows, cols);
  double largest = 0;
  for (const auto& [sigma, unused] : pairs) largest = std::max(largest, sigma);
  int checked = 0;
  for (const auto& [sigma, result] : pairs) {
    if (sigma < 1e-3 * largest) continue;
    EXPECT_GE(result, 0.9) << "input singular value " << sigma << " of max " << largest;
    EXPECT_LE(result, 1.1) << "input singular value " << sigma << " of max " << largest;
    ++checked;
  }
  EXPECT_GT(checked, 0);
}

TEST(NewtonSchulz, SquareTallWideAndRankDeficient) {
  ExpectOrthogonalised(RandomMatrix(64, 64, 1), 64, 64);
  ExpectOrthogonalised(RandomMatrix(96, 32, 2), 96, 32);
  ExpectOrthogonalised(RandomMatrix(32, 96, 3), 32, 96);
  // Rank 10 = [64 x 10] x [10 x 48]; the zero singular values stay zero.
  const auto left = RandomMatrix(64, 10, 4), right = RandomMatrix(10, 48, 5);
  std::vector<float> low_rank(64 * 48, 0.0f);
  for (int i = 0; i < 64; ++i)
    for (int k = 0; k < 10; ++k)
      for (int j = 0; j < 48; ++j) low_rank[i * 48 + j] += left[i * 10 + k] * right[k * 48 + j];
  ExpectOrthogonalised(low_rank, 64, 48);
  // A spread spectrum: singular values from 1 down to 1e-3 along a random basis.
  std::vector<float> spread = RandomMatrix(40, 40, 6);
  for (int r = 0; r < 40; ++r)
    for (int c = 0; c < 40; ++c) spread[r * 40 + c] *= std::pow(10.0f, -3.0f * c / 39);
  ExpectOrthogonalised(spread, 40, 40);
}

TEST(NewtonSchulz, ZeroInputGivesZero) {
  std::vector<float> zeros(12, 0.0f), out(12, 1.0f);
  HybridNewtonSchulz(zeros, 3, 4, absl::MakeSpan(out));
  for (float v : out) EXPECT_EQ(v, 0.0f);
}

// ---- float64 Muon reference ----

Matrix Multiply(const Matrix& a, const Matrix& b, int n, int k, int m) {
  Matrix c(n * m, 0.0);
  for (int i = 0; i < n; ++i)
    for (int p = 0; p < k; ++p)
      for (int j = 0; j < m; ++j) c[i * m + j] += a[i * k + p] * b[p * m + j];
  return c;
}

Matrix Transposed(const Matrix& a, int rows, int cols) {
  Matrix t(a.size());
  for (int r = 0; r < rows; ++r)
    for (int c = 0; c < cols; ++c) t[c * rows + r] = a[r * cols + c];
  return t;
}

Matrix ReferenceNewtonSchulz(Matrix x, int rows, int cols) {
  const bool tall = rows > cols;
  if (tall) x = Transposed(x, rows, cols);
  const int n = tall ? cols : rows, m = tall ? rows : cols;
  double norm = 0;
  for (double v : x) norm += v * v;
  norm = std::sqrt(norm) + 1e-7;
  for (double& v : x) v /= norm;
  for (int it = 0; it < 10; ++it) {
    const double a = it < 8 ? 3.4445 : 2.0, b = it < 8 ? -4.7750 : -1.5, c = it < 8 ? 2.0315 : 0.5;
    const Matrix gram = Multiply(x, Transposed(x, n, m), n, m, n);
    const Matrix gram_sq = Multiply(gram, gram, n, n, n);
    Matrix poly(n * n);
    for (int i = 0; i < n * n; ++i) poly[i] = b * gram[i] + c * gram_sq[i];
    const Matrix px = Multiply(poly, x, n, n, m);
    for (int i = 0; i < n * m; ++i) x[i] = a * x[i] + px[i];
  }
  return tall ? Transposed(x, n, m) : x;
}

TEST(Muon, TwoStepsEqualFloat64Reference) {
  const int rows = 24, cols = 40, experts = 3;
  core::Tensor weight = testing::RandomNormal({experts, rows, cols}, 10, 0.1f);
  core::Tensor grad = core::Tensor::Zeros(core::DType::kF32, {experts, rows, cols});
  Matrix ref_weight(weight.data<float>(), weight.data<float>() + weight.numel());
  Matrix ref_momentum(ref_weight.size(), 0.0);
  MuonOptions muon;
  V4RL_ASSERT_OK_AND_ASSIGN(
      Optimizer optimizer,
      Optimizer::Create({{"layers.0.ffn.experts.w2", weight.view(), grad.view()}}, muon, {}));
  EXPECT_EQ(optimizer.assignments()[0].num_matrices, experts);
  const float lr = 0.02f;
  for (int step = 0; step < 2; ++step) {
    core::Tensor g = testing::RandomNormal({experts, rows, cols}, 20 + step);
    std::copy(g.data<float>(), g.data<float>() + g.numel(), grad.data<float>());
    optimizer.Step(lr);
    const int size = rows * cols;
    for (int e = 0; e < experts; ++e) {
      Matrix input(size);
      for (int k = 0; k < size; ++k) {
        double& mom = ref_momentum[e * size + k];
        mom = 0.95 * mom + g.data<float>()[e * size + k];
        input[k] = 0.95 * mom + g.data<float>()[e * size + k];
      }
      const Matrix update = ReferenceNewtonSchulz(input, rows, cols);
      const double scale = 0.18 * std::sqrt(double(std::max(rows, cols)));
      for (int k = 0; k < size; ++k) {
        double& w = ref_weight[e * size + k];
        w = w * (1 - lr * 0.1) - lr * scale * update[k];
      }
    }
  }
  double max_error = 0, max_value = 0;
  for (size_t k = 0; k < ref_weight.size(); ++k) {
    max_error = std::max(max_error, std::fabs(weight.data<float>()[k] - ref_weight[k]));
    max_value = std::max(max_value, std::fabs(ref_weight[k]));
  }
  EXPECT_LT(max_error, 2e-5 * max_value) << "max error " << max_error;
}

TEST(Muon, UpdateRmsIs018) {
  for (auto [rows, cols] : {std::pair{64, 64}, {96, 32}, {32, 80}}) {
    core::Tensor weight = core::Tensor::Zeros(core::DType::kF32, {rows, cols});
    core::Tensor grad = testing::RandomNormal({rows, cols}, rows + cols);
    MuonOptions muon;
    muon.weight_decay = 0;
    V4RL_ASSERT_OK_AND_ASSIGN(
        Optimizer optimizer,
        Optimizer::Create({{"layers.0.attn.wq_a.weight", weight.view(), grad.view()}}, muon, {}));
    optimizer.Step(1.0f);  // weight = -update
    double sum_sq = 0;
    for (int64_t k = 0; k < weight.numel(); ++k) sum_sq += double(weight.data<float>()[k]) * weight.data<float>()[k];
    EXPECT_NEAR(std::sqrt(sum_sq / weight.numel()), 0.18, 1e-3) << rows << "x" << cols;
  }
}

TEST(AdamW, StepsEqualFloat64Reference) {
  core::Tensor weight = testing::RandomNormal({7}, 30);
  core::Tensor grad = core::Tensor::Zeros(core::DType::kF32, {7});
  std::vector<double> w(weight.data<float>(), weight.data<float>() + 7), m(7, 0), v(7, 0);
  AdamWOptions adamw;
  V4RL_ASSERT_OK_AND_ASSIGN(
      Optimizer optimizer, Optimizer::Create({{"norm.weight", weight.view(), grad.view()}}, {}, adamw));
  for (int step = 1; step <= 3; ++step) {
    core::Tensor g = testing::RandomNormal({7}, 40 + step);
    std::copy(g.data<float>(), g.data<float>() + 7, grad.data<float>());
    optimizer.Step(0.01f);
    for (int k = 0; k < 7; ++k) {
      const double gk = g.data<float>()[k];
      m[k] = 0.9 * m[k] + 0.1 * gk;
      v[k] = 0.95 * v[k] + 0.05 * gk * gk;
      const double m_hat = m[k] / (1 - std::pow(0.9, step)), v_hat = v[k] / (1 - std::pow(0.95, step));
      w[k] = w[k] * (1 - 0.01 * 0.1) - 0.01 * m_hat / (std::sqrt(v_hat) + 1e-8);
    }
  }
  for (int k = 0; k < 7; ++k) EXPECT_NEAR(weight.data<float>()[k], w[k], 1e-6);
}

TEST(Optimizer, AssignsByNameAndShape) {
  auto kind = [](const std::string& name, std::vector<int64_t> shape) {
    return AssignOptimizer(name, shape).kind;
  };
  EXPECT_EQ(kind("embed.weight", {100, 8}), OptimizerKind::kAdamW);
  EXPECT_EQ(kind("model.embed_tokens.weight", {100, 8}), OptimizerKind::kAdamW);
  EXPECT_EQ(kind("lm_head.weight", {100, 8}), OptimizerKind::kAdamW);
  EXPECT_EQ(kind("layers.0.attn_norm.weight", {8}), OptimizerKind::kAdamW);
  EXPECT_EQ(kind("layers.0.hc_attn_base", {24}), OptimizerKind::kAdamW);
  EXPECT_EQ(kind("layers.0.hc_attn_scale", {3}), OptimizerKind::kAdamW);
  EXPECT_EQ(kind("layers.0.hc_attn_fn", {24, 32}), OptimizerKind::kMuon);
  EXPECT_EQ(kind("layers.0.attn.compressor.ape", {4, 16}), OptimizerKind::kAdamW);
  EXPECT_EQ(kind("layers.3.ffn.gate.bias", {8}), OptimizerKind::kFrozen);
  EXPECT_EQ(kind("model.layers.3.mlp.gate.e_score_correction_bias", {8}), OptimizerKind::kFrozen);
  EXPECT_EQ(kind("layers.0.ffn.gate.weight", {8, 16}), OptimizerKind::kMuon);
  const ParameterAssignment merged =
      AssignOptimizer("model.layers.0.mlp.experts.gate_up_proj", {8, 32, 16});
  EXPECT_EQ(merged.num_matrices, 16);
  EXPECT_EQ(merged.rows, 16);
}

TEST(Optimizer, StateRoundTripAndErrors) {
  core::Tensor weight = testing::RandomNormal({4, 6}, 50), grad = testing::RandomNormal({4, 6}, 51);
  core::Tensor norm = testing::RandomNormal({6}, 52), norm_grad = testing::RandomNormal({6}, 53);
  std::vector<TrainableParameter> params = {{"w.weight", weight.view(), grad.view()},
                                            {"n.weight", norm.view(), norm_grad.view()}};
  V4RL_ASSERT_OK_AND_ASSIGN(Optimizer a, Optimizer::Create(params, {}, {}));
  a.Step(0.1f);
  V4RL_ASSERT_OK_AND_ASSIGN(Optimizer b, Optimizer::Create(params, {}, {}));
  V4RL_ASSERT_OK(b.LoadState(a.StateTensors()));
  EXPECT_EQ(b.step(), 1);
  EXPECT_THAT(b.LoadState({}), testing::StatusIs(absl::StatusCode::kInvalidArgument,
                                                 ::testing::HasSubstr("missing w.weight.muon_momentum")));
  EXPECT_THAT(a.Summary(), ::testing::HasSubstr("w.weight"));
  core::Tensor bad_grad = testing::RandomNormal({3}, 1);
  EXPECT_THAT(Optimizer::Create({{"x", weight.view(), bad_grad.view()}}, {}, {}),
              testing::StatusIs(absl::StatusCode::kInvalidArgument, ::testing::HasSubstr("x: grad")));
}

TEST(LrSchedule, WarmupThenCosine) {
  WarmupCosineSchedule schedule{.peak_lr = 1.0, .end_lr = 0.1, .warmup_steps = 10, .total_steps = 110};
  V4RL_EXPECT_OK(schedule.Validate());
  EXPECT_DOUBLE_EQ(schedule.LearningRate(5), 0.5);
  EXPECT_DOUBLE_EQ(schedule.LearningRate(10), 1.0);
  EXPECT_NEAR(schedule.LearningRate(60), 0.55, 1e-12);
  EXPECT_DOUBLE_EQ(schedule.LearningRate(110), 0.1);
  EXPECT_DOUBLE_EQ(schedule.LearningRate(500), 0.1);
  WarmupCosineSchedule bad{.peak_lr = -1, .end_lr = 0, .warmup_steps = 5, .total_steps = 2};
  EXPECT_THAT(bad.Validate(), testing::StatusIs(absl::StatusCode::kInvalidArgument,
                                                ::testing::AllOf(::testing::HasSubstr("peak_lr"),
                                                                 ::testing::HasSubstr("warmup_steps"))));
}

TEST(LossSpikeDetector, FlagsOutliersAfterWarmup) {
  LossSpikeDetector detector(4.0, 0.9, 5);
  for (int i = 0; i < 30; ++i) EXPECT_FALSE(detector.Observe(2.0 + 0.01 * (i % 3)));
  EXPECT_TRUE(detector.Observe(5.0));
  EXPECT_TRUE(detector.Observe(std::nan("")));
  EXPECT_FALSE(detector.Observe(2.01));
  EXPECT_EQ(detector.num_spikes(), 2);
}

}  // namespace
}  // namespace v4rl::learner
