// Helpers shared by the benchmark executables: exit on an error Status, wall-clock seconds, a
// comma-separated list of integers, and the random model (seed 1, no MTP) of a config that the
// CUDA benches time, optionally saved as the checkpoint their python baselines load.
#pragma once

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <sstream>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "model/config.h"
#include "model/init.h"
#include "model/save.h"

namespace v4rl::bench {

inline void Check(const absl::Status& status, const char* what) {
  if (!status.ok()) {
    std::fprintf(stderr, "%s: %s\n", what, status.ToString().c_str());
    std::exit(1);
  }
}

inline double Seconds(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

inline std::vector<int64_t> ParseList(const char* text) {
  std::vector<int64_t> values;
  std::stringstream list(text);
  for (std::string item; std::getline(list, item, ',');) values.push_back(std::stoll(item));
  return values;
}

// RandomModel(config, seed 1, no MTP), timed on stderr; saved to OUT_DIR/model unless out_dir is
// "-" (the checkpoint the python baselines load).
inline model::Model RandomBenchModel(const model::ModelConfig& config, const std::string& out_dir) {
  auto start = std::chrono::steady_clock::now();
  model::InitOptions init;
  init.seed = 1;
  init.include_mtp = false;
  model::Model model = model::RandomModel(config, init);
  std::fprintf(stderr, "random model: %.1f s\n", Seconds(start));
  if (out_dir != "-") {
    start = std::chrono::steady_clock::now();
    Check(model::SaveModel(out_dir + "/model", config, model.weights), "save");
    std::fprintf(stderr, "checkpoint: %.1f s\n", Seconds(start));
  }
  return model;
}

}  // namespace v4rl::bench
