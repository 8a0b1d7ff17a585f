// SideStream (kernels/cuda/stream.h): a GEMM forked to the side stream is complete for the launch
// stream's later work once Join returns — launch by launch and inside a recorded CUDA graph — and
// a second Fork before Join is refused. The GEMM is large (~0.5 ms) so that a missing wait would
// let the copy after it read unfinished rows.
#include <cstdint>
#include <cstring>
#include <memory>

#include "gtest/gtest.h"
#include "kernels/cuda/device.h"
#include "kernels/cuda/gemm.h"
#include "kernels/cuda/graph.h"
#include "kernels/cuda/stream.h"
#include "tests/kernels/cuda_test_util.h"
#include "tests/testing/random_tensor.h"

namespace v4rl::kernels::cuda {
namespace {

using core::DType;
using core::Tensor;

constexpr int64_t kM = 2048, kN = 4096, kK = 4096;

Tensor Dev(DType dtype, std::initializer_list<int64_t> shape) {
  return Tensor::Empty(dtype, shape, DeviceAllocator());
}

// x [kM, kK] and w [kN, kK] bf16; `expected` = x · wᵀ f32 through the launch stream alone.
struct Operands {
  Tensor x = testing::ToDevice(testing::RandomNormal({kM, kK}, 1), DType::kBF16);
  Tensor w = testing::ToDevice(testing::RandomNormal({kN, kK}, 2, 0.02f), DType::kBF16);
  Tensor expected = Dev(DType::kF32, {kM, kN});
};

void ExpectBitEqual(const Tensor& got, const Tensor& expected) {
  const Tensor a = testing::ToHost(got.view()), b = testing::ToHost(expected.view());
  ASSERT_EQ(a.numel(), b.numel());
  EXPECT_EQ(std::memcmp(a.data<float>(), b.data<float>(), sizeof(float) * a.numel()), 0);
}

class CudaSideStream : public ::testing::Test {
 protected:
  void SetUp() override {
    if (DeviceCount() == 0) GTEST_SKIP() << "no CUDA device";
    auto main_gemm = GemmHandle::Create();
    auto side_gemm_or = GemmHandle::Create();
    auto side_or = SideStream::Create();
    ASSERT_TRUE(main_gemm.ok() && side_gemm_or.ok() && side_or.ok());
    side_gemm = *std::move(side_gemm_or);
    side = *std::move(side_or);
    ops = std::make_unique<Operands>();
    ASSERT_TRUE(Gemm(**main_gemm, ops->x.view(), ops->w.view(), ops->expected.view()).ok());
    ASSERT_TRUE(Synchronize().ok());
  }
  // Forks x · wᵀ into `out`, joins, copies out to `copy` on the launch stream.
  absl::Status ForkJoinCopy(const Tensor& out, const Tensor& copy) {
    if (absl::Status s =
            side->Fork([&] { return Gemm(*side_gemm, ops->x.view(), ops->w.view(), out.view()); });
        !s.ok()) {
      return s;
    }
    if (absl::Status s = side->Join(); !s.ok()) return s;
    return CopyOnDevice(out.view(), copy.view());
  }
  std::unique_ptr<GemmHandle> side_gemm;
  std::unique_ptr<SideStream> side;
  std::unique_ptr<Operands> ops;
};

TEST_F(CudaSideStream, ForkedWorkIsCompleteAfterJoin) {
  const Tensor out = Dev(DType::kF32, {kM, kN}), copy = Dev(DType::kF32, {kM, kN});
  ASSERT_TRUE(ForkJoinCopy(out, copy).ok());
  ASSERT_TRUE(Synchronize().ok());
  ExpectBitEqual(copy, ops->expected);
}

TEST_F(CudaSideStream, ForkedWorkJoinsAGraphCapture) {
  const Tensor out = Dev(DType::kF32, {kM, kN}), copy = Dev(DType::kF32, {kM, kN});
  auto graph = CudaGraph::Capture([&] { return ForkJoinCopy(out, copy); });
  ASSERT_TRUE(graph.ok()) << graph.status();
  const Tensor zeros = testing::ToDevice(Tensor::Zeros(DType::kF32, {kM, kN}), DType::kF32);
  for (int replay = 0; replay < 2; ++replay) {
    ASSERT_TRUE(Copy(zeros.view(), copy.view()).ok());
    ASSERT_TRUE(Copy(zeros.view(), out.view()).ok());
    ASSERT_TRUE((*graph)->Launch().ok());
    ASSERT_TRUE(Synchronize().ok());
    ExpectBitEqual(copy, ops->expected);
  }
}

TEST_F(CudaSideStream, SecondForkBeforeJoinIsRefused) {
  const Tensor out = Dev(DType::kF32, {kM, kN});
  auto queue = [&] { return Gemm(*side_gemm, ops->x.view(), ops->w.view(), out.view()); };
  ASSERT_TRUE(side->Fork(queue).ok());
  EXPECT_EQ(side->Fork(queue).code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_TRUE(side->Join().ok());
  EXPECT_TRUE(side->Join().ok());  // nothing pending: a no-op
  EXPECT_TRUE(Synchronize().ok());
}

}  // namespace
}  // namespace v4rl::kernels::cuda
