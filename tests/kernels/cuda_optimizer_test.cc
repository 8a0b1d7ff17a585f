// GPU Muon (batched hybrid Newton-Schulz through cuBLAS) and fused AdamW against the CPU
// optimizer of learner/optimizer.h: f32 Newton-Schulz to 1e-5, two full optimizer steps (values,
// Muon momentum, Adam moments), and the bf16 Newton-Schulz by singular-value bands (bf16 GEMMs
// are not bit-comparable). gpu label; skips without a device.
#include <cmath>
#include <map>
#include <tuple>
#include <vector>

#include "absl/strings/str_format.h"

#include "gtest/gtest.h"
#include "kernels/cuda/blas.h"
#include "kernels/cuda/device.h"
#include "kernels/cuda/optimizer.h"
#include "learner/newton_schulz.h"
#include "learner/optimizer.h"
#include "tests/kernels/cuda_test_util.h"
#include "tests/testing/random_tensor.h"

namespace v4rl::kernels::cuda {
namespace {

using core::DType;
using core::Tensor;
using Matrix = std::vector<double>;

std::unique_ptr<BlasHandle> Blas() {
  auto handle = BlasHandle::Create();
  V4RL_CHECK(handle.ok()) << handle.status();
  return std::move(*handle);
}

// Eigen-decomposition of a symmetric n x n matrix by cyclic Jacobi rotations (as
// tests/learner/optimizer_test.cc).
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
        for (int k = 0; k < n; ++k) {
          const double akp = a[k * n + p], akq = a[k * n + q];
          a[k * n + p] = c * akp - s * akq;
          a[k * n + q] = s * akp + c * akq;
        }
        for (int k = 0; k < n; ++k) {
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

// (sigma_i(in), ||out v_i||) per right singular vector v_i of in [rows, cols].
std::vector<std::pair<double, double>> SingularValuePairs(const float* in, const float* out,
                                                          int rows, int cols) {
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

TEST(CudaMuon, NewtonSchulzF32MatchesCpuAndBf16StaysInBands) {
  if (DeviceCount() == 0) GTEST_SKIP() << "no CUDA device";
  auto blas = Blas();
  // Wide, tall (transposed internally) and a batch of experts.
  for (auto [count, rows, cols] : {std::tuple<int64_t, int64_t, int64_t>{1, 37, 53},
                                   {3, 71, 29}, {2, 48, 48}}) {
    const Tensor in = testing::RandomNormal({count, rows, cols}, rows * 7 + cols);
    Tensor want = Tensor::Empty(DType::kF32, {count, rows, cols});
    const int64_t size = rows * cols;
    for (int64_t b = 0; b < count; ++b) {
      learner::HybridNewtonSchulz(absl::MakeConstSpan(in.data<float>() + b * size, size), rows,
                                  cols, absl::MakeSpan(want.data<float>() + b * size, size));
    }
    const Tensor din = testing::ToDevice(in, DType::kF32);
    const Tensor out = Tensor::Empty(DType::kF32, {count, rows, cols}, DeviceAllocator());
    NewtonSchulzParams params;
    params.bf16 = false;
    ASSERT_TRUE(NewtonSchulz(*blas, din.view(), out.view(), params).ok());
    const std::string shape = absl::StrFormat("%dx[%d, %d]", count, rows, cols);
    EXPECT_TRUE(testing::CloseAndReport("newton-schulz f32 " + shape,
                                        testing::ToHost(out.view()).view(), want.view(),
                                        {.atol = 1e-5, .rtol = 0}));
    params.bf16 = true;
    ASSERT_TRUE(NewtonSchulz(*blas, din.view(), out.view(), params).ok());
    const Tensor got = testing::ToHost(out.view());
    const int narrow = static_cast<int>(std::min(rows, cols));
    double worst_gap = 0, lowest = 10, highest = 0;
    for (int64_t b = 0; b < count; ++b) {
      // Singular values live in the smaller dimension: analyse the wide orientation's columns
      // through the transpose when tall.
      std::vector<float> in_t(size), got_t(size), want_t(size);
      for (int64_t r = 0; r < rows; ++r) {
        for (int64_t c = 0; c < cols; ++c) {
          const int64_t src = b * size + r * cols + c;
          const int64_t dst = rows > cols ? r * cols + c : c * rows + r;  // [big, narrow]
          in_t[dst] = in.data<float>()[src];
          got_t[dst] = got.data<float>()[src];
          want_t[dst] = want.data<float>()[src];
        }
      }
      const int big = static_cast<int>(std::max(rows, cols));
      const auto gpu = SingularValuePairs(in_t.data(), got_t.data(), big, narrow);
      const auto cpu = SingularValuePairs(in_t.data(), want_t.data(), big, narrow);
      for (int i = 0; i < narrow; ++i) {
        worst_gap = std::max(worst_gap, std::fabs(gpu[i].second - cpu[i].second));
        lowest = std::min(lowest, gpu[i].second);
        highest = std::max(highest, gpu[i].second);
      }
    }
    std::printf("[measured] newton-schulz bf16 %s: ||out v_i|| in [%.4f, %.4f], max |gpu - cpu| "
                "%.4f (tolerance: band [0.7, 1.2], gap 0.1)\n",
                shape.c_str(), lowest, highest, worst_gap);
    EXPECT_GE(lowest, 0.7);
    EXPECT_LE(highest, 1.2);
    EXPECT_LE(worst_gap, 0.1);
  }
}

TEST(CudaMuon, TwoOptimizerStepsMatchCpuOptimizer) {
  if (DeviceCount() == 0) GTEST_SKIP() << "no CUDA device";
  auto blas = Blas();
  struct Param {
    std::string name;
    core::Shape shape;
  };
  const std::vector<Param> params = {{"layers.0.attn.wq_a.weight", {37, 53}},
                                     {"layers.0.ffn.experts.w1.weight", {3, 71, 29}},
                                     {"layers.0.attn_norm.weight", {37}}};
  std::vector<Tensor> values, grads, device_values, device_grads, first, second;
  std::vector<learner::TrainableParameter> trainable;
  for (size_t i = 0; i < params.size(); ++i) {
    values.push_back(testing::RandomNormal(params[i].shape, 50 + i, 0.1f));
    grads.push_back(Tensor::Zeros(DType::kF32, params[i].shape));
    device_values.push_back(testing::ToDevice(values[i], DType::kF32));
    device_grads.push_back(testing::ToDevice(Tensor::Zeros(DType::kF32, params[i].shape), DType::kF32));
    first.push_back(testing::ToDevice(Tensor::Zeros(DType::kF32, params[i].shape), DType::kF32));
    second.push_back(testing::ToDevice(Tensor::Zeros(DType::kF32, params[i].shape), DType::kF32));
    trainable.push_back({params[i].name, values[i].view(), grads[i].view()});
  }
  learner::MuonOptions muon;
  learner::AdamWOptions adamw;
  auto optimizer = learner::Optimizer::Create(trainable, muon, adamw);
  ASSERT_TRUE(optimizer.ok()) << optimizer.status();
  const float lr = 0.02f;
  for (int step = 1; step <= 2; ++step) {
    for (size_t i = 0; i < params.size(); ++i) {
      const Tensor g = testing::RandomNormal(params[i].shape, 100 * step + i);
      std::copy(g.data<float>(), g.data<float>() + g.numel(), grads[i].data<float>());
      ASSERT_TRUE(Copy(g.view(), device_grads[i].view()).ok());
    }
    optimizer->Step(lr);
    for (size_t i = 0; i < params.size(); ++i) {
      const learner::ParameterAssignment& a = optimizer->assignments()[i];
      if (a.kind == learner::OptimizerKind::kMuon) {
        MuonParams p;
        p.lr = lr;
        p.momentum = muon.momentum;
        p.nesterov = muon.nesterov;
        p.weight_decay = muon.weight_decay;
        p.update_rms = muon.update_rms;
        p.newton_schulz.bf16 = false;
        const core::Shape stack = {a.num_matrices, a.rows, a.cols};
        ASSERT_TRUE(MuonStep(*blas, device_values[i].view().Reshape(stack),
                             device_grads[i].view().Reshape(stack), first[i].view().Reshape(stack),
                             p)
                        .ok());
      } else {
        AdamWParams p;
        p.lr = lr * adamw.lr_scale;
        p.beta1 = adamw.beta1;
        p.beta2 = adamw.beta2;
        p.epsilon = adamw.epsilon;
        p.weight_decay = adamw.weight_decay;
        p.step = step;
        ASSERT_TRUE(AdamWStep(device_values[i].view(), device_grads[i].view(), first[i].view(),
                              second[i].view(), p)
                        .ok());
      }
    }
  }
  // The CPU state by name.
  std::map<std::string, core::TensorView> state;
  for (const auto& [name, view] : optimizer->StateTensors()) state[name] = view;
  for (size_t i = 0; i < params.size(); ++i) {
    const bool is_muon = optimizer->assignments()[i].kind == learner::OptimizerKind::kMuon;
    // Values move by lr·0.18 per step: 1e-6 absolute is 3e-4 of an update.
    EXPECT_TRUE(testing::CloseAndReport(params[i].name + " value after 2 steps",
                                        testing::ToHost(device_values[i].view()).view(),
                                        values[i].view(), {.atol = 1e-6, .rtol = 1e-5}));
    const std::string first_name = params[i].name + (is_muon ? ".muon_momentum" : ".adam_m");
    EXPECT_TRUE(testing::CloseAndReport(first_name, testing::ToHost(first[i].view()).view(),
                                        state[first_name], {.atol = 1e-6, .rtol = 1e-6}));
    if (!is_muon) {
      const std::string second_name = params[i].name + ".adam_v";
      EXPECT_TRUE(testing::CloseAndReport(second_name, testing::ToHost(second[i].view()).view(),
                                          state[second_name], {.atol = 1e-7, .rtol = 1e-6}));
    }
  }
}

}  // namespace
}  // namespace v4rl::kernels::cuda
