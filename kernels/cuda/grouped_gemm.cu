#include <mma.h>

#include <algorithm>

#include "kernels/cuda/check.h"
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/grouped_gemm.h"
#include "kernels/cuda/grouped_gemm_wgmma.h"
#include "kernels/plan/grouped_gemm_wgmma.h"

namespace v4rl::kernels::cuda {
namespace {

constexpr int kBk = 64;
constexpr int kLds = kBk + 8;      // bf16 tile row pitch (multiple of 8; 16-row steps 32B-aligned)
constexpr int kThreads = 128;      // 4 warps
constexpr int kMaxExperts = 1024;  // offsets staged in shared memory

struct GroupedParams {
  const __nv_bfloat16* x;
  const __nv_bfloat16* w;
  const int32_t* offsets;
  void* out;
  int n, k;
  int experts;
  bool out_bf16, vec;  // vec: 16-byte loads (K % 8 == 0, aligned bases)
};

// A block tile of kBm rows (one expert's) by kBn columns; the four warps split it kWarpsM x
// kWarpsN, each warp kFm x kFn WMMA 16x16 fragments. kStages K tiles in flight (cp.async): while
// one is multiplied the others stream in, so a block keeps loads outstanding (decode MoE is
// bandwidth bound).
template <int kBm_, int kBn_, int kStages_>
struct Tile {
  static constexpr int kBm = kBm_, kBn = kBn_, kStages = kStages_;
  static constexpr int kWarpsM = kBm >= 32 ? kBm / 32 : 1;
  static constexpr int kWarpsN = 4 / kWarpsM;
  static constexpr int kFm = kBm / kWarpsM / 16, kFn = kBn / kWarpsN / 16;
  static constexpr int kStageElems = (kBm + kBn) * kLds;  // A tile then B tile, bf16
  static constexpr int kLdc = kBn + 4;                    // f32 output tile row pitch
  static constexpr size_t kSharedBytes = sizeof(__nv_bfloat16) * kStages * kStageElems;
  // Rows of 16-byte chunks a thread copies: row threadIdx / 8 + 16 i, columns (threadIdx % 8) · 8.
  static constexpr int kRowsA = kBm / 16, kRowsB = kBn / 16;
  static_assert(kWarpsM * kWarpsN == 4 && kFm >= 1 && kFn >= 1, "four warps cover the tile");
  static_assert(sizeof(float) * kBm * kLdc <= kSharedBytes, "the output tile reuses the stages");
};

// Copies rows [row0 + threadIdx / 8 + 16 i] of a K tile (columns k0 + (threadIdx % 8) · 8, 8 at
// a time) into shared memory, zeros past row_end or K: cp.async when vec, else element by element.
template <int kRows>
__device__ __forceinline__ void LoadRows(__nv_bfloat16* dst, const __nv_bfloat16* src, int row0,
                                         int row_end, int ld, int k0, bool vec) {
  const int r0 = threadIdx.x / 8, kc = (threadIdx.x % 8) * 8, col = k0 + kc;
#pragma unroll
  for (int i = 0; i < kRows; ++i) {
    const int r = r0 + 16 * i, row = row0 + r;
    __nv_bfloat16* d = dst + r * kLds + kc;
    const __nv_bfloat16* s = src + static_cast<int64_t>(row) * ld + col;
    if (vec) {
      const bool valid = row < row_end && col < ld;
      CpAsync16(d, valid ? s : src, valid);
    } else {
      for (int j = 0; j < 8; ++j) {
        d[j] = row < row_end && col + j < ld ? s[j] : __float2bfloat16(0.0f);
      }
    }
  }
}

template <typename T>
__global__ void __launch_bounds__(kThreads) GroupedGemmKernel(GroupedParams p) {
  WaitForPriorKernels();
  using namespace nvcuda;
  extern __shared__ __align__(128) unsigned char grouped_smem[];
  __shared__ int offsets[kMaxExperts + 1];
  __shared__ int tile_expert, tile_row0;
  // Which expert and row tile this block computes: the experts' tiles in expert order.
  for (int e = threadIdx.x; e <= p.experts; e += kThreads) offsets[e] = p.offsets[e];
  __syncthreads();
  if (threadIdx.x == 0) {
    tile_expert = -1;
    int before = 0;
    const int tile = static_cast<int>(blockIdx.y);
    for (int e = 0; e < p.experts; ++e) {
      const int tiles = (offsets[e + 1] - offsets[e] + T::kBm - 1) / T::kBm;
      if (tile < before + tiles) {
        tile_expert = e;
        tile_row0 = offsets[e] + (tile - before) * T::kBm;
        break;
      }
      before += tiles;
    }
  }
  __syncthreads();
  const int expert = tile_expert;
  if (expert < 0) return;
  const int row0 = tile_row0, row_end = offsets[expert + 1];
  const int col0 = static_cast<int>(blockIdx.x) * T::kBn;
  __nv_bfloat16* stages = reinterpret_cast<__nv_bfloat16*>(grouped_smem);
  float* c_tile = reinterpret_cast<float*>(grouped_smem);  // after the last stage is consumed
  const int warp = threadIdx.x / 32, wm = warp / T::kWarpsN, wn = warp % T::kWarpsN;
  wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc[T::kFm][T::kFn];
#pragma unroll
  for (int i = 0; i < T::kFm; ++i) {
#pragma unroll
    for (int j = 0; j < T::kFn; ++j) wmma::fill_fragment(acc[i][j], 0.0f);
  }
  const __nv_bfloat16* w = p.w + static_cast<int64_t>(expert) * p.n * p.k;
  const int num_k = (p.k + kBk - 1) / kBk;
  auto load_stage = [&](int kt) {
    __nv_bfloat16* a_tile = stages + (kt % T::kStages) * T::kStageElems;
    LoadRows<T::kRowsA>(a_tile, p.x, row0, row_end, p.k, kt * kBk, p.vec);
    LoadRows<T::kRowsB>(a_tile + T::kBm * kLds, w, col0, p.n, p.k, kt * kBk, p.vec);
  };
#pragma unroll
  for (int s = 0; s < T::kStages - 1; ++s) {
    if (s < num_k) load_stage(s);
    CpAsyncCommit();  // one group per stage, empty ones included, so the counts line up
  }
  for (int kt = 0; kt < num_k; ++kt) {
    if (kt + T::kStages - 1 < num_k) load_stage(kt + T::kStages - 1);
    CpAsyncCommit();
    CpAsyncWait<T::kStages - 1>();  // tile kt has landed
    __syncthreads();
    const __nv_bfloat16* a_tile = stages + (kt % T::kStages) * T::kStageElems;
    const __nv_bfloat16* b_tile = a_tile + T::kBm * kLds;
#pragma unroll
    for (int kk = 0; kk < kBk; kk += 16) {
      wmma::fragment<wmma::matrix_a, 16, 16, 16, __nv_bfloat16, wmma::row_major> a[T::kFm];
      wmma::fragment<wmma::matrix_b, 16, 16, 16, __nv_bfloat16, wmma::col_major> b[T::kFn];
#pragma unroll
      for (int i = 0; i < T::kFm; ++i) {
        wmma::load_matrix_sync(a[i], a_tile + (wm * T::kFm + i) * 16 * kLds + kk, kLds);
      }
#pragma unroll
      for (int j = 0; j < T::kFn; ++j) {
        wmma::load_matrix_sync(b[j], b_tile + (wn * T::kFn + j) * 16 * kLds + kk, kLds);
      }
#pragma unroll
      for (int i = 0; i < T::kFm; ++i) {
#pragma unroll
        for (int j = 0; j < T::kFn; ++j) wmma::mma_sync(acc[i][j], a[i], b[j], acc[i][j]);
      }
    }
    __syncthreads();  // every warp is done with this stage before it is refilled
  }
  CpAsyncWait<0>();
  __syncthreads();
#pragma unroll
  for (int i = 0; i < T::kFm; ++i) {
#pragma unroll
    for (int j = 0; j < T::kFn; ++j) {
      wmma::store_matrix_sync(c_tile + (wm * T::kFm + i) * 16 * T::kLdc + (wn * T::kFn + j) * 16,
                              acc[i][j], T::kLdc, wmma::mem_row_major);
    }
  }
  __syncthreads();
  for (int e = threadIdx.x; e < T::kBm * T::kBn; e += kThreads) {
    const int r = e / T::kBn, c = e % T::kBn;
    const int row = row0 + r, col = col0 + c;
    if (row < row_end && col < p.n) {
      StoreF(p.out, p.out_bf16, static_cast<int64_t>(row) * p.n + col, c_tile[r * T::kLdc + c]);
    }
  }
}

using SmallTile = Tile<16, 64, 6>;  // a few rows per expert: deep pipeline, many blocks
using WideTile = Tile<64, 128, 3>;

template <typename T>
absl::Status Launch(const GroupedParams& p, int64_t rows, const char* op) {
  const int64_t row_tiles = (rows + T::kBm - 1) / T::kBm + p.experts;  // >= the experts' tiles
  if (row_tiles > 65535) {
    return absl::InvalidArgumentError(
        absl::StrFormat("%s: %d rows and %d experts need more than 65535 row tiles of %d", op, rows,
                        p.experts, T::kBm));
  }
  static const cudaError_t configured = cudaFuncSetAttribute(
      GroupedGemmKernel<T>, cudaFuncAttributeMaxDynamicSharedMemorySize, int{T::kSharedBytes});
  if (configured != cudaSuccess) {
    return absl::InternalError(absl::StrFormat("%s: %d bytes of shared memory: %s", op,
                                               T::kSharedBytes, cudaGetErrorString(configured)));
  }
  const dim3 grid(static_cast<unsigned>((p.n + T::kBn - 1) / T::kBn),
                  static_cast<unsigned>(row_tiles));
  LaunchKernel(GroupedGemmKernel<T>, grid, kThreads, T::kSharedBytes, p);
  return LaunchStatus(op);
}

// The views of a device-offsets grouped GEMM (x [R, K], w [E, N, K], offsets [E + 1], out [R, N]):
// dtypes, device residence, contiguity, shapes and the kernels' limits.
absl::Status CheckGroupedViews(const char* op, const core::TensorView& x, const core::TensorView& w,
                               const core::TensorView& offsets, const core::TensorView& out) {
  using core::DType;
  for (absl::Status s : {CheckDeviceView(op, "x", x, {DType::kBF16}),
                         CheckDeviceView(op, "w", w, {DType::kBF16}),
                         CheckDeviceView(op, "offsets", offsets, {DType::kI32}),
                         CheckDeviceView(op, "out", out, {DType::kBF16, DType::kF32})}) {
    if (!s.ok()) return s;
  }
  if (absl::Status s = CheckArg(x.rank == 2 && w.rank == 3 && out.rank == 2 && offsets.rank == 1 &&
                                    w.shape[2] == x.shape[1] && out.shape[0] == x.shape[0] &&
                                    out.shape[1] == w.shape[1] && offsets.shape[0] == w.shape[0] + 1,
                                op, "x [R, K], w [E, N, K], offsets [E + 1], out [R, N]");
      !s.ok()) {
    return s;
  }
  const int64_t rows = x.shape[0], experts = w.shape[0], n = w.shape[1], k = w.shape[2];
  return CheckArg(experts <= kMaxExperts && rows < (int64_t{1} << 31) && n < (int64_t{1} << 31) &&
                      k < (int64_t{1} << 31),
                  op, "at most 1024 experts; rows, N and K below 2^31");
}

}  // namespace

absl::Status GroupedGemmDeviceOffsets(const core::TensorView& x, const core::TensorView& w,
                                      const core::TensorView& offsets, const core::TensorView& out,
                                      GroupedGemmTile tile) {
  const char* op = "cuda::GroupedGemmDeviceOffsets";
  if (absl::Status s = CheckGroupedViews(op, x, w, offsets, out); !s.ok()) return s;
  const int64_t rows = x.shape[0], experts = w.shape[0], n = w.shape[1], k = w.shape[2];
  if (rows == 0 || n == 0 || experts == 0) return absl::OkStatus();
  GroupedParams p{};
  p.x = static_cast<const __nv_bfloat16*>(x.data);
  p.w = static_cast<const __nv_bfloat16*>(w.data);
  p.offsets = offsets.data_as<int32_t>();
  p.out = out.data;
  p.n = static_cast<int>(n);
  p.k = static_cast<int>(k);
  p.experts = static_cast<int>(experts);
  p.out_bf16 = IsBf16(out);
  p.vec = k % 8 == 0 && reinterpret_cast<uintptr_t>(x.data) % 16 == 0 &&
          reinterpret_cast<uintptr_t>(w.data) % 16 == 0;
  if (tile == GroupedGemmTile::kAuto) {
    tile = GroupedGemmWgmmaApplies(x, w) ? GroupedGemmTile::kWgmma
           : rows <= 16 * experts        ? GroupedGemmTile::kSmall16x64
                                         : GroupedGemmTile::kWide64x128;
  }
  if (tile == GroupedGemmTile::kWgmma) return GroupedGemmWgmma(x, w, offsets, out);
  return tile == GroupedGemmTile::kSmall16x64 ? Launch<SmallTile>(p, rows, op)
                                              : Launch<WideTile>(p, rows, op);
}

namespace {

// bf16 tokens [R, C] and weights [E, ., .] whose pass slots fit the grid (plan::WgmmaPassSlots).
bool TokensAndWeightsFit(const core::TensorView& tokens, const core::TensorView& w) {
  return tokens.dtype == core::DType::kBF16 && w.dtype == core::DType::kBF16 && tokens.rank == 2 &&
         w.rank == 3 && plan::WgmmaPassSlots(w.shape[0], tokens.shape[0]) <= 65535;
}

}  // namespace

bool GroupedGemmHopperApplies(const core::TensorView& x, const core::TensorView& w) {
  return TokensAndWeightsFit(x, w) && GroupedGemmWgmmaApplies(x, w);
}

bool GroupedGemmInputGradApplies(const core::TensorView& dy, const core::TensorView& w) {
  return TokensAndWeightsFit(dy, w) && GroupedGemmWgmmaInputGradApplies(dy, w);
}

bool GroupedGemmWeightGradApplies(const core::TensorView& dy, const core::TensorView& x,
                                  const core::TensorView& dw) {
  return dy.dtype == core::DType::kBF16 && x.dtype == core::DType::kBF16 &&
         dw.dtype == core::DType::kF32 && dy.rank == 2 && x.rank == 2 && dw.rank == 3 &&
         GroupedGemmWgmmaWeightGradApplies(dy, x, dw);
}

absl::Status GroupedGemmInputGradDeviceOffsets(
    const core::TensorView& dy, const core::TensorView& w, const core::TensorView& dy2,
    const core::TensorView& w2, const core::TensorView& offsets, const core::TensorView& dx) {
  const char* op = "cuda::GroupedGemmInputGradDeviceOffsets";
  using core::DType;
  // dy [R, N] and w [E, N, K] as GroupedGemmDeviceOffsets's x and w with the roles of N and K
  // swapped: its checks on (dy, w viewed [E, K, N]) would misname them, so checked here.
  for (absl::Status s :
       {CheckDeviceView(op, "dy", dy, {DType::kBF16}), CheckDeviceView(op, "w", w, {DType::kBF16}),
        CheckDeviceView(op, "offsets", offsets, {DType::kI32}),
        CheckDeviceView(op, "dx", dx, {DType::kBF16, DType::kF32})}) {
    if (!s.ok()) return s;
  }
  if (absl::Status s = CheckArg(dy.rank == 2 && w.rank == 3 && dx.rank == 2 && offsets.rank == 1 &&
                                    w.shape[1] == dy.shape[1] && dx.shape[0] == dy.shape[0] &&
                                    dx.shape[1] == w.shape[2] && offsets.shape[0] == w.shape[0] + 1,
                                op, "dy [R, N], w [E, N, K], offsets [E + 1], dx [R, K]");
      !s.ok()) {
    return s;
  }
  const bool two = w2.data != nullptr || dy2.data != nullptr;
  if (two) {
    for (absl::Status s : {CheckDeviceView(op, "dy2", dy2, {DType::kBF16}),
                           CheckDeviceView(op, "w2", w2, {DType::kBF16})}) {
      if (!s.ok()) return s;
    }
    if (absl::Status s = CheckArg(dy2.rank == 2 && w2.rank == 3 && dy2.shape[0] == dy.shape[0] &&
                                      w2.shape[0] == w.shape[0] && w2.shape[1] == dy2.shape[1] &&
                                      w2.shape[2] == w.shape[2],
                                  op, "dy2 [R, N2] and w2 [E, N2, K] beside dy and w");
        !s.ok()) {
      return s;
    }
  }
  if (dy.shape[0] == 0 || w.shape[0] == 0 || w.shape[2] == 0) return absl::OkStatus();
  return GroupedGemmWgmmaInputGrad(dy, w, two ? dy2 : core::TensorView(),
                                   two ? w2 : core::TensorView(), offsets, dx);
}

absl::Status GroupedGemmWeightGradDeviceOffsets(const core::TensorView& dy,
                                                const core::TensorView& x,
                                                const core::TensorView& offsets,
                                                const core::TensorView& dw) {
  const char* op = "cuda::GroupedGemmWeightGradDeviceOffsets";
  using core::DType;
  for (absl::Status s :
       {CheckDeviceView(op, "dy", dy, {DType::kBF16}), CheckDeviceView(op, "x", x, {DType::kBF16}),
        CheckDeviceView(op, "offsets", offsets, {DType::kI32}),
        CheckDeviceView(op, "dw", dw, {DType::kF32})}) {
    if (!s.ok()) return s;
  }
  if (absl::Status s =
          CheckArg(dy.rank == 2 && x.rank == 2 && dw.rank == 3 && offsets.rank == 1 &&
                       x.shape[0] == dy.shape[0] && dw.shape[1] == dy.shape[1] &&
                       dw.shape[2] == x.shape[1] && offsets.shape[0] == dw.shape[0] + 1 &&
                       dy.shape[0] < (int64_t{1} << 31),
                   op, "dy [R, N], x [R, K], offsets [E + 1], dw [E, N, K], R < 2^31");
      !s.ok()) {
    return s;
  }
  if (dw.numel() == 0) return absl::OkStatus();
  if (dy.shape[0] == 0) {  // no rows: every expert's gradient is zero
    if (cudaMemsetAsync(dw.data, 0, dw.numel() * sizeof(float), LaunchStream()) != cudaSuccess) {
      return LaunchStatus(op);
    }
    return absl::OkStatus();
  }
  return GroupedGemmWgmmaWeightGrad(dy, x, offsets, dw);
}

bool GroupedGemmSwiGluApplies(const core::TensorView& x, const core::TensorView& w1,
                              const core::TensorView& w3) {
  return GroupedGemmWgmmaSwiGluApplies(x, w1, w3);
}

absl::Status GroupedGemmSwiGluDeviceOffsets(const core::TensorView& x, const core::TensorView& w1,
                                            const core::TensorView& w3,
                                            const core::TensorView& offsets, float limit,
                                            const core::TensorView& out) {
  const char* op = "cuda::GroupedGemmSwiGluDeviceOffsets";
  if (absl::Status s = CheckGroupedViews(op, x, w1, offsets, out); !s.ok()) return s;
  if (absl::Status s = CheckDeviceView(op, "w3", w3, {core::DType::kBF16}); !s.ok()) return s;
  if (absl::Status s = CheckArg(w3.rank == 3 && w3.shape[0] == w1.shape[0] &&
                                    w3.shape[1] == w1.shape[1] && w3.shape[2] == w1.shape[2],
                                op, "w3 [E, I, K] as w1");
      !s.ok()) {
    return s;
  }
  if (x.shape[0] == 0 || w1.shape[1] == 0 || w1.shape[0] == 0) return absl::OkStatus();
  return GroupedGemmWgmmaSwiGlu(x, w1, w3, offsets, limit, out);
}

}  // namespace v4rl::kernels::cuda
