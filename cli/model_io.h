// Helpers shared by the subcommands that run a model on tensors from a safetensors file
// (logits, grad, generate): one-line errors, the --threads flag, and named-tensor reads.
// Thread-safety: ApplyThreadsFlag must run before the process thread pool's first use.
#pragma once

#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "core/safetensors.h"
#include "core/tensor.h"

namespace v4rl::cli {

// Prints "v4rl <command>: <message>" to stderr and returns `exit_code`.
int CommandError(const std::string& command, const std::string& message, int exit_code = 1);

// Sizes the process thread pool from --threads (0 keeps V4RL_NUM_THREADS or all cores).
// InvalidArgument for a negative count.
absl::Status ApplyThreadsFlag(int64_t threads);

// An aligned copy of tensor `name` of `file`; InvalidArgument naming the file when absent.
absl::StatusOr<core::Tensor> ReadNamedTensor(const core::SafetensorsFile& file,
                                             const std::string& name);

}  // namespace v4rl::cli
