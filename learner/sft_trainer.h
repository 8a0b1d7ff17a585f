// Supervised fine-tuning of a V4 model (reference precision): completion-masked next-token cross
// entropy — its loss and gradients on the CPU, or on the GPU through a gradient backend
// (learner/sft_step_cuda.h, `v4rl sft --device cuda`) — Muon + AdamW on the CPU, warmup-cosine
// learning rate, optional gradient clipping, loss-spike reports, periodic greedy exact-match
// evaluation on held-out prompts, metrics JSONL and atomic checkpoints from which a killed run
// resumes bit-identically.
//
// Run directory layout:
//   RUN/metrics.jsonl      one JSON object per step ("step", "loss", "lr", "grad_norm", ...) and
//                          per evaluation ("eval_exact_match", ...)
//   RUN/checkpoints/...    learner/checkpoint.h (step-N/ loads as a model directory)
//   RUN/summary.json       final step, loss and eval accuracy
// Determinism: example i of the training stream is synthetic example i of the task's train split,
// or dataset line i mod N (file order, cycling; the last eval_examples lines are held out); the
// batch of step s is examples [s·B, (s+1)·B); so weights after step s are a function of the
// config alone, whether or not the run was interrupted and resumed.
// Thread-safety: one trainer per run directory.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "learner/lr_schedule.h"
#include "learner/optimizer.h"
#include "learner/sft_data.h"
#include "learner/synthetic_tasks.h"
#include "model/forward.h"

namespace v4rl::learner {

// Where a step's loss and gradients are computed: the batch's completion-masked next-token cross
// entropy (mean over the masked tokens) under `model`'s current weights, and its gradient ADDED to
// *grads (ZeroGradients layout). The trainer updates the host model's weights between calls.
class SftGradientBackend {
 public:
  virtual ~SftGradientBackend() = default;
  virtual absl::StatusOr<double> LossAndGradients(const model::Model& model, const SftBatch& batch,
                                                  model::ModelWeights* grads) = 0;
};

// The CPU reference (model::Forward, Backward; `recompute`: per-layer activation recomputation).
std::unique_ptr<SftGradientBackend> MakeCpuSftGradientBackend(bool recompute);

struct SftOptions {
  std::string run_dir;
  // Model: an existing model directory, or a config.json to initialise randomly from.
  std::string model_dir;
  std::string init_config;
  uint64_t init_seed = 1;
  // Data: a JSONL dataset (learner/sft_data.h), or a synthetic task when dataset is empty.
  std::string dataset;
  SyntheticTaskSpec synthetic;
  int64_t steps = 100;
  int64_t batch_size = 16;
  WarmupCosineSchedule schedule;  // total_steps is set to `steps`
  double grad_clip = 1.0;         // <= 0: off
  MuonOptions muon;
  AdamWOptions adamw;
  bool recompute = false;  // per-layer activation recomputation (CPU backend)
  // Makes the gradient backend once the model is loaded; empty: the CPU's (with `recompute`).
  std::function<absl::StatusOr<std::unique_ptr<SftGradientBackend>>(const model::Model&)>
      gradient_backend;
  int64_t eval_every = 0;         // steps; 0: only at the end
  int64_t eval_examples = 64;     // held-out prompts (synthetic eval split, or dataset tail)
  int64_t checkpoint_every = 0;   // steps; 0: only at the end
  int keep_checkpoints = 2;
  bool quiet = false;             // no progress lines on stderr
  // Stop (with a checkpoint) after this many steps in this process, e.g. to fit a time slot;
  // a rerun resumes. 0: run to `steps`.
  int64_t max_steps_per_run = 0;

  // InvalidArgument listing every problem (field, value, expectation).
  absl::Status Validate() const;
};

struct SftSummary {
  int64_t steps = 0;
  int64_t resumed_from = 0;  // step of the checkpoint the run resumed from (0: fresh)
  double final_loss = 0;
  double eval_exact_match = 0;
  std::vector<double> losses;  // per step run in this process
};

// Greedy exact-match accuracy of `model` on examples: the generated tokens (up to and including
// EOS, at most |completion| tokens) must equal the completion.
absl::StatusOr<double> ExactMatchAccuracy(const model::Model& model,
                                          const std::vector<SftExample>& examples);

// Runs (or resumes, when RUN/checkpoints/latest exists) the job.
absl::StatusOr<SftSummary> RunSft(const SftOptions& options);

}  // namespace v4rl::learner
