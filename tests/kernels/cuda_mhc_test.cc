// Fused CUDA mHC pre (stream RMS, mixes, gates, Sinkhorn, collapse), hc_head pre and mHC post
// against the CPU references composed as model/mhc.cc does, on bf16-rounded streams and odd
// sizes, and MhcPre's runs repeating bit for bit on 300 tokens (gpu label; skips without a device).
#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/cpu/elementwise.h"
#include "kernels/cpu/linear.h"
#include "kernels/cpu/mhc.h"
#include "kernels/cuda/device.h"
#include "kernels/cuda/elementwise.h"
#include "kernels/cuda/mhc.h"
#include "tests/kernels/cuda_test_util.h"
#include "tests/testing/random_tensor.h"

namespace v4rl::kernels::cuda {
namespace {

using core::DType;
using core::Tensor;
using testing::RandomNormal;

// Coefficients in f32: the mixes differ from the CPU's by summation order ((Σ x·fn)/rms against
// Σ (x/rms)·fn), ~1e-6 relative, which the gates and 20 Sinkhorn rounds do not amplify past 1e-4.
constexpr testing::Tolerance kCoefficients{.atol = 2e-5, .rtol = 1e-4};
constexpr testing::Tolerance kBf16Out{.atol = 1e-4, .rtol = 4e-3};

struct Reference {
  Tensor pre, post, comb, collapsed;
};

Reference CpuPre(const Tensor& streams, const Tensor& fn, const Tensor& base, const Tensor& scale,
                 bool head, int64_t iters) {
  const int64_t num_tokens = streams.size(0), n = streams.size(1), hidden = streams.size(2);
  const int64_t width = n * hidden, num_mixes = fn.size(0);
  Tensor normed = Tensor::Empty(DType::kF32, {num_tokens, width});
  cpu::RmsNormRef(streams.data<float>(), width, static_cast<const float*>(nullptr), 1e-6f,
                  normed.data<float>(), width, num_tokens, width, nullptr);
  Tensor mixes = Tensor::Empty(DType::kF32, {num_tokens, num_mixes});
  cpu::LinearRef(normed.data<float>(), width, fn.data<float>(), width, mixes.data<float>(),
                 num_mixes, num_tokens, num_mixes, width, nullptr);
  Reference r;
  r.pre = Tensor::Empty(DType::kF32, {num_tokens, n});
  r.post = Tensor::Empty(DType::kF32, {num_tokens, n});
  r.comb = Tensor::Empty(DType::kF32, {num_tokens, n, n});
  if (head) {
    cpu::HcHeadPreRef(mixes.data<float>(), base.data<float>(), scale.data<float>(), num_tokens, n,
                      1e-6f, r.pre.data<float>());
  } else {
    cpu::MhcCoefficientsRef(mixes.data<float>(), base.data<float>(), scale.data<float>(),
                            num_tokens, n, iters, 1e-6f, r.pre.data<float>(), r.post.data<float>(),
                            r.comb.data<float>(), nullptr);
  }
  r.collapsed = Tensor::Empty(DType::kF32, {num_tokens, hidden});
  cpu::MhcCollapseRef(streams.data<float>(), r.pre.data<float>(), num_tokens, n, hidden,
                      r.collapsed.data<float>(), nullptr);
  return r;
}

// How the mixes' fn reaches the device: as is (f32), or split into bf16 high and low rows
// (SplitMhcFn) used by the fused kernel or by a cuBLASLt GEMM ahead of it.
enum class FnPath { kF32, kSplitFused, kSplitGemm };

void CheckPre(int64_t n, int64_t hidden, bool head, uint64_t seed, FnPath path = FnPath::kF32) {
  const int64_t num_tokens = 17, num_mixes = head ? n : (2 + n) * n;
  const Tensor streams = testing::RoundToBf16(RandomNormal({num_tokens, n, hidden}, seed, 2.0f));
  const Tensor fn = RandomNormal({num_mixes, n * hidden}, seed + 1, 0.05f);
  const Tensor base = RandomNormal({num_mixes}, seed + 2, 0.5f);
  const Tensor scale = RandomNormal({head ? 1 : 3}, seed + 3, 1.0f);
  const Reference want = CpuPre(streams, fn, base, scale, head, 20);

  const Tensor d_streams = testing::ToDevice(streams, DType::kBF16);
  const Tensor d_fn =
      path == FnPath::kF32
          ? testing::ToDevice(fn, DType::kF32)
          : testing::ToDevice(core::ToFloat32(SplitMhcFn(fn.view()).view()), DType::kBF16);
  auto gemm = GemmHandle::Create();
  ASSERT_TRUE(gemm.ok()) << gemm.status();
  const Tensor d_base = testing::ToDevice(base, DType::kF32);
  const Tensor d_scale = testing::ToDevice(scale, DType::kF32);
  MhcPreArgs args;
  args.streams = d_streams.view();
  args.fn = d_fn.view();
  args.fn_split = path != FnPath::kF32;
  args.gemm = path == FnPath::kSplitGemm ? gemm->get() : nullptr;
  args.base = d_base.view();
  args.scale = d_scale.view();
  const Tensor pre = Tensor::Empty(DType::kF32, {num_tokens, n}, DeviceAllocator());
  const Tensor post = Tensor::Empty(DType::kF32, {num_tokens, n}, DeviceAllocator());
  const Tensor comb = Tensor::Empty(DType::kF32, {num_tokens, n, n}, DeviceAllocator());
  const Tensor collapsed = Tensor::Empty(DType::kBF16, {num_tokens, hidden}, DeviceAllocator());
  args.pre = pre.view();
  args.post = post.view();
  args.comb = comb.view();
  args.collapsed = collapsed.view();
  args.sinkhorn_iters = 20;
  ASSERT_TRUE((head ? HcHeadPre(args) : MhcPre(args)).ok());
  const char* path_name[] = {"f32 fn", "split fn", "split fn gemm"};
  const std::string tag = std::string(head ? "hc_head" : "mhc pre") + " n=" + std::to_string(n) +
                          " H=" + std::to_string(hidden) + " " + path_name[static_cast<int>(path)];
  EXPECT_TRUE(testing::CloseAndReport(tag + " pre", testing::ToHost(pre.view()).view(),
                                      want.pre.view(), kCoefficients));
  if (!head) {
    EXPECT_TRUE(testing::CloseAndReport(tag + " post", testing::ToHost(post.view()).view(),
                                        want.post.view(), kCoefficients));
    EXPECT_TRUE(testing::CloseAndReport(tag + " comb", testing::ToHost(comb.view()).view(),
                                        want.comb.view(), kCoefficients));
  }
  EXPECT_TRUE(testing::CloseAndReport(tag + " collapsed", testing::ToHost(collapsed.view()).view(),
                                      want.collapsed.view(), kBf16Out));
}

TEST(CudaMhc, PreMatchesCpuOddSizes) {
  if (DeviceCount() == 0) GTEST_SKIP() << "no CUDA device";
  CheckPre(4, 333, /*head=*/false, 1);
  CheckPre(2, 77, /*head=*/false, 11);
  CheckPre(3, 1029, /*head=*/false, 21);
}

TEST(CudaMhc, PreWithSplitFnMatchesCpuFusedAndThroughGemm) {
  if (DeviceCount() == 0) GTEST_SKIP() << "no CUDA device";
  for (FnPath path : {FnPath::kSplitFused, FnPath::kSplitGemm}) {
    CheckPre(4, 333, /*head=*/false, 51, path);
    CheckPre(4, 512, /*head=*/false, 61, path);  // aligned rows: the cuBLASLt path proper
    CheckPre(4, 333, /*head=*/true, 71, path);
  }
}

TEST(CudaMhc, HcHeadPreMatchesCpu) {
  if (DeviceCount() == 0) GTEST_SKIP() << "no CUDA device";
  CheckPre(4, 333, /*head=*/true, 31);
}

// MhcPre / HcHeadPre with norm_weight against the same call without it followed by RmsNorm:
// the same bits when RmsNorm runs 256 threads over 8-wide rows (H = 2048), within bf16 rounding
// otherwise (H = 512: another partition of the row; H = 333: RmsNorm after the kernel).
void CheckFusedNorm(int64_t hidden, bool head, uint64_t seed, bool expect_same_bits) {
  const int64_t num_tokens = 17, n = 4, num_mixes = head ? n : (2 + n) * n;
  const Tensor d_streams =
      testing::ToDevice(RandomNormal({num_tokens, n, hidden}, seed, 2.0f), DType::kBF16);
  const Tensor fn = RandomNormal({num_mixes, n * hidden}, seed + 1, 0.05f);
  const Tensor d_fn =
      testing::ToDevice(core::ToFloat32(SplitMhcFn(fn.view()).view()), DType::kBF16);
  const Tensor d_base = testing::ToDevice(RandomNormal({num_mixes}, seed + 2, 0.5f), DType::kF32);
  const Tensor d_scale =
      testing::ToDevice(RandomNormal({head ? 1 : 3}, seed + 3, 1.0f), DType::kF32);
  const Tensor d_norm = testing::ToDevice(RandomNormal({hidden}, seed + 4, 1.0f), DType::kF32);
  auto gemm = GemmHandle::Create();
  ASSERT_TRUE(gemm.ok()) << gemm.status();
  auto run = [&](bool fused) {
    const Tensor pre = Tensor::Empty(DType::kF32, {num_tokens, n}, DeviceAllocator());
    const Tensor post = Tensor::Empty(DType::kF32, {num_tokens, n}, DeviceAllocator());
    const Tensor comb = Tensor::Empty(DType::kF32, {num_tokens, n, n}, DeviceAllocator());
    const Tensor x = Tensor::Empty(DType::kBF16, {num_tokens, hidden}, DeviceAllocator());
    MhcPreArgs args;
    args.streams = d_streams.view();
    args.fn = d_fn.view();
    args.fn_split = true;
    args.gemm = gemm->get();
    args.base = d_base.view();
    args.scale = d_scale.view();
    args.pre = pre.view();
    args.post = post.view();
    args.comb = comb.view();
    args.collapsed = x.view();
    if (fused) args.norm_weight = d_norm.view();
    EXPECT_TRUE((head ? HcHeadPre(args) : MhcPre(args)).ok());
    if (!fused) {
      EXPECT_TRUE(RmsNorm(x.view(), d_norm.view(), args.norm_eps, x.view()).ok());
    }
    return testing::ToHost(x.view());
  };
  const Tensor want = run(false), got = run(true);
  const std::string tag =
      std::string(head ? "hc_head" : "mhc pre") + " fused norm H=" + std::to_string(hidden);
  if (expect_same_bits) {
    EXPECT_EQ(std::memcmp(got.data<float>(), want.data<float>(), sizeof(float) * got.numel()), 0)
        << tag;
  }
  EXPECT_TRUE(testing::CloseAndReport(tag, got.view(), want.view(), kBf16Out));
}

TEST(CudaMhc, PreWithFusedNormEqualsPreThenRmsNorm) {
  if (DeviceCount() == 0) GTEST_SKIP() << "no CUDA device";
  CheckFusedNorm(2048, /*head=*/false, 81, /*expect_same_bits=*/true);
  CheckFusedNorm(2048, /*head=*/true, 91, /*expect_same_bits=*/true);
  CheckFusedNorm(512, /*head=*/false, 101, /*expect_same_bits=*/false);
  CheckFusedNorm(333, /*head=*/false, 111, /*expect_same_bits=*/true);  // RmsNorm after
}

void ExpectSameBits(const std::string& tag, const Tensor& got, const Tensor& want) {
  ASSERT_EQ(got.numel(), want.numel()) << tag;
  EXPECT_EQ(std::memcmp(got.data<float>(), want.data<float>(), sizeof(float) * got.numel()), 0)
      << tag << ": not bit for bit";
}

// MhcPre's kernel runs in two warp roles (stream warps: pass 1, collapse and fused norm; a
// coefficient warp: gates and Sinkhorn) that meet at one barrier, the stream warps' fused norm
// synchronising on a named barrier of their own: a race would show as a value off the CPU
// reference, or as one that changes from run to run. On 300 tokens (more blocks than the GPU holds
// at once), every fn path: the run without norm_weight against the CPU reference, then two runs
// with it, bit for bit equal to each other, their pre, post and comb bit for bit the first run's
// and their collapsed bit for bit RmsNorm of the first run's collapse (fused at H = 2048 over 256
// threads; H = 333 runs RmsNorm after the kernel). The first run's collapse must also be, bit for
// bit, the host's collapse of the pre that run wrote.
void CheckPreRepeats(int64_t n, int64_t hidden, bool head, uint64_t seed) {
  const int64_t num_tokens = 300, num_mixes = head ? n : (2 + n) * n;
  const Tensor streams = testing::RoundToBf16(RandomNormal({num_tokens, n, hidden}, seed, 2.0f));
  // Smaller than CheckPre's 0.05 for the wider rows: mixes of about the same size.
  const Tensor fn = RandomNormal({num_mixes, n * hidden}, seed + 1, 0.02f);
  const Tensor base = RandomNormal({num_mixes}, seed + 2, 0.5f);
  const Tensor scale = RandomNormal({head ? 1 : 3}, seed + 3, 1.0f);
  const Reference want = CpuPre(streams, fn, base, scale, head, 20);

  const Tensor d_streams = testing::ToDevice(streams, DType::kBF16);
  const Tensor d_fn = testing::ToDevice(fn, DType::kF32);
  const Tensor d_fn_split =
      testing::ToDevice(core::ToFloat32(SplitMhcFn(fn.view()).view()), DType::kBF16);
  const Tensor d_base = testing::ToDevice(base, DType::kF32);
  const Tensor d_scale = testing::ToDevice(scale, DType::kF32);
  const Tensor d_norm = testing::ToDevice(RandomNormal({hidden}, seed + 4, 1.0f), DType::kF32);
  auto gemm = GemmHandle::Create();
  ASSERT_TRUE(gemm.ok()) << gemm.status();
  struct Outputs {
    Tensor pre, post, comb, collapsed;  // host copies (post and comb: not hc_head)
    Tensor normed;                      // without norm_weight: RmsNorm of collapsed
  };
  for (FnPath path : {FnPath::kF32, FnPath::kSplitFused, FnPath::kSplitGemm}) {
    auto run = [&](bool with_norm) {
      const Tensor pre = Tensor::Empty(DType::kF32, {num_tokens, n}, DeviceAllocator());
      const Tensor post = Tensor::Empty(DType::kF32, {num_tokens, n}, DeviceAllocator());
      const Tensor comb = Tensor::Empty(DType::kF32, {num_tokens, n, n}, DeviceAllocator());
      const Tensor collapsed = Tensor::Empty(DType::kBF16, {num_tokens, hidden}, DeviceAllocator());
      MhcPreArgs args;
      args.streams = d_streams.view();
      args.fn = path == FnPath::kF32 ? d_fn.view() : d_fn_split.view();
      args.fn_split = path != FnPath::kF32;
      args.gemm = path == FnPath::kSplitGemm ? gemm->get() : nullptr;
      args.base = d_base.view();
      args.scale = d_scale.view();
      args.pre = pre.view();
      args.post = post.view();
      args.comb = comb.view();
      args.collapsed = collapsed.view();
      if (with_norm) args.norm_weight = d_norm.view();
      EXPECT_TRUE((head ? HcHeadPre(args) : MhcPre(args)).ok());
      Outputs out;
      out.pre = testing::ToHost(pre.view());
      if (!head) {
        out.post = testing::ToHost(post.view());
        out.comb = testing::ToHost(comb.view());
      }
      out.collapsed = testing::ToHost(collapsed.view());
      if (!with_norm) {
        const Tensor normed = Tensor::Empty(DType::kBF16, {num_tokens, hidden}, DeviceAllocator());
        EXPECT_TRUE(RmsNorm(collapsed.view(), d_norm.view(), args.norm_eps, normed.view()).ok());
        out.normed = testing::ToHost(normed.view());
      }
      return out;
    };
    const Outputs plain = run(false), fused = run(true), again = run(true);
    const char* path_name[] = {"f32 fn", "split fn", "split fn gemm"};
    const std::string tag = std::string(head ? "hc_head" : "mhc pre") + " n=" + std::to_string(n) +
                            " H=" + std::to_string(hidden) + " " +
                            path_name[static_cast<int>(path)];
    EXPECT_TRUE(
        testing::CloseAndReport(tag + " pre", plain.pre.view(), want.pre.view(), kCoefficients));
    ExpectSameBits(tag + " pre with norm", fused.pre, plain.pre);
    ExpectSameBits(tag + " pre repeated", again.pre, fused.pre);
    if (!head) {
      EXPECT_TRUE(testing::CloseAndReport(tag + " post", plain.post.view(), want.post.view(),
                                          kCoefficients));
      EXPECT_TRUE(testing::CloseAndReport(tag + " comb", plain.comb.view(), want.comb.view(),
                                          kCoefficients));
      ExpectSameBits(tag + " post with norm", fused.post, plain.post);
      ExpectSameBits(tag + " comb with norm", fused.comb, plain.comb);
      ExpectSameBits(tag + " post repeated", again.post, fused.post);
      ExpectSameBits(tag + " comb repeated", again.comb, fused.comb);
    }
    EXPECT_TRUE(testing::CloseAndReport(tag + " collapsed", plain.collapsed.view(),
                                        want.collapsed.view(), kBf16Out));
    // The collapse of the kernel's own pre, summed as the kernel sums it (an fma a stream, stream
    // 0 first) and rounded to bf16: the warps that collapse must use the gates that p.pre gets.
    Tensor own = Tensor::Empty(DType::kF32, {num_tokens, hidden});
    for (int64_t t = 0; t < num_tokens; ++t) {
      for (int64_t h = 0; h < hidden; ++h) {
        float sum = 0.0f;
        for (int64_t j = 0; j < n; ++j) {
          sum = std::fma(plain.pre.data<float>()[t * n + j],
                         streams.data<float>()[(t * n + j) * hidden + h], sum);
        }
        own.data<float>()[t * hidden + h] = sum;
      }
    }
    ExpectSameBits(tag + " collapsed of its pre", plain.collapsed, testing::RoundToBf16(own));
    ExpectSameBits(tag + " collapsed with norm", fused.collapsed, plain.normed);
    ExpectSameBits(tag + " collapsed repeated", again.collapsed, fused.collapsed);
  }
}

TEST(CudaMhc, PreOn300TokensRepeatsBitForBitAndMatchesCpu) {
  if (DeviceCount() == 0) GTEST_SKIP() << "no CUDA device";
  CheckPreRepeats(4, 2048, /*head=*/false, 121);  // the mid config's decode step: n = 4, H = 2048
  CheckPreRepeats(4, 2048, /*head=*/true, 131);
  CheckPreRepeats(3, 2048, /*head=*/false, 141);  // one-lane Sinkhorn
  CheckPreRepeats(4, 333, /*head=*/false, 151);   // rows not 8-wide
  CheckPreRepeats(3, 333, /*head=*/true, 161);
}

TEST(CudaMhc, PostMatchesCpuExpand) {
  if (DeviceCount() == 0) GTEST_SKIP() << "no CUDA device";
  const int64_t num_tokens = 17, n = 4, hidden = 333;
  const Tensor streams = testing::RoundToBf16(RandomNormal({num_tokens, n, hidden}, 41));
  const Tensor y = testing::RoundToBf16(RandomNormal({num_tokens, hidden}, 42));
  const Tensor post = RandomNormal({num_tokens, n}, 43);
  const Tensor comb = RandomNormal({num_tokens, n, n}, 44, 0.5f);
  Tensor want = Tensor::Empty(DType::kF32, {num_tokens, n, hidden});
  cpu::MhcExpandRef(streams.data<float>(), y.data<float>(), post.data<float>(),
                    comb.data<float>(), num_tokens, n, hidden, want.data<float>(), nullptr);
  const Tensor d_streams = testing::ToDevice(streams, DType::kBF16);
  const Tensor d_y = testing::ToDevice(y, DType::kBF16);
  const Tensor d_post = testing::ToDevice(post, DType::kF32);
  const Tensor d_comb = testing::ToDevice(comb, DType::kF32);
  const Tensor out = Tensor::Empty(DType::kBF16, {num_tokens, n, hidden}, DeviceAllocator());
  ASSERT_TRUE(MhcPost(d_streams.view(), d_y.view(), d_post.view(), d_comb.view(), out.view()).ok());
  EXPECT_TRUE(testing::CloseAndReport("mhc post", testing::ToHost(out.view()).view(), want.view(),
                                      kBf16Out));
  // f32 streams and output.
  const Tensor f_streams = testing::ToDevice(streams, DType::kF32);
  const Tensor f_out = Tensor::Empty(DType::kF32, {num_tokens, n, hidden}, DeviceAllocator());
  ASSERT_TRUE(
      MhcPost(f_streams.view(), d_y.view(), d_post.view(), d_comb.view(), f_out.view()).ok());
  EXPECT_TRUE(testing::CloseAndReport("mhc post f32", testing::ToHost(f_out.view()).view(),
                                      want.view(), {.atol = 1e-5, .rtol = 1e-5}));
}

TEST(CudaMhc, RejectsMoreThanFourStreams) {
  if (DeviceCount() == 0) GTEST_SKIP() << "no CUDA device";
  const Tensor streams = Tensor::Empty(DType::kBF16, {2, 5, 8}, DeviceAllocator());
  MhcPreArgs args;
  args.streams = streams.view();
  EXPECT_FALSE(MhcPre(args).ok());
}

}  // namespace
}  // namespace v4rl::kernels::cuda
