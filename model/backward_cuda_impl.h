// Private to model/backward_cuda.cc and model/forward_cuda_reference.cc: CudaBackward's state
// (the f32 device copies of the parameters, the cuBLAS handle) and `Run`, the sticky-error
// launcher helper both passes use. Built only with V4RL_WITH_CUDA.
#pragma once

#include <map>
#include <memory>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_format.h"
#include "core/tensor.h"
#include "kernels/cuda/blas.h"
#include "kernels/cuda/convert.h"
#include "kernels/cuda/device.h"
#include "kernels/cuda/elementwise.h"
#include "kernels/cuda/elementwise_backward.h"
#include "kernels/cuda/grouped_gemm.h"
#include "kernels/cuda/linear_backward.h"
#include "kernels/cuda/model_backward_misc.h"
#include "model/backward_cuda.h"
#include "model/cuda_phase_profile.h"
#include "model/rope.h"

namespace v4rl::model {

// With bf16 GEMM math: a bf16 copy of every matrix parameter (rank >= 2), keyed by the f32 device
// copy's address, so that GEMMs run natively in bf16 (Run::ProductWeight finds the mirror of any
// view into a parameter). On f32 operands cuBLAS's CUBLAS_COMPUTE_32F_FAST_16BF ran sm80
// converting kernels and TF32 kernels on the H200.
struct Bf16Mirror {
  int64_t bytes = 0;  // of the f32 parameter
  core::Tensor bf16;  // same shape, contiguous
};
using Bf16Mirrors = std::map<const char*, Bf16Mirror>;

struct CudaBackward::Impl {
  const Model* model = nullptr;
  // f32 device copies of every parameter the passes read (tid2eid as i32), in ModelWeights'
  // layout; UpdateWeights refreshes them in place.
  ModelWeights weights;
  Bf16Mirrors bf16_mirrors;  // filled by UpdateWeights under GemmMath::kBf16Inputs
  std::unique_ptr<kernels::cuda::BlasHandle> blas;
};

namespace cuda_reference {

namespace kc = kernels::cuda;

// One forward or backward call: the first error sticks and later launches are skipped (every
// device tensor is allocated with its final shape even after an error, so views stay
// well-formed). Mark(phase) feeds V4RL_CUDA_PROFILE (model/cuda_phase_profile.h); Report prints
// the call's phases.
class Run {
 public:
  explicit Run(kc::BlasHandle* blas, const Bf16Mirrors* mirrors = nullptr)
      : blas_(blas), mirrors_(mirrors) {
    profile_.Start();
  }
  void Mark(const char* phase) { profile_.Mark(phase); }
  void Report(const char* what, int64_t tokens) { profile_.Report(what, tokens); }
  const absl::Status& status() const { return status_; }
  kc::BlasHandle& blas() { return *blas_; }
  // Whether this call's matrix products (GEMMs and attention's two) run on bf16 tensor cores
  // (GemmMath::kBf16Inputs).
  bool bf16_products() const {
    return blas_ != nullptr && blas_->math() == kc::GemmMath::kBf16Inputs;
  }
  // The dtype matrix products read: bf16 under bf16 products, else f32.
  core::DType product_dtype() const {
    return bf16_products() ? core::DType::kBF16 : core::DType::kF32;
  }
  // The residual streams' dtype: bf16 under bf16 products (stored as the official code stores
  // them between sub-blocks, spec §2.1; the arithmetic on them stays f32), else f32.
  core::DType stream_dtype() const { return product_dtype(); }
  // What a matrix product reads of the device tensor `t`: `t` itself, or with bf16 products and
  // f32 `t` a bf16 copy of it (same shape; an undefined or bf16 `t` is returned as it is).
  core::Tensor ProductOperand(const core::Tensor& t) {
    if (!bf16_products() || !t.defined() || t.dtype() != core::DType::kF32) return t;
    core::Tensor bf16 = New(core::DType::kBF16, t.view().shape_vector());
    if (status_.ok()) Ok(kc::F32ToBf16(t.view(), bf16.view()));
    return bf16;
  }
  // The product operand of a saved activation that only matrix products read: with bf16 products
  // the forward may have saved it as bf16 on the device already (taken as it is); otherwise
  // ProductOperand(Up(t)).
  core::Tensor ProductInput(const core::Tensor& t) {
    const core::TensorView& v = t.view();
    if (bf16_products() && v.device == core::Device::kCuda && v.dtype == core::DType::kBF16 &&
        v.is_contiguous()) {
      return t;
    }
    return ProductOperand(Up(t));
  }
  // A zeroed device tensor for values only matrix products read (gradients written by kernels
  // that accumulate): bf16 under bf16 products (each value rounds once, as ProductOperand's
  // copy of the f32 sum would), else f32.
  core::Tensor ProductZ(absl::Span<const int64_t> shape) { return Z(shape, product_dtype()); }
  // The same uninitialised, for values a kernel overwrites (kc::DxWrite::kOverwrite): bf16
  // under bf16 products, so the kernel rounds each value once instead of a separate copy.
  core::Tensor ProductNew(absl::Span<const int64_t> shape) { return New(product_dtype(), shape); }
  // What a matrix product reads of `w`, a view into an f32 device parameter: the same view of
  // its bf16 mirror when bf16 products are on and the parameter has one
  // (CudaBackward::Impl::bf16_mirrors), else `w` itself.
  core::TensorView ProductWeight(const core::TensorView& w) const {
    if (!bf16_products() || mirrors_ == nullptr || w.dtype != core::DType::kF32 ||
        w.data == nullptr || mirrors_->empty()) {
      return w;
    }
    const char* at = static_cast<const char*>(w.data);
    auto it = mirrors_->upper_bound(at);
    if (it == mirrors_->begin()) return w;
    --it;
    if (at >= it->first + it->second.bytes) return w;
    core::TensorView bf16 = w;
    bf16.dtype = core::DType::kBF16;
    bf16.data = static_cast<char*>(it->second.bf16.view().data) + (at - it->first) / 2;
    return bf16;
  }
  // A matrix product's operand `v` (a rank-2 row view): as it is, or with bf16 products and f32
  // storage a contiguous bf16 copy, kept alive by *copy.
  core::TensorView ProductRows(const core::TensorView& v, core::Tensor* copy) {
    if (!bf16_products() || v.dtype != core::DType::kF32 || v.data == nullptr) return v;
    *copy = New(core::DType::kBF16, v.shape_vector());
    if (status_.ok()) Ok(kc::F32ToBf16Rows(v, copy->view()));
    return copy->view();
  }
  void Ok(absl::Status s) {
    if (status_.ok() && !s.ok()) status_ = std::move(s);
  }
  // y = alpha · x · wᵀ as BatchedGemm's parameters (x: [m, k], w: [n, k], y: [m, n] row views).
  static kc::BatchedGemmParams ProductParams(const core::TensorView& x, const core::TensorView& w,
                                             const core::TensorView& y, float alpha) {
    kc::BatchedGemmParams p;
    p.a = {x.data, x.dtype, x.strides[0], 0};
    p.b = {w.data, w.dtype, w.strides[0], 0};
    p.trans_b = true;
    p.c = y.data;
    p.c_dtype = y.dtype;
    p.ldc = y.strides[0];
    p.m = x.shape[0], p.n = w.shape[0], p.k = x.shape[1];
    p.alpha = alpha;
    return p;
  }

  // A device f32 (or i32) tensor holding `t`: a contiguous f32/i32 device tensor as it is (no
  // copy; an activation of CudaBackward::Forward), else a copy of a host tensor (floating dtypes
  // converted to f32). A device tensor of another dtype or layout is an InvalidArgument.
  core::Tensor Up(const core::Tensor& t) {
    const core::TensorView& v = t.view();
    const bool f32_or_i32 = v.dtype == core::DType::kF32 || v.dtype == core::DType::kI32;
    if (v.device == core::Device::kCuda) {
      if (f32_or_i32 && v.is_contiguous()) return t;
      Ok(absl::InvalidArgumentError(
          absl::StrFormat("CudaBackward: a device activation must be contiguous f32 or i32, got %s",
                          v.DebugString())));
      return New(core::DType::kF32, v.shape_vector());
    }
    core::Tensor src = t;
    if (!f32_or_i32) {
      src = core::Tensor::FromFloats(v.shape_vector(), t.ToFloatVector());
    } else if (!v.is_contiguous()) {
      src = core::Tensor::CopyOf(v);
    }
    core::Tensor out = New(src.dtype(), src.view().shape_vector());
    if (status_.ok()) Ok(kc::Copy(src.view(), out.view()));
    return out;
  }
  // Residual streams for the backward's kernels, which read them in bf16 or f32: a contiguous
  // bf16 device tensor (the forward's under bf16 products) as it is, anything else as Up.
  core::Tensor UpStreams(const core::Tensor& t) {
    const core::TensorView& v = t.view();
    if (v.device == core::Device::kCuda && v.dtype == core::DType::kBF16 && v.is_contiguous()) {
      return t;
    }
    return Up(t);
  }
  // Uninitialised device tensor.
  static core::Tensor New(core::DType dtype, absl::Span<const int64_t> shape) {
    return core::Tensor::Empty(dtype, shape, kc::CachingDeviceAllocator());
  }
  core::Tensor New(absl::Span<const int64_t> shape) { return New(core::DType::kF32, shape); }
  // Zeroed device tensor (f32 unless `dtype` says bf16).
  core::Tensor Z(absl::Span<const int64_t> shape, core::DType dtype = core::DType::kF32) {
    core::Tensor out = New(dtype, shape);
    if (status_.ok()) Ok(kc::FillZero(out.view()));
    return out;
  }
  // dx += dy · w (overwrite_dx: dx = dy · w, dx not read: no zero fill needed), dw += dyᵀ · x
  // (either may be an empty view). With bf16 products x, w and dy are read as bf16 (copies, and
  // w's mirror).
  void Linear(const core::TensorView& x, const core::TensorView& w, const core::TensorView& dy,
              const core::TensorView& dx, const core::TensorView& dw, bool overwrite_dx = false) {
    if (!status_.ok()) return;
    core::Tensor x_copy, w_copy, dy_copy;
    const core::TensorView xp = ProductRows(x, &x_copy), dyp = ProductRows(dy, &dy_copy);
    const core::TensorView wp = ProductRows(ProductWeight(w), &w_copy);
    if (status_.ok()) Ok(kc::LinearBackward(*blas_, xp, wp, dyp, dx, dw, overwrite_dx));
  }
  // dx += (kc::DxWrite::kAdd) or = (kOverwrite: dx uninitialised, not read) the RMSNorm
  // gradient; dweight += its weight gradient (either may be an empty view).
  void RmsNorm(const core::TensorView& x, const core::TensorView& weight, float eps,
               const core::TensorView& dy, const core::TensorView& dx,
               const core::TensorView& dweight, kc::DxWrite dx_write = kc::DxWrite::kAdd) {
    if (status_.ok()) Ok(kc::RmsNormBackward(x, weight, eps, dy, dx, dweight, dx_write));
  }
  // y = alpha · x · wᵀ (overwrites y). x: [m, k]; w: [n, k] f32 or bf16; y: [m, n] f32; each a
  // row view with a unit inner stride. With bf16 products both are read as bf16 (a copy of x,
  // w's mirror).
  void Forward(const core::TensorView& x_in, const core::TensorView& w_in,
               const core::TensorView& y, float alpha = 1.0f) {
    if (!status_.ok()) return;
    core::Tensor x_copy, w_copy;
    const core::TensorView x = ProductRows(x_in, &x_copy);
    const core::TensorView w = ProductRows(ProductWeight(w_in), &w_copy);
    if (status_.ok()) Ok(kc::BatchedGemm(*blas_, ProductParams(x, w, y, alpha)));
  }
  // y[rows of e] = x[rows of e] · w[e]ᵀ for every expert e with rows [offsets[e], offsets[e + 1])
  // (routed experts: too small to fill the GPU one at a time). x: [R, k]; w: [E, n, k]; y: [R, n]
  // f32, or bf16 for bf16 x and w; x and w already as the products read them (ProductOperand,
  // ProductWeight: one dtype); device_offsets: [E + 1] i32 device (kc::BuildMoePlanOnDevice), rows
  // from offsets[E] on left untouched; *host_offsets: the same offsets on the host, or empty
  // (HostOffsets fills it where needed).
  // bf16 x and w run as one launch of the Hopper grouped GEMM where it applies
  // (kc::GroupedGemmHopperApplies: on the H200 at the mid config's 24,576 picks it took 195 µs for
  // the gate projection against 359 for cuBLASLt per expert, bench/cuda_moe_gemm_bench.cc);
  // otherwise expert e runs on lane e mod kLanes, the lanes' GEMMs issued from their own host
  // threads.
  void ExpertsForward(const core::TensorView& x, const core::TensorView& w,
                      const core::TensorView& y, const core::TensorView& device_offsets,
                      std::vector<int64_t>* host_offsets) {
    if (!status_.ok()) return;
    if (kc::GroupedGemmHopperApplies(x, w)) {
      Ok(kc::GroupedGemmDeviceOffsets(x, w, device_offsets, y, kc::GroupedGemmTile::kWgmma));
      return;
    }
    const std::vector<int64_t>& offsets = HostOffsets(device_offsets, host_offsets);
    Ok(blas_->ForEachLane([&](int lane_index, kc::BlasHandle& lane) -> absl::Status {
      for (size_t e = lane_index; e + 1 < offsets.size(); e += kc::BlasHandle::kLanes) {
        if (offsets[e] == offsets[e + 1]) continue;
        const int64_t first = offsets[e], last = offsets[e + 1];
        if (absl::Status s =
                kc::BatchedGemm(lane, ProductParams(x.Slice(0, first, last), w.Select(0, e),
                                                    y.Slice(0, first, last), 1.0f));
            !s.ok()) {
          return s;
        }
      }
      return absl::OkStatus();
    }));
  }
  // The experts' row offsets on the host for per-expert cuBLAS calls: *cache as it is when
  // filled, else a copy of device_offsets ([E + 1] i32) into it, which waits for the queued
  // launches (the Hopper kernels read the device offsets and need no such round trip). After an
  // error: zeros (every expert empty; the launches are skipped anyway).
  const std::vector<int64_t>& HostOffsets(const core::TensorView& device_offsets,
                                          std::vector<int64_t>* cache) {
    if (!cache->empty()) return *cache;
    core::Tensor host = core::Tensor::Zeros(core::DType::kI32, device_offsets.shape_vector());
    if (status_.ok()) Ok(kc::Copy(device_offsets, host.view()));
    if (!status_.ok()) host = core::Tensor::Zeros(core::DType::kI32, host.view().shape_vector());
    cache->assign(host.data<int32_t>(), host.data<int32_t>() + host.numel());
    return *cache;
  }
  // `offsets` (E + 1 row offsets of the experts' picks) as an i32 device tensor.
  core::Tensor ExpertOffsetsOnDevice(absl::Span<const int64_t> offsets) {
    core::Tensor host =
        core::Tensor::Empty(core::DType::kI32, {static_cast<int64_t>(offsets.size())});
    for (size_t e = 0; e < offsets.size(); ++e) {
      host.data<int32_t>()[e] = static_cast<int32_t>(offsets[e]);
    }
    return Up(host);
  }
  template <typename F>
  void Do(F&& launch) {
    if (status_.ok()) Ok(launch());
  }
  // rope.inv_freq() as an f32 device tensor [rope_dim / 2], uploaded on the call's first use of
  // `rope` (a pageable upload waits for the queued work, so once a pass rather than per layer).
  const core::Tensor& DeviceInvFreq(const RopeTable& rope) {
    core::Tensor& cached = inv_freq_[&rope];
    if (!cached.defined()) {
      const std::vector<float>& inv_freq = rope.inv_freq();
      cached = Up(core::Tensor::FromFloats({static_cast<int64_t>(inv_freq.size())}, inv_freq));
    }
    return cached;
  }

 private:
  kc::BlasHandle* blas_;
  const Bf16Mirrors* mirrors_;
  absl::Status status_;
  model::cuda_internal::PhaseProfile profile_;
  std::map<const RopeTable*, core::Tensor> inv_freq_;  // DeviceInvFreq's uploads
};

// Device cos/sin [count, rope_dim / 2] f32 of positions first, first + stride, ...: `rope`'s
// tables filled on the device (kc::RopeTableFill, RopeTable::Fill's arithmetic, equal to it bit
// for bit on the H200) instead of filled on the host (double-precision cos and sin of every
// position and pair) and uploaded, in every layer of both passes.
inline void DeviceRopeTables(Run& run, const RopeTable& rope, int64_t first, int64_t stride,
                             int64_t count, core::Tensor* cos, core::Tensor* sin) {
  const core::Tensor& device_inv_freq = run.DeviceInvFreq(rope);
  const int64_t pairs = device_inv_freq.numel();
  *cos = run.New({count, pairs});
  *sin = run.New({count, pairs});
  run.Do([&] {
    return kc::RopeTableFill(device_inv_freq.view(), first, stride, cos->view(), sin->view());
  });
}

// t as [rows, numel / rows].
inline core::TensorView Rows2(const core::Tensor& t, int64_t rows) {
  return t.view().Reshape({rows, t.numel() / rows});
}

}  // namespace cuda_reference
}  // namespace v4rl::model
