// The V4 forward pass on one GPU in the `production` precision (DESIGN.md §3): weights uploaded
// once (matrices in bf16; norms, mHC bases and scales, sinks, gate biases in f32; mHC fn as bf16
// high and low parts, kernels/cuda/mhc.h SplitMhcFn), activations in bf16 with
// fp32 accumulation, residual streams in bf16 (or f32, an option), every op a kernels/cuda
// launcher. Same math and order as model/forward.cc (the fp32 CPU reference), which the gpu test
// tests/model/cuda_forward_test.cc measures it against (cosine distance and max error).
//
// A separate path rather than kernels/ops.h dispatching device views: the CPU forward reads
// tensors on the host between ops (routing, embedding, biases), so a device forward is its own
// sequence of launches. MoE dispatch plans are built on the host (plan/moe_dispatch.h) from the
// routed ids, one small device-to-host copy per layer.
// Built only with V4RL_WITH_CUDA (library v4rl_model_cuda).
// Thread-safety: a CudaModel is immutable after Create except for its GEMM handle: one Forward
// at a time per CudaModel.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "absl/status/statusor.h"
#include "core/tensor.h"
#include "model/forward.h"

namespace v4rl::model {

struct CudaForwardOptions {
  bool bf16_streams = true;     // residual streams in bf16 (false: f32)
  bool return_routing = false;  // routed expert ids of every layer
  int64_t indexer_q_chunk = 64;  // queries scored per indexer GEMM (bounds its workspace)
  bool capture_blocks = false;   // host copies of every block's intermediate outputs
  bool last_position_logits = false;  // logits [B, 1, V] of each sequence's last token only
  // MoE dispatch plan built on the device and the routed experts through one grouped GEMM per
  // projection driven by device offsets (kernels/cuda/grouped_gemm.h): no host sync per layer.
  // Same plan as the host's; the expert GEMMs round differently from cuBLASLt (bf16 ulps).
  // false: plan on the host, one cuBLASLt GEMM per expert (faster for long prefills).
  bool device_moe_dispatch = false;
  // Routing replay (keep-routing): per layer [B, T, k] i32 host expert ids used instead of the
  // MoE selection. Empty: every layer selects.
  std::vector<core::TensorView> routing_replay;
  // The FP8/FP4 simulation of the official inference code (spec/model.md §6.4): activations
  // quantised (E4M3, power-of-two scales per 128) before every GEMM whose weight is FP8/FP4 in the
  // official checkpoints (wq_a, wq_b, wkv, wo_b, the indexer's wq_b, routed and shared experts),
  // whatever this checkpoint stores; the KV QAT of the window K=V rows and the compressed entries
  // (non-rope dims, blocks of 64); the indexer's queries and keys rotated by a Hadamard and
  // rounded to FP4 (blocks of 32). Off: plain bf16 (DESIGN.md's production precision without
  // the simulation).
  bool fp8_simulation = false;
  // Indexer replay, for diffing against another implementation without the discrete flips of
  // near-tied scores: per layer [B, T, k] i32 host picks (ascending, -1 padding; undefined views
  // for non-CSA layers) used instead of the indexer's. Empty: every CSA layer selects.
  std::vector<core::TensorView> index_replay;
};

// One block's outputs as f32 host tensors (capture_blocks), for diffing against the CPU's
// BlockActivations.
struct CudaBlockCapture {
  core::Tensor attn_in;      // [N, H] attn_norm(collapsed)
  core::Tensor attn_out;     // [N, H]
  core::Tensor streams_mid;  // [N, n, H]
  core::Tensor ffn_in;       // [N, H]
  core::Tensor ffn_out;      // [N, H]
  core::Tensor streams_out;  // [N, n, H]
  core::Tensor comp_entries;  // [B, Nc, d] compressed entries (CSA, HCA)
  core::Tensor index_picks;   // [B, T, k] i32 indexer picks (CSA)
};

struct CudaForwardOutput {
  core::Tensor logits;  // [B, T, V] f32 on the host ([B, 1, V] with last_position_logits)
  std::vector<core::Tensor> routed_experts;  // per layer [B, T, k] i32 on the host
  std::vector<CudaBlockCapture> blocks;      // per layer (capture_blocks)
};

class CudaModel {
 public:
  // Uploads `model`'s weights to the current device. Errors: no device, out of memory, or a
  // cuBLAS handle that cannot be created.
  static absl::StatusOr<std::unique_ptr<CudaModel>> Create(const Model& model);
  ~CudaModel();
  CudaModel(const CudaModel&) = delete;
  CudaModel& operator=(const CudaModel&) = delete;

  // input_ids: [B, T] i32 or i64 on the host; every sequence starts at position 0. Errors as
  // model::Forward (rank, dtype, empty, ids outside the vocabulary), Internal on CUDA errors.
  absl::StatusOr<CudaForwardOutput> Forward(const core::TensorView& input_ids,
                                            const CudaForwardOptions& options = {});

  // Bytes of weights on the device.
  int64_t weight_bytes() const;

  struct Impl;

 private:
  friend class CudaDecoder;  // model/decode_cuda.h runs Impl's blocks over its decode states
  explicit CudaModel(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace v4rl::model
