// Text-format config parsing and the SftConfig conversion (see textproto_config.h).
#include "cli/textproto_config.h"

#include "absl/strings/str_format.h"
#include "core/file.h"
#include "core/status.h"
#include "google/protobuf/io/tokenizer.h"
#include "google/protobuf/text_format.h"

namespace v4rl::cli {
namespace {

// Collects every text-format error with its line and column.
class ErrorCollector : public google::protobuf::io::ErrorCollector {
 public:
  void AddError(int line, google::protobuf::io::ColumnNumber column,
                const std::string& message) override {
    errors += absl::StrFormat("%sline %d column %d: %s", errors.empty() ? "" : "; ", line + 1,
                              column + 1, message);
  }
  std::string errors;
};

}  // namespace

absl::Status ParseTextprotoFile(const std::string& path, google::protobuf::Message* message) {
  V4RL_ASSIGN_OR_RETURN(const std::string text, core::ReadFile(path, 1 << 20));
  google::protobuf::TextFormat::Parser parser;
  ErrorCollector errors;
  parser.RecordErrorsTo(&errors);
  if (!parser.ParseFromString(text, message)) {
    return absl::InvalidArgumentError(absl::StrFormat("%s: %s", path, errors.errors));
  }
  return absl::OkStatus();
}

learner::SftOptions SftOptionsFromConfig(const SftConfig& config) {
  learner::SftOptions o;
  o.run_dir = config.run_dir();
  o.model_dir = config.model_dir();
  o.init_config = config.init_config();
  o.init_seed = config.init_seed() ? config.init_seed() : 1;
  o.dataset = config.dataset();
  const SyntheticTaskConfig& task = config.synthetic();
  if (!task.name().empty()) o.synthetic.name = task.name();
  if (task.min_digits()) o.synthetic.min_digits = task.min_digits();
  if (task.max_digits()) o.synthetic.max_digits = task.max_digits();
  if (task.seed()) o.synthetic.seed = task.seed();
  if (config.steps()) o.steps = config.steps();
  if (config.batch_size()) o.batch_size = config.batch_size();
  o.schedule.peak_lr = config.lr() ? config.lr() : 1e-3;
  o.schedule.end_lr = config.end_lr() ? config.end_lr() : o.schedule.peak_lr / 10;
  o.schedule.warmup_steps = config.warmup_steps();
  if (config.has_grad_clip()) o.grad_clip = config.grad_clip();
  if (config.has_weight_decay()) {
    o.muon.weight_decay = static_cast<float>(config.weight_decay());
    o.adamw.weight_decay = static_cast<float>(config.weight_decay());
  }
  o.recompute = config.recompute();
  o.eval_every = config.eval_every();
  if (config.eval_examples()) o.eval_examples = config.eval_examples();
  o.checkpoint_every = config.checkpoint_every();
  if (config.keep_checkpoints()) o.keep_checkpoints = config.keep_checkpoints();
  return o;
}

}  // namespace v4rl::cli
