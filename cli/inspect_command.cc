// `v4rl inspect PATH`: lists the tensors of a safetensors file or model directory (names, dtypes,
// shapes, parameter count and bytes). A malformed file prints one error line and exits 1.
#include <iostream>

#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "cli/command.h"
#include "cli/flags.h"
#include "core/safetensors.h"

namespace v4rl::cli {
namespace {

int RunInspect(const std::vector<std::string>& args) {
  FlagParser parser("inspect", "v4rl inspect PATH [--summary]",
                    "List the tensors of a safetensors file or a model directory (one file, or "
                    "shards with model.safetensors.index.json): name, dtype, shape, elements; then "
                    "the totals.");
  std::string path;
  bool summary_only = false;
  parser.AddPositional("PATH", &path, "a .safetensors file or a model directory");
  parser.AddBool("summary", &summary_only, "print only the totals");
  int exit_code;
  if (!parser.ParseOrExit(args, &exit_code)) return exit_code;

  auto directory = core::TensorDirectory::Open(path);
  if (!directory.ok()) {
    std::cerr << "v4rl inspect: " << directory.status().message() << "\n";
    return 1;
  }
  int64_t total_elements = 0, total_bytes = 0;
  std::map<std::string, int64_t> bytes_by_dtype;
  for (const auto& [name, location] : (*directory)->tensors()) {
    const core::SafetensorsEntry& entry = *location.entry;
    int64_t elements = 1;
    for (int64_t d : entry.shape) elements *= d;
    total_elements += elements;
    total_bytes += entry.data_end - entry.data_begin;
    bytes_by_dtype[core::DTypeName(entry.dtype)] += entry.data_end - entry.data_begin;
    if (!summary_only) {
      std::cout << absl::StrFormat("%-60s %-8s [%s] %d\n", name, core::DTypeName(entry.dtype),
                                   absl::StrJoin(entry.shape, ", "), elements);
    }
  }
  std::cout << absl::StrFormat("%d tensors in %d file(s), %d elements (%.3fB), %d bytes (%.2f GiB)\n",
                               (*directory)->tensors().size(), (*directory)->files().size(),
                               total_elements, total_elements / 1e9, total_bytes,
                               total_bytes / double(1 << 30));
  for (const auto& [dtype, bytes] : bytes_by_dtype) {
    std::cout << absl::StrFormat("  %-8s %d bytes\n", dtype, bytes);
  }
  return 0;
}

}  // namespace
}  // namespace v4rl::cli

V4RL_REGISTER_COMMAND(inspect, "List the tensors of a safetensors file or model directory",
                      v4rl::cli::RunInspect);
