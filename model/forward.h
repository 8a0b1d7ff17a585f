// The V4 model in reference precision (fp32 on the CPU) and its forward pass over whole token
// sequences (prefill from position 0): embedding, blocks of mHC + attention + mHC + MoE,
// hc_head, final norm, head (spec §2, §5); plus the MTP block's logits.
//
// Each block's intermediate tensors live in a BlockActivations struct (llm.c's saved
// activations); Forward keeps them only when asked (for a backward pass), so a plain forward
// holds one block's activations at a time.
// Thread-safety: a Model is immutable after Load; concurrent Forward calls are safe (they share
// the process thread pool, which serialises their parallel sections).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "core/tensor.h"
#include "model/attention.h"
#include "model/config.h"
#include "model/mhc.h"
#include "model/moe.h"
#include "model/rope.h"
#include "model/weights.h"

namespace v4rl::model {

struct Model {
  ModelConfig config;
  ModelWeights weights;
  RopeTable main_rope;      // sliding-only layers
  RopeTable compress_rope;  // CSA / HCA layers

  // Builds the RoPE tables for `config` (already validated) around `weights`.
  static Model Create(ModelConfig config, ModelWeights weights);
  // config.json + weights of a model directory (see LoadModelConfig and LoadWeights).
  static absl::StatusOr<Model> Load(const std::string& path);

  const RopeTable& rope(AttentionType type) const {
    return type == AttentionType::kSliding ? main_rope : compress_rope;
  }
};

struct BlockActivations {
  core::Tensor streams_in;   // [N, n, H] block input
  MhcActivations attn_hc;
  core::Tensor attn_in;      // [N, H] attn_norm(attn_hc.collapsed)
  AttentionActivations attn;
  core::Tensor attn_out;     // [N, H]
  core::Tensor streams_mid;  // [N, n, H] after the attention site
  MhcActivations ffn_hc;
  core::Tensor ffn_in;       // [N, H] ffn_norm(ffn_hc.collapsed)
  MoeActivations moe;
  core::Tensor ffn_out;      // [N, H]
};

// One decoder block: streams_in [B·T, n, H] -> returned streams [B·T, n, H], f32.
// token_ids: [B·T] i32 (hash routing); replay_topk_idx: [B·T, k] i32 expert ids replacing the
// MoE selection (routing replay), or an empty view; replay_index_topk: [B, T, k'] i32 indexer
// picks replacing its selection (CSA layers), or an empty view. Fills `acts`.
core::Tensor BlockForward(const LayerWeights& layer, const ModelConfig& config,
                          const RopeTable& rope, int64_t batch, int64_t seq_len,
                          const core::Tensor& streams_in, const core::TensorView& token_ids,
                          const core::TensorView& replay_topk_idx, BlockActivations* acts,
                          const core::TensorView& replay_index_topk = core::TensorView());

struct ForwardOptions {
  bool return_routing = false;    // routed expert ids of every layer
  bool return_hidden = false;     // final hidden state (after the model norm)
  bool return_streams = false;    // residual streams before hc_head (the MTP input)
  bool save_activations = false;  // keep every block's activations (for backward)
  // Keep only each block's streams_in (for a backward that recomputes the rest, see
  // model/backward.h); ignored with save_activations.
  bool save_block_inputs = false;
  // Routing replay (keep-routing): per layer [B, T, k] i32 expert ids used instead of the MoE
  // selection, e.g. the ids a rollout routed with. Empty: every layer selects.
  std::vector<core::TensorView> routing_replay;
  // Index replay, for diffing two implementations without the flips of near-tied indexer scores:
  // per layer [B, T, min(index_topk, T / csa_compress_ratio)] i32 picks (ascending, -1 padding;
  // an empty view for non-CSA layers) used instead of the indexer's selection. Empty: every CSA
  // layer selects. (A recomputing backward re-selects: not for training with recompute.)
  std::vector<core::TensorView> index_replay;
};

struct ForwardOutput {
  core::Tensor logits;                       // [B, T, V] f32
  std::vector<core::Tensor> routed_experts;  // per layer [B, T, k] i32 (return_routing)
  core::Tensor hidden;                       // [B, T, H] f32 (return_hidden)
  // [B, T, n, H] (return_streams): f32; bf16 on the device from CudaBackward::Forward under bf16
  // GEMM math, which stores every residual stream in bf16 (streams_in / streams_mid too).
  core::Tensor streams;
  std::vector<BlockActivations> blocks;      // per layer (save_activations, save_block_inputs)
  HcHeadActivations hc_head;                 // (save_activations or save_block_inputs)
};

// input_ids: [B, T] i32 or i64, CPU, any strides. Errors (InvalidArgument): wrong rank or
// dtype, an empty batch or sequence, a token id outside [0, vocab_size) (named with its [b, t]),
// routing_replay with a layer count other than num_layers, a tensor other than contiguous i32
// [B, T, k], or an expert id outside [0, num_routed_experts) (named with its layer and index).
absl::StatusOr<ForwardOutput> Forward(const Model& model, const core::TensorView& input_ids,
                                      const ForwardOptions& options = {});

// Logits of MTP block `mtp_index` (spec §5). streams: [B, T, n, H] f32, the main model's final
// residual streams (ForwardOutput::streams); next_ids: [B, T] i32/i64, position t holding the
// token that follows position t (the caller shifts). Returns [B, T, V] f32.
// Errors: FailedPrecondition when the model has no such MTP block; InvalidArgument on shapes or
// token ids as in Forward.
// The last step of a forward (this one and model/forward_cuda_reference.cc's): the [B·T, ·]
// logits, final hidden state and streams reshaped to [B, T, ·] into *output as `options` asks,
// and the hc_head activations when saved.
void FinishForwardOutput(const ModelConfig& config, const ForwardOptions& options, int64_t batch,
                         int64_t seq_len, const core::Tensor& logits,
                         const core::Tensor& hidden_state, const core::Tensor& streams,
                         HcHeadActivations head_acts, ForwardOutput* output);

absl::StatusOr<core::Tensor> MtpForward(const Model& model, const core::TensorView& streams,
                                        const core::TensorView& next_ids, int mtp_index = 0);

}  // namespace v4rl::model
