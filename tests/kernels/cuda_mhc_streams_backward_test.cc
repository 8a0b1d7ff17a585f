// MhcStreamsBackward (one pass for an mHC site's whole stream gradient) against the unfused math
// in double on the host: the expand's combᵀ·dout, the collapse's pre·dcollapsed and RMSNorm's
// backward of dnormed = dmixes·fn, with the stream RMS that MhcExpandBackward and
// MhcCollapseBackward store (gpu label; skips without a device).
#include <cmath>
#include <string>
#include <vector>

#include "absl/strings/str_format.h"
#include "gtest/gtest.h"
#include "kernels/cuda/device.h"
#include "kernels/cuda/mhc_backward.h"
#include "tests/kernels/cuda_test_util.h"
#include "tests/testing/random_tensor.h"
#include "tests/testing/tensor_compare.h"

namespace v4rl::kernels::cuda {
namespace {

using core::DType;
using core::Tensor;
using testing::RandomNormal;

constexpr float kEps = 1e-6f;

// One site's inputs on the host (f32; the streams bf16-representable where `bf16` asks) and the
// reference.
struct Site {
  int64_t tokens, n, hidden, mixes;
  bool expand;
  Tensor streams, dout, comb, pre, dcollapsed, fn, dmixes, mixes_out, rms_inv, dstreams;
};

Site MakeSite(int64_t tokens, int64_t n, int64_t hidden, bool expand, bool bf16) {
  Site s;
  s.tokens = tokens, s.n = n, s.hidden = hidden, s.mixes = expand ? (2 + n) * n : n;
  s.expand = expand;
  const int64_t width = n * hidden;
  auto maybe_bf16 = [&](Tensor t) { return bf16 ? testing::RoundToBf16(t) : t; };
  s.streams = maybe_bf16(RandomNormal({tokens, n, hidden}, 60, 2.0f));
  s.dout = RandomNormal({tokens, n, hidden}, 61);
  s.comb = RandomNormal({tokens, n, n}, 62);
  s.pre = RandomNormal({tokens, n}, 63);
  s.dcollapsed = RandomNormal({tokens, hidden}, 64);
  s.fn = RandomNormal({s.mixes, width}, 65, 0.02f);
  s.dmixes = RandomNormal({tokens, s.mixes}, 66);
  s.mixes_out = Tensor::Empty(DType::kF32, {tokens, s.mixes});
  s.rms_inv = Tensor::Empty(DType::kF32, {tokens});
  s.dstreams = Tensor::Empty(DType::kF32, {tokens, n, hidden});
  const float* x = s.streams.data<float>();
  const float* fn = s.fn.data<float>();
  for (int64_t t = 0; t < tokens; ++t) {
    const float* xt = x + t * width;
    double sum_sq = 0;
    for (int64_t c = 0; c < width; ++c) sum_sq += double(xt[c]) * xt[c];
    const double r = 1.0 / std::sqrt(sum_sq / double(width) + kEps);
    s.rms_inv.data<float>()[t] = float(r);
    std::vector<double> dnormed(width, 0.0);
    for (int64_t m = 0; m < s.mixes; ++m) {
      double dot = 0;
      for (int64_t c = 0; c < width; ++c) dot += xt[c] * r * fn[m * width + c];
      s.mixes_out.data<float>()[t * s.mixes + m] = float(dot);
      const double dm = s.dmixes.data<float>()[t * s.mixes + m];
      for (int64_t c = 0; c < width; ++c) dnormed[c] += dm * fn[m * width + c];
    }
    double x_dot_dn = 0;
    for (int64_t c = 0; c < width; ++c) x_dot_dn += xt[c] * dnormed[c];
    for (int64_t j = 0; j < n; ++j) {
      for (int64_t h = 0; h < hidden; ++h) {
        const int64_t c = j * hidden + h;
        double d = r * dnormed[c] - r * r * r / double(width) * xt[c] * x_dot_dn;
        d += double(s.pre.data<float>()[t * n + j]) * s.dcollapsed.data<float>()[t * hidden + h];
        if (expand) {
          for (int64_t k = 0; k < n; ++k) {
            d += double(s.comb.data<float>()[(t * n + j) * n + k]) *
                 s.dout.data<float>()[(t * n + k) * hidden + h];
          }
        }
        s.dstreams.data<float>()[t * width + c] = float(d);
      }
    }
  }
  return s;
}

// The device inputs of a site: the streams in `dtype`, the rest f32.
struct DeviceSite {
  Tensor streams, dout, comb, pre, dcollapsed, fn, dmixes, mixes, rms_inv, dstreams;
  DeviceSite(const Site& s, DType dtype)
      : streams(testing::ToDevice(s.streams, dtype)),
        dout(testing::ToDevice(s.dout, DType::kF32)),
        comb(testing::ToDevice(s.comb, DType::kF32)),
        pre(testing::ToDevice(s.pre, DType::kF32)),
        dcollapsed(testing::ToDevice(s.dcollapsed, DType::kF32)),
        fn(testing::ToDevice(s.fn, DType::kF32)),
        dmixes(testing::ToDevice(s.dmixes, DType::kF32)),
        mixes(testing::ToDevice(s.mixes_out, DType::kF32)),
        rms_inv(testing::ToDevice(Tensor::Zeros(DType::kF32, {s.tokens}), DType::kF32)),
        dstreams(testing::ToDevice(Tensor::Zeros(DType::kF32, {s.tokens, s.n, s.hidden}),
                                   DType::kF32)) {}
  MhcStreamsBackwardArgs Args(bool expand) const {
    MhcStreamsBackwardArgs a;
    a.streams = streams.view();
    if (expand) {
      a.dout = dout.view();
      a.comb = comb.view();
    }
    a.pre = pre.view();
    a.dcollapsed = dcollapsed.view();
    a.fn = fn.view();
    a.dmixes = dmixes.view();
    a.mixes = mixes.view();
    a.rms_inv = rms_inv.view();
    a.dstreams = dstreams.view();
    return a;
  }
};

// Stores the stream RMS the way the model's backward does: the expand's backward for a site (its
// other outputs are not checked here), the collapse's for hc_head.
absl::Status StoreRms(const Site& s, const DeviceSite& d) {
  const Tensor dpre = testing::ToDevice(Tensor::Zeros(DType::kF32, {s.tokens, s.n}), DType::kF32);
  if (!s.expand) {
    return MhcCollapseBackward(d.streams.view(), d.pre.view(), d.dcollapsed.view(),
                               core::TensorView(), dpre.view(), DxWrite::kAdd, d.rms_inv.view(),
                               kEps);
  }
  const Tensor y = testing::ToDevice(RandomNormal({s.tokens, s.hidden}, 67), DType::kF32);
  const Tensor dy =
      testing::ToDevice(Tensor::Zeros(DType::kF32, {s.tokens, s.hidden}), DType::kF32);
  const Tensor dcomb =
      testing::ToDevice(Tensor::Zeros(DType::kF32, {s.tokens, s.n, s.n}), DType::kF32);
  return MhcExpandBackward(d.streams.view(), y.view(), d.pre.view(), d.comb.view(), d.dout.view(),
                           core::TensorView(), dy.view(), dpre.view(), dcomb.view(),
                           DxWrite::kOverwrite, d.rms_inv.view(), kEps);
}

// 37 tokens leave a part-filled last block of 32; H = 1031 and 130 a part-filled last block of
// 128 channels; n = 3 and 2 the smaller stream counts; hc_head (no expand, n mixes).
TEST(CudaMhcStreamsBackward, MatchesTheUnfusedGradient) {
  if (DeviceCount() == 0) GTEST_SKIP() << "no CUDA device";
  const struct { int64_t n, hidden; } shapes[] = {{4, 1031}, {4, 256}, {3, 130}, {2, 64}};
  for (const auto& [n, hidden] : shapes) {
    for (bool expand : {true, false}) {
      for (DType dtype : {DType::kF32, DType::kBF16}) {
        const std::string kind =
            absl::StrFormat(" n=%d H=%d %s %s", n, hidden, expand ? "site" : "hc_head",
                            dtype == DType::kBF16 ? "bf16" : "f32");
        const Site site = MakeSite(37, n, hidden, expand, dtype == DType::kBF16);
        const DeviceSite device(site, dtype);
        const absl::Status stored = StoreRms(site, device);
        ASSERT_TRUE(stored.ok()) << stored << kind;
        EXPECT_TRUE(testing::CloseAndReport("rms_inv" + kind,
                                            testing::ToHost(device.rms_inv.view()).view(),
                                            site.rms_inv.view(), {.atol = 0, .rtol = 1e-5}));
        const absl::Status status = MhcStreamsBackward(device.Args(expand));
        ASSERT_TRUE(status.ok()) << status << kind;
        EXPECT_TRUE(testing::CloseAndReport("dstreams" + kind,
                                            testing::ToHost(device.dstreams.view()).view(),
                                            site.dstreams.view(), {.atol = 1e-5, .rtol = 1e-4}));
      }
    }
  }
}

TEST(CudaMhcStreamsBackward, RejectsArgumentsThatDoNotFitAndWritesNothing) {
  if (DeviceCount() == 0) GTEST_SKIP() << "no CUDA device";
  const Site site = MakeSite(5, 4, 64, /*expand=*/true, /*bf16=*/false);
  const DeviceSite device(site, DType::kF32);
  // Views the cases put in place of a fitting one.
  struct Misfits {
    Tensor head_fn, bf16_dstreams, bf16_dcollapsed;
  };
  const Misfits misfits{testing::ToDevice(RandomNormal({4, 4 * 64}, 68), DType::kF32),
                        testing::ToDevice(site.dstreams, DType::kBF16),
                        testing::ToDevice(site.dcollapsed, DType::kBF16)};
  struct Case {
    const char* name;
    void (*edit)(MhcStreamsBackwardArgs*, const Misfits&);
  };
  const Case cases[] = {
      {"site fn with n rows",
       [](MhcStreamsBackwardArgs* a, const Misfits& m) { a->fn = m.head_fn.view(); }},
      {"dout without comb", [](MhcStreamsBackwardArgs* a, const Misfits&) { a->comb = {}; }},
      {"bf16 dcollapsed", [](MhcStreamsBackwardArgs* a,
                             const Misfits& m) { a->dcollapsed = m.bf16_dcollapsed.view(); }},
      {"bf16 dstreams",
       [](MhcStreamsBackwardArgs* a, const Misfits& m) { a->dstreams = m.bf16_dstreams.view(); }},
      {"dstreams over the streams",
       [](MhcStreamsBackwardArgs* a, const Misfits&) { a->dstreams = a->streams; }},
      {"rms_inv short of the tokens",
       [](MhcStreamsBackwardArgs* a, const Misfits&) { a->rms_inv = a->rms_inv.Slice(0, 0, 4); }},
  };
  for (const Case& c : cases) {
    MhcStreamsBackwardArgs args = device.Args(/*expand=*/true);
    c.edit(&args, misfits);
    const absl::Status status = MhcStreamsBackward(args);
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << c.name;
    EXPECT_NE(status.message().find("MhcStreamsBackward"), std::string::npos) << status;
  }
  const Tensor dstreams = testing::ToHost(device.dstreams.view());
  for (int64_t i = 0; i < dstreams.numel(); ++i) ASSERT_EQ(dstreams.data<float>()[i], 0.0f) << i;
}

}  // namespace
}  // namespace v4rl::kernels::cuda
