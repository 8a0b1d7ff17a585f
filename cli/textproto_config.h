// Helpers shared by the commands that take a protobuf text-format config (`v4rl sft`, `v4rl run`):
// reading and parsing a config file with every syntax error reported, and the SftConfig ->
// learner::SftOptions conversion with the defaults protos/sft_config.proto documents.
// Thread-safety: reentrant.
#pragma once

#include <string>

#include "absl/status/status.h"
#include "google/protobuf/message.h"
#include "learner/sft_trainer.h"
#include "protos/sft_config.pb.h"

namespace v4rl::cli {

// Reads `path` (at most 1 MiB) into `message`. InvalidArgument naming the file and every syntax
// error's line and column; the file's read error otherwise.
absl::Status ParseTextprotoFile(const std::string& path, google::protobuf::Message* message);

// The options `config` describes; unset fields take their documented defaults.
learner::SftOptions SftOptionsFromConfig(const SftConfig& config);

}  // namespace v4rl::cli
