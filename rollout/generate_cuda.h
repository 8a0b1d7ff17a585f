// The generation loop of rollout/generate.h on the GPU: the same requests, options, seeds and
// results, with prefill chunks and decode steps through model::CudaDecoder (production
// precision: bf16 weights and activations) and sampling through kernels/cuda/sampling.h (the same
// Philox draws as the CPU). Tokens equal the CPU path's where the bf16 logits keep the CPU's
// order (near-tied logits may pick differently); for a given request and seed they do not depend
// on the batch, its order or --prefill-chunk.
// Built only with V4RL_WITH_CUDA (library v4rl_rollout_cuda).
// Thread-safety: one call at a time per CudaModel.
#pragma once

#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "model/forward.h"
#include "model/forward_cuda.h"
#include "rollout/generate.h"

namespace v4rl::rollout {

// How the GPU decodes (model::CudaDecodeStepOptions of every step).
struct CudaGenerateOptions {
  // The official FP8/FP4 simulation. Default: false.
  bool fp8_simulation = false;
  // Single-token steps replay recorded CUDA graphs (same results). Default: true.
  bool cuda_graphs = true;
};

// `model` is the host model `gpu` was created from (config and validation). Errors as Generate,
// plus ResourceExhausted / Internal from the device.
absl::StatusOr<std::vector<GenerationResult>> GenerateCuda(
    const model::Model& model, model::CudaModel* gpu, absl::Span<const GenerationRequest> requests,
    const GenerateOptions& options, const CudaGenerateOptions& cuda_options = {});

}  // namespace v4rl::rollout
