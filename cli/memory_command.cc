// `v4rl memory`: decode-state bytes per sequence at a context length, by layer type, next to a
// GQA-8 and a V3.2-style MLA baseline (model/decode_memory.h states the formulas).
#include <iostream>

#include "cli/command.h"
#include "cli/flags.h"
#include "model/config.h"
#include "model/decode_memory.h"

namespace v4rl::cli {
namespace {

int RunMemory(const std::vector<std::string>& args) {
  FlagParser parser(
      "memory", "v4rl memory (--preset flash|pro | --config PATH) --context N [--storage S]",
      "Print one sequence's decode-state memory at a context length: window rings, compressed "
      "entries, indexer keys and compressor state per layer type, with the GQA-8 (bf16, head dim "
      "128) and V3.2 MLA baselines over the same number of layers and the ratios to both.");
  std::string preset, config_path, storage = "fp8";
  int64_t context = 1 << 20;
  parser.AddString("preset", &preset, "flash or pro (the hub configs)");
  parser.AddString("config", &config_path, "a config.json or a model directory instead of --preset");
  parser.AddInt("context", &context, "tokens in the sequence");
  parser.AddString("storage", &storage,
                   "fp8 (V4's KV: fp8 nope + bf16 rope, fp4 indexer keys; V3.2's fp8 MLA) or bf16 "
                   "(everything bf16)");
  int exit_code;
  if (!parser.ParseOrExit(args, &exit_code)) return exit_code;
  if (context < 0) {
    std::cerr << "v4rl memory: --context must be >= 0, got " << context << "\n";
    return 2;
  }
  if (storage != "fp8" && storage != "bf16") {
    std::cerr << "v4rl memory: --storage must be fp8 or bf16, got \"" << storage << "\"\n";
    return 2;
  }
  model::ModelConfig config;
  if (!config_path.empty() == !preset.empty()) {
    std::cerr << "v4rl memory: give exactly one of --preset and --config\n";
    return 2;
  }
  if (preset == "flash") {
    config = model::FlashConfig();
  } else if (preset == "pro") {
    config = model::ProConfig();
  } else if (!preset.empty()) {
    std::cerr << "v4rl memory: --preset must be flash or pro, got \"" << preset << "\"\n";
    return 2;
  } else {
    auto loaded = model::LoadModelConfig(config_path);
    if (!loaded.ok()) {
      std::cerr << "v4rl memory: " << loaded.status().message() << "\n";
      return 1;
    }
    config = *loaded;
  }
  const model::DecodeMemoryReport report = model::ComputeDecodeMemory(
      config, context, storage == "fp8" ? model::KvStorage::kFp8 : model::KvStorage::kBf16);
  std::cout << model::FormatDecodeMemory(config, report);
  return 0;
}

}  // namespace
}  // namespace v4rl::cli

V4RL_REGISTER_COMMAND(memory, "Decode-state memory per sequence vs GQA-8 and MLA baselines",
                      v4rl::cli::RunMemory);
