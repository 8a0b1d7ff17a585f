#include "learner/checkpoint.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>

#include "absl/strings/match.h"
#include "absl/strings/str_format.h"
#include "absl/strings/strip.h"
#include "core/file.h"
#include "core/json.h"
#include "core/status.h"

namespace v4rl::learner {
namespace {

std::string StepName(int64_t step) { return absl::StrFormat("step-%08d", step); }

absl::Status MakeDirectories(const std::string& path) {
  std::error_code error;
  std::filesystem::create_directories(path, error);
  if (error) {
    return absl::PermissionDeniedError(
        absl::StrFormat("cannot create directory %s: %s", path, error.message()));
  }
  return absl::OkStatus();
}

// fsync of a directory makes the renames inside it durable.
absl::Status SyncDirectory(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return absl::InternalError(absl::StrFormat("cannot open %s: %s", path, std::strerror(errno)));
  const int result = ::fsync(fd);
  ::close(fd);
  if (result != 0) return absl::DataLossError(absl::StrFormat("fsync of %s failed", path));
  return absl::OkStatus();
}

void RemoveOldCheckpoints(const std::string& checkpoints_dir, int keep_last) {
  std::vector<std::string> steps;
  for (const auto& entry : std::filesystem::directory_iterator(checkpoints_dir)) {
    const std::string name = entry.path().filename().string();
    if (absl::StartsWith(name, "step-") && !absl::StrContains(name, ".tmp")) steps.push_back(name);
  }
  std::sort(steps.begin(), steps.end());
  for (size_t i = 0; i + keep_last < steps.size(); ++i) {
    std::error_code ignored;
    std::filesystem::remove_all(checkpoints_dir + "/" + steps[i], ignored);
  }
}

}  // namespace

absl::StatusOr<std::string> WriteCheckpoint(const std::string& checkpoints_dir,
                                            const CheckpointContents& contents, int keep_last) {
  V4RL_RETURN_IF_ERROR(MakeDirectories(checkpoints_dir));
  const std::string name = StepName(contents.trainer_state.step);
  const std::string final_dir = checkpoints_dir + "/" + name;
  const std::string temp_dir = absl::StrFormat("%s.tmp-%d", final_dir, ::getpid());
  std::error_code ignored;
  std::filesystem::remove_all(temp_dir, ignored);
  V4RL_RETURN_IF_ERROR(MakeDirectories(temp_dir));
  V4RL_RETURN_IF_ERROR(core::WriteFileAtomic(temp_dir + "/config.json", contents.config_json));
  V4RL_RETURN_IF_ERROR(core::WriteSafetensors(temp_dir + "/model.safetensors", contents.weights,
                                              {{"format", "pt"}}));
  std::vector<core::NamedTensor> optimizer;
  for (const auto& [tensor_name, view] : contents.optimizer_state) optimizer.push_back({tensor_name, view});
  // In a subdirectory: the checkpoint directory itself must hold only the model's safetensors,
  // so that it loads as a model directory.
  V4RL_RETURN_IF_ERROR(MakeDirectories(temp_dir + "/optimizer"));
  V4RL_RETURN_IF_ERROR(
      core::WriteSafetensors(temp_dir + "/optimizer/optimizer.safetensors", optimizer));
  const TrainerState& state = contents.trainer_state;
  const nlohmann::json state_json = {{"step", state.step},
                                     {"data_position", state.data_position},
                                     {"rng_seed", state.rng_seed},
                                     {"metrics", state.metrics}};
  V4RL_RETURN_IF_ERROR(core::WriteFileAtomic(temp_dir + "/trainer_state.json", state_json.dump(2)));
  V4RL_RETURN_IF_ERROR(SyncDirectory(temp_dir));
  // A checkpoint of the same step (a resumed run repeating it) is replaced whole.
  std::filesystem::remove_all(final_dir, ignored);
  if (::rename(temp_dir.c_str(), final_dir.c_str()) != 0) {
    return absl::InternalError(absl::StrFormat("renaming %s to %s failed: %s", temp_dir, final_dir,
                                               std::strerror(errno)));
  }
  V4RL_RETURN_IF_ERROR(SyncDirectory(checkpoints_dir));
  V4RL_RETURN_IF_ERROR(core::WriteFileAtomic(checkpoints_dir + "/latest", name + "\n"));
  if (keep_last > 0) RemoveOldCheckpoints(checkpoints_dir, keep_last);
  return final_dir;
}

absl::StatusOr<std::string> LatestCheckpoint(const std::string& checkpoints_dir) {
  absl::StatusOr<std::string> latest = core::ReadFile(checkpoints_dir + "/latest", 4096);
  if (!latest.ok()) {
    if (absl::IsNotFound(latest.status())) {
      return absl::NotFoundError(absl::StrFormat("no checkpoint in %s", checkpoints_dir));
    }
    return latest.status();
  }
  std::string name(absl::StripTrailingAsciiWhitespace(*latest));
  if (!absl::StartsWith(name, "step-") || absl::StrContains(name, "/")) {
    return absl::DataLossError(absl::StrFormat(
        "%s/latest must name a step-N directory, got \"%s\"", checkpoints_dir, name));
  }
  const std::string dir = checkpoints_dir + "/" + name;
  struct stat info;
  if (::stat(dir.c_str(), &info) != 0 || !S_ISDIR(info.st_mode)) {
    return absl::DataLossError(absl::StrFormat("%s/latest names %s, which is missing",
                                               checkpoints_dir, name));
  }
  return dir;
}

absl::StatusOr<TrainerState> ReadTrainerState(const std::string& checkpoint_dir) {
  const std::string path = checkpoint_dir + "/trainer_state.json";
  V4RL_ASSIGN_OR_RETURN(nlohmann::json json, core::ReadJsonFile(path));
  TrainerState state;
  V4RL_ASSIGN_OR_RETURN(state.step, core::JsonInt(json, "step", path));
  V4RL_ASSIGN_OR_RETURN(state.data_position, core::JsonInt(json, "data_position", path));
  V4RL_ASSIGN_OR_RETURN(int64_t seed, core::JsonInt(json, "rng_seed", path));
  state.rng_seed = static_cast<uint64_t>(seed);
  if (json.contains("metrics")) state.metrics = json["metrics"];
  return state;
}

}  // namespace v4rl::learner
