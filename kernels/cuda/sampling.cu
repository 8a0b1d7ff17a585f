#include <cub/device/device_segmented_radix_sort.cuh>

#include <algorithm>
#include <vector>

#include "kernels/cuda/check.h"
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/sampling.h"

namespace v4rl::kernels::cuda {
namespace {

constexpr int kThreads = 256;

// core::Rng::Bits (Philox-4x32-10, counter = (counter, stream 0), key = seed).
__device__ double UniformDouble(uint64_t seed, uint64_t counter) {
  uint32_t c0 = static_cast<uint32_t>(counter), c1 = static_cast<uint32_t>(counter >> 32);
  uint32_t c2 = 0, c3 = 0;
  uint32_t k0 = static_cast<uint32_t>(seed), k1 = static_cast<uint32_t>(seed >> 32);
  for (int round = 0; round < 10; ++round) {
    const uint64_t p0 = static_cast<uint64_t>(0xD2511F53u) * c0;
    const uint64_t p1 = static_cast<uint64_t>(0xCD9E8D57u) * c2;
    const uint32_t n0 = static_cast<uint32_t>(p1 >> 32) ^ c1 ^ k0;
    const uint32_t n1 = static_cast<uint32_t>(p1);
    const uint32_t n2 = static_cast<uint32_t>(p0 >> 32) ^ c3 ^ k1;
    const uint32_t n3 = static_cast<uint32_t>(p0);
    c0 = n0, c1 = n1, c2 = n2, c3 = n3;
    k0 += 0x9E3779B9u;
    k1 += 0xBB67AE85u;
  }
  const uint64_t combined = (static_cast<uint64_t>(c0) << 21) ^ (c1 >> 11);
  return static_cast<double>(combined & ((uint64_t{1} << 53) - 1)) * (1.0 / 9007199254740992.0);
}

// Higher logit first, then lower id: (order key of the logit) << 32 | ~id, sorted descending.
__device__ __forceinline__ uint64_t SortKey(float f, uint32_t id) {
  if (f == 0.0f) f = 0.0f;  // -0 ties with +0 as on the CPU
  const uint32_t b = __float_as_uint(f);
  const uint32_t key = f != f ? 0u : ((b & 0x80000000u) ? ~b : (b | 0x80000000u));
  return (static_cast<uint64_t>(key) << 32) | (0xFFFFFFFFu - id);
}

struct Params {
  bool greedy;
  float temperature, top_p;
  int32_t top_k;
  uint64_t seed, counter;
};

struct Result {
  int32_t token;
  float sampling_logprob, model_logprob;
  int32_t kept_count;
};

__global__ void MakeKeysKernel(const float* logits, int64_t vocab, int64_t total, uint64_t* keys,
                               int* offsets, int64_t rows) {
  WaitForPriorKernels();
  for (int64_t e = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; e < total;
       e += int64_t{gridDim.x} * blockDim.x) {
    keys[e] = SortKey(logits[e], static_cast<uint32_t>(e % vocab));
    if (e % vocab == 0) offsets[e / vocab] = static_cast<int>(e);
    if (e == total - 1) offsets[rows] = static_cast<int>(total);
  }
}

__device__ double BlockSumD(double v, double* scratch) {
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  for (int o = 16; o > 0; o /= 2) v += __shfl_xor_sync(0xffffffffu, v, o);
  __syncthreads();
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  v = lane < kThreads / 32 ? scratch[lane] : 0.0;
  for (int o = 16; o > 0; o /= 2) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// Inclusive block scan in double; *total gets the chunk's sum.
__device__ double BlockInclusiveScanD(double v, double* total, double* scratch) {
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  double inclusive = v;
  for (int o = 1; o < 32; o *= 2) {
    const double up = __shfl_up_sync(0xffffffffu, inclusive, o);
    if (lane >= o) inclusive += up;
  }
  __syncthreads();
  if (lane == 31) scratch[warp] = inclusive;
  __syncthreads();
  if (threadIdx.x == 0) {
    double run = 0;
    for (int w = 0; w < kThreads / 32; ++w) {
      const double t = scratch[w];
      scratch[w] = run;
      run += t;
    }
    scratch[kThreads / 32] = run;
  }
  __syncthreads();
  *total = scratch[kThreads / 32];
  return scratch[warp] + inclusive;
}

// log Σ exp(scale · row) in double, the max taken first (as the CPU).
__device__ double LogSumExp(const float* row, int64_t vocab, double scale, double* scratch) {
  float mx = -INFINITY;
  for (int64_t j = threadIdx.x; j < vocab; j += kThreads) mx = fmaxf(mx, row[j]);
  __shared__ float fscratch[32];
  mx = BlockMax(mx, fscratch);
  const double max_value = scale * static_cast<double>(mx);
  double sum = 0;
  for (int64_t j = threadIdx.x; j < vocab; j += kThreads) sum += exp(scale * row[j] - max_value);
  return max_value + log(BlockSumD(sum, scratch));
}

// One block per row.
__global__ void __launch_bounds__(kThreads) SampleKernel(const float* logits, int64_t vocab,
                                                         const uint64_t* sorted,
                                                         const Params* params, Result* results) {
  WaitForPriorKernels();
  __shared__ double scratch[kThreads / 32 + 1];
  __shared__ int64_t found;
  __shared__ double found_mass;
  const int64_t r = blockIdx.x;
  const float* row = logits + r * vocab;
  const Params p = params[r];
  const double model_lse = LogSumExp(row, vocab, 1.0, scratch);
  Result out{};
  if (p.greedy) {
    // Argmax, ties to the lowest id: the largest sort key.
    uint64_t best = 0;
    for (int64_t j = threadIdx.x; j < vocab; j += kThreads) {
      const uint64_t key = SortKey(row[j], static_cast<uint32_t>(j));
      best = key > best ? key : best;
    }
    __shared__ unsigned long long best_key;
    if (threadIdx.x == 0) best_key = 0;
    __syncthreads();
    atomicMax(&best_key, static_cast<unsigned long long>(best));
    __syncthreads();
    if (threadIdx.x == 0) {
      out.token = static_cast<int32_t>(0xFFFFFFFFu - static_cast<uint32_t>(best_key));
      out.kept_count = 1;
      out.sampling_logprob = 0.0f;
      out.model_logprob = static_cast<float>(row[out.token] - model_lse);
      results[r] = out;
    }
    return;
  }
  const double inv_t = 1.0 / p.temperature;
  const int64_t limit = p.top_k > 0 ? min(static_cast<int64_t>(p.top_k), vocab) : vocab;
  const uint64_t* order = sorted + r * vocab;
  auto id_at = [&](int64_t i) { return static_cast<int64_t>(0xFFFFFFFFu - static_cast<uint32_t>(order[i])); };
  const double log_norm = LogSumExp(row, vocab, inv_t, scratch);
  // Mass of the top-k candidates under the tempered softmax.
  double part = 0;
  for (int64_t i = threadIdx.x; i < limit; i += kThreads) part += exp(inv_t * row[id_at(i)] - log_norm);
  const double top_k_mass = BlockSumD(part, scratch);
  // Kept set: the first prefix whose (renormalised) mass reaches top_p, at least one token.
  if (threadIdx.x == 0) {
    found = limit;
    found_mass = -1;
  }
  __syncthreads();
  double carry = 0;
  for (int64_t start = 0; start < limit; start += kThreads) {
    const int64_t i = start + threadIdx.x;
    const double prob = i < limit ? exp(inv_t * row[id_at(i)] - log_norm) / top_k_mass : 0.0;
    double chunk_total = 0;
    const double cumulative = carry + BlockInclusiveScanD(prob, &chunk_total, scratch);
    // The first i with cumulative >= top_p ends the kept set (kept = i + 1).
    const bool reaches = i < limit && cumulative >= p.top_p;
    const unsigned any = __syncthreads_or(reaches);
    if (any) {
      if (reaches) atomicMin(reinterpret_cast<unsigned long long*>(&found), static_cast<unsigned long long>(i + 1));
      __syncthreads();
      if (reaches && found == i + 1) found_mass = cumulative;
      __syncthreads();
      break;
    }
    carry += chunk_total;
  }
  __syncthreads();
  const int64_t kept = found;
  if (found_mass < 0) {
    // Every candidate kept: the mass is the full sum.
    double s = 0;
    for (int64_t i = threadIdx.x; i < kept; i += kThreads) s += exp(inv_t * row[id_at(i)] - log_norm) / top_k_mass;
    const double total = BlockSumD(s, scratch);
    if (threadIdx.x == 0) found_mass = total;
    __syncthreads();
  }
  const double kept_mass = found_mass;
  const double u = UniformDouble(p.seed, p.counter) * kept_mass;
  // Draw: the first i < kept with u < cumulative, else the last kept token.
  __syncthreads();  // every thread has read `found` above
  if (threadIdx.x == 0) found = kept - 1;
  __syncthreads();
  carry = 0;
  for (int64_t start = 0; start < kept; start += kThreads) {
    const int64_t i = start + threadIdx.x;
    const double prob = i < kept ? exp(inv_t * row[id_at(i)] - log_norm) / top_k_mass : 0.0;
    double chunk_total = 0;
    const double cumulative = carry + BlockInclusiveScanD(prob, &chunk_total, scratch);
    const bool hit = i < kept && u < cumulative;
    if (__syncthreads_or(hit)) {
      if (hit) atomicMin(reinterpret_cast<unsigned long long*>(&found), static_cast<unsigned long long>(i));
      break;
    }
    carry += chunk_total;
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    const int64_t chosen = found;
    const int64_t token = id_at(chosen);
    const double prob = exp(inv_t * row[token] - log_norm) / top_k_mass;
    out.token = static_cast<int32_t>(token);
    out.kept_count = static_cast<int32_t>(kept);
    out.sampling_logprob = static_cast<float>(log(prob / kept_mass));
    out.model_logprob = static_cast<float>(row[token] - model_lse);
    results[r] = out;
  }
}

struct Layout {
  size_t keys_in, keys_out, offsets, params, results, cub, total;
};

size_t Align(size_t x) { return (x + 255) & ~size_t{255}; }

Layout MakeLayout(int64_t rows, int64_t vocab) {
  Layout l{};
  const size_t n = static_cast<size_t>(rows * vocab);
  size_t cub_bytes = 0;
  cub::DeviceSegmentedRadixSort::SortKeysDescending(
      nullptr, cub_bytes, static_cast<const uint64_t*>(nullptr), static_cast<uint64_t*>(nullptr),
      static_cast<int>(n), static_cast<int>(rows), static_cast<const int*>(nullptr),
      static_cast<const int*>(nullptr) + 1);
  l.keys_in = 0;
  l.keys_out = Align(l.keys_in + n * 8);
  l.offsets = Align(l.keys_out + n * 8);
  l.params = Align(l.offsets + (rows + 1) * sizeof(int));
  l.results = Align(l.params + rows * sizeof(Params));
  l.cub = Align(l.results + rows * sizeof(Result));
  l.total = Align(l.cub + cub_bytes);
  return l;
}

}  // namespace

int64_t SampleTokensWorkspaceBytes(int64_t rows, int64_t vocab) {
  return static_cast<int64_t>(MakeLayout(rows, vocab).total);
}

absl::Status SampleTokens(const core::TensorView& logits,
                          absl::Span<const cpu::SamplingParams> params,
                          const core::TensorView& workspace, absl::Span<cpu::SampledToken> out) {
  const char* op = "cuda::SampleTokens";
  if (absl::Status s = CheckDeviceView(op, "logits", logits, {core::DType::kF32}); !s.ok()) {
    return s;
  }
  if (absl::Status s = CheckArg(logits.rank == 2 && logits.shape[1] > 0 &&
                                    logits.numel() < (int64_t{1} << 31),
                                op, "logits must be [rows, vocab] with rows · vocab < 2^31");
      !s.ok()) {
    return s;
  }
  const int64_t rows = logits.shape[0], vocab = logits.shape[1];
  if (absl::Status s = CheckArg(static_cast<int64_t>(params.size()) == rows &&
                                    static_cast<int64_t>(out.size()) == rows,
                                op, "params and out need one entry per row");
      !s.ok()) {
    return s;
  }
  std::vector<Params> host_params(rows);
  for (int64_t r = 0; r < rows; ++r) {
    const cpu::SamplingParams& q = params[r];
    if (!q.greedy && !(q.temperature > 0.0f && q.top_p > 0.0f && q.top_p <= 1.0f)) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "%s: row %d has temperature %g and top_p %g; expected temperature > 0 and top_p in "
          "(0, 1]",
          op, r, q.temperature, q.top_p));
    }
    host_params[r] = {q.greedy, q.temperature, q.top_p, q.top_k, q.seed, q.counter};
  }
  const Layout l = MakeLayout(rows, vocab);
  if (workspace.data == nullptr || workspace.device != core::Device::kCuda ||
      workspace.nbytes() < static_cast<int64_t>(l.total)) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "%s: workspace must be a device view of >= %d bytes, got %s", op, l.total,
        workspace.DebugString()));
  }
  if (rows == 0) return absl::OkStatus();
  char* base = static_cast<char*>(workspace.data);
  auto* keys_in = reinterpret_cast<uint64_t*>(base + l.keys_in);
  auto* keys_out = reinterpret_cast<uint64_t*>(base + l.keys_out);
  auto* offsets = reinterpret_cast<int*>(base + l.offsets);
  auto* d_params = reinterpret_cast<Params*>(base + l.params);
  auto* d_results = reinterpret_cast<Result*>(base + l.results);
  auto cuda_error = [&](cudaError_t e, const char* what) {
    return absl::InternalError(absl::StrFormat("%s: %s: %s", op, what, cudaGetErrorString(e)));
  };
  if (cudaError_t e = cudaMemcpy(d_params, host_params.data(), rows * sizeof(Params),
                                 cudaMemcpyHostToDevice);
      e != cudaSuccess) {
    return cuda_error(e, "params upload");
  }
  const int64_t total = rows * vocab;
  LaunchKernel(MakeKeysKernel,
               static_cast<unsigned>(std::min<int64_t>((total + 255) / 256, 1 << 16)), 256, 0,
               logits.data_as<float>(), vocab, total, keys_in, offsets, rows);
  if (absl::Status s = LaunchStatus(op); !s.ok()) return s;
  size_t cub_bytes = l.total - l.cub;
  if (cudaError_t e = cub::DeviceSegmentedRadixSort::SortKeysDescending(
          base + l.cub, cub_bytes, keys_in, keys_out, static_cast<int>(total),
          static_cast<int>(rows), offsets, offsets + 1);
      e != cudaSuccess) {
    return cuda_error(e, "segmented sort");
  }
  LaunchKernel(SampleKernel, static_cast<unsigned>(rows), kThreads, 0, logits.data_as<float>(),
               vocab, keys_out, d_params, d_results);
  if (absl::Status s = LaunchStatus(op); !s.ok()) return s;
  std::vector<Result> host_results(rows);
  if (cudaError_t e = cudaMemcpy(host_results.data(), d_results, rows * sizeof(Result),
                                 cudaMemcpyDeviceToHost);
      e != cudaSuccess) {
    return cuda_error(e, "results download");
  }
  for (int64_t r = 0; r < rows; ++r) {
    out[r] = {host_results[r].token, host_results[r].sampling_logprob,
              host_results[r].model_logprob, host_results[r].kept_count};
  }
  return absl::OkStatus();
}

}  // namespace v4rl::kernels::cuda
