// Programmatic dependent launch (kernels/cuda/pdl.h) on the GPU (gpu label; skips without a
// device): that a dependent kernel really starts before its predecessor ends (so a kernel that
// touched memory before WaitForPriorKernels() would read stale data), and that a chain of 300
// dependent launches of v4rl's kernels, each reading what the one before wrote, gives the values
// computed on the host, launched directly and replayed from a CudaGraph; and that chains recorded
// as RunConcurrently's branches (graph.h) fork and join once, keep their memory apart and still
// give the host's values. Run it with V4RL_CUDA_PDL=0 too: the same values, and no early start.
#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/cuda/convert.h"
#include "kernels/cuda/device.h"
#include "kernels/cuda/elementwise.h"
#include "kernels/cuda/graph.h"
#include "kernels/cuda/pdl.h"
#include "kernels/cuda/rows.h"

namespace v4rl::kernels::cuda {
namespace {

// PdlProbe's flags after one run of its two kernels, launched directly or from a graph.
std::vector<int32_t> RunProbe(bool in_graph) {
  constexpr int64_t kSpinNs = 2'000'000;  // 2 ms: far longer than a dependent launch takes
  core::Tensor zeros = core::Tensor::Zeros(core::DType::kI32, {3});
  core::Tensor flags = core::Tensor::Empty(core::DType::kI32, {3}, DeviceAllocator());
  EXPECT_TRUE(Copy(zeros.view(), flags.view()).ok());
  if (in_graph) {
    auto graph = CudaGraph::Capture([&] { return PdlProbe(flags.data<int32_t>(), kSpinNs); });
    EXPECT_TRUE(graph.ok()) << graph.status();
    if (graph.ok()) {
      EXPECT_TRUE((*graph)->Launch().ok());
    }
  } else {
    EXPECT_TRUE(PdlProbe(flags.data<int32_t>(), kSpinNs).ok());
  }
  EXPECT_TRUE(Synchronize().ok());
  core::Tensor back = core::Tensor::Empty(core::DType::kI32, {3});
  EXPECT_TRUE(Copy(flags.view(), back.view()).ok());
  return {back.data<int32_t>(), back.data<int32_t>() + 3};
}

// With PDL the probe's second kernel reads flags[0] before the first kernel has set it: the
// early start that makes a missing WaitForPriorKernels() a visible bug in the chain test below.
// After its wait it always sees the first kernel's write.
TEST(CudaPdl, DependentKernelStartsBeforeItsPredecessorEnds) {
  if (DeviceCount() == 0) GTEST_SKIP() << "no CUDA device";
  for (const bool in_graph : {false, true}) {
    const std::vector<int32_t> flags = RunProbe(in_graph);
    const char* how = in_graph ? "graph replay" : "direct launch";
    std::printf("[measured] PDL %s (V4RL_CUDA_PDL %s): dependent kernel %s its predecessor ended\n",
                how, PdlEnabled() ? "on" : "=0", flags[1] == 0 ? "started before" : "waited until");
    EXPECT_EQ(flags[2], 1) << how << ": the read after WaitForPriorKernels() missed the write";
    if (!PdlEnabled()) {
      EXPECT_EQ(flags[1], 1) << how << ": V4RL_CUDA_PDL=0 still started the kernel early";
    } else if (in_graph) {
      // Direct launches go to the legacy default stream, where the runtime may serialise; the
      // graph's programmatic edge is what the decode step relies on.
      EXPECT_EQ(flags[1], 0) << "the graph's dependent kernel did not start early: PDL is off";
    }
  }
}

// x, y: [kRows, kWidth] f32; one round of the chain, six launches of five kernels, each reading
// the previous one's output in place or across buffers:
//   x += bias_a[(r mod kSeqLen) mod 3]         AddPositionBias    (grid-stride, 16,384 blocks)
//   y = x                                      BatchCopy          (two launches, a block a piece)
//   y += bias_b[positions[r] mod 5]            AddPositionBiasAt  (grid-stride, 16,384 blocks)
//   x = f32(bf16(y))                           F32ToBf16, Bf16ToF32 (65,535 blocks, grid-stride)
// Values are small integers (|x| <= 16 + 2 * kRounds), exact in f32 and bf16, so the result is
// x0 + kRounds * (bias_a[..] + bias_b[..]) exactly; a kernel that read before its predecessor's
// writes landed would lose (or repeat) a ±1 somewhere.
constexpr int64_t kRows = 2048, kWidth = 2048, kSeqLen = 7, kRounds = 50;

struct Chain {
  core::Tensor x0, bias_a, bias_b, positions;                  // host
  core::Tensor x, y, y_bf16, d_bias_a, d_bias_b, d_positions;  // device

  explicit Chain(uint32_t seed = 20261201) {
    std::mt19937 rng(seed);
    auto fill = [&](core::Tensor& t, int lo, int hi) {
      std::uniform_int_distribution<int> pick(lo, hi);
      for (int64_t i = 0; i < t.numel(); ++i) t.data<float>()[i] = static_cast<float>(pick(rng));
    };
    auto sign = [&](core::Tensor& t) {
      std::bernoulli_distribution positive(0.5);
      for (int64_t i = 0; i < t.numel(); ++i) t.data<float>()[i] = positive(rng) ? 1.0f : -1.0f;
    };
    x0 = core::Tensor::Empty(core::DType::kF32, {kRows, kWidth});
    fill(x0, -16, 16);
    bias_a = core::Tensor::Empty(core::DType::kF32, {3, kWidth});
    sign(bias_a);
    bias_b = core::Tensor::Empty(core::DType::kF32, {5, kWidth});
    sign(bias_b);
    positions = core::Tensor::Empty(core::DType::kI32, {kRows});
    std::uniform_int_distribution<int32_t> position(0, 1 << 20);
    for (int64_t r = 0; r < kRows; ++r) positions.data<int32_t>()[r] = position(rng);

    x = core::Tensor::Empty(core::DType::kF32, {kRows, kWidth}, DeviceAllocator());
    y = core::Tensor::Empty(core::DType::kF32, {kRows, kWidth}, DeviceAllocator());
    y_bf16 = core::Tensor::Empty(core::DType::kBF16, {kRows * kWidth}, DeviceAllocator());
    d_bias_a = core::Tensor::Empty(core::DType::kF32, {3, kWidth}, DeviceAllocator());
    d_bias_b = core::Tensor::Empty(core::DType::kF32, {5, kWidth}, DeviceAllocator());
    d_positions = core::Tensor::Empty(core::DType::kI32, {kRows}, DeviceAllocator());
    EXPECT_TRUE(Copy(bias_a.view(), d_bias_a.view()).ok());
    EXPECT_TRUE(Copy(bias_b.view(), d_bias_b.view()).ok());
    EXPECT_TRUE(Copy(positions.view(), d_positions.view()).ok());
  }

  // Queues the kRounds rounds (300 launches) on the launch stream.
  absl::Status Queue() const {
    const RowCopy copy{x.data<float>(), y.data<float>(), kRows * kWidth * int64_t{sizeof(float)}};
    for (int64_t round = 0; round < kRounds; ++round) {
      if (absl::Status s = AddPositionBias(x.view(), d_bias_a.view(), kSeqLen); !s.ok()) return s;
      if (absl::Status s = BatchCopy({copy}); !s.ok()) return s;
      if (absl::Status s = AddPositionBiasAt(y.view(), d_bias_b.view(), d_positions.view());
          !s.ok()) {
        return s;
      }
      if (absl::Status s = F32ToBf16(y.view(), y_bf16.view()); !s.ok()) return s;
      if (absl::Status s = Bf16ToF32(y_bf16.view(), x.view()); !s.ok()) return s;
    }
    return absl::OkStatus();
  }

  // Elements of x (on the device, after the queued rounds) that differ from the host's values.
  int64_t Mismatches(const char* how) const {
    core::Tensor back = core::Tensor::Empty(core::DType::kF32, {kRows, kWidth});
    EXPECT_TRUE(Copy(x.view(), back.view()).ok());
    int64_t wrong = 0;
    for (int64_t r = 0; r < kRows; ++r) {
      const int64_t slot_a = (r % kSeqLen) % 3, slot_b = positions.data<int32_t>()[r] % 5;
      for (int64_t c = 0; c < kWidth; ++c) {
        const float expected = x0.data<float>()[r * kWidth + c] +
                               kRounds * (bias_a.data<float>()[slot_a * kWidth + c] +
                                          bias_b.data<float>()[slot_b * kWidth + c]);
        const float actual = back.data<float>()[r * kWidth + c];
        if (actual != expected && wrong++ < 5) {
          ADD_FAILURE() << how << ": x[" << r << ", " << c << "] = " << actual << ", expected "
                        << expected;
        }
      }
    }
    std::printf(
        "[measured] PDL chain of %lld launches, %s (V4RL_CUDA_PDL %s): %lld of %lld "
        "values wrong\n",
        static_cast<long long>(6 * kRounds), how, PdlEnabled() ? "on" : "=0",
        static_cast<long long>(wrong), static_cast<long long>(kRows * kWidth));
    return wrong;
  }
};

TEST(CudaPdl, ChainOfDependentLaunchesMatchesHost) {
  if (DeviceCount() == 0) GTEST_SKIP() << "no CUDA device";
  Chain chain;
  // Directly, on the legacy default stream.
  ASSERT_TRUE(Copy(chain.x0.view(), chain.x.view()).ok());
  ASSERT_TRUE(chain.Queue().ok());
  ASSERT_TRUE(Synchronize().ok());
  EXPECT_EQ(chain.Mismatches("direct launches"), 0);
  // Recorded once, replayed three times from the initial values (programmatic graph edges).
  auto graph = CudaGraph::Capture([&] { return chain.Queue(); });
  ASSERT_TRUE(graph.ok()) << graph.status();
  EXPECT_EQ((*graph)->num_nodes(), 6 * kRounds);
  for (int replay = 0; replay < 3; ++replay) {
    ASSERT_TRUE(Copy(chain.x0.view(), chain.x.view()).ok());
    ASSERT_TRUE((*graph)->Launch().ok());
    ASSERT_TRUE(Synchronize().ok());
    EXPECT_EQ(chain.Mismatches("graph replay"), 0) << "replay " << replay;
  }
}

// Three chains as RunConcurrently's branches between two single launches, flat or with the
// second branch forking again into the second and third chain: 902 nodes either way, and two
// edges more than a chain of 902 (each later chain forks from the first launch and joins the
// last); every replay gives each chain the host's values. Outside a capture the same calls run
// the chains one after the other.
void ExpectThreeChainsForkOnce(bool nested) {
  std::vector<Chain> chains;
  chains.reserve(3);
  for (uint32_t seed : {1u, 2u, 3u}) chains.emplace_back(seed);
  core::Tensor edge_in = core::Tensor::Empty(core::DType::kF32, {1024}, DeviceAllocator());
  core::Tensor edge_out = core::Tensor::Empty(core::DType::kBF16, {1024}, DeviceAllocator());
  auto body = [&]() -> absl::Status {
    if (absl::Status s = F32ToBf16(edge_in.view(), edge_out.view()); !s.ok()) return s;
    auto chain = [&](int i) { return [&chains, i] { return chains[i].Queue(); }; };
    const absl::Status s = nested ? RunConcurrently({chain(0),
                                                     [&] {
                                                       return RunConcurrently({chain(1), chain(2)});
                                                     }})
                                  : RunConcurrently({chain(0), chain(1), chain(2)});
    if (!s.ok()) return s;
    return F32ToBf16(edge_in.view(), edge_out.view());
  };
  auto reset = [&] {
    for (const Chain& chain : chains) ASSERT_TRUE(Copy(chain.x0.view(), chain.x.view()).ok());
  };
  reset();
  ASSERT_TRUE(body().ok());
  ASSERT_TRUE(Synchronize().ok());
  for (const Chain& chain : chains) EXPECT_EQ(chain.Mismatches("branches run in order"), 0);

  auto graph = CudaGraph::Capture(body);
  ASSERT_TRUE(graph.ok()) << graph.status();
  const int64_t nodes = 3 * 6 * kRounds + 2;
  EXPECT_EQ((*graph)->num_nodes(), nodes);
  EXPECT_EQ((*graph)->num_edges(), nodes - 1 + 2) << "not one fork and one join of 3 chains";
  for (int replay = 0; replay < 2; ++replay) {
    reset();
    ASSERT_TRUE((*graph)->Launch().ok());
    ASSERT_TRUE(Synchronize().ok());
    for (const Chain& chain : chains) {
      EXPECT_EQ(chain.Mismatches("graph branches"), 0) << "replay " << replay;
    }
  }
}

TEST(CudaGraphBranches, ThreeChainsForkOnceAndGiveTheHostValues) {
  if (DeviceCount() == 0) GTEST_SKIP() << "no CUDA device";
  ExpectThreeChainsForkOnce(/*nested=*/false);
}

TEST(CudaGraphBranches, NestedBranchesForkFromTheirOwnStream) {
  if (DeviceCount() == 0) GTEST_SKIP() << "no CUDA device";
  ExpectThreeChainsForkOnce(/*nested=*/true);
}

// A block freed by one branch while the branches record goes to no other branch (its launches
// may still be running), and returns to the graph's cache after the join.
TEST(CudaGraphBranches, MemoryFreedInABranchWaitsForTheJoin) {
  if (DeviceCount() == 0) GTEST_SKIP() << "no CUDA device";
  constexpr int64_t kFloats = 1 << 18;  // 1 MiB
  std::vector<void*> seen;
  auto take = [&]() -> absl::Status {
    core::Tensor t = core::Tensor::Empty(core::DType::kF32, {kFloats}, CachingDeviceAllocator());
    seen.push_back(t.view().data);
    return absl::OkStatus();  // t freed here, inside its branch
  };
  void* after_join = nullptr;
  auto graph = CudaGraph::Capture([&]() -> absl::Status {
    if (absl::Status s = RunConcurrently({take, take, take}); !s.ok()) return s;
    core::Tensor t = core::Tensor::Empty(core::DType::kF32, {kFloats}, CachingDeviceAllocator());
    after_join = t.view().data;
    return absl::OkStatus();
  });
  ASSERT_TRUE(graph.ok()) << graph.status();
  ASSERT_EQ(seen.size(), 3u);
  EXPECT_NE(seen[0], seen[1]);
  EXPECT_NE(seen[0], seen[2]);
  EXPECT_NE(seen[1], seen[2]);
  EXPECT_NE(std::find(seen.begin(), seen.end(), after_join), seen.end())
      << "the branches' blocks did not return to the cache after the join";
}

// A branch's error is the capture's, and the capture still ends (every branch joined).
TEST(CudaGraphBranches, BranchErrorEndsTheCaptureWithThatError) {
  if (DeviceCount() == 0) GTEST_SKIP() << "no CUDA device";
  core::Tensor in = core::Tensor::Empty(core::DType::kF32, {64}, DeviceAllocator());
  core::Tensor out = core::Tensor::Empty(core::DType::kBF16, {64}, DeviceAllocator());
  auto graph = CudaGraph::Capture([&] {
    return RunConcurrently({[&] { return F32ToBf16(in.view(), out.view()); },
                            [] { return absl::InvalidArgumentError("branch 1 refused"); },
                            [&] { return F32ToBf16(in.view(), out.view()); }});
  });
  ASSERT_FALSE(graph.ok());
  EXPECT_EQ(graph.status().code(), absl::StatusCode::kInvalidArgument) << graph.status();
  EXPECT_NE(graph.status().message().find("branch 1 refused"), std::string::npos);
  // The device is usable after the failed capture.
  EXPECT_TRUE(F32ToBf16(in.view(), out.view()).ok());
  EXPECT_TRUE(Synchronize().ok());
}

}  // namespace
}  // namespace v4rl::kernels::cuda
