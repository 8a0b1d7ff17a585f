// Device helpers shared by the .cu files of kernels/cuda/: the launch of a kernel (LaunchKernel,
// with programmatic dependent launch) and the hook every kernel starts with (WaitForPriorKernels),
// bf16-or-f32 loads and stores through one flag, warp and block reductions, deterministic column
// sums, the launch stream and the launch-error Status.
// Include only from .cu files.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_format.h"
#include "kernels/cuda/pdl.h"
#include "kernels/cuda/stream.h"

namespace v4rl::kernels::cuda {

// The stream of this thread's launches (stream.h): LaunchKernel queues every kernel on it.
inline cudaStream_t LaunchStream() { return static_cast<cudaStream_t>(CurrentStream()); }

// Queues kernel<<<grid, block, shared_bytes, LaunchStream()>>>(args...) with programmatic
// dependent launch (pdl.h): the attribute cudaLaunchAttributeProgrammaticStreamSerialization lets
// the GPU schedule the kernel before the kernel ahead of it on the stream has ended, so `kernel`
// must begin with WaitForPriorKernels(). A plain launch when !PdlEnabled() (V4RL_CUDA_PDL=0).
// The arguments convert to the kernel's parameter types as they do through <<<>>>; a function
// template kernel is named with its template arguments (ColumnPartialsKernel<Value>). Returns the
// launch's error, which also becomes this thread's last error: LaunchStatus(op) after a run of
// launches reports it, as it does after <<<>>>.
template <typename... Params, typename... Args>
cudaError_t LaunchKernel(void (*kernel)(Params...), dim3 grid, dim3 block, size_t shared_bytes,
                         Args&&... args) {
  cudaLaunchAttribute pdl[1];
  pdl[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  pdl[0].val.programmaticStreamSerializationAllowed = 1;
  cudaLaunchConfig_t config = {};
  config.gridDim = grid;
  config.blockDim = block;
  config.dynamicSmemBytes = shared_bytes;
  config.stream = LaunchStream();
  const bool enabled = PdlEnabled();
  config.attrs = enabled ? pdl : nullptr;
  config.numAttrs = enabled ? 1 : 0;
  return cudaLaunchKernelEx(&config, kernel, std::forward<Args>(args)...);
}

// The first statement of every kernel of kernels/cuda/ (LaunchKernel lets a kernel be scheduled
// while the kernel ahead of it on the stream still runs). Waits until the kernels this one
// depends on have completed and their writes are visible, then lets the next kernel on the
// stream be scheduled. Nothing before it may touch global memory, writes included (the kernel
// ahead may still be reading the address). Releasing the next kernel right after the wait is
// safe: that kernel's own WaitForPriorKernels() waits for this whole grid to complete and flush,
// and it cannot be scheduled before every block of this grid has passed this point (so, in turn,
// before the kernel ahead of this one has completed). Returns at once for a kernel launched
// without the attribute (V4RL_CUDA_PDL=0, or by other code) and compiles to nothing before sm_90.
__device__ __forceinline__ void WaitForPriorKernels() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");
  asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}

// Status of the last launch (configuration errors); execution errors surface at Synchronize.
inline absl::Status LaunchStatus(const char* op) {
  if (cudaError_t error = cudaGetLastError(); error != cudaSuccess) {
    return absl::InternalError(
        absl::StrFormat("%s: kernel launch failed: %s", op, cudaGetErrorString(error)));
  }
  return absl::OkStatus();
}

__device__ __forceinline__ float LoadF(const void* p, bool bf16, int64_t i) {
  return bf16 ? __bfloat162float(static_cast<const __nv_bfloat16*>(p)[i])
              : static_cast<const float*>(p)[i];
}

__device__ __forceinline__ void StoreF(void* p, bool bf16, int64_t i, float v) {
  if (bf16) {
    static_cast<__nv_bfloat16*>(p)[i] = __float2bfloat16(v);  // round to nearest even
  } else {
    static_cast<float*>(p)[i] = v;
  }
}

// The V4 clamped SwiGLU of one element: silu(min(g, limit)) · clamp(u, ±limit) (limit <= 0: no
// clamp), in f32. One definition for SwiGluKernel (elementwise.cu) and the fused grouped GEMM
// (grouped_gemm_wgmma.cu), which must round alike.
__device__ __forceinline__ float SwiGluClampValue(float g, float u, float limit) {
  if (limit > 0) {
    g = fminf(g, limit);
    u = fminf(fmaxf(u, -limit), limit);
  }
  return g / (1.0f + expf(-g)) * u;
}

// Eight consecutive values from element i: one 16-byte access for bf16, two for f32. Needs i a
// multiple of 8 and a 16-byte aligned base (Vec8Ok on the host). Memory-bound kernels use these
// so that each thread keeps several bytes in flight (2-byte accesses reach a fraction of HBM).
__device__ __forceinline__ void Load8(const void* p, bool bf16, int64_t i, float v[8]) {
  if (bf16) {
    const uint4 raw = *reinterpret_cast<const uint4*>(static_cast<const __nv_bfloat16*>(p) + i);
    const __nv_bfloat162* pairs = reinterpret_cast<const __nv_bfloat162*>(&raw);
#pragma unroll
    for (int k = 0; k < 4; ++k) {
      const float2 f = __bfloat1622float2(pairs[k]);
      v[2 * k] = f.x;
      v[2 * k + 1] = f.y;
    }
  } else {
    const float4* f = reinterpret_cast<const float4*>(static_cast<const float*>(p) + i);
    const float4 a = f[0], b = f[1];
    v[0] = a.x, v[1] = a.y, v[2] = a.z, v[3] = a.w, v[4] = b.x, v[5] = b.y, v[6] = b.z, v[7] = b.w;
  }
}

__device__ __forceinline__ void Store8(void* p, bool bf16, int64_t i, const float v[8]) {
  if (bf16) {
    uint4 raw;
    __nv_bfloat162* pairs = reinterpret_cast<__nv_bfloat162*>(&raw);
#pragma unroll
    for (int k = 0; k < 4; ++k) pairs[k] = __floats2bfloat162_rn(v[2 * k], v[2 * k + 1]);
    *reinterpret_cast<uint4*>(static_cast<__nv_bfloat16*>(p) + i) = raw;
  } else {
    float4* f = reinterpret_cast<float4*>(static_cast<float*>(p) + i);
    f[0] = make_float4(v[0], v[1], v[2], v[3]);
    f[1] = make_float4(v[4], v[5], v[6], v[7]);
  }
}

// W consecutive values from element i: Load8 / Store8 (W = 8; Vec8Ok buffers) or one LoadF /
// StoreF (W = 1), for kernels instantiated for both widths.
template <int W>
__device__ __forceinline__ void LoadW(const void* p, bool bf16, int64_t i, float (&v)[W]) {
  if constexpr (W == 8) {
    Load8(p, bf16, i, v);
  } else {
    v[0] = LoadF(p, bf16, i);
  }
}
template <int W>
__device__ __forceinline__ void StoreW(void* p, bool bf16, int64_t i, const float (&v)[W]) {
  if constexpr (W == 8) {
    Store8(p, bf16, i, v);
  } else {
    StoreF(p, bf16, i, v[0]);
  }
}

// Host: whether Load8/Store8 may serve a buffer whose rows start every `row_elements` elements.
inline bool Vec8Ok(const void* p, int64_t row_elements) {
  return p != nullptr && reinterpret_cast<uintptr_t>(p) % 16 == 0 && row_elements % 8 == 0;
}

// 16 bytes global -> shared without passing through registers; src_bytes 0 writes zeros.
__device__ __forceinline__ void CpAsync16(void* dst, const void* src, bool valid) {
  const unsigned d = static_cast<unsigned>(__cvta_generic_to_shared(dst));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(d), "l"(src),
               "r"(valid ? 16 : 0));
}
__device__ __forceinline__ void CpAsyncCommit() { asm volatile("cp.async.commit_group;\n"); }
template <int kPending>
__device__ __forceinline__ void CpAsyncWait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(kPending));
}

// Host: the kernel of a row-at-a-time 8-wide op that holds a row of `dim` columns in registers
// over `threads` threads, kSteps groups of eight columns a thread: `one`, `two` or `four` (3
// steps round up to 4), or `looped` (streams the row twice) past four steps or without 8-wide
// rows. The RMSNorm forward and backward share this choice.
template <typename Kernel>
Kernel RowInRegistersKernel(bool vec, int64_t dim, int threads, Kernel one, Kernel two, Kernel four,
                            Kernel looped) {
  const int64_t steps = vec ? (dim + 8 * int64_t{threads} - 1) / (8 * int64_t{threads}) : 0;
  return steps == 1 ? one : steps == 2 ? two : steps == 3 || steps == 4 ? four : looped;
}

__device__ __forceinline__ int64_t Min64(int64_t a, int64_t b) { return a < b ? a : b; }
__device__ __forceinline__ int64_t Max64(int64_t a, int64_t b) { return a > b ? a : b; }

__device__ __forceinline__ float WarpSum(float v) {
  for (int offset = 16; offset > 0; offset /= 2) v += __shfl_xor_sync(0xffffffffu, v, offset);
  return v;
}

__device__ __forceinline__ float WarpMax(float v) {
  for (int offset = 16; offset > 0; offset /= 2) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, offset));
  return v;
}

// Sum over the block (blockDim.x a multiple of 32, at most 1024); every thread gets the result.
// `scratch` holds 32 floats of shared memory; the call synchronises the block.
__device__ __forceinline__ float BlockSum(float v, float* scratch) {
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, warps = blockDim.x / 32;
  v = WarpSum(v);
  __syncthreads();
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  v = lane < warps ? scratch[lane] : 0.0f;
  return WarpSum(v);
}

// BlockSum for a warp-specialised block: the sum over threads [0, kThreads) only (warps 0 to
// kThreads / 32 - 1), called by exactly those threads while the block's other warps do something
// else. It synchronises them on the named barrier kBarrier (1-15; __syncthreads() is barrier 0)
// instead of the whole block, and reduces in BlockSum's order: the bits of BlockSum on a block of
// kThreads threads. `scratch` holds 32 floats of shared memory that the other warps do not use.
template <int kThreads, int kBarrier>
__device__ __forceinline__ float BlockSumOfFirstWarps(float v, float* scratch) {
  static_assert(kThreads % 32 == 0 && kThreads <= 1024 && kBarrier >= 1 && kBarrier <= 15);
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  v = WarpSum(v);
  asm volatile("bar.sync %0, %1;" ::"n"(kBarrier), "n"(kThreads) : "memory");
  if (lane == 0) scratch[warp] = v;
  asm volatile("bar.sync %0, %1;" ::"n"(kBarrier), "n"(kThreads) : "memory");
  v = lane < kThreads / 32 ? scratch[lane] : 0.0f;
  return WarpSum(v);
}

__device__ __forceinline__ float BlockMax(float v, float* scratch) {
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, warps = blockDim.x / 32;
  v = WarpMax(v);
  __syncthreads();
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  v = lane < warps ? scratch[lane] : -INFINITY;
  return WarpMax(v);
}

// out[i] += Σ over the block of v[i] for i < count (count <= N); thread i of the block writes
// out[i]. `scratch` holds 32 * N floats of shared memory; the call synchronises the block. One
// pass of shuffles and two barriers for all N sums (N BlockSum calls would take 2N barriers).
template <int N>
__device__ __forceinline__ void BlockSumsAddTo(float (&v)[N], int count, float* scratch,
                                               float* out) {
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, warps = blockDim.x / 32;
#pragma unroll
  for (int i = 0; i < N; ++i) {
    if (i < count) v[i] = WarpSum(v[i]);
  }
  __syncthreads();
  if (lane == 0) {
#pragma unroll
    for (int i = 0; i < N; ++i) scratch[warp * N + i] = v[i];
  }
  __syncthreads();
  if (threadIdx.x < count) {
    float total = 0;
    for (int w = 0; w < warps; ++w) total += scratch[w * N + threadIdx.x];
    out[threadIdx.x] += total;
  }
}

// Column sums out[c] += Σ_r value(r, c) over r < rows, c < cols, in two launches and in a fixed
// order (so runs repeat bit for bit, unlike atomics): blocks of 256 columns x a chunk of rows
// write partial sums, then one thread a column adds the chunks in order. `value` is a copyable
// functor with `__device__ float operator()(int64_t r, int64_t c) const`. Spreads tall reductions
// (4,096 rows x 2,048 columns: 8 blocks with one thread a column) over every SM.
template <typename Value>
__global__ void ColumnPartialsKernel(Value value, int64_t rows, int64_t cols,
                                     int64_t rows_per_chunk, float* partials) {
  WaitForPriorKernels();
  const int64_t c = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (c >= cols) return;
  const int64_t first = blockIdx.y * rows_per_chunk;
  const int64_t last = Min64(rows, first + rows_per_chunk);
  float sum = 0;
#pragma unroll 8
  for (int64_t r = first; r < last; ++r) sum += value(r, c);
  partials[blockIdx.y * cols + c] = sum;
}

// One thread a column adds the chunks' partials in chunk order. The loads go out kLoadBatch at a
// time before their adds (one memory round trip a batch: the usual 64 chunks of AddColumnSums in
// two trips rather than eight), the adds stay in order, so the sum is the plain loop's bit for bit.
static __global__ void AddChunkSumsKernel(const float* partials, int64_t chunks, int64_t cols,
                                          float* out) {
  WaitForPriorKernels();
  constexpr int kLoadBatch = 32;
  const int64_t c = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (c >= cols) return;
  float sum = 0;
  int64_t k = 0;
  for (; k + kLoadBatch <= chunks; k += kLoadBatch) {
    float v[kLoadBatch];
#pragma unroll
    for (int j = 0; j < kLoadBatch; ++j) v[j] = __ldg(partials + (k + j) * cols + c);
#pragma unroll
    for (int j = 0; j < kLoadBatch; ++j) sum += v[j];
  }
#pragma unroll 8
  for (; k < chunks; ++k) sum += partials[k * cols + c];
  out[c] += sum;
}

template <typename Value>
absl::Status AddColumnSums(const char* op, Value value, int64_t rows, int64_t cols, float* out) {
  if (rows <= 0 || cols <= 0) return absl::OkStatus();
  constexpr int kThreads = 256;
  constexpr int64_t kTargetBlocks = 512;    // ~4 per SM on the H200
  constexpr int64_t kMinRowsPerChunk = 16;  // a chunk's loads outweigh its partial's
  constexpr int64_t kMaxChunks = 64;        // the second launch adds this many a column
  const int64_t column_blocks = (cols + kThreads - 1) / kThreads;
  const int64_t chunks_wanted =
      std::min({kTargetBlocks / column_blocks, rows / kMinRowsPerChunk, kMaxChunks});
  int64_t chunks = std::max<int64_t>(1, chunks_wanted);
  const int64_t rows_per_chunk = (rows + chunks - 1) / chunks;
  chunks = (rows + rows_per_chunk - 1) / rows_per_chunk;
  float* partials = nullptr;
  if (cudaMallocAsync(reinterpret_cast<void**>(&partials), chunks * cols * sizeof(float), 0) !=
      cudaSuccess) {
    return absl::ResourceExhaustedError(
        absl::StrFormat("%s: cudaMallocAsync of %d column partials", op, chunks * cols));
  }
  LaunchKernel(ColumnPartialsKernel<Value>, dim3(unsigned(column_blocks), unsigned(chunks)),
               kThreads, 0, value, rows, cols, rows_per_chunk, partials);
  LaunchKernel(AddChunkSumsKernel, unsigned(column_blocks), kThreads, 0, partials, chunks, cols,
               out);
  cudaFreeAsync(partials, 0);
  return LaunchStatus(op);
}

}  // namespace v4rl::kernels::cuda
