// The kernels of token_losses.h, one block of kThreads threads a row. Cross entropy and logprobs
// over whole rows (no kept support) go to LogprobInRegistersKernel, which reads a row once with
// 16-byte loads and writes its gradient from registers: the general LogprobKernel (two reads of
// the row with 2- or 4-byte loads, online softmax statistics) took 717 us on the H200 for the
// [4096, 32768] f32 logits of a mid-config training step. The general kernel stays for kept
// supports (FindSupport reads the row many times), larger vocabularies and unaligned rows.
#include <cstdint>
#include <type_traits>

#include "kernels/cuda/common.cuh"
#include "kernels/cuda/token_losses.h"

namespace v4rl::kernels::cuda {
namespace {

constexpr int kThreads = 512;

struct Rows {
  const void* data;
  bool bf16;
  int64_t ld;
};

struct LogprobParams {
  Rows logits;
  int64_t rows, vocab;
  const int32_t* targets;
  const int32_t* kept_counts;   // or nullptr
  float* logprobs;              // or nullptr
  float* entropies;             // or nullptr
  const float* grad_logprobs;   // or nullptr
  const float* grad_entropies;  // or nullptr
  const float* mask;            // cross-entropy mode (or nullptr)
  float mask_scale;
  float* losses;  // cross-entropy mode output (or nullptr)
  void* grad;     // [rows, vocab] or nullptr
  bool grad_bf16;
  int64_t ld_grad;
};

__device__ __forceinline__ uint32_t OrderedKey(float f) {
  const uint32_t u = __float_as_uint(f);
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

// The support of one row: all tokens (threshold 0, cut = vocab), or the `kept` largest logits
// with ties to the lower id: key > threshold, or key == threshold and j < cut.
struct Support {
  uint32_t threshold;
  int64_t cut;
  __device__ bool Contains(uint32_t key, int64_t j) const {
    return key > threshold || (key == threshold && j < cut);
  }
};

__device__ Support FindSupport(const Rows& x, int64_t offset, int64_t vocab, int32_t kept,
                               float* scratch) {
  if (kept <= 0 || kept >= vocab) return {0u, vocab};
  // The kept-th largest key, built bit by bit: the largest t with #(key >= t) >= kept.
  uint32_t t = 0;
  for (int bit = 31; bit >= 0; --bit) {
    const uint32_t candidate = t | (1u << bit);
    float count = 0;
    for (int64_t j = threadIdx.x; j < vocab; j += blockDim.x) {
      count += OrderedKey(LoadF(x.data, x.bf16, offset + j)) >= candidate ? 1.0f : 0.0f;
    }
    if (BlockSum(count, scratch) >= float(kept)) t = candidate;
  }
  float greater = 0;
  for (int64_t j = threadIdx.x; j < vocab; j += blockDim.x) {
    greater += OrderedKey(LoadF(x.data, x.bf16, offset + j)) > t ? 1.0f : 0.0f;
  }
  const float need = float(kept) - BlockSum(greater, scratch);
  // Smallest cut with #(j < cut, key == t) >= need.
  int64_t lo = 0, hi = vocab;
  while (lo < hi) {
    const int64_t mid = (lo + hi) / 2;
    float ties = 0;
    for (int64_t j = threadIdx.x; j < mid; j += blockDim.x) {
      ties += OrderedKey(LoadF(x.data, x.bf16, offset + j)) == t ? 1.0f : 0.0f;
    }
    if (BlockSum(ties, scratch) >= need) {
      hi = mid;
    } else {
      lo = mid + 1;
    }
  }
  return {t, lo};
}

// Softmax statistics of values z relative to their running maximum m: s = Σ e^(z - m) and
// w = Σ e^(z - m)·(z - m), gathered in one pass (online: a larger value rescales the sums).
struct SoftmaxStats {
  float m = -INFINITY, s = 0.0f, w = 0.0f;

  __device__ __forceinline__ void Add(float z) {
    if (z > m) {
      const float scale = expf(m - z);  // 0 for the first value (m = -inf, s = w = 0)
      w = s > 0.0f ? scale * (w + s * (m - z)) : 0.0f;
      s = s * scale + 1.0f;
      m = z;
    } else {
      const float e = expf(z - m);
      s += e;
      w += e * (z - m);
    }
  }
  // This and `o` as statistics of their union.
  __device__ __forceinline__ void Merge(const SoftmaxStats& o) {
    const float top = fmaxf(m, o.m);
    float ns = 0.0f, nw = 0.0f;
    AddRescaled(*this, top, &ns, &nw);
    AddRescaled(o, top, &ns, &nw);
    m = top;
    s = ns;
    w = nw;
  }
  // x's sums relative to `top` (>= x.m) added to *s and *w; nothing for empty statistics.
  static __device__ __forceinline__ void AddRescaled(const SoftmaxStats& x, float top, float* s,
                                                     float* w) {
    if (x.s > 0.0f) {
      const float scale = expf(x.m - top);
      *s += x.s * scale;
      *w += scale * (x.w + x.s * (x.m - top));
    }
  }
};

__device__ __forceinline__ SoftmaxStats WarpStats(SoftmaxStats v) {
#pragma unroll
  for (int offset = 16; offset > 0; offset /= 2) {
    SoftmaxStats o;
    o.m = __shfl_xor_sync(0xffffffffu, v.m, offset);
    o.s = __shfl_xor_sync(0xffffffffu, v.s, offset);
    o.w = __shfl_xor_sync(0xffffffffu, v.w, offset);
    v.Merge(o);
  }
  return v;
}

// The block's statistics, on every thread. `scratch` holds 3 x 32 floats.
__device__ SoftmaxStats BlockStats(SoftmaxStats v, float* scratch) {
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, warps = blockDim.x / 32;
  v = WarpStats(v);
  __syncthreads();
  if (lane == 0) {
    scratch[warp] = v.m;
    scratch[32 + warp] = v.s;
    scratch[64 + warp] = v.w;
  }
  __syncthreads();
  SoftmaxStats w;
  if (lane < warps) {
    w.m = scratch[lane];
    w.s = scratch[32 + lane];
    w.w = scratch[64 + lane];
  }
  return WarpStats(w);
}

// The row's target, or -1 for a row that contributes nothing (mask 0, or a target outside
// [0, vocab)): such a row writes zeros.
__device__ __forceinline__ int32_t RowTarget(const LogprobParams& p, int64_t r) {
  if (p.mask != nullptr && p.mask[r] == 0.0f) return -1;
  const int32_t target = p.targets[r];
  return target >= 0 && target < p.vocab ? target : -1;
}

// Thread 0 writes row r's per-row outputs (those the launch asked for).
__device__ __forceinline__ void WriteRowOutputs(const LogprobParams& p, int64_t r, float logprob,
                                                float entropy) {
  if (threadIdx.x != 0) return;
  if (p.logprobs) p.logprobs[r] = logprob;
  if (p.entropies) p.entropies[r] = entropy;
  if (p.losses) p.losses[r] = -p.mask[r] * p.mask_scale * logprob;
}

// The same zeros for a skipped row (RowTarget < 0).
__device__ __forceinline__ void WriteSkippedRowOutputs(const LogprobParams& p, int64_t r) {
  if (threadIdx.x != 0) return;
  if (p.logprobs) p.logprobs[r] = 0.0f;
  if (p.entropies) p.entropies[r] = 0.0f;
  if (p.losses) p.losses[r] = 0.0f;
}

// log Σ e^z and the entropy of softmax(z) over a row (or its support), from its maximum, the sum
// Σ e^(z - max) and the weighted sum Σ e^(z - max)·(z - max).
struct RowSoftmax {
  float log_normaliser, entropy;
};

__device__ __forceinline__ RowSoftmax SoftmaxOf(float max_logit, float sum, float weighted) {
  const float log_sum = logf(sum);
  return {max_logit + log_sum, log_sum - weighted / sum};
}

// d(g_logprob·log p[target] + g_entropy·H) / dz_j of a token in the support, from the row's
// softmax: the one formula of both kernels.
struct RowGradient {
  RowSoftmax softmax;
  float g_logprob, g_entropy;
  int32_t target;

  __device__ __forceinline__ float At(float z, int64_t j) const {
    const float log_p = z - softmax.log_normaliser;
    const float prob = expf(log_p);
    float g = -g_logprob * prob - g_entropy * prob * (log_p + softmax.entropy);
    if (j == target) g += g_logprob;
    return g;
  }
};

__device__ __forceinline__ RowGradient RowGradientOf(const LogprobParams& p, int64_t r,
                                                     int32_t target, RowSoftmax softmax) {
  return {softmax, p.mask ? -p.mask[r] * p.mask_scale : p.grad_logprobs[r],
          p.grad_entropies ? p.grad_entropies[r] : 0.0f, target};
}

// The general kernel: any vocabulary, alignment and kept support (FindSupport). It streams the
// row from memory on every pass (an online SoftmaxStats pass for a full row; two passes over a
// kept support after FindSupport's), then once more to write the gradient.
__global__ void LogprobKernel(LogprobParams p) {
  WaitForPriorKernels();
  __shared__ float scratch[3 * 32];
  const int64_t r = blockIdx.x;
  const int64_t offset = r * p.logits.ld;
  const int32_t target = RowTarget(p, r);
  if (target < 0) {
    WriteSkippedRowOutputs(p, r);
    if (p.grad) {
      for (int64_t j = threadIdx.x; j < p.vocab; j += blockDim.x) {
        StoreF(p.grad, p.grad_bf16, r * p.ld_grad + j, 0.0f);
      }
    }
    return;
  }
  const int32_t kept = p.kept_counts ? p.kept_counts[r] : 0;
  const Support support = FindSupport(p.logits, offset, p.vocab, kept, scratch);
  float max_logit, sum, weighted;
  if (kept <= 0 || kept >= p.vocab) {
    // The whole row: maximum, Σ e and Σ e·(z - max) in one read of it.
    SoftmaxStats stats;
    for (int64_t j = threadIdx.x; j < p.vocab; j += blockDim.x) {
      stats.Add(LoadF(p.logits.data, p.logits.bf16, offset + j));
    }
    stats = BlockStats(stats, scratch);
    max_logit = stats.m;
    sum = stats.s;
    weighted = stats.w;
  } else {
    max_logit = -INFINITY;
    for (int64_t j = threadIdx.x; j < p.vocab; j += blockDim.x) {
      const float z = LoadF(p.logits.data, p.logits.bf16, offset + j);
      if (support.Contains(OrderedKey(z), j)) max_logit = fmaxf(max_logit, z);
    }
    max_logit = BlockMax(max_logit, scratch);
    sum = 0;
    weighted = 0;
    for (int64_t j = threadIdx.x; j < p.vocab; j += blockDim.x) {
      const float z = LoadF(p.logits.data, p.logits.bf16, offset + j);
      if (!support.Contains(OrderedKey(z), j)) continue;
      const float shifted = z - max_logit;
      const float e = expf(shifted);
      sum += e;
      weighted += e * shifted;
    }
    sum = BlockSum(sum, scratch);
    weighted = BlockSum(weighted, scratch);
  }
  const RowSoftmax softmax = SoftmaxOf(max_logit, sum, weighted);
  const float target_logit = LoadF(p.logits.data, p.logits.bf16, offset + target);
  const bool target_in = support.Contains(OrderedKey(target_logit), target);
  const float logprob = target_in ? target_logit - softmax.log_normaliser : -INFINITY;
  if (p.grad == nullptr) {
    WriteRowOutputs(p, r, logprob, softmax.entropy);
    return;
  }
  // All reads of the row's logits are done before any write: grad may overwrite logits. The
  // final pass reads element j and writes it from the same thread.
  __syncthreads();
  WriteRowOutputs(p, r, logprob, softmax.entropy);
  const RowGradient grad = RowGradientOf(p, r, target, softmax);
  for (int64_t j = threadIdx.x; j < p.vocab; j += blockDim.x) {
    const float z = LoadF(p.logits.data, p.logits.bf16, offset + j);
    const float g = support.Contains(OrderedKey(z), j) ? grad.At(z, j) : 0.0f;
    StoreF(p.grad, p.grad_bf16, r * p.ld_grad + j, g);
  }
}

// The row-in-registers kernel reads logits of type T (float or bf16) in 16-byte vectors.
template <typename T>
constexpr int kVecWidth = 16 / sizeof(T);
// Floats of a row a thread holds at most (vocab 32,768 over kThreads = 512): the kernel then
// takes 97 (f32) or 119 (bf16) registers on sm_90a without spills, within the 128 a thread of a
// 512-thread block may have.
constexpr int kMaxRowFloatsPerThread = 64;

// Vector v (4 floats) of a 16-byte aligned row.
__device__ __forceinline__ void LoadVec(const float* row, int64_t v, float (&z)[4]) {
  const float4 x = reinterpret_cast<const float4*>(row)[v];
  z[0] = x.x, z[1] = x.y, z[2] = x.z, z[3] = x.w;
}

// Vector v (8 bf16) of a 16-byte aligned row, as floats (common.cuh's Load8).
__device__ __forceinline__ void LoadVec(const __nv_bfloat16* row, int64_t v, float (&z)[8]) {
  Load8(row, /*bf16=*/true, v * 8, z);
}

// g to elements [i, i + kWidth) of `out` (f32, or bf16 rounded to nearest even), i a multiple of
// kWidth and `out` 16-byte aligned: float4 stores, or one 8- (kWidth 4) or 16-byte bf16 store.
template <int kWidth>
__device__ __forceinline__ void StoreVec(void* out, bool bf16, int64_t i,
                                         const float (&g)[kWidth]) {
  if (bf16) {
    using Raw = std::conditional_t<kWidth == 8, uint4, uint2>;
    Raw raw;
    __nv_bfloat162* pairs = reinterpret_cast<__nv_bfloat162*>(&raw);
#pragma unroll
    for (int k = 0; k < kWidth / 2; ++k) pairs[k] = __floats2bfloat162_rn(g[2 * k], g[2 * k + 1]);
    *reinterpret_cast<Raw*>(static_cast<__nv_bfloat16*>(out) + i) = raw;
  } else {
    float4* f = reinterpret_cast<float4*>(static_cast<float*>(out) + i);
#pragma unroll
    for (int k = 0; k < kWidth / 4; ++k) {
      f[k] = make_float4(g[4 * k], g[4 * k + 1], g[4 * k + 2], g[4 * k + 3]);
    }
  }
}

// The fast kernel for rows without a kept support (the masked cross entropy of every training
// step): the row is read from memory once, into registers (vector v = k·kThreads + thread, for
// k < kVecs), and the gradient written from them, where LogprobKernel reads it twice with 2- or
// 4-byte loads and the online SoftmaxStats' rescaling. From the registers: the maximum, then
// Σ e^(z - max) and Σ e^(z - max)·(z - max) (exact two passes). Needs vocab a multiple of
// kVecWidth<T> and <= kVecs·kVecWidth<T>·kThreads, 16-byte aligned rows of logits and grad,
// launched with kThreads threads (ChooseLogprobKernel).
template <typename T, int kVecs>
__global__ void __launch_bounds__(kThreads) LogprobInRegistersKernel(LogprobParams p) {
  constexpr int kWidth = kVecWidth<T>;
  WaitForPriorKernels();
  __shared__ float scratch[32];
  const int64_t r = blockIdx.x;
  const int64_t vectors = p.vocab / kWidth;
  const int64_t grad_offset = r * p.ld_grad;
  const int32_t target = RowTarget(p, r);
  if (target < 0) {
    WriteSkippedRowOutputs(p, r);
    if (p.grad) {
      const float zeros[kWidth] = {};
      for (int64_t v = threadIdx.x; v < vectors; v += kThreads) {
        StoreVec(p.grad, p.grad_bf16, grad_offset + v * kWidth, zeros);
      }
    }
    return;
  }
  const T* row = static_cast<const T*>(p.logits.data) + r * p.logits.ld;
  float z[kVecs][kWidth];
#pragma unroll
  for (int k = 0; k < kVecs; ++k) {
    const int64_t v = int64_t{k} * kThreads + threadIdx.x;
    if (v < vectors) LoadVec(row, v, z[k]);
  }
  float max_logit = -INFINITY;
#pragma unroll
  for (int k = 0; k < kVecs; ++k) {
    if (int64_t{k} * kThreads + threadIdx.x >= vectors) continue;
#pragma unroll
    for (int i = 0; i < kWidth; ++i) max_logit = fmaxf(max_logit, z[k][i]);
  }
  max_logit = BlockMax(max_logit, scratch);
  float sum = 0, weighted = 0;
#pragma unroll
  for (int k = 0; k < kVecs; ++k) {
    if (int64_t{k} * kThreads + threadIdx.x >= vectors) continue;
#pragma unroll
    for (int i = 0; i < kWidth; ++i) {
      const float shifted = z[k][i] - max_logit;
      const float e = expf(shifted);
      sum += e;
      weighted += e * shifted;
    }
  }
  sum = BlockSum(sum, scratch);
  weighted = BlockSum(weighted, scratch);
  const RowSoftmax softmax = SoftmaxOf(max_logit, sum, weighted);
  const float logprob = LoadF(row, kWidth == 8, target) - softmax.log_normaliser;
  if (p.grad == nullptr) {
    WriteRowOutputs(p, r, logprob, softmax.entropy);
    return;
  }
  // grad may overwrite the logits: every read of the row (the target's logit included, which
  // another thread writes) is done before the first write.
  __syncthreads();
  WriteRowOutputs(p, r, logprob, softmax.entropy);
  const RowGradient grad = RowGradientOf(p, r, target, softmax);
#pragma unroll
  for (int k = 0; k < kVecs; ++k) {
    const int64_t v = int64_t{k} * kThreads + threadIdx.x;
    if (v >= vectors) continue;
    float g[kWidth];
#pragma unroll
    for (int i = 0; i < kWidth; ++i) g[i] = grad.At(z[k][i], v * kWidth + i);
    StoreVec(p.grad, p.grad_bf16, grad_offset + v * kWidth, g);
  }
}

struct KlParams {
  Rows student, teacher;
  int64_t rows, vocab;
  const float* weights;  // or nullptr
  float* kl;
  void* grad;  // or nullptr
  bool grad_bf16;
  int64_t ld_grad;
};

// log Σ_j e^(x_j) of one row, in one read of it (SoftmaxStats). `scratch` holds 3 x 32 floats.
__device__ float LogNormaliser(const Rows& x, int64_t offset, int64_t vocab, float* scratch) {
  SoftmaxStats stats;
  for (int64_t j = threadIdx.x; j < vocab; j += blockDim.x) {
    stats.Add(LoadF(x.data, x.bf16, offset + j));
  }
  stats = BlockStats(stats, scratch);
  return stats.m + logf(stats.s);
}

__global__ void KlKernel(KlParams p) {
  WaitForPriorKernels();
  __shared__ float scratch[3 * 32];
  const int64_t r = blockIdx.x;
  const int64_t so = r * p.student.ld, to = r * p.teacher.ld;
  const float log_zs = LogNormaliser(p.student, so, p.vocab, scratch);
  const float log_zt = LogNormaliser(p.teacher, to, p.vocab, scratch);
  float divergence = 0;
  for (int64_t j = threadIdx.x; j < p.vocab; j += blockDim.x) {
    const float log_p = LoadF(p.student.data, p.student.bf16, so + j) - log_zs;
    const float log_q = LoadF(p.teacher.data, p.teacher.bf16, to + j) - log_zt;
    divergence += expf(log_p) * (log_p - log_q);
  }
  divergence = BlockSum(divergence, scratch);
  __syncthreads();  // every read done before grad (which may alias the student) is written
  if (threadIdx.x == 0) p.kl[r] = divergence;
  if (p.grad == nullptr) return;
  const float weight = p.weights ? p.weights[r] : 1.0f;
  for (int64_t j = threadIdx.x; j < p.vocab; j += blockDim.x) {
    const float log_p = LoadF(p.student.data, p.student.bf16, so + j) - log_zs;
    const float log_q = LoadF(p.teacher.data, p.teacher.bf16, to + j) - log_zt;
    StoreF(p.grad, p.grad_bf16, r * p.ld_grad + j,
           weight * expf(log_p) * (log_p - log_q - divergence));
  }
}

bool IsLogits(const core::TensorView& v) {
  return v.device == core::Device::kCuda && v.rank == 2 && v.strides[1] == 1 &&
         v.strides[0] >= v.shape[1] && v.data != nullptr &&
         (v.dtype == core::DType::kF32 || v.dtype == core::DType::kBF16);
}

// A [rows] contiguous device array of `dtype`; optional ones may be empty.
bool IsPerRow(const core::TensorView& v, core::DType dtype, int64_t rows, bool optional) {
  if (v.data == nullptr) return optional;
  return v.device == core::Device::kCuda && v.dtype == dtype && v.numel() == rows &&
         v.is_contiguous();
}

bool IsGrad(const core::TensorView& grad, const core::TensorView& logits) {
  if (grad.data == nullptr) return true;
  return IsLogits(grad) && grad.shape[0] == logits.shape[0] && grad.shape[1] == logits.shape[1] &&
         (grad.data != logits.data ||
          (grad.dtype == logits.dtype && grad.strides[0] == logits.strides[0]));
}

Rows AsRows(const core::TensorView& v) {
  return Rows{v.data, v.dtype == core::DType::kBF16, v.strides[0]};
}

using LogprobLaunch = void (*)(LogprobParams);

// LogprobInRegistersKernel<T, kVecs> with the fewest vectors a thread that hold `vecs`, or
// nullptr past kMaxRowFloatsPerThread (16 vectors of f32, 8 of bf16).
template <typename T>
LogprobLaunch InRegistersKernelFor(int64_t vecs) {
  if (vecs <= 1) return LogprobInRegistersKernel<T, 1>;
  if (vecs <= 2) return LogprobInRegistersKernel<T, 2>;
  if (vecs <= 4) return LogprobInRegistersKernel<T, 4>;
  if (vecs <= 8) return LogprobInRegistersKernel<T, 8>;
  if constexpr (16 * kVecWidth<T> <= kMaxRowFloatsPerThread) {
    if (vecs <= 16) return LogprobInRegistersKernel<T, 16>;
  }
  return nullptr;
}

// Whether rows starting every `ld` elements from `data` begin on 16-byte boundaries and split
// into whole vectors of `width` elements.
bool VectorRows(const void* data, int64_t ld, int width) {
  return reinterpret_cast<uintptr_t>(data) % 16 == 0 && ld % width == 0;
}

// The kernel for `p`: LogprobInRegistersKernel where it applies (no kept_counts, vocab a multiple
// of the vector width that fits in registers, aligned rows of logits and grad), else the general
// LogprobKernel. Both take kThreads threads a row.
LogprobLaunch ChooseLogprobKernel(const LogprobParams& p) {
  const int width = p.logits.bf16 ? kVecWidth<__nv_bfloat16> : kVecWidth<float>;
  if (p.kept_counts != nullptr || p.vocab % width != 0 ||
      !VectorRows(p.logits.data, p.logits.ld, width) ||
      (p.grad != nullptr && !VectorRows(p.grad, p.ld_grad, width))) {
    return LogprobKernel;
  }
  const int64_t vecs = (p.vocab / width + kThreads - 1) / kThreads;
  const LogprobLaunch fast =
      p.logits.bf16 ? InRegistersKernelFor<__nv_bfloat16>(vecs) : InRegistersKernelFor<float>(vecs);
  return fast != nullptr ? fast : LogprobKernel;
}

absl::Status RunLogprobs(const char* op, const core::TensorView& logits,
                         const core::TensorView& targets, const core::TensorView& kept_counts,
                         LogprobParams p, const core::TensorView& grad) {
  if (!IsLogits(logits) || !IsPerRow(targets, core::DType::kI32, logits.shape[0], false) ||
      !IsPerRow(kept_counts, core::DType::kI32, logits.shape[0], true) || !IsGrad(grad, logits)) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "%s: logits %s, targets %s, kept_counts %s, grad %s do not fit", op, logits.DebugString(),
        targets.DebugString(), kept_counts.DebugString(), grad.DebugString()));
  }
  p.logits = AsRows(logits);
  p.rows = logits.shape[0];
  p.vocab = logits.shape[1];
  p.targets = static_cast<const int32_t*>(targets.data);
  p.kept_counts = static_cast<const int32_t*>(kept_counts.data);
  p.grad = grad.data;
  p.grad_bf16 = grad.dtype == core::DType::kBF16;
  p.ld_grad = grad.data ? grad.strides[0] : 0;
  if (p.rows == 0) return absl::OkStatus();
  LaunchKernel(ChooseLogprobKernel(p), p.rows, kThreads, 0, p);
  return LaunchStatus(op);
}

absl::Status BadPerRow(const char* op) {
  return absl::InvalidArgumentError(
      absl::StrFormat("%s: per-row arrays must be contiguous [rows] device views", op));
}

}  // namespace

absl::Status TokenLogprobs(const core::TensorView& logits, const core::TensorView& targets,
                           const core::TensorView& kept_counts, const core::TensorView& logprobs,
                           const core::TensorView& entropies) {
  const int64_t rows = logits.rank == 2 ? logits.shape[0] : -1;
  if (!IsPerRow(logprobs, core::DType::kF32, rows, false) ||
      !IsPerRow(entropies, core::DType::kF32, rows, true)) {
    return BadPerRow("TokenLogprobs");
  }
  LogprobParams p{};
  p.logprobs = static_cast<float*>(logprobs.data);
  p.entropies = static_cast<float*>(entropies.data);
  return RunLogprobs("TokenLogprobs", logits, targets, kept_counts, p, core::TensorView());
}

absl::Status TokenLogprobsBackward(const core::TensorView& logits, const core::TensorView& targets,
                                   const core::TensorView& kept_counts,
                                   const core::TensorView& grad_logprobs,
                                   const core::TensorView& grad_entropies,
                                   const core::TensorView& grad_logits) {
  const int64_t rows = logits.rank == 2 ? logits.shape[0] : -1;
  if (!IsPerRow(grad_logprobs, core::DType::kF32, rows, false) ||
      !IsPerRow(grad_entropies, core::DType::kF32, rows, true) || grad_logits.data == nullptr) {
    return BadPerRow("TokenLogprobsBackward");
  }
  LogprobParams p{};
  p.grad_logprobs = static_cast<const float*>(grad_logprobs.data);
  p.grad_entropies = static_cast<const float*>(grad_entropies.data);
  return RunLogprobs("TokenLogprobsBackward", logits, targets, kept_counts, p, grad_logits);
}

absl::Status MaskedCrossEntropy(const core::TensorView& logits, const core::TensorView& targets,
                                const core::TensorView& mask, float inv_mask_total,
                                const core::TensorView& losses,
                                const core::TensorView& grad_logits) {
  const int64_t rows = logits.rank == 2 ? logits.shape[0] : -1;
  if (!IsPerRow(mask, core::DType::kF32, rows, false) ||
      !IsPerRow(losses, core::DType::kF32, rows, false)) {
    return BadPerRow("MaskedCrossEntropy");
  }
  LogprobParams p{};
  p.mask = static_cast<const float*>(mask.data);
  p.mask_scale = inv_mask_total;
  p.losses = static_cast<float*>(losses.data);
  return RunLogprobs("MaskedCrossEntropy", logits, targets, core::TensorView(), p, grad_logits);
}

absl::Status KlDivergence(const core::TensorView& student, const core::TensorView& teacher,
                          const core::TensorView& weights, const core::TensorView& kl,
                          const core::TensorView& grad_student) {
  const int64_t rows = student.rank == 2 ? student.shape[0] : -1;
  if (!IsLogits(student) || !IsLogits(teacher) || teacher.shape[0] != student.shape[0] ||
      teacher.shape[1] != student.shape[1] || !IsGrad(grad_student, student) ||
      grad_student.data == teacher.data || !IsPerRow(weights, core::DType::kF32, rows, true) ||
      !IsPerRow(kl, core::DType::kF32, rows, false)) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "KlDivergence: student %s, teacher %s, weights %s, kl %s, grad %s do not fit",
        student.DebugString(), teacher.DebugString(), weights.DebugString(), kl.DebugString(),
        grad_student.DebugString()));
  }
  KlParams p{AsRows(student),
             AsRows(teacher),
             rows,
             student.shape[1],
             static_cast<const float*>(weights.data),
             static_cast<float*>(kl.data),
             grad_student.data,
             grad_student.dtype == core::DType::kBF16,
             grad_student.data ? grad_student.strides[0] : 0};
  if (rows == 0) return absl::OkStatus();
  LaunchKernel(KlKernel, rows, kThreads, 0, p);
  return LaunchStatus("KlDivergence");
}

}  // namespace v4rl::kernels::cuda
