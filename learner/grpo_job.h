// A GRPO job: SFT a model on a synthetic task (learner/sft_trainer.h), then GRPO on the same task
// with a verifiable reward, every sample recorded in a trajectory store. Rollout and reward go
// through the interfaces of learner/rollout_client.h: in this process by default, or in rollout
// and reward workers over gRPC (learner/remote_service.h); the learner step (learner/rl_step.h)
// runs here. Step s: publish the policy as weight version s (version 0 = the SFT model), roll out
// with it, score, store, learn. Each sample's lag = s - its weight version is recorded; samples
// whose lag exceeds max_policy_lag are stored as aborted and not trained on (the step's
// "stale_samples" metric counts them).
//
// Run directory layout:
//   RUN/sft/...                 the SFT run (learner/sft_trainer.h); resumed if present
//   RUN/metrics_grpo.jsonl      one JSON object per GRPO step ("step", "mean_reward", "loss", ...)
//                               and one for the final evaluation
//   RUN/checkpoints/step-N/     the GRPO policy (learner/checkpoint.h; loads as a model directory)
//   RUN/summary.json            greedy and sampled held-out accuracy after SFT and after GRPO,
//                               steps, mean reward per step
//   (the caller's store, e.g. RUN/trajectories for `v4rl run`)
// Determinism: step s samples train examples [s·P, (s+1)·P) (P = prompts_per_step), sample g of
// prompt i gets seed hash(seed, s, i, g); the result is a function of the options alone, the same
// with any backend (remote workers return bit-identical tokens, logprobs and routing).
// Reward: 1 when the completion (up to and including EOS) equals the example's, else 0.
// Thread-safety: one job per run directory; the store must accept calls from this thread.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "learner/rollout_client.h"
#include "learner/sft_trainer.h"
#include "store/trajectory_store.h"

namespace v4rl::learner {

struct GrpoJobOptions {
  std::string run_dir;
  // The SFT stage; its run_dir is forced to RUN/sft and its task is the GRPO task.
  SftOptions sft;
  int64_t steps = 20;             // GRPO steps, >= 1
  int64_t prompts_per_step = 8;   // >= 1
  int64_t group_size = 8;         // samples per prompt, >= 2 (GRPO's baseline needs a group)
  float temperature = 1.0f;       // > 0
  int32_t top_k = 0;              // >= 0; 0 = off
  double lr = 1e-4;               // GRPO learning rate after warmup, > 0
  int64_t warmup_steps = 0;       // linear warmup from lr / warmup_steps to lr, >= 0
  bool normalize_std = false;     // divide group advantages by their std (V3.2 does not)
  double kl_coef = 0.0;           // >= 0; > 0 scores a frozen copy of the SFT model
  double clip = 0.2;              // PPO ratio clip (both sides), > 0
  double grad_clip = 1.0;         // <= 0: off
  int64_t max_new_tokens = 8;     // >= 1
  int64_t eval_examples = 200;    // held-out prompts for both accuracies, >= 1
  // Samples per held-out prompt for the sampled accuracy (pass@1 at the rollout's temperature and
  // top-k, averaged over this many samples), >= 0; 0 skips it.
  int64_t eval_samples = 4;
  uint64_t seed = 1;              // sampling seeds
  std::string job_id = "grpo";    // the store's job id
  bool quiet = false;             // no progress lines on stderr
  // Largest accepted lag (learner version - sample weight version); -1 = unbounded.
  int64_t max_policy_lag = -1;

  // InvalidArgument listing every problem (field, value, expectation).
  absl::Status Validate() const;
};

struct GrpoJobSummary {
  double accuracy_after_sft = 0;   // greedy exact match on the eval split, before GRPO
  double accuracy_after_grpo = 0;
  // Sampled pass@1 on the eval split (eval_samples per prompt, the rollout's sampling settings,
  // the same seeds before and after); what GRPO optimises. 0 when eval_samples == 0.
  double sampled_accuracy_after_sft = 0;
  double sampled_accuracy_after_grpo = 0;
  int64_t steps = 0;
  std::vector<double> mean_rewards;  // per GRPO step
  int64_t trajectories = 0;          // samples written to the store
};

// Where rollout and reward run; null members take the in-process implementations. Not owned.
struct GrpoJobBackends {
  RolloutBackend* rollout = nullptr;
  RewardBackend* reward = nullptr;
  // Called after each publication with the new weight version (e.g. the learner service's
  // WaitForWeightVersion board); may be empty.
  std::function<void(int64_t version)> on_weights_published;
};

// Runs SFT (or resumes it) then GRPO; writes every sample to `store` (not owned, non-null).
// Errors: options.Validate, the backends' (a remote worker that cannot be recovered), the store's.
absl::StatusOr<GrpoJobSummary> RunGrpoJob(const GrpoJobOptions& options,
                                          store::TrajectoryStore* store,
                                          const GrpoJobBackends& backends = {});

}  // namespace v4rl::learner
