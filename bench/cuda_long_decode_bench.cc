// Times the single-stream decode ops whose work grows with the context (issue 11: one query at
// 900K tokens no more than 10% slower than at 4K), at the "mid" config's shapes: per CSA layer the
// indexer's scores over T/4 compressed entries (16 heads of 128), the top-512 selection among them
// and sparse attention over the 512 picks plus the window; per HCA layer attention over all T/128
// entries plus the window (16 heads of 512, window 128). Each context prints one JSON line per op
// with microseconds per call, and every context after the first also the growth over the first
// and the ratio to it (the baseline, run in the same process) per op and for one decode step's
// share of these ops (3 CSA + 5 HCA layers, as the mid config; the step share counted 4 HCA
// layers before session 11).
//
//   cuda_long_decode_bench [CONTEXTS=4096,1000000] [ITERS=50]
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"
#include "bench/cuda_bench_common.h"
#include "core/rng.h"
#include "core/tensor.h"
#include "kernels/cuda/decode_attention.h"
#include "kernels/cuda/device.h"
#include "kernels/cuda/indexer.h"

namespace v4rl {
namespace {

namespace kc = kernels::cuda;
using bench::Check;
using bench::RandomDevice;
using bench::TimeMs;
using core::DType;
using core::Tensor;

constexpr int64_t kHeads = 16, kHeadDim = 512, kWindow = 128;
constexpr int64_t kIndexHeads = 16, kIndexDim = 128, kTopK = 512;
constexpr int64_t kCsaRatio = 4, kHcaRatio = 128, kCsaLayers = 3, kHcaLayers = 5;

struct OpTimes {
  double indexer_us, select_us, csa_attention_us, hca_attention_us;
  double StepUs() const {
    return kCsaLayers * (indexer_us + select_us + csa_attention_us) + kHcaLayers * hca_attention_us;
  }
};

// Microseconds per call of each op for one query at position `context`.
OpTimes Measure(int64_t context, int iters) {
  const int64_t csa_entries = context / kCsaRatio, hca_entries = context / kHcaRatio;
  const float scale = 1.0f / 22.627417f;  // 1/sqrt(512)
  const Tensor q = RandomDevice(DType::kBF16, {kHeads, kHeadDim}, 1, 1.0f);
  const Tensor ring = RandomDevice(DType::kBF16, {kWindow, kHeadDim}, 2, 1.0f);
  const Tensor own = RandomDevice(DType::kBF16, {kHeadDim}, 3, 1.0f);
  const Tensor sink = RandomDevice(DType::kF32, {kHeads}, 4, 1.0f);
  const Tensor out = Tensor::Empty(DType::kBF16, {kHeads, kHeadDim}, kc::DeviceAllocator());

  // CSA: indexer scores over the entries, then the top-512.
  const Tensor iq = RandomDevice(DType::kBF16, {kIndexHeads, kIndexDim}, 5, 1.0f);
  const Tensor iw = RandomDevice(DType::kF32, {kIndexHeads}, 6, 0.25f);
  const Tensor ikeys = RandomDevice(DType::kBF16, {csa_entries, kIndexDim}, 7, 1.0f);
  const Tensor scores = Tensor::Empty(DType::kF32, {1, csa_entries}, kc::DeviceAllocator());
  const Tensor picks = Tensor::Empty(DType::kI32, {1, kTopK}, kc::DeviceAllocator());
  const kc::DecodeIndexerItem index_item{iq.view().data, iw.data<float>(), ikeys.view().data,
                                         scores.data<float>(), csa_entries};
  auto score = [&] {
    Check(kc::DecodeIndexerScores({&index_item, 1}, kIndexHeads, kIndexDim, csa_entries, 0.088f),
          "indexer scores");
  };
  auto select = [&] {
    Check(kc::IndexerSelect(scores.view(), csa_entries * kCsaRatio, kCsaRatio, picks.view()),
          "select");
  };
  OpTimes t{};
  t.indexer_us = TimeMs(iters, score) * 1e3;
  score();
  t.select_us = TimeMs(iters, select) * 1e3;
  select();

  const Tensor csa_comp = RandomDevice(DType::kBF16, {csa_entries, kHeadDim}, 8, 1.0f);
  const kc::DecodeAttentionItem csa_item{q.view().data,         ring.view().data,       own.view().data,
                                         csa_comp.view().data,  picks.data<int32_t>(), out.view().data,
                                         context,          csa_entries,       kTopK};
  t.csa_attention_us = TimeMs(iters, [&] {
    Check(kc::DecodeAttention({&csa_item, 1}, sink.data<float>(), kHeads, kHeadDim, kWindow, scale),
          "csa attention");
  }) * 1e3;

  const Tensor hca_comp = RandomDevice(DType::kBF16, {hca_entries, kHeadDim}, 9, 1.0f);
  const kc::DecodeAttentionItem hca_item{q.view().data,        ring.view().data, own.view().data, hca_comp.view().data,
                                         nullptr,         out.view().data,  context,    hca_entries,
                                         0};
  t.hca_attention_us = TimeMs(iters, [&] {
    Check(kc::DecodeAttention({&hca_item, 1}, sink.data<float>(), kHeads, kHeadDim, kWindow, scale),
          "hca attention");
  }) * 1e3;
  return t;
}

void PrintOp(int64_t context, const char* op, double us, double base_us) {
  std::printf("{\"context\": %lld, \"op\": \"%s\", \"us\": %.2f", static_cast<long long>(context),
              op, us);
  if (base_us > 0) {
    std::printf(", \"growth_us\": %.2f, \"ratio_to_first\": %.2f", us - base_us, us / base_us);
  }
  std::printf("}\n");
}

int Main(int argc, char** argv) {
  std::vector<int64_t> contexts = {4096, 1000000};
  if (argc > 1) {
    contexts.clear();
    for (absl::string_view part : absl::StrSplit(argv[1], ',')) {
      int64_t c = 0;
      if (!absl::SimpleAtoi(part, &c) || c < kHcaRatio) {
        std::fprintf(stderr, "CONTEXTS: comma-separated token counts >= %lld, got '%s'\n",
                     static_cast<long long>(kHcaRatio), std::string(part).c_str());
        return 2;
      }
      contexts.push_back(c);
    }
  }
  const int iters = argc > 2 ? std::atoi(argv[2]) : 50;
  if (iters < 1) {
    std::fprintf(stderr, "ITERS must be positive\n");
    return 2;
  }
  OpTimes base{};
  for (size_t i = 0; i < contexts.size(); ++i) {
    const int64_t c = contexts[i];
    const OpTimes t = Measure(c, iters);
    const bool first = i == 0;
    PrintOp(c, "indexer_scores", t.indexer_us, first ? 0 : base.indexer_us);
    PrintOp(c, "indexer_select", t.select_us, first ? 0 : base.select_us);
    PrintOp(c, "csa_attention", t.csa_attention_us, first ? 0 : base.csa_attention_us);
    PrintOp(c, "hca_attention", t.hca_attention_us, first ? 0 : base.hca_attention_us);
    PrintOp(c, "step_3csa_4hca", t.StepUs(), first ? 0 : base.StepUs());
    if (first) base = t;
  }
  return 0;
}

}  // namespace
}  // namespace v4rl

int main(int argc, char** argv) { return v4rl::Main(argc, argv); }
