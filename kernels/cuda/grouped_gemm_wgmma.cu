// Hopper (sm_90a) kernel behind GroupedGemmTile::kWgmma (grouped_gemm.h): out[r] = x[r] · w[e]ᵀ
// for the rows r in [offsets[e], offsets[e + 1]) of every expert e, offsets on the device. At the
// decode step the cost is streaming each used expert's [N, K] weights once, so the kernel is built
// to keep HBM busy rather than the tensor cores:
//  - swap AB: the weights are wgmma's A operand (M = 64 weight rows a consumer warpgroup, two
//    warpgroups = 128 rows a block), the tokens of one pass over K the B operand (n = the pass's
//    tokens rounded up to 16): an expert's rows are cut into passes of at most 128 tokens, each
//    streaming the expert's weight tiles again;
//  - warp specialisation: one producer thread issues TMA loads (cp.async.bulk.tensor, 128-byte
//    swizzle) of the [128 rows x 64 K] weight tile and the pass's [16 tokens x 64 K] boxes into a
//    ring of stages, each guarded by a full mbarrier (expect_tx bytes) and an empty one (one
//    arrival per consumer warp); the consumers wait, issue four wgmma.m64nNk16 a stage, wait for
//    them and release the stage;
//  - grid (N / 128, pass slots): one weight tile of one pass a block, so a hot expert's passes
//    are more blocks rather than a longer one. The slots enumerate the (expert, pass) pairs
//    expert-major (plan::WgmmaSlotPass: expert 0's passes, then expert 1's, ..; the blocks that
//    stream a tile for the passes of one expert run side by side, the later reads hitting L2).
//    Their number is only known on the device, so the grid has an upper bound of them,
//    E + floor(R / 128) (plan::WgmmaPassSlots); the producer warp finds the block's pass (a prefix
//    sum of the experts' pass counts over its lanes) while thread 0 initialises the barriers, and
//    blocks past the last pair return at once. 288 threads and ~111 KB of shared memory, so two
//    blocks share an SM and one streams while the other starts or drains;
//  - the ring's stage count follows the pass's tokens (kernels/plan/grouped_gemm_wgmma.h: 6 stages
//    of 18 KB for <= 16 tokens, 5 of 22 KB for <= 48, 4 of 24 KB for <= 64, 3 of 32 KB for > 96);
//  - epilogue: each thread stores its f32 accumulators straight to out, transposed (accumulator
//    rows are weight rows = output columns), tokens past the pass's end skipped, so rows outside
//    [offsets[e], offsets[e + 1]) are never written. x rows past the pass's end that the token
//    boxes read (other passes' or experts' rows, or zeros past R: TMA fills out-of-bounds with
//    zeros) only reach those skipped columns.
// The same kernel, instantiated with kSwiGlu, serves GroupedGemmSwiGluDeviceOffsets: out[r] =
// SwiGluClamp(bf16(x[r] · w1[e]ᵀ), bf16(x[r] · w3[e]ᵀ)) in one launch, the bits of the three
// calls (two GEMMs storing bf16, then SwiGluKernel):
//  - a block owns 64 output columns c0.. of one pass (grid (I / 64, pass slots)); the producer
//    loads a 64-row box of w1 into the weight tile's first half and one of w3 into its second, so
//    warpgroup 0 computes the gate rows and warpgroup 1 the up rows of the same columns, over the
//    same token boxes (the ring, its stages and their bytes as for the plain GEMM);
//  - epilogue: both warpgroups meet at a named barrier (their wgmma done with the pass's last
//    stage, which the producer does not refill: it has no K tile left), warpgroup 0 stores its
//    accumulators rounded to bf16 in that stage's weight tile (plan::WgmmaGateExchangeOffset:
//    register i of thread t at the same place for both warpgroups, whose fragments cover the same
//    (column, token)), a second named barrier, then warpgroup 1 rounds its up values to bf16,
//    applies SwiGluClampValue (common.cuh, SwiGluKernel's arithmetic) and stores to out.
// The same kernel, instantiated with kInputGrad, serves GroupedGemmInputGradDeviceOffsets (the
// training backward's input gradients): out[r] = dy[r] · w[e] (+ dy2[r] · w2[e]) with w [E, N, K]
// read as it is stored, rows of N:
//  - the weight operand is MN-major: a warpgroup's 64 output columns are one TMA box of 64 N rows
//    x 64 columns (128 bytes, the same 8 KB place in the stage as a K-major 64-row box), read by
//    wgmma with the transpose flag through plan::WgmmaDescriptorMn128 (a K step of 16 = 16 rows
//    = 2048 bytes on); the tokens operand (dy's rows) is K-major as above;
//  - a second (dy2, w2) pair continues the K loop after the first's N (MoE's gate and up input
//    gradients summed in one pass, no accumulate into out).
// Every form keeps one stage's wgmma group in flight while issuing the next (wait_group 1) and
// releases a stage when its group is done.
// The layout arithmetic (pass slots, ring offsets, descriptors, fragment rows and columns) lives
// in kernels/plan/grouped_gemm_wgmma.h, which tests/kernels/wgmma_layout_test.cc replays on the
// CPU against the PTX ISA's layouts.
// ptxas (CUDA 13.0, sm_90a): 90 registers, no spills, no stack frame, 1 KB static + 111 KB dynamic
// shared memory. The SwiGLU instantiation: 92 registers, no spills, no stack frame, the same
// shared memory (the exchange reuses the ring) and a named barrier. Nsight Compute on the H200 at
// batch 256 (w1, with the earlier grid of one block an expert, each doing all its passes): two
// blocks an SM (registers and shared memory both allow 2), 3.5 TB/s from DRAM (73% of its peak),
// 40.9 µs.
#include <cudaTypedefs.h>

#include <cstdint>
#include <utility>

#include "kernels/cuda/check.h"
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/grouped_gemm_wgmma.h"
#include "kernels/cuda/wgmma.cuh"
#include "kernels/plan/grouped_gemm_wgmma.h"

namespace v4rl::kernels::cuda {

using EncodeTiledFn = PFN_cuTensorMapEncodeTiled_v12000;

namespace {

// cuTensorMapEncodeTiled from the driver the runtime loaded (no -lcuda); nullptr if missing.
EncodeTiledFn LookUpEncodeTiled() {
  void* fn = nullptr;
  cudaDriverEntryPointQueryResult found = cudaDriverEntryPointSymbolNotFound;
  if (cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &fn, 12000, cudaEnableDefault,
                                       &found) != cudaSuccess ||
      found != cudaDriverEntryPointSuccess) {
    (void)cudaGetLastError();  // not a launch error of ours
    return nullptr;
  }
  return reinterpret_cast<EncodeTiledFn>(fn);
}

}  // namespace

absl::Status EncodeBf16Map(const char* op, const char* name, CUtensorMap* map, const void* data,
                           int rank, const cuuint64_t* dims, const cuuint64_t* strides,
                           const cuuint32_t* box) {
  static const EncodeTiledFn encode = LookUpEncodeTiled();
  if (encode == nullptr) {
    return absl::InternalError(
        absl::StrFormat("%s: the driver has no cuTensorMapEncodeTiled (CUDA 12.0+)", op));
  }
  const cuuint32_t element_strides[3] = {1, 1, 1};
  const CUresult result =
      encode(map, CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, static_cast<cuuint32_t>(rank),
             const_cast<void*>(data), dims, strides, box, element_strides,
             CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B,
             CU_TENSOR_MAP_L2_PROMOTION_L2_256B, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
  if (result != CUDA_SUCCESS) {
    return absl::InternalError(
        absl::StrFormat("%s: cuTensorMapEncodeTiled(%s) failed with CUresult %d", op, name,
                        static_cast<int>(result)));
  }
  return absl::OkStatus();
}

// Read once, as decode_attention.cu's MultiprocessorCount.
const char* WgmmaDeviceUnmet() {
  static const char* const unmet = []() -> const char* {
    int device = 0, major = 0, minor = 0;
    if (cudaGetDevice(&device) != cudaSuccess ||
        cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device) != cudaSuccess ||
        cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device) != cudaSuccess) {
      (void)cudaGetLastError();
      return "a CUDA device";
    }
    return major == 9 && minor == 0 ? nullptr : "a compute capability 9.0 device";
  }();
  return unmet;
}

namespace {

// The kernel's three forms: out = x · wᵀ (kPlain), the clamped SwiGLU of x · w1ᵀ and x · w3ᵀ
// (kSwiGlu), and the input gradient out = dy · w (+ dy2 · w2) (kInputGrad: w read MN-major).
enum class Kind { kPlain, kSwiGlu, kInputGrad };

constexpr int kConsumerThreads = 256;                  // two warpgroups
constexpr int kConsumerWarps = kConsumerThreads / 32;  // arrivals that empty a stage
constexpr int kThreads = kConsumerThreads + 32;        // + the producer warp
constexpr int kSharedBytes = plan::kWgmmaRingBytes + plan::kWgmmaSwizzleBytes;  // + alignment
constexpr int kKSteps = plan::kWgmmaBlockK / plan::kWgmmaInstrK;                // 4 wgmma a stage
constexpr int kKStepBytes = plan::kWgmmaInstrK * 2;                             // 32

struct WgmmaParams {
  const int32_t* offsets;  // [E + 1] i32 device
  void* out;               // [R, N] bf16|f32 (the SwiGLU kernel: [R, I])
  int experts, rows, n, k;  // E, R, N (the SwiGLU kernel: I, out's row length), K
  int k_first;              // kInputGrad: the K of the first (dy, w) pair (k: both pairs')
  bool out_bf16;
  float limit;  // the SwiGLU kernel's clamp (SwiGluClampValue)
};

// Named barrier of the SwiGLU kernel's two consumer warpgroups (0 is __syncthreads').
constexpr int kExchangeBarrier = 1;

#if V4RL_WGMMA_DEVICE

// bar.sync of the two consumer warpgroups only (the producer warp is not waited for).
__device__ __forceinline__ void ConsumerBarrier() {
  NamedBarrier<kExchangeBarrier, kConsumerThreads>();
}

// The SwiGLU kernel's epilogue (see the top of the file): warpgroup 0's gate values through the
// weight tile at `exchange` (the pass's last stage) to warpgroup 1, which stores
// SwiGluClampValue(gate, up) to out.
template <int kN>
__device__ __forceinline__ void SwiGluEpilogue(const WgmmaParams& p, const float (&acc)[kN / 2],
                                               uint32_t exchange, int group, int thread, int col0,
                                               int pass_row0, int pass_tokens) {
  ConsumerBarrier();  // both warpgroups' wgmma done reading the stage
  if (group == 0) {
#pragma unroll
    for (int i = 0; i < kN / 2; i += 2) {
      // Rounded as StoreF rounds the gate GEMM's output; register i at the lower address.
      const uint32_t word =
          __bfloat16_as_ushort(__float2bfloat16(acc[i])) |
          static_cast<uint32_t>(__bfloat16_as_ushort(__float2bfloat16(acc[i + 1]))) << 16;
      asm volatile(
          "st.shared.b32 [%0], %1;\n" ::"r"(exchange + plan::WgmmaGateExchangeOffset(thread, i)),
          "r"(word)
          : "memory");
    }
  }
  ConsumerBarrier();  // the gate values stored
  if (group == 1) {
#pragma unroll
    for (int i = 0; i < kN / 2; i += 2) {
      uint32_t word;
      asm volatile("ld.shared.b32 %0, [%1];\n"
                   : "=r"(word)
                   : "r"(exchange + plan::WgmmaGateExchangeOffset(thread, i))
                   : "memory");
#pragma unroll
      for (int j = 0; j < 2; ++j) {
        const float gate =
            __bfloat162float(__ushort_as_bfloat16(static_cast<unsigned short>(word >> (16 * j))));
        const int t = plan::WgmmaAccumulatorCol(thread, i + j);
        if (t < pass_tokens) {
          const float up = __bfloat162float(__float2bfloat16(acc[i + j]));  // as stored
          StoreF(p.out, p.out_bf16,
                 static_cast<int64_t>(pass_row0 + t) * p.n + col0 +
                     plan::WgmmaAccumulatorRow(thread, i + j),
                 SwiGluClampValue(gate, up, p.limit));
        }
      }
    }
  }
}

// The consumers' side of the block's pass over K for kN tokens (kN = the pass's boxes x 16):
// every stage of the ring in turn, then the epilogue. The plain GEMM's warpgroup `group` covers
// output columns col0 + 64 group.., the SwiGLU kernel's both cover col0.. (gate and up rows of
// the same columns).
template <Kind kKind, int kN>
__device__ __forceinline__ void ConsumePass(const WgmmaParams& p, const plan::WgmmaRing& ring,
                                            uint32_t ring_base, uint32_t full, uint32_t empty,
                                            int group, int thread, int col0, int pass_row0,
                                            int pass_tokens) {
  float acc[kN / 2];
#pragma unroll
  for (int i = 0; i < kN / 2; ++i) acc[i] = 0.0f;
  // Fenced here and after the last wait only: an accumulator "defined" (the fence's "+f") while a
  // group is in flight makes ptxas serialise the wgmma (C7515).
  FenceAccumulators(acc);
  const int num_k = p.k / plan::kWgmmaBlockK;
  int stage = 0;
  uint32_t phase = 0;
  // One stage's wgmma group stays in flight while the next stage's is issued: a stage is released
  // once the wait for all but the latest group says its group is done.
  int previous = -1;
  for (int kt = 0; kt < num_k; ++kt) {
    BarrierWait(full + 8 * stage, phase);
    const uint32_t a = ring_base + plan::WgmmaWeightOffset(ring, stage, group);
    const uint32_t b = ring_base + plan::WgmmaTokenOffset(ring, stage, 0);
    WgmmaFence();
#pragma unroll
    for (int kk = 0; kk < kKSteps; ++kk) {
      if constexpr (kKind == Kind::kInputGrad) {
        // The weights' rows are K here: 16 rows of 128 bytes a step, the next warpgroup's 64
        // columns in the next box.
        Wgmma<kN, 1, 0>::Mma(
            acc,
            plan::WgmmaDescriptorMn128(a + kk * plan::kWgmmaMnKStepBytes,
                                       plan::kWgmmaGroupRows * plan::kWgmmaRowBytes),
            plan::WgmmaDescriptorK128(b + kk * kKStepBytes));
      } else {
        Wgmma<kN>::Mma(acc, plan::WgmmaDescriptorK128(a + kk * kKStepBytes),
                       plan::WgmmaDescriptorK128(b + kk * kKStepBytes));
      }
    }
    WgmmaCommit();
    WgmmaWait<1>();
    // This warp is done with the previous stage. The producer loads nothing after the pass's last
    // K tile, so the SwiGLU epilogue may reuse the last stage although it is released.
    if (previous >= 0 && thread % 32 == 0) BarrierArrive(empty + 8 * previous);
    previous = stage;
    if (++stage == ring.stages) {
      stage = 0;
      phase ^= 1;
    }
  }
  WgmmaWait<0>();
  FenceAccumulators(acc);
  if (previous >= 0 && thread % 32 == 0) BarrierArrive(empty + 8 * previous);
  if constexpr (kKind == Kind::kSwiGlu) {
    const int last_stage = (num_k - 1) % ring.stages;
    SwiGluEpilogue<kN>(p, acc, ring_base + plan::WgmmaWeightOffset(ring, last_stage, 0), group,
                       thread, col0, pass_row0, pass_tokens);
  } else {
    // Accumulator row m = weight row col0 + 64 group + m = output column; column t = token.
    const int64_t col = col0 + group * plan::kWgmmaGroupRows;
#pragma unroll
    for (int i = 0; i < kN / 2; ++i) {
      const int t = plan::WgmmaAccumulatorCol(thread, i);
      if (t < pass_tokens) {
        StoreF(
            p.out, p.out_bf16,
            static_cast<int64_t>(pass_row0 + t) * p.n + col + plan::WgmmaAccumulatorRow(thread, i),
            acc[i]);
      }
    }
  }
}

// The block's pass, found by the producer warp (`lane` 0..31) as plan::WgmmaLaneExperts splits
// the experts over its lanes, and stored to `pass` by one lane: the one whose slots hold the
// block's, or the last when none does (past the last pair: it finds expert -1).
__device__ __forceinline__ void FindPass(const WgmmaParams& p, int lane, plan::WgmmaPass& pass) {
  const int slot = static_cast<int>(blockIdx.y);
  const int e_begin = plan::WgmmaLaneExperts(p.experts, lane),
            e_end = plan::WgmmaLaneExperts(p.experts, lane + 1);
  const int passes = plan::WgmmaPassesOf(p.offsets, p.rows, e_begin, e_end);
  int through = passes;  // inclusive prefix sum over the lanes
#pragma unroll
  for (int offset = 1; offset < plan::kWgmmaSlotLanes; offset *= 2) {
    const int up = __shfl_up_sync(0xffffffffu, through, offset);
    if (lane >= offset) through += up;
  }
  const int before = through - passes;
  if (slot >= before && (slot < through || lane == plan::kWgmmaSlotLanes - 1)) {
    pass = plan::WgmmaSlotPass(p.offsets, p.rows, e_begin, e_end, before, slot);
  }
}

#endif  // V4RL_WGMMA_DEVICE

// Block (blockIdx.x, blockIdx.y) computes, for the pass of slot blockIdx.y (plan::WgmmaPass),
// out[the pass's rows, kBlockCols columns from kBlockCols blockIdx.x]: 128 of x · wᵀ from w_map
// (kPlain), or 64 of the clamped SwiGLU of x · w1ᵀ (w_map) and x · w3ᵀ (w3_map) (kSwiGlu), or
// 128 of x · w (w_map, [E, K, N] read MN-major) + x2 · w3 (w3_map) (kInputGrad: x_map and w_map
// for the first p.k_first of K, x2_map and w3_map after). Maps a form does not use repeat one it
// does and are ignored. Threads 0..255: the two consumer warpgroups; 256..287: the producer warp,
// which finds the pass, then thread 256 alone loads (the warp keeps the block's thread count a
// whole number of warps).
template <Kind kKind>
__global__ void __launch_bounds__(kThreads, 2)
    GroupedGemmWgmmaKernel(const __grid_constant__ CUtensorMap w_map,
                           const __grid_constant__ CUtensorMap w3_map,
                           const __grid_constant__ CUtensorMap x_map,
                           const __grid_constant__ CUtensorMap x2_map, const WgmmaParams p) {
  constexpr bool kSwiGlu = kKind == Kind::kSwiGlu;
  constexpr int kBlockCols = kSwiGlu ? plan::kWgmmaGroupRows : plan::kWgmmaBlockRows;
  WaitForPriorKernels();
#if V4RL_WGMMA_DEVICE
  __shared__ __align__(8) uint64_t full_barriers[plan::kWgmmaMaxStages];
  __shared__ __align__(8) uint64_t empty_barriers[plan::kWgmmaMaxStages];
  __shared__ plan::WgmmaPass block_pass;
  extern __shared__ __align__(1024) unsigned char wgmma_ring[];
  const uint32_t full = SharedAddress(full_barriers), empty = SharedAddress(empty_barriers);
  if (threadIdx.x >= kConsumerThreads) {
    FindPass(p, static_cast<int>(threadIdx.x) - kConsumerThreads, block_pass);
  } else if (threadIdx.x == 0) {
    // Every stage's barriers: the ring's stage count follows the pass, not found yet.
    InitRingBarriers(full, empty, plan::kWgmmaMaxStages, kConsumerWarps);
  }
  __syncthreads();
  const plan::WgmmaPass pass = block_pass;
  if (pass.expert < 0) return;  // the whole block: a slot past the last pass
  const plan::WgmmaRing ring = plan::WgmmaRingFor(pass.tokens);
  const int col0 = static_cast<int>(blockIdx.x) * kBlockCols;
  // The ring on a 1024-byte boundary (the swizzle's period; kSharedBytes has the slack).
  const uint32_t ring_base = (SharedAddress(wgmma_ring) + plan::kWgmmaSwizzleBytes - 1) &
                             ~static_cast<uint32_t>(plan::kWgmmaSwizzleBytes - 1);

  if (threadIdx.x >= kConsumerThreads) {
    // Producer: per K tile, wait for the stage to be empty, announce its bytes, load.
    if (threadIdx.x == kConsumerThreads) {
      PrefetchTensorMap(&w_map);
      PrefetchTensorMap(&x_map);
      if constexpr (kKind != Kind::kPlain) PrefetchTensorMap(&w3_map);
      if constexpr (kKind == Kind::kInputGrad) PrefetchTensorMap(&x2_map);
      const int num_k = p.k / plan::kWgmmaBlockK;
      int stage = 0;
      uint32_t phase = 0;
      for (int kt = 0; kt < num_k; ++kt) {
        BarrierWait(empty + 8 * stage, phase ^ 1);
        const uint32_t bar = full + 8 * stage;
        // A stage is the weight tile and the pass's token boxes, all loaded.
        BarrierArriveExpectTx(bar, ring.stage_bytes);
        int k0 = kt * plan::kWgmmaBlockK;
        const CUtensorMap* tokens_map = &x_map;
        if constexpr (kKind == Kind::kInputGrad) {
          // 64 K rows of the (second) pair's weights, one box of 64 columns a warpgroup.
          const bool second = k0 >= p.k_first;
          const CUtensorMap* weights_map = second ? &w3_map : &w_map;
          if (second) {
            k0 -= p.k_first;
            tokens_map = &x2_map;
          }
          for (int g = 0; g < 2; ++g) {
            TmaLoad3d(ring_base + plan::WgmmaWeightOffset(ring, stage, g), weights_map, bar,
                      col0 + g * plan::kWgmmaGroupRows, k0, pass.expert);
          }
        } else {
          // The weight tile: 128 rows of w, or 64 of w1 then the same 64 of w3 (16 KB either
          // way).
          TmaLoad3d(ring_base + plan::WgmmaWeightOffset(ring, stage, 0), &w_map, bar, k0, col0,
                    pass.expert);
          if constexpr (kSwiGlu) {
            TmaLoad3d(ring_base + plan::WgmmaWeightOffset(ring, stage, 1), &w3_map, bar, k0, col0,
                      pass.expert);
          }
        }
        for (int box = 0; box < ring.token_boxes; ++box) {
          TmaLoad2d(ring_base + plan::WgmmaTokenOffset(ring, stage, box), tokens_map, bar, k0,
                    pass.row0 + box * plan::kWgmmaTokenBox);
        }
        if (++stage == ring.stages) {
          stage = 0;
          phase ^= 1;
        }
      }
    }
    return;
  }

  // Consumers: warpgroup `group` owns weight rows [64 group, 64 group + 64) of the tile (the
  // SwiGLU kernel: the gate rows, then the up rows).
  const int group = static_cast<int>(threadIdx.x) / 128,
            thread = static_cast<int>(threadIdx.x) % 128;
#define V4RL_WGMMA_PASS(kBoxes)                                                               \
  case kBoxes:                                                                                \
    ConsumePass<kKind, kBoxes * plan::kWgmmaTokenBox>(p, ring, ring_base, full, empty, group, \
                                                      thread, col0, pass.row0, pass.tokens);  \
    break;
  switch (ring.token_boxes) {
    V4RL_WGMMA_PASS(1)
    V4RL_WGMMA_PASS(2)
    V4RL_WGMMA_PASS(3)
    V4RL_WGMMA_PASS(4)
    V4RL_WGMMA_PASS(5)
    V4RL_WGMMA_PASS(6)
    V4RL_WGMMA_PASS(7)
    V4RL_WGMMA_PASS(8)
  }
#undef V4RL_WGMMA_PASS
#else
  __trap();  // launched only on compute capability 9.0 devices, which run the sm_90a code
#endif
}

// What keeps the kernel from x [R, K] and w [E, N, K] (nullptr: nothing): K a positive multiple
// of 64, N a multiple of `block_cols`, 16-byte aligned x and w, a compute capability 9.0 device.
const char* WgmmaUnmet(const core::TensorView& x, const core::TensorView& w, int block_cols) {
  const int64_t n = w.shape[1], k = w.shape[2];
  if (k < plan::kWgmmaBlockK || k % plan::kWgmmaBlockK != 0) {
    return "K (the weights' shape[2]) a positive multiple of 64";
  }
  if (n % block_cols != 0) {
    return block_cols == plan::kWgmmaBlockRows ? "N (w.shape[1]) a multiple of 128"
                                               : "I (w1.shape[1]) a multiple of 64";
  }
  if (reinterpret_cast<uintptr_t>(x.data) % 16 != 0 ||
      reinterpret_cast<uintptr_t>(w.data) % 16 != 0) {
    return "16-byte aligned x and weights";
  }
  return WgmmaDeviceUnmet();
}

// WgmmaUnmet for the fused SwiGLU call: I (w1.shape[1]) a multiple of 64 and w3 16-byte aligned
// too.
const char* SwiGluUnmet(const core::TensorView& x, const core::TensorView& w1,
                        const core::TensorView& w3) {
  if (const char* unmet = WgmmaUnmet(x, w1, plan::kWgmmaGroupRows); unmet != nullptr) {
    return unmet;
  }
  return reinterpret_cast<uintptr_t>(w3.data) % 16 == 0 ? nullptr : "16-byte aligned w3";
}

// w [E, N, K] as a map of dims (K, N, E), boxes of 64 K x `box_rows` rows x 1 expert.
absl::Status EncodeWeightMap(const char* op, const char* name, CUtensorMap* map,
                             const core::TensorView& w, int box_rows) {
  const cuuint64_t dims[3] = {static_cast<cuuint64_t>(w.shape[2]),
                              static_cast<cuuint64_t>(w.shape[1]),
                              static_cast<cuuint64_t>(w.shape[0])};
  const cuuint64_t strides[2] = {static_cast<cuuint64_t>(2 * w.shape[2]),
                                 static_cast<cuuint64_t>(2 * w.shape[2] * w.shape[1])};
  const cuuint32_t box[3] = {plan::kWgmmaBlockK, static_cast<cuuint32_t>(box_rows), 1};
  return EncodeBf16Map(op, name, map, w.data, 3, dims, strides, box);
}

// x [R, K] as a map of dims (K, R), boxes of 64 K x 16 rows.
absl::Status EncodeTokensMap(const char* op, const char* name, CUtensorMap* map,
                             const core::TensorView& x) {
  const cuuint64_t dims[2] = {static_cast<cuuint64_t>(x.shape[1]),
                              static_cast<cuuint64_t>(x.shape[0])};
  const cuuint64_t strides[1] = {static_cast<cuuint64_t>(2 * x.shape[1])};
  const cuuint32_t box[2] = {plan::kWgmmaBlockK, plan::kWgmmaTokenBox};
  return EncodeBf16Map(op, name, map, x.data, 2, dims, strides, box);
}

// The kernel for the maps of x (and x2: kInputGrad) and of w (and w3: kSwiGlu, kInputGrad) over
// `rows` rows and `k` of K (k_first of them the first pair's), grid (N / kBlockCols,
// E + floor(R / 128)) (plan::WgmmaPassSlots: the host cannot read the offsets). InvalidArgument
// beyond 65535 slots.
template <Kind kKind>
absl::Status LaunchWgmma(const char* op, int64_t rows, int64_t k, int64_t k_first,
                         const CUtensorMap& x_map, const CUtensorMap& x2_map,
                         const CUtensorMap& w_map, const CUtensorMap& w3_map, int64_t experts,
                         int64_t n, const core::TensorView& offsets, float limit,
                         const core::TensorView& out) {
  const int64_t slots = plan::WgmmaPassSlots(experts, rows);
  if (slots > 65535) {
    return absl::InvalidArgumentError(
        absl::StrFormat("%s: %d rows and %d experts need more than 65535 pass slots of %d", op,
                        rows, experts, plan::kWgmmaMaxPassTokens));
  }
  // Two blocks of ~112 KB an SM.
  if (absl::Status s = AllowWgmmaSharedMemory<GroupedGemmWgmmaKernel<kKind>>(op, kSharedBytes);
      !s.ok()) {
    return s;
  }
  WgmmaParams p{};
  p.offsets = offsets.data_as<int32_t>();
  p.out = out.data;
  p.experts = static_cast<int>(experts);
  p.rows = static_cast<int>(rows);
  p.n = static_cast<int>(n);
  p.k = static_cast<int>(k);
  p.k_first = static_cast<int>(k_first);
  p.out_bf16 = IsBf16(out);
  p.limit = limit;
  constexpr int kBlockCols = kKind == Kind::kSwiGlu ? plan::kWgmmaGroupRows : plan::kWgmmaBlockRows;
  const dim3 grid(static_cast<unsigned>(n / kBlockCols), static_cast<unsigned>(slots));
  LaunchKernel(GroupedGemmWgmmaKernel<kKind>, grid, kThreads, kSharedBytes, w_map, w3_map, x_map,
               x2_map, p);
  return LaunchStatus(op);
}

// What keeps the input-gradient kernel from dy [R, N] and w [E, N, K] (nullptr: nothing): N a
// positive multiple of 64 (the reduction), K a multiple of 128 (the output's columns), 16-byte
// aligned data, a compute capability 9.0 device.
const char* InputGradUnmet(const core::TensorView& dy, const core::TensorView& w) {
  const int64_t n = w.shape[1], k = w.shape[2];
  if (n < plan::kWgmmaBlockK || n % plan::kWgmmaBlockK != 0) {
    return "N (w.shape[1], the reduction) a positive multiple of 64";
  }
  if (k % plan::kWgmmaBlockRows != 0) return "K (w.shape[2]) a multiple of 128";
  if (reinterpret_cast<uintptr_t>(dy.data) % 16 != 0 ||
      reinterpret_cast<uintptr_t>(w.data) % 16 != 0) {
    return "16-byte aligned dy and weights";
  }
  return WgmmaDeviceUnmet();
}

}  // namespace

bool GroupedGemmWgmmaApplies(const core::TensorView& x, const core::TensorView& w) {
  return WgmmaUnmet(x, w, plan::kWgmmaBlockRows) == nullptr;
}

bool GroupedGemmWgmmaSwiGluApplies(const core::TensorView& x, const core::TensorView& w1,
                                   const core::TensorView& w3) {
  return SwiGluUnmet(x, w1, w3) == nullptr;
}

absl::Status GroupedGemmWgmma(const core::TensorView& x, const core::TensorView& w,
                              const core::TensorView& offsets, const core::TensorView& out) {
  const char* op = "cuda::GroupedGemmDeviceOffsets (wgmma)";
  if (!GroupedGemmWgmmaApplies(x, w)) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "%s: needs K a positive multiple of 64 (got %d), N a multiple of 128 (got %d), 16-byte "
        "aligned x and w, and a compute capability 9.0 device",
        op, w.shape[2], w.shape[1]));
  }
  CUtensorMap w_map, x_map;
  for (absl::Status s : {EncodeWeightMap(op, "w", &w_map, w, plan::kWgmmaBlockRows),
                         EncodeTokensMap(op, "x", &x_map, x)}) {
    if (!s.ok()) return s;
  }
  return LaunchWgmma<Kind::kPlain>(op, x.shape[0], x.shape[1], x.shape[1], x_map, x_map, w_map,
                                   w_map, w.shape[0], w.shape[1], offsets, 0.0f, out);
}

absl::Status GroupedGemmWgmmaSwiGlu(const core::TensorView& x, const core::TensorView& w1,
                                    const core::TensorView& w3, const core::TensorView& offsets,
                                    float limit, const core::TensorView& out) {
  const char* op = "cuda::GroupedGemmSwiGluDeviceOffsets";
  if (const char* unmet = SwiGluUnmet(x, w1, w3); unmet != nullptr) {
    return absl::InvalidArgumentError(absl::StrFormat("%s: needs %s (x %s, w1 %s)", op, unmet,
                                                      x.DebugString(), w1.DebugString()));
  }
  CUtensorMap w1_map, w3_map, x_map;
  for (absl::Status s : {EncodeWeightMap(op, "w1", &w1_map, w1, plan::kWgmmaGroupRows),
                         EncodeWeightMap(op, "w3", &w3_map, w3, plan::kWgmmaGroupRows),
                         EncodeTokensMap(op, "x", &x_map, x)}) {
    if (!s.ok()) return s;
  }
  return LaunchWgmma<Kind::kSwiGlu>(op, x.shape[0], x.shape[1], x.shape[1], x_map, x_map, w1_map,
                                    w3_map, w1.shape[0], w1.shape[1], offsets, limit, out);
}

bool GroupedGemmWgmmaInputGradApplies(const core::TensorView& dy, const core::TensorView& w) {
  return InputGradUnmet(dy, w) == nullptr;
}

absl::Status GroupedGemmWgmmaInputGrad(const core::TensorView& dy, const core::TensorView& w,
                                       const core::TensorView& dy2, const core::TensorView& w2,
                                       const core::TensorView& offsets,
                                       const core::TensorView& dx) {
  const char* op = "cuda::GroupedGemmInputGradDeviceOffsets";
  const bool two = w2.data != nullptr;
  for (const auto& [d, m] : {std::pair{dy, w}, std::pair{two ? dy2 : dy, two ? w2 : w}}) {
    if (const char* unmet = InputGradUnmet(d, m); unmet != nullptr) {
      return absl::InvalidArgumentError(absl::StrFormat("%s: needs %s (dy %s, w %s)", op, unmet,
                                                        d.DebugString(), m.DebugString()));
    }
  }
  // w [E, N, K] read as rows of K: dims (K, N, E), boxes of 64 K columns x 64 N rows.
  CUtensorMap w_map, w2_map, dy_map, dy2_map;
  for (absl::Status s : {EncodeWeightMap(op, "w", &w_map, w, plan::kWgmmaBlockK),
                         EncodeWeightMap(op, "w2", &w2_map, two ? w2 : w, plan::kWgmmaBlockK),
                         EncodeTokensMap(op, "dy", &dy_map, dy),
                         EncodeTokensMap(op, "dy2", &dy2_map, two ? dy2 : dy)}) {
    if (!s.ok()) return s;
  }
  const int64_t k_first = w.shape[1], k = k_first + (two ? w2.shape[1] : 0);
  return LaunchWgmma<Kind::kInputGrad>(op, dy.shape[0], k, k_first, dy_map, dy2_map, w_map, w2_map,
                                       w.shape[0], w.shape[2], offsets, 0.0f, dx);
}

}  // namespace v4rl::kernels::cuda
