// Private to model/forward_cuda.cc, decode_cuda.cc and attention_decode_cuda.cc: CudaModel's
// implementation struct (device weights, GEMM handle, per-call state) and the host<->device
// helpers they share.
// Built only with V4RL_WITH_CUDA.
#pragma once

#include <algorithm>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/str_format.h"
#include "core/status.h"
#include "core/tensor.h"
#include "kernels/cuda/device.h"
#include "kernels/cuda/gemm.h"
#include "model/cuda_phase_profile.h"
#include "model/forward_cuda.h"

namespace v4rl::model {
namespace cuda_internal {

namespace kc = kernels::cuda;
using core::DType;
using core::Tensor;
using core::TensorView;

inline Tensor Dev(DType dtype, absl::Span<const int64_t> shape) {
  return Tensor::Empty(dtype, shape, kc::CachingDeviceAllocator());
}

// A device copy of a host tensor in `dtype` (bf16, f32 or i32); undefined stays undefined.
inline absl::StatusOr<Tensor> Upload(const Tensor& host, DType dtype, int64_t* bytes) {
  if (!host.defined()) return Tensor();
  Tensor staged;
  if (dtype == DType::kI32) {
    staged = host.dtype() == DType::kI32 && host.view().is_contiguous()
                 ? host
                 : Tensor::CopyOf(host.view());
  } else {
    const Tensor f32 = host.dtype() == DType::kF32 && host.view().is_contiguous()
                           ? host
                           : core::ToFloat32(host.view());
    if (dtype == DType::kBF16) {
      staged = Tensor::Empty(DType::kBF16, f32.view().shape_vector());
      for (int64_t i = 0; i < f32.numel(); ++i) {
        staged.data<uint16_t>()[i] = core::FloatToBf16(f32.data<float>()[i]);
      }
    } else {
      staged = f32;
    }
  }
  Tensor device = Dev(dtype, staged.view().shape_vector());
  V4RL_RETURN_IF_ERROR(kc::Copy(staged.view(), device.view()));
  *bytes += device.view().nbytes();
  return device;
}

// A host f32 copy of a device view (bf16 or f32).
inline absl::StatusOr<Tensor> Download(const TensorView& device) {
  Tensor staged = Tensor::Empty(device.dtype, device.shape_vector());
  V4RL_RETURN_IF_ERROR(kc::Copy(device, staged.view()));
  return device.dtype == DType::kF32 ? staged : core::ToFloat32(staged.view());
}

struct RopeTables {
  Tensor inv_freq;  // [rd / 2] f32 device
  Tensor cos, sin;  // [T, rd / 2] f32 device, positions 0 .. T - 1 (per forward)
};

struct DecodeStepState;  // model/decode_cuda_state.h

// One layer's weights that read the same activation, concatenated by rows at upload so that one
// GEMM per output dtype computes all their products (decode at batch 256 is bound by the GEMM
// launches, not their bytes). The layer's AttentionWeights / MoeWeights tensors are views into
// these; no weight is stored twice.
struct FusedLayerWeights {
  // [q_lora_rank + head_dim (+ c·head_dim (+ 2·index_head_dim)), hidden] bf16, GEMM out bf16:
  // wq_a and wkv (they read the FP8 operand xq), then the compressor's wkv (compressed layers)
  // and the indexer compressor's wkv (CSA), which read x.
  Tensor attn_bf16;
  // [c·head_dim (+ 2·index_head_dim + index_n_heads), hidden] bf16, GEMM out f32 (compressed
  // layers; all read x): the compressor's wgate, then for CSA the indexer compressor's wgate and
  // the indexer's weights_proj (its heads^-0.5 scale is applied when the slice is split out, not
  // folded into the bf16 weights, so that its products stay those of the unfused GEMM).
  Tensor attn_f32;
  // [2·I_shared, hidden] bf16: shared_w1 rows then shared_w3 rows (undefined without shared
  // experts); one GEMM gives [gate | up].
  Tensor shared_w13;
};

// A compressor's per-token rows before pooling: values [N, width] bf16 and gate scores
// [N, width] f32 with the slot's positional bias added; contiguous.
struct CompressorRows {
  Tensor kv, score;
};

// The products of an attention layer's input (CudaModel::Impl::ProjectAttentionInput).
struct AttentionProjections {
  TensorView qr;         // [N, q_lora_rank] bf16 row view (x · wq_aᵀ, before q_norm)
  TensorView kv;         // [N, head_dim] bf16 row view (x · wkvᵀ, before kv_norm)
  CompressorRows comp;   // compressed layers
  CompressorRows index;  // CSA: the indexer's compressor
  Tensor index_weights;  // CSA: [N, index_n_heads] f32, the head weights times heads^-0.5
  Tensor bf16_out;       // [N, attn_bf16 rows] bf16: the storage qr and kv view
};

// The routed experts' output before the combine (kc::MoeCombine's operands): expert_out [slots,
// hidden] f32 rows in slot order, pick_of_slot [num_tokens · k] i32, weight [num_tokens, k] f32.
struct RoutedExpertRows {
  Tensor expert_out, pick_of_slot, weight;
};

// Queries the indexer scores per GEMM: at most `limit` and `count`, and few enough that the
// [chunk, heads, entries] f32 score block stays within 256 MiB (16 queries at 1M tokens).
inline int64_t IndexerQueryChunk(int64_t limit, int64_t count, int64_t heads, int64_t entries) {
  constexpr int64_t kScoreFloats = int64_t{64} << 20;
  const int64_t fits = kScoreFloats / std::max<int64_t>(1, heads * entries);
  return std::max<int64_t>(1, std::min({limit, count, fits}));
}

}  // namespace cuda_internal

using namespace cuda_internal;  // NOLINT: private header of the model/*cuda*.cc files

struct CudaModel::Impl {
  ModelConfig config;
  ModelWeights weights;  // the same structs, tensors on the device
  RopeTables main_rope, compress_rope;
  std::unique_ptr<kc::GemmHandle> gemm;
  // The GEMMs of the chains a recorded decode step runs beside those on `gemm`
  // (kc::RunConcurrently's later branches: the shared experts, the indexer's queries): a handle's
  // cuBLASLt workspace serves one stream at a time.
  std::unique_ptr<kc::GemmHandle> side_gemm;
  int64_t weight_bytes = 0;
  std::vector<FusedLayerWeights> fused;  // per layer

  // Per-forward state.
  int64_t batch = 0, seq_len = 0, num_tokens = 0;
  Tensor token_ids;  // [N] i32 device
  CudaForwardOptions options;
  std::vector<Tensor>* routed = nullptr;
  std::vector<CudaBlockCapture>* captures = nullptr;
  CudaBlockCapture* capture = nullptr;  // the current block's, while capturing
  size_t layer_index = 0;

  RopeTables& rope(AttentionType type) {
    return type == AttentionType::kSliding ? main_rope : compress_rope;
  }
  float eps() const { return static_cast<float>(config.rms_norm_eps); }
  DType stream_dtype() const { return options.bf16_streams ? DType::kBF16 : DType::kF32; }

  absl::Status UploadWeights(const ModelWeights& host);
  // The fused GEMMs of layer layer_index's attention input (FusedLayerWeights): x [N, hidden]
  // bf16 and xq, the FP8 operand (x itself unless options.fp8_simulation; wq_a and wkv read it).
  // One bf16-out and, for compressed layers, one f32-out GEMM (one more with the FP8
  // simulation, where the bf16 group's operands differ), then one SplitColumns launch for the
  // compressor rows (gate bias of position positions[r] ([N] i32 device), or r mod seq_len when
  // positions is empty) and the indexer head weights.
  absl::StatusOr<AttentionProjections> ProjectAttentionInput(const AttentionWeights& w,
                                                             AttentionType type,
                                                             const TensorView& x,
                                                             const TensorView& xq,
                                                             const TensorView& positions);
  absl::StatusOr<Tensor> Compress(const CompressorWeights& w, int64_t ratio, bool overlap,
                                  const RopeTables& rope, const CompressorRows& rows);
  // qr: [N, q_lora_rank] bf16 row view (normalised); p: the layer's projections (index rows and
  // head weights).
  absl::StatusOr<Tensor> IndexerTopK(const IndexerWeights& w, const RopeTables& rope,
                                     const AttentionProjections& p, const TensorView& qr);
  absl::Status Attention(const AttentionWeights& w, AttentionType type, const TensorView& x,
                         const TensorView& out);
  // attn [num_tokens, heads, head_dim] bf16 -> out [num_tokens, hidden]: the grouped low-rank
  // output projection (one batched GEMM over the o_groups with wo_a), then wo_b. Shared by
  // Attention and AttentionDecode.
  absl::Status OutputProjection(const AttentionWeights& w, const Tensor& attn,
                                const TensorView& out);
  // The MoE FFN of x [num_tokens, hidden] bf16 into out [num_tokens, hidden] bf16: the shared
  // experts beside the routing and routed experts (kc::RunConcurrently), then the weighted
  // combine.
  absl::Status Moe(const MoeWeights& w, MlpType type, const TensorView& x, const TensorView& out);
  // The router and the routed experts (xq: x as the experts see it, Fp8Operand), through the
  // host's dispatch plan or, with options.device_moe_dispatch, MoeDevicePlan.
  absl::StatusOr<RoutedExpertRows> RoutedExperts(const MoeWeights& w, MlpType type,
                                                 const TensorView& x, const TensorView& xq);
  // RoutedExperts' experts after routing (idx [num_tokens, k] i32) with the plan built on the
  // device (no host sync); fills rows' pick_of_slot and expert_out (weight is the caller's).
  absl::Status MoeDevicePlan(const MoeWeights& w, const TensorView& x, const Tensor& idx,
                             RoutedExpertRows* rows);
  // The shared experts on x [num_tokens, hidden] bf16 (w1 and w3 as one GEMM over
  // FusedLayerWeights::shared_w13 of layer layer_index), on side_gemm: [num_tokens, hidden]
  // f32, undefined without shared experts.
  absl::StatusOr<Tensor> SharedExperts(const MoeWeights& w, const TensorView& x);
  absl::StatusOr<Tensor> Block(const LayerWeights& layer, const Tensor& streams);
  // The head's input [num_tokens, H] bf16: the hc_head collapse of the final streams
  // [num_tokens, n, H], then the model norm. Shared by Forward and the decode step.
  absl::StatusOr<Tensor> FinalHidden(const Tensor& streams);

  PhaseProfile profile;  // V4RL_CUDA_PROFILE=1 diagnostics

  // Set while a CudaDecoder step runs (model/decode_cuda.cc): Block then attends through
  // AttentionDecode against the step's per-sequence device states.
  DecodeStepState* decode = nullptr;
  absl::Status AttentionDecode(const AttentionWeights& w, AttentionType type, const TensorView& x,
                               const TensorView& out);
  // The decode step's query path and single K=V head of layer layer_index (both attention
  // decode paths): qr [N, q_lora_rank] bf16 (q_norm'd), q [N, heads, head_dim] bf16 (normalised,
  // rotated), kv [N, head_dim] bf16 (kv_norm'd, rotated, KV QAT), and the layer's projections.
  struct DecodeQueryKv {
    AttentionProjections projections;
    Tensor qr, q, kv;
  };
  // DecodeProjections (projections and qr) then DecodeQueryRows (q and kv from them).
  absl::StatusOr<DecodeQueryKv> DecodeQueryAndKv(const AttentionWeights& w, AttentionType type,
                                                 const TensorView& x);
  absl::StatusOr<DecodeQueryKv> DecodeProjections(const AttentionWeights& w, AttentionType type,
                                                  const TensorView& x);
  absl::Status DecodeQueryRows(const AttentionWeights& w, AttentionType type, DecodeQueryKv* qkv);
  // The decode step's indexer queries of a CSA layer (both attention decode paths): [N,
  // index_n_heads, index_head_dim] bf16 from qr (DecodeQueryKv::qr), rotated by cos, sin and
  // FP4-simulated; the GEMM on `handle`.
  absl::StatusOr<Tensor> DecodeIndexerQuery(const IndexerWeights& w, const Tensor& qr,
                                            const TensorView& cos, const TensorView& sin,
                                            kc::GemmHandle& handle);
  // AttentionDecode for a graph step (decode->table set): positions read on the device only
  // (model/attention_decode_graph_cuda.cc).
  absl::Status AttentionDecodeGraph(const AttentionWeights& w, AttentionType type,
                                    const TensorView& x, const TensorView& out);
  // Set while a decode graph is recorded: MoeDevicePlan keeps each layer's routed expert ids
  // ([N, k] i32 device) here instead of copying them to `routed` (a copy would wait for the
  // device).
  std::vector<Tensor>* routed_on_device = nullptr;
  // Rotates rows [b·T, (b+1)·T) of x ([N, heads, dim]) for every sequence b.
  absl::Status RotateSequences(const TensorView& x, const RopeTables& rope, bool inverse);

  // The official FP8/FP4 simulation (options.fp8_simulation; kernels/cuda/quant_sim.h), no-ops
  // when off. Fp8Operand: the operand of a GEMM whose weight is FP8/FP4 in the official
  // checkpoints (x itself when off, else a copy quantised in blocks of 128, held by *storage);
  // Fp8OperandInPlace: the same on a tensor only such GEMMs read. KvQat: K=V rows [n, head_dim],
  // the non-rope dims in blocks of 64. IndexerFp4: indexer queries or keys
  // [n, index_head_dim], Hadamard then FP4 in blocks of 32.
  absl::StatusOr<TensorView> Fp8Operand(const TensorView& x, Tensor* storage);
  absl::Status Fp8OperandInPlace(const TensorView& x);
  absl::Status KvQat(const TensorView& rows);
  absl::Status IndexerFp4(const TensorView& rows);
  // The routed experts' activations [>= picks, I] before the down projection: with the
  // simulation, times their routing weights (the official order) then FP8-quantised; the combine
  // then runs unweighted.
  absl::Status WeightedFp8ExpertActivations(const TensorView& act, const Tensor& pick_of_slot,
                                            const Tensor& weight);
};

}  // namespace v4rl::model
