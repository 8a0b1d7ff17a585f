// Hopper (sm_90a) kernel of the routed experts' weight gradients (grouped_gemm_wgmma.h,
// GroupedGemmWgmmaWeightGrad): dw[e] = dy[rows of e]ᵀ · x[rows of e] for every expert e, its rows
// [offsets[e], offsets[e + 1]) (offsets on the device), dw overwritten (zeros for an expert
// without rows). The reduction runs over the expert's tokens, so both operands are read as they
// are stored, MN-major:
//  - a block owns a 128 x 128 tile of dw[e] (grid (N / 128 · K / 128, E)); its two consumer
//    warpgroups take 64 rows (N) each, wgmma.m64n128k16 with both transpose flags;
//  - one producer thread streams the expert's tokens 64 at a time through a ring of 3 stages of
//    32 KB: per stage two TMA boxes of dy (64 tokens x 64 N values, 128 bytes a row, 128-byte
//    swizzle) and two of x (64 tokens x 64 K values), a full mbarrier (expect_tx bytes) and an
//    empty one (one arrival per consumer warp) each;
//  - descriptors (plan::WgmmaDescriptorMn128): a K step of 16 tokens is 16 rows = 2048 bytes on,
//    x's second 64 columns the next box (the leading-dimension offset, 8 KB);
//  - the expert's last stage holds rows past its end (the next expert's tokens, or TMA's zeros
//    past R): the consumers zero those rows of all four boxes (a row is 128 contiguous bytes
//    whatever the swizzle), fence them to the async proxy and meet at a named barrier before the
//    wgmma reads them;
//  - one stage's wgmma group stays in flight while the next is issued (wait_group 1);
//  - epilogue: each thread stores its f32 accumulators straight to dw, two adjacent columns a
//    store.
// 288 threads and ~97 KB of shared memory, so two blocks share an SM and one's epilogue overlaps
// the other's loads and products.
#include <cstdint>

#include "absl/strings/str_format.h"
#include "kernels/cuda/check.h"
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/grouped_gemm_wgmma.h"
#include "kernels/cuda/wgmma.cuh"
#include "kernels/plan/grouped_gemm_wgmma.h"

namespace v4rl::kernels::cuda {
namespace {

constexpr int kConsumerThreads = 256;                      // two warpgroups
constexpr int kConsumerWarps = kConsumerThreads / 32;      // arrivals that empty a stage
constexpr int kThreads = kConsumerThreads + 32;            // + the producer warp
constexpr int kTile = plan::kWgmmaBlockRows;               // dw rows (N) and columns (K) of a block
constexpr int kTokens = 64;                                // tokens (the reduction) of a stage
constexpr int kBoxBytes = kTokens * plan::kWgmmaRowBytes;  // 64 tokens x 64 values: 8 KB
constexpr int kStageBytes = 4 * kBoxBytes;                 // dy's two boxes, then x's two
constexpr int kStages = plan::kWgmmaRingBytes / kStageBytes;
constexpr int kSharedBytes = kStages * kStageBytes + plan::kWgmmaSwizzleBytes;  // + alignment
constexpr int kKSteps = kTokens / plan::kWgmmaInstrK;                           // 4 wgmma a stage
constexpr int kZeroBarrier = 1;  // named barrier of the consumers after zeroing rows
static_assert(kStages >= 2, "the ring needs two stages at least");

struct WeightGradParams {
  const int32_t* offsets;  // [E + 1] i32 device
  float* dw;               // [E, N, K] f32
  int rows, n, k;          // R, N, K
};

#if V4RL_WGMMA_DEVICE

// Rows [valid, 64) of the four boxes of the stage at `stage_base` set to zero by the consumer
// threads, made visible to wgmma (the async proxy), then the consumers meet.
__device__ __forceinline__ void ZeroRowsFrom(uint32_t stage_base, int valid, int thread) {
  constexpr int kChunksPerRow = plan::kWgmmaRowBytes / 16;
  const int per_box = (kTokens - valid) * kChunksPerRow;
  for (int c = thread; c < 4 * per_box; c += kConsumerThreads) {
    const int box = c / per_box, rest = c % per_box;
    const uint32_t at = stage_base + box * kBoxBytes +
                        (valid + rest / kChunksPerRow) * plan::kWgmmaRowBytes +
                        (rest % kChunksPerRow) * 16;
    asm volatile("st.shared.v4.u32 [%0], {%1, %1, %1, %1};\n" ::"r"(at), "r"(0) : "memory");
  }
  asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
  NamedBarrier<kZeroBarrier, kConsumerThreads>();
}

#endif  // V4RL_WGMMA_DEVICE

// Block (blockIdx.x, blockIdx.y): expert blockIdx.y, dw rows from 128 (blockIdx.x / (K / 128)),
// columns from 128 (blockIdx.x mod (K / 128)). Threads 0..255: the two consumer warpgroups;
// thread 256 loads (its warp keeps the block a whole number of warps).
__global__ void __launch_bounds__(kThreads, 2)
    GroupedGemmWeightGradKernel(const __grid_constant__ CUtensorMap dy_map,
                                const __grid_constant__ CUtensorMap x_map,
                                const WeightGradParams p) {
  WaitForPriorKernels();
#if V4RL_WGMMA_DEVICE
  __shared__ __align__(8) uint64_t full_barriers[kStages];
  __shared__ __align__(8) uint64_t empty_barriers[kStages];
  extern __shared__ __align__(1024) unsigned char ring[];
  const uint32_t full = SharedAddress(full_barriers), empty = SharedAddress(empty_barriers);
  const int expert = static_cast<int>(blockIdx.y);
  const int tiles_k = p.k / kTile;
  const int n0 = static_cast<int>(blockIdx.x) / tiles_k * kTile,
            k0 = static_cast<int>(blockIdx.x) % tiles_k * kTile;
  const int begin = min(p.offsets[expert], p.rows), end = min(p.offsets[expert + 1], p.rows);
  const int tokens = max(end - begin, 0);
  const int steps = (tokens + kTokens - 1) / kTokens;
  if (threadIdx.x == 0) {
    InitRingBarriers(full, empty, kStages, kConsumerWarps);
  }
  __syncthreads();
  // The ring on a 1024-byte boundary (the swizzle's period; kSharedBytes has the slack).
  const uint32_t ring_base = (SharedAddress(ring) + plan::kWgmmaSwizzleBytes - 1) &
                             ~static_cast<uint32_t>(plan::kWgmmaSwizzleBytes - 1);

  if (threadIdx.x >= kConsumerThreads) {
    if (threadIdx.x == kConsumerThreads) {
      PrefetchTensorMap(&dy_map);
      PrefetchTensorMap(&x_map);
      int stage = 0;
      uint32_t phase = 0;
      for (int t = 0; t < steps; ++t) {
        BarrierWait(empty + 8 * stage, phase ^ 1);
        const uint32_t bar = full + 8 * stage, base = ring_base + stage * kStageBytes;
        BarrierArriveExpectTx(bar, kStageBytes);
        const int row = begin + t * kTokens;
        TmaLoad2d(base, &dy_map, bar, n0, row);
        TmaLoad2d(base + kBoxBytes, &dy_map, bar, n0 + plan::kWgmmaGroupRows, row);
        TmaLoad2d(base + 2 * kBoxBytes, &x_map, bar, k0, row);
        TmaLoad2d(base + 3 * kBoxBytes, &x_map, bar, k0 + plan::kWgmmaGroupRows, row);
        if (++stage == kStages) {
          stage = 0;
          phase ^= 1;
        }
      }
    }
    return;
  }

  // Consumers: warpgroup `group` owns dw rows n0 + 64 group .. + 64 (its own dy box).
  const int group = static_cast<int>(threadIdx.x) / 128,
            thread = static_cast<int>(threadIdx.x) % 128;
  float acc[kTile / 2];
#pragma unroll
  for (int i = 0; i < kTile / 2; ++i) acc[i] = 0.0f;
  // Fenced here and after the last wait only: an accumulator "defined" (the fence's "+f") while a
  // group is in flight makes ptxas serialise the wgmma (C7515).
  FenceAccumulators(acc);
  int stage = 0, previous = -1;
  uint32_t phase = 0;
  for (int t = 0; t < steps; ++t) {
    BarrierWait(full + 8 * stage, phase);
    const uint32_t base = ring_base + stage * kStageBytes;
    const int valid = tokens - t * kTokens;
    if (valid < kTokens) ZeroRowsFrom(base, valid, static_cast<int>(threadIdx.x));
    const uint32_t a = base + group * kBoxBytes, b = base + 2 * kBoxBytes;
    WgmmaFence();
#pragma unroll
    for (int kk = 0; kk < kKSteps; ++kk) {
      Wgmma<kTile, 1, 1>::Mma(
          acc, plan::WgmmaDescriptorMn128(a + kk * plan::kWgmmaMnKStepBytes, kBoxBytes),
          plan::WgmmaDescriptorMn128(b + kk * plan::kWgmmaMnKStepBytes, kBoxBytes));
    }
    WgmmaCommit();
    WgmmaWait<1>();
    if (previous >= 0 && thread % 32 == 0) BarrierArrive(empty + 8 * previous);
    previous = stage;
    if (++stage == kStages) {
      stage = 0;
      phase ^= 1;
    }
  }
  WgmmaWait<0>();
  FenceAccumulators(acc);
  if (previous >= 0 && thread % 32 == 0) BarrierArrive(empty + 8 * previous);
  // Accumulator row m = dw row n0 + 64 group + m, column = dw column k0 + column.
  float* out = p.dw + static_cast<int64_t>(expert) * p.n * p.k;
#pragma unroll
  for (int i = 0; i < kTile / 2; i += 2) {
    const int64_t row = n0 + group * plan::kWgmmaGroupRows + plan::WgmmaAccumulatorRow(thread, i);
    const int col = k0 + plan::WgmmaAccumulatorCol(thread, i);
    *reinterpret_cast<float2*>(out + row * p.k + col) = make_float2(acc[i], acc[i + 1]);
  }
#else
  __trap();  // launched only on compute capability 9.0 devices, which run the sm_90a code
#endif
}

// What keeps the kernel from dy [R, N], x [R, K] and dw [E, N, K] (nullptr: nothing).
const char* WeightGradUnmet(const core::TensorView& dy, const core::TensorView& x,
                            const core::TensorView& dw) {
  if (dw.shape[1] % kTile != 0 || dw.shape[2] % kTile != 0) {
    return "N and K (dw.shape[1], dw.shape[2]) multiples of 128";
  }
  if (reinterpret_cast<uintptr_t>(dy.data) % 16 != 0 ||
      reinterpret_cast<uintptr_t>(x.data) % 16 != 0 ||
      reinterpret_cast<uintptr_t>(dw.data) % 16 != 0) {
    return "16-byte aligned dy, x and dw";
  }
  if (dw.shape[0] > 65535) return "at most 65535 experts";
  return WgmmaDeviceUnmet();
}

// a [R, C] as a map of dims (C, R), boxes of 64 columns x 64 tokens.
absl::Status EncodeTokenRowsMap(const char* op, const char* name, CUtensorMap* map,
                                const core::TensorView& a) {
  const cuuint64_t dims[2] = {static_cast<cuuint64_t>(a.shape[1]),
                              static_cast<cuuint64_t>(a.shape[0])};
  const cuuint64_t strides[1] = {static_cast<cuuint64_t>(2 * a.shape[1])};
  const cuuint32_t box[2] = {plan::kWgmmaGroupRows, kTokens};
  return EncodeBf16Map(op, name, map, a.data, 2, dims, strides, box);
}

}  // namespace

bool GroupedGemmWgmmaWeightGradApplies(const core::TensorView& dy, const core::TensorView& x,
                                       const core::TensorView& dw) {
  return WeightGradUnmet(dy, x, dw) == nullptr;
}

absl::Status GroupedGemmWgmmaWeightGrad(const core::TensorView& dy, const core::TensorView& x,
                                        const core::TensorView& offsets,
                                        const core::TensorView& dw) {
  const char* op = "cuda::GroupedGemmWeightGradDeviceOffsets";
  if (const char* unmet = WeightGradUnmet(dy, x, dw); unmet != nullptr) {
    return absl::InvalidArgumentError(absl::StrFormat("%s: needs %s (dy %s, x %s, dw %s)", op,
                                                      unmet, dy.DebugString(), x.DebugString(),
                                                      dw.DebugString()));
  }
  CUtensorMap dy_map, x_map;
  for (absl::Status s :
       {EncodeTokenRowsMap(op, "dy", &dy_map, dy), EncodeTokenRowsMap(op, "x", &x_map, x)}) {
    if (!s.ok()) return s;
  }
  // Two blocks of ~97 KB an SM.
  if (absl::Status s = AllowWgmmaSharedMemory<GroupedGemmWeightGradKernel>(op, kSharedBytes);
      !s.ok()) {
    return s;
  }
  WeightGradParams p{};
  p.offsets = offsets.data_as<int32_t>();
  p.dw = static_cast<float*>(dw.data);
  p.rows = static_cast<int>(dy.shape[0]);
  p.n = static_cast<int>(dw.shape[1]);
  p.k = static_cast<int>(dw.shape[2]);
  const dim3 grid(static_cast<unsigned>((p.n / kTile) * (p.k / kTile)),
                  static_cast<unsigned>(dw.shape[0]));
  LaunchKernel(GroupedGemmWeightGradKernel, grid, kThreads, kSharedBytes, dy_map, x_map, p);
  return LaunchStatus(op);
}

}  // namespace v4rl::kernels::cuda
