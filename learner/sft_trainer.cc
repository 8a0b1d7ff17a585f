#include "learner/sft_trainer.h"

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <fstream>

#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "core/file.h"
#include "core/safetensors.h"
#include "core/status.h"
#include "core/thread_pool.h"
#include "kernels/cpu/token_losses.h"
#include "learner/checkpoint.h"
#include "learner/loss_spike_detector.h"
#include "learner/trainable_parameters.h"
#include "model/backward.h"
#include "model/init.h"
#include "model/save.h"
#include "rollout/generate.h"

namespace v4rl::learner {
namespace {

// The examples a run trains and evaluates on.
struct SftData {
  std::vector<SftExample> dataset_train;  // empty for synthetic tasks
  std::vector<SftExample> eval;

  SftExample Train(const SftOptions& options, int64_t index) const {
    if (dataset_train.empty()) return MakeSyntheticExample(options.synthetic, TaskSplit::kTrain, index);
    return dataset_train[index % dataset_train.size()];
  }
};

absl::StatusOr<SftData> LoadData(const SftOptions& options, int64_t vocab_size) {
  SftData data;
  if (options.dataset.empty()) {
    if (kCharVocabSize > vocab_size) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "synthetic tasks need vocab_size >= %d (the character vocabulary), the model has %d",
          kCharVocabSize, vocab_size));
    }
    for (int64_t i = 0; i < options.eval_examples; ++i) {
      data.eval.push_back(MakeSyntheticExample(options.synthetic, TaskSplit::kEval, i));
    }
    return data;
  }
  V4RL_ASSIGN_OR_RETURN(std::vector<SftExample> all, ReadSftJsonl(options.dataset, vocab_size));
  // The last eval_examples examples are held out, as long as some remain for training.
  const int64_t held_out =
      std::min<int64_t>(options.eval_examples, static_cast<int64_t>(all.size()) - 1);
  data.eval.assign(all.end() - held_out, all.end());
  data.dataset_train.assign(all.begin(), all.end() - held_out);
  return data;
}

// One optimisation step's loss and gradients (added into the parameters' grad views).
class CpuSftGradientBackend : public SftGradientBackend {
 public:
  explicit CpuSftGradientBackend(bool recompute) : recompute_(recompute) {}

  absl::StatusOr<double> LossAndGradients(const model::Model& model, const SftBatch& batch,
                                          model::ModelWeights* grads) override {
    model::ForwardOptions forward_options;
    forward_options.return_hidden = true;
    forward_options.return_streams = true;
    forward_options.save_activations = !recompute_;
    forward_options.save_block_inputs = recompute_;
    forward_options.return_routing = recompute_;
    V4RL_ASSIGN_OR_RETURN(model::ForwardOutput forward,
                          model::Forward(model, batch.input_ids.view(), forward_options));
    const int64_t rows = batch.input_ids.size(0), width = batch.input_ids.size(1);
    const int64_t vocab = model.config.vocab_size;
    const std::vector<int32_t> targets = NextTokenTargets(batch);
    core::Tensor dlogits = core::Tensor::Empty(core::DType::kF32, {rows, width, vocab});
    const double loss = kernels::cpu::MaskedCrossEntropyRef<float>(
        forward.logits.data<float>(), targets.data(), batch.loss_mask.data<float>(), rows * width,
        vocab, dlogits.data<float>(), &core::ThreadPool::Default());
    model::Backward(model, batch.input_ids.view(), forward, dlogits.view(),
                    {.recompute = recompute_}, grads);
    return loss;
  }

 private:
  bool recompute_;
};

absl::Status WriteSftCheckpoint(const SftOptions& options, const model::Model& model,
                                const Optimizer& optimizer, int64_t step, double loss) {
  std::vector<core::Tensor> storage;
  CheckpointContents contents;
  contents.config_json = model::ModelConfigToJson(model.config).dump(2) + "\n";
  contents.weights = model::HubNamedTensors(model.config, model.weights, &storage);
  contents.optimizer_state = optimizer.StateTensors();
  contents.trainer_state = {.step = step,
                            .data_position = step * options.batch_size,
                            .rng_seed = options.init_seed,
                            .metrics = {{"loss", loss}}};
  return WriteCheckpoint(options.run_dir + "/checkpoints", contents, options.keep_checkpoints)
      .status();
}

absl::Status LoadOptimizerState(const std::string& checkpoint_dir, Optimizer& optimizer) {
  V4RL_ASSIGN_OR_RETURN(auto file,
                        core::SafetensorsFile::Open(checkpoint_dir + "/optimizer/optimizer.safetensors"));
  std::vector<core::Tensor> tensors;
  std::vector<std::pair<std::string, core::TensorView>> views;
  for (const core::SafetensorsEntry& entry : file->entries()) {
    tensors.push_back(file->Read(entry));
    views.emplace_back(entry.name, tensors.back().view());
  }
  return optimizer.LoadState(views);
}

class MetricsLog {
 public:
  explicit MetricsLog(const std::string& path) : out_(path, std::ios::app) {}
  bool ok() const { return out_.good(); }
  void Write(const nlohmann::json& record) { out_ << record.dump() << "\n" << std::flush; }

 private:
  std::ofstream out_;
};

}  // namespace

std::unique_ptr<SftGradientBackend> MakeCpuSftGradientBackend(bool recompute) {
  return std::make_unique<CpuSftGradientBackend>(recompute);
}

absl::Status SftOptions::Validate() const {
  std::vector<std::string> problems;
  if (run_dir.empty()) problems.push_back("run_dir must be set");
  if (model_dir.empty() == init_config.empty()) {
    problems.push_back("exactly one of model_dir and init_config must be set");
  }
  if (steps < 1) problems.push_back(absl::StrFormat("steps must be >= 1 (got %d)", steps));
  if (batch_size < 1) problems.push_back(absl::StrFormat("batch_size must be >= 1 (got %d)", batch_size));
  if (eval_every < 0 || checkpoint_every < 0) {
    problems.push_back("eval_every and checkpoint_every must be >= 0");
  }
  if (eval_examples < 1) problems.push_back(absl::StrFormat("eval_examples must be >= 1 (got %d)", eval_examples));
  if (dataset.empty()) {
    if (absl::Status s = synthetic.Validate(); !s.ok()) problems.push_back(std::string(s.message()));
  }
  if (recompute && gradient_backend) {
    problems.push_back(
        "recompute applies to the CPU backend only (unset it with a gradient "
        "backend such as --device cuda)");
  }
  WarmupCosineSchedule full = schedule;
  full.total_steps = steps;
  if (absl::Status s = full.Validate(); !s.ok()) problems.push_back(std::string(s.message()));
  if (problems.empty()) return absl::OkStatus();
  return absl::InvalidArgumentError("sft config: " + absl::StrJoin(problems, "; "));
}

absl::StatusOr<double> ExactMatchAccuracy(const model::Model& model,
                                          const std::vector<SftExample>& examples) {
  if (examples.empty()) return 0.0;
  std::vector<rollout::GenerationRequest> requests;
  int64_t longest = 1;
  for (const SftExample& e : examples) {
    requests.push_back({e.prompt, 0});
    longest = std::max<int64_t>(longest, e.completion.size());
  }
  rollout::GenerateOptions options;
  options.max_new_tokens = longest;
  options.sampling.greedy = true;
  options.stop_tokens = {kEosId};
  V4RL_ASSIGN_OR_RETURN(auto results, rollout::Generate(model, requests, options));
  int64_t correct = 0;
  for (size_t i = 0; i < examples.size(); ++i) correct += results[i].tokens == examples[i].completion;
  return static_cast<double>(correct) / examples.size();
}

absl::StatusOr<SftSummary> RunSft(const SftOptions& options) {
  V4RL_RETURN_IF_ERROR(options.Validate());
  std::filesystem::create_directories(options.run_dir);
  const std::string checkpoints_dir = options.run_dir + "/checkpoints";
  SftSummary summary;
  model::Model model;
  const absl::StatusOr<std::string> latest = LatestCheckpoint(checkpoints_dir);
  if (latest.ok()) {
    V4RL_ASSIGN_OR_RETURN(model, model::Model::Load(*latest));
    V4RL_ASSIGN_OR_RETURN(TrainerState state, ReadTrainerState(*latest));
    summary.resumed_from = state.step;
  } else if (!absl::IsNotFound(latest.status())) {
    return latest.status();
  } else if (!options.model_dir.empty()) {
    V4RL_ASSIGN_OR_RETURN(model, model::Model::Load(options.model_dir));
  } else {
    V4RL_ASSIGN_OR_RETURN(model::ModelConfig config, model::LoadModelConfig(options.init_config));
    model = model::RandomModel(config, {.seed = options.init_seed, .include_mtp = false});
  }
  V4RL_ASSIGN_OR_RETURN(SftData data, LoadData(options, model.config.vocab_size));

  std::unique_ptr<SftGradientBackend> backend;
  if (options.gradient_backend) {
    V4RL_ASSIGN_OR_RETURN(backend, options.gradient_backend(model));
  } else {
    backend = MakeCpuSftGradientBackend(options.recompute);
  }
  model::ModelWeights grads = model::ZeroGradients(model.config);
  std::vector<TrainableParameter> parameters = TrainableParameters(model, grads);
  V4RL_ASSIGN_OR_RETURN(Optimizer optimizer,
                        Optimizer::Create(parameters, options.muon, options.adamw));
  if (summary.resumed_from > 0) {
    V4RL_RETURN_IF_ERROR(LoadOptimizerState(*latest, optimizer));
  } else if (!options.quiet) {
    std::fprintf(stderr, "optimizer groups:\n%s", optimizer.Summary().c_str());
  }
  WarmupCosineSchedule schedule = options.schedule;
  schedule.total_steps = options.steps;
  MetricsLog metrics(options.run_dir + "/metrics.jsonl");
  if (!metrics.ok()) {
    return absl::PermissionDeniedError(
        absl::StrFormat("cannot write %s/metrics.jsonl", options.run_dir));
  }
  LossSpikeDetector spikes;
  const auto start = std::chrono::steady_clock::now();
  auto elapsed = [&] {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  };
  auto evaluate = [&](int64_t step) -> absl::Status {
    V4RL_ASSIGN_OR_RETURN(summary.eval_exact_match, ExactMatchAccuracy(model, data.eval));
    metrics.Write({{"step", step}, {"eval_exact_match", summary.eval_exact_match},
                   {"eval_examples", data.eval.size()}, {"elapsed_s", elapsed()}});
    if (!options.quiet) {
      std::fprintf(stderr, "step %lld: held-out exact match %.1f%% (%zu prompts)\n",
                   static_cast<long long>(step), 100 * summary.eval_exact_match, data.eval.size());
    }
    return absl::OkStatus();
  };

  const int64_t last_step = options.max_steps_per_run > 0
                               ? std::min(options.steps, summary.resumed_from + options.max_steps_per_run)
                               : options.steps;
  for (int64_t step = summary.resumed_from + 1; step <= last_step; ++step) {
    std::vector<SftExample> examples;
    for (int64_t i = 0; i < options.batch_size; ++i) {
      examples.push_back(data.Train(options, (step - 1) * options.batch_size + i));
    }
    std::vector<const SftExample*> pointers;
    for (const SftExample& e : examples) pointers.push_back(&e);
    const SftBatch batch = MakeSftBatch(pointers);
    ZeroGradients(parameters);
    V4RL_ASSIGN_OR_RETURN(const double loss, backend->LossAndGradients(model, batch, &grads));
    const double grad_norm = ClipGradientNorm(parameters, options.grad_clip);
    const double lr = schedule.LearningRate(step);
    optimizer.Step(static_cast<float>(lr));
    const bool spike = spikes.Observe(loss);
    summary.losses.push_back(loss);
    summary.final_loss = loss;
    summary.steps = step;
    metrics.Write({{"step", step}, {"loss", loss}, {"lr", lr}, {"grad_norm", grad_norm},
                   {"target_tokens", batch.num_target_tokens}, {"loss_spike", spike},
                   {"elapsed_s", elapsed()}});
    if (!options.quiet && (step % 10 == 0 || step == options.steps || spike)) {
      std::fprintf(stderr, "step %lld/%lld  loss %.4f  lr %.2e  grad_norm %.3f  %.1f s%s\n",
                   static_cast<long long>(step), static_cast<long long>(options.steps), loss, lr,
                   grad_norm, elapsed(), spike ? "  (loss spike)" : "");
    }
    if (options.eval_every > 0 && step % options.eval_every == 0 && step != options.steps) {
      V4RL_RETURN_IF_ERROR(evaluate(step));
    }
    if (options.checkpoint_every > 0 && step % options.checkpoint_every == 0) {
      V4RL_RETURN_IF_ERROR(WriteSftCheckpoint(options, model, optimizer, step, loss));
    }
  }
  if (summary.steps == 0) summary.steps = summary.resumed_from;
  V4RL_RETURN_IF_ERROR(evaluate(summary.steps));
  if (options.checkpoint_every == 0 || summary.steps % options.checkpoint_every != 0) {
    V4RL_RETURN_IF_ERROR(WriteSftCheckpoint(options, model, optimizer, summary.steps, summary.final_loss));
  }
  const nlohmann::json summary_json = {{"steps", summary.steps},
                                       {"resumed_from", summary.resumed_from},
                                       {"final_loss", summary.final_loss},
                                       {"eval_exact_match", summary.eval_exact_match},
                                       {"eval_examples", data.eval.size()},
                                       {"elapsed_s", elapsed()}};
  V4RL_RETURN_IF_ERROR(core::WriteFileAtomic(options.run_dir + "/summary.json", summary_json.dump(2) + "\n"));
  return summary;
}

}  // namespace v4rl::learner
