#include <mma.h>

#include <algorithm>

#include "kernels/cuda/check.h"
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/grouped_gemm.h"

namespace v4rl::kernels::cuda {
namespace {

constexpr int kBm = 64, kBn = 64, kBk = 64;
constexpr int kLds = kBk + 8;   // bf16 tile row pitch (multiple of 8; 16-row steps 32B-aligned)
constexpr int kLdc = kBn + 4;   // f32 output tile row pitch
constexpr int kThreads = 128;   // 4 warps, 2 x 2, each 32 x 32 of the tile
// K tiles in flight: while one is multiplied, the next two stream in (cp.async), so a block
// keeps loads outstanding instead of waiting for each tile (decode MoE is bandwidth bound).
constexpr int kStages = 3;
constexpr int kStageElems = (kBm + kBn) * kLds;  // A tile then B tile, bf16
constexpr size_t kSharedBytes = sizeof(__nv_bfloat16) * kStages * kStageElems;
static_assert(sizeof(float) * kBm * kLdc <= kSharedBytes, "the output tile reuses the stages");

struct GroupedParams {
  const __nv_bfloat16* x;
  const __nv_bfloat16* w;
  const int32_t* offsets;
  void* out;
  int64_t n, k;
  int32_t experts;
  bool out_bf16, vec;  // vec: 16-byte loads (K % 8 == 0, aligned bases)
};

// Copies a [64, kBk] bf16 tile (rows [row0, row_end), columns [k0, K)) into shared memory, zeros
// outside: asynchronously in 16-byte pieces when vec (K % 8 == 0), else element by element.
__device__ __forceinline__ void LoadTile(__nv_bfloat16* dst, const __nv_bfloat16* src,
                                         int64_t row0, int64_t row_end, int64_t ld, int64_t k0,
                                         int64_t k, bool vec) {
  constexpr int kChunks = 64 * kBk / 8;
  for (int c = threadIdx.x; c < kChunks; c += kThreads) {
    const int r = c / (kBk / 8), kc = (c % (kBk / 8)) * 8;
    const int64_t row = row0 + r, col = k0 + kc;
    __nv_bfloat16* d = dst + r * kLds + kc;
    if (vec) {
      const bool valid = row < row_end && col < k;
      CpAsync16(d, valid ? src + row * ld + col : src, valid);
    } else {
      for (int i = 0; i < 8; ++i) {
        d[i] = row < row_end && col + i < k ? src[row * ld + col + i] : __float2bfloat16(0.0f);
      }
    }
  }
}

__global__ void __launch_bounds__(kThreads) GroupedGemmKernel(GroupedParams p) {
  using namespace nvcuda;
  // Which expert and row tile this block computes: the experts' tiles in expert order.
  int64_t row0 = -1, row_end = 0;
  int expert = 0;
  {
    int64_t before = 0;
    const int64_t tile = blockIdx.y;
    for (int e = 0; e < p.experts; ++e) {
      const int64_t begin = p.offsets[e], end = p.offsets[e + 1];
      const int64_t tiles = (end - begin + kBm - 1) / kBm;
      if (tile < before + tiles) {
        expert = e;
        row0 = begin + (tile - before) * kBm;
        row_end = end;
        break;
      }
      before += tiles;
    }
  }
  if (row0 < 0) return;
  const int64_t col0 = int64_t{blockIdx.x} * kBn;
  extern __shared__ __align__(128) unsigned char grouped_smem[];
  __nv_bfloat16* stages = reinterpret_cast<__nv_bfloat16*>(grouped_smem);
  float* c_tile = reinterpret_cast<float*>(grouped_smem);  // after the last stage is consumed
  const int warp = threadIdx.x / 32, wm = warp / 2, wn = warp % 2;
  wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc[2][2];
  for (int i = 0; i < 2; ++i) {
    for (int j = 0; j < 2; ++j) wmma::fill_fragment(acc[i][j], 0.0f);
  }
  const __nv_bfloat16* w = p.w + int64_t{expert} * p.n * p.k;
  const int64_t num_k = (p.k + kBk - 1) / kBk;
  auto load_stage = [&](int64_t kt) {
    __nv_bfloat16* a_tile = stages + (kt % kStages) * kStageElems;
    LoadTile(a_tile, p.x, row0, row_end, p.k, kt * kBk, p.k, p.vec);
    LoadTile(a_tile + kBm * kLds, w, col0, p.n, p.k, kt * kBk, p.k, p.vec);
  };
  for (int s = 0; s < kStages - 1; ++s) {
    if (s < num_k) load_stage(s);
    CpAsyncCommit();  // one group per stage, empty ones included, so the counts line up
  }
  for (int64_t kt = 0; kt < num_k; ++kt) {
    if (kt + kStages - 1 < num_k) load_stage(kt + kStages - 1);
    CpAsyncCommit();
    CpAsyncWait<kStages - 1>();  // tile kt has landed
    __syncthreads();
    const __nv_bfloat16* a_tile = stages + (kt % kStages) * kStageElems;
    const __nv_bfloat16* b_tile = a_tile + kBm * kLds;
    for (int kk = 0; kk < kBk; kk += 16) {
      wmma::fragment<wmma::matrix_a, 16, 16, 16, __nv_bfloat16, wmma::row_major> a[2];
      wmma::fragment<wmma::matrix_b, 16, 16, 16, __nv_bfloat16, wmma::col_major> b[2];
      for (int i = 0; i < 2; ++i) {
        wmma::load_matrix_sync(a[i], a_tile + (wm * 32 + i * 16) * kLds + kk, kLds);
        wmma::load_matrix_sync(b[i], b_tile + (wn * 32 + i * 16) * kLds + kk, kLds);
      }
      for (int i = 0; i < 2; ++i) {
        for (int j = 0; j < 2; ++j) wmma::mma_sync(acc[i][j], a[i], b[j], acc[i][j]);
      }
    }
    __syncthreads();  // every warp is done with this stage before it is refilled
  }
  CpAsyncWait<0>();
  __syncthreads();
  for (int i = 0; i < 2; ++i) {
    for (int j = 0; j < 2; ++j) {
      wmma::store_matrix_sync(c_tile + (wm * 32 + i * 16) * kLdc + wn * 32 + j * 16, acc[i][j],
                              kLdc, wmma::mem_row_major);
    }
  }
  __syncthreads();
  for (int e = threadIdx.x; e < kBm * kBn; e += kThreads) {
    const int r = e / kBn, c = e % kBn;
    const int64_t row = row0 + r, col = col0 + c;
    if (row < row_end && col < p.n) StoreF(p.out, p.out_bf16, row * p.n + col, c_tile[r * kLdc + c]);
  }
}

}  // namespace

absl::Status GroupedGemmDeviceOffsets(const core::TensorView& x, const core::TensorView& w,
                                      const core::TensorView& offsets,
                                      const core::TensorView& out) {
  const char* op = "cuda::GroupedGemmDeviceOffsets";
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
  const int64_t row_tiles = (rows + kBm - 1) / kBm + experts;  // >= the experts' tiles
  if (absl::Status s = CheckArg(row_tiles <= 65535 && experts <= (1 << 20), op,
                                "too many rows or experts for one launch");
      !s.ok()) {
    return s;
  }
  if (rows == 0 || n == 0 || experts == 0) return absl::OkStatus();
  GroupedParams p{};
  p.x = static_cast<const __nv_bfloat16*>(x.data);
  p.w = static_cast<const __nv_bfloat16*>(w.data);
  p.offsets = offsets.data_as<int32_t>();
  p.out = out.data;
  p.n = n;
  p.k = k;
  p.experts = static_cast<int32_t>(experts);
  p.out_bf16 = IsBf16(out);
  p.vec = k % 8 == 0 && reinterpret_cast<uintptr_t>(x.data) % 16 == 0 &&
          reinterpret_cast<uintptr_t>(w.data) % 16 == 0;
  static const cudaError_t configured = cudaFuncSetAttribute(
      GroupedGemmKernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int{kSharedBytes});
  if (configured != cudaSuccess) {
    return absl::InternalError(absl::StrFormat("%s: %d bytes of shared memory: %s", op,
                                               kSharedBytes, cudaGetErrorString(configured)));
  }
  const dim3 grid(static_cast<unsigned>((n + kBn - 1) / kBn), static_cast<unsigned>(row_tiles));
  GroupedGemmKernel<<<grid, kThreads, kSharedBytes>>>(p);
  return LaunchStatus(op);
}

}  // namespace v4rl::kernels::cuda
