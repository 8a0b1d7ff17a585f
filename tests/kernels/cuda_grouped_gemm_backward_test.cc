// The routed experts' backward GEMMs on the Hopper kernels (kernels/cuda/grouped_gemm.h:
// GroupedGemmInputGradDeviceOffsets, GroupedGemmWeightGradDeviceOffsets) against f64 host sums
// of the same bf16 values, on uneven experts (empty ones, the last too; 1 row; 63, 64 and 65 rows
// around the weight-gradient kernel's 64-token stages; 129 and 300 rows over several input-
// gradient passes), and the inputs they reject (gpu label; skips without a device or on another
// compute capability than 9.0).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_format.h"
#include "gtest/gtest.h"
#include "kernels/cuda/device.h"
#include "kernels/cuda/grouped_gemm.h"
#include "tests/kernels/cuda_test_util.h"
#include "tests/testing/random_tensor.h"

namespace v4rl::kernels::cuda {
namespace {

using core::DType;
using core::Tensor;
using testing::RandomNormal;

const std::vector<int64_t> kCounts = {47, 0, 1, 64, 65, 200, 0, 63, 129, 3, 300, 0};

// `rows` x `cols` bf16-valued normals, rows from `first_spare` on NaN (rows no expert owns: a
// kernel that reads them into a sum turns it to NaN).
Tensor Operand(int64_t rows, int64_t cols, int64_t first_spare, uint64_t seed, float scale) {
  Tensor t = testing::RoundToBf16(RandomNormal({rows, cols}, seed, scale));
  for (int64_t i = first_spare * cols; i < rows * cols; ++i) {
    t.data<float>()[i] = std::numeric_limits<float>::quiet_NaN();
  }
  return t;
}

// Expected |got - want| bound of an f32-accumulated sum of `terms` products of magnitude about
// `scale` (a generous multiple of the f32 rounding of the partial sums).
bool Close(float got, double want, int64_t terms, double scale) {
  return std::abs(got - want) <=
         1e-5 + 1e-5 * std::sqrt(static_cast<double>(terms)) * scale + 1e-4 * std::abs(want);
}

// dx[r] = dy[r] · w[e] (+ dy2[r] · w2[e]) at the mid config's shapes (the down projection's input
// gradient: N 2048 -> K 1024; gate and up summed: N 1024 + 1024 -> K 2048) and a small one whose N
// is a multiple of 64 only; f32 and bf16 dx; rows past offsets[E] (NaN inputs) keep the sentinel.
TEST(CudaGroupedGemmBackward, InputGradMatchesHostSums) {
  if (DeviceCount() == 0) GTEST_SKIP() << "no CUDA device";
  struct Case {
    int64_t n, k;
    bool two;
  };
  const testing::ExpertOffsets expert_offsets = testing::MakeExpertOffsets(kCounts);
  const std::vector<int64_t>& offsets = expert_offsets.host;
  const Tensor& d_offsets = expert_offsets.device;
  const int64_t experts = static_cast<int64_t>(kCounts.size()), picks = offsets.back();
  const int64_t rows = picks + 5;
  constexpr float kSentinel = -1024.0f;
  for (const Case c : {Case{2048, 1024, false}, Case{1024, 2048, true}, Case{192, 256, true}}) {
    const Tensor dy = Operand(rows, c.n, picks, 7 + c.n, 1.0f);
    const Tensor dy2 = Operand(rows, c.n, picks, 8 + c.n, 1.0f);
    const Tensor w = testing::RoundToBf16(RandomNormal({experts, c.n, c.k}, 9 + c.k, 0.02f));
    const Tensor w2 = testing::RoundToBf16(RandomNormal({experts, c.n, c.k}, 10 + c.k, 0.02f));
    const Tensor d_dy = testing::ToDevice(dy, DType::kBF16),
                 d_dy2 = testing::ToDevice(dy2, DType::kBF16);
    const Tensor d_w = testing::ToDevice(w, DType::kBF16),
                 d_w2 = testing::ToDevice(w2, DType::kBF16);
    if (!GroupedGemmInputGradApplies(d_dy.view(), d_w.view())) {
      GTEST_SKIP() << "the Hopper kernels need a compute capability 9.0 device";
    }
    // Host sums in f64 over the same bf16 values.
    std::vector<double> want(picks * c.k, 0.0);
    for (int64_t e = 0; e < experts; ++e) {
      for (int64_t r = offsets[e]; r < offsets[e + 1]; ++r) {
        for (int64_t i = 0; i < c.n; ++i) {
          const double a = dy.data<float>()[r * c.n + i], a2 = dy2.data<float>()[r * c.n + i];
          const float* wrow = w.data<float>() + (e * c.n + i) * c.k;
          const float* w2row = w2.data<float>() + (e * c.n + i) * c.k;
          double* out = want.data() + r * c.k;
          for (int64_t j = 0; j < c.k; ++j) out[j] += a * wrow[j] + (c.two ? a2 * w2row[j] : 0.0);
        }
      }
    }
    Tensor sentinel = Tensor::Empty(DType::kF32, {rows, c.k});
    for (int64_t i = 0; i < rows * c.k; ++i) sentinel.data<float>()[i] = kSentinel;
    for (const DType out_dtype : {DType::kF32, DType::kBF16}) {
      const bool bf16 = out_dtype == DType::kBF16;
      const std::string name =
          absl::StrFormat("input grad N %d K %d %s %s", c.n, c.k, c.two ? "two pairs" : "one pair",
                          bf16 ? "bf16" : "f32");
      const Tensor dx = testing::ToDevice(sentinel, out_dtype);
      const absl::Status s = GroupedGemmInputGradDeviceOffsets(
          d_dy.view(), d_w.view(), c.two ? d_dy2.view() : core::TensorView(),
          c.two ? d_w2.view() : core::TensorView(), d_offsets.view(), dx.view());
      ASSERT_TRUE(s.ok()) << name << ": " << s;
      const Tensor got = testing::ToHost(dx.view());
      const int64_t terms = c.two ? 2 * c.n : c.n;
      int64_t bad = 0;
      for (int64_t i = 0; i < picks * c.k; ++i) {
        const float g = got.data<float>()[i];
        const bool ok = bf16 ? std::abs(g - want[i]) <= 1e-3 + 8e-3 * std::abs(want[i])
                             : Close(g, want[i], terms, 0.02);
        if (!ok && ++bad <= 5) {
          ADD_FAILURE() << name << ": row " << i / c.k << " col " << i % c.k << " got " << g
                        << " want " << want[i];
        }
      }
      EXPECT_EQ(bad, 0) << name;
      for (int64_t i = picks * c.k; i < rows * c.k; ++i) {
        ASSERT_EQ(got.data<float>()[i], kSentinel) << name << ": row " << i / c.k;
      }
    }
  }
}

// dw[e] = Σ_{r of e} dy[r]ᵀ x[r] at the mid config's shapes (w1/w3: N 1024, K 2048; w2: N 2048,
// K 1024) and a small one; dw starts as NaN (every element, empty experts' too, is overwritten);
// the rows past offsets[E] are NaN and must stay out of the last experts' sums (the kernel zeroes
// the rows of a stage past its expert's end).
TEST(CudaGroupedGemmBackward, WeightGradMatchesHostSums) {
  if (DeviceCount() == 0) GTEST_SKIP() << "no CUDA device";
  const testing::ExpertOffsets expert_offsets = testing::MakeExpertOffsets(kCounts);
  const std::vector<int64_t>& offsets = expert_offsets.host;
  const Tensor& d_offsets = expert_offsets.device;
  const int64_t experts = static_cast<int64_t>(kCounts.size()), picks = offsets.back();
  const int64_t rows = picks + 37;
  for (const auto& [n, k] : {std::pair<int64_t, int64_t>{1024, 2048}, {2048, 1024}, {128, 256}}) {
    const Tensor dy = Operand(rows, n, picks, 21 + n, 1.0f);
    const Tensor x = Operand(rows, k, picks, 22 + k, 1.0f);
    const Tensor d_dy = testing::ToDevice(dy, DType::kBF16),
                 d_x = testing::ToDevice(x, DType::kBF16);
    Tensor nan = Tensor::Empty(DType::kF32, {experts, n, k});
    for (int64_t i = 0; i < nan.numel(); ++i) {
      nan.data<float>()[i] = std::numeric_limits<float>::quiet_NaN();
    }
    const Tensor dw = testing::ToDevice(nan, DType::kF32);
    if (!GroupedGemmWeightGradApplies(d_dy.view(), d_x.view(), dw.view())) {
      GTEST_SKIP() << "the Hopper kernels need a compute capability 9.0 device";
    }
    const std::string name = absl::StrFormat("weight grad N %d K %d", n, k);
    const absl::Status s =
        GroupedGemmWeightGradDeviceOffsets(d_dy.view(), d_x.view(), d_offsets.view(), dw.view());
    ASSERT_TRUE(s.ok()) << name << ": " << s;
    const Tensor got = testing::ToHost(dw.view());
    int64_t bad = 0;
    std::vector<double> want(n * k);
    for (int64_t e = 0; e < experts; ++e) {
      std::fill(want.begin(), want.end(), 0.0);
      for (int64_t r = offsets[e]; r < offsets[e + 1]; ++r) {
        const float* xr = x.data<float>() + r * k;
        for (int64_t i = 0; i < n; ++i) {
          const double a = dy.data<float>()[r * n + i];
          double* out = want.data() + i * k;
          for (int64_t j = 0; j < k; ++j) out[j] += a * xr[j];
        }
      }
      const float* g = got.data<float>() + e * n * k;
      for (int64_t i = 0; i < n * k; ++i) {
        if (!Close(g[i], want[i], kCounts[e], 1.0) && ++bad <= 5) {
          ADD_FAILURE() << name << ": expert " << e << " (" << kCounts[e] << " rows) row " << i / k
                        << " col " << i % k << " got " << g[i] << " want " << want[i];
        }
      }
    }
    EXPECT_EQ(bad, 0) << name;
  }
}

// Shapes the kernels do not serve are an InvalidArgument naming the need, and mismatched views
// name the expected shapes; nothing is launched.
TEST(CudaGroupedGemmBackward, RejectsUnservedShapesAndMismatches) {
  if (DeviceCount() == 0) GTEST_SKIP() << "no CUDA device";
  const Tensor offsets = testing::ToDevice(Tensor::Zeros(DType::kI32, {3}), DType::kI32);
  auto dev = [](DType dtype, std::vector<int64_t> shape) {
    return Tensor::Empty(dtype, shape, DeviceAllocator());
  };
  const Tensor dy = dev(DType::kBF16, {4, 128}), w = dev(DType::kBF16, {2, 128, 192});
  const Tensor dx = dev(DType::kF32, {4, 192});
  absl::Status s = GroupedGemmInputGradDeviceOffsets(dy.view(), w.view(), core::TensorView(),
                                                     core::TensorView(), offsets.view(), dx.view());
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  if (GroupedGemmInputGradApplies(dy.view(), dev(DType::kBF16, {2, 128, 256}).view())) {
    EXPECT_NE(s.message().find("multiple of 128"), std::string::npos) << s;
  }
  const Tensor wrong_dx = dev(DType::kF32, {4, 256});
  s = GroupedGemmInputGradDeviceOffsets(dy.view(), dev(DType::kBF16, {2, 128, 128}).view(),
                                        core::TensorView(), core::TensorView(), offsets.view(),
                                        wrong_dx.view());
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  EXPECT_NE(s.message().find("dx [R, K]"), std::string::npos) << s;

  const Tensor x = dev(DType::kBF16, {4, 192}), dw = dev(DType::kF32, {2, 128, 192});
  s = GroupedGemmWeightGradDeviceOffsets(dy.view(), x.view(), offsets.view(), dw.view());
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  const Tensor bf16_dw = dev(DType::kBF16, {2, 128, 128});
  s = GroupedGemmWeightGradDeviceOffsets(dy.view(), dev(DType::kBF16, {4, 128}).view(),
                                         offsets.view(), bf16_dw.view());
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  EXPECT_NE(s.message().find("dw"), std::string::npos) << s;
}

}  // namespace
}  // namespace v4rl::kernels::cuda
