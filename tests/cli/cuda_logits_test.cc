// `v4rl logits --device cuda` (bf16 GPU forward) against `--device cpu` (fp32) on the committed
// mixed_small model: same shapes, routed experts mostly equal, logits within the free-running
// bounds of tests/model/cuda_forward_test.cc (gpu label; skips without a device). Uses
// $V4RL_BINARY, else the `v4rl` next to this test (the device bundle's layout).
#include <cstdlib>
#include <string>

#include "core/safetensors.h"
#include "gtest/gtest.h"
#include "kernels/cuda/device.h"
#include "tests/testing/run_command.h"
#include "tests/testing/tensor_compare.h"

namespace v4rl {
namespace {

core::Tensor ReadTensor(const std::string& path, const std::string& name) {
  auto file = core::SafetensorsFile::Open(path);
  EXPECT_TRUE(file.ok()) << file.status();
  if (!file.ok()) return core::Tensor();
  const core::SafetensorsEntry* entry = (*file)->Find(name);
  EXPECT_NE(entry, nullptr) << name << " in " << path;
  return entry ? (*file)->Read(*entry) : core::Tensor();
}

TEST(CliCudaLogits, MatchesCpuLogits) {
  if (kernels::cuda::DeviceCount() == 0) GTEST_SKIP() << "no CUDA device";
  const char* root = std::getenv("V4RL_SOURCE_DIR");
  const std::string fixture = std::string(root ? root : ".") + "/tests/data/model/mixed_small";
  const std::string cpu_out = ::testing::TempDir() + "/cuda_logits_cpu.safetensors";
  const std::string gpu_out = ::testing::TempDir() + "/cuda_logits_gpu.safetensors";
  const std::string common = "logits --model " + fixture + "/model --input " + fixture +
                             "/reference.safetensors --routing";
  const testing::CommandResult cpu = testing::RunV4rl(common + " --output " + cpu_out);
  ASSERT_EQ(cpu.exit_code, 0) << cpu.output;
  const testing::CommandResult gpu =
      testing::RunV4rl(common + " --device cuda --output " + gpu_out);
  ASSERT_EQ(gpu.exit_code, 0) << gpu.output;
  std::printf("%s%s", cpu.output.c_str(), gpu.output.c_str());
  const core::Tensor cpu_logits = ReadTensor(cpu_out, "logits");
  const core::Tensor gpu_logits = ReadTensor(gpu_out, "logits");
  ASSERT_TRUE(gpu_logits.view().SameShape(cpu_logits.view().shape_vector()));
  const testing::CompareStats stats = testing::Compare(gpu_logits.view(), cpu_logits.view());
  std::printf("[measured] v4rl logits --device cuda vs cpu: cosine distance %.3e, max abs err "
              "%.3e, rel err by norm %.3e\n",
              stats.cosine_distance, stats.max_abs_error, stats.rel_error_by_norm);
  EXPECT_LE(stats.cosine_distance, 3e-2);
  const core::Tensor cpu_routed = ReadTensor(cpu_out, "routed_experts");
  const core::Tensor gpu_routed = ReadTensor(gpu_out, "routed_experts");
  ASSERT_EQ(gpu_routed.numel(), cpu_routed.numel());
  int64_t equal = 0;
  for (int64_t i = 0; i < cpu_routed.numel(); ++i) {
    equal += cpu_routed.data<int32_t>()[i] == gpu_routed.data<int32_t>()[i];
  }
  EXPECT_GE(equal, 0.95 * cpu_routed.numel());
  // Options the GPU path does not produce are refused.
  const testing::CommandResult hidden =
      testing::RunV4rl(common + " --device cuda --hidden --output " + gpu_out);
  EXPECT_NE(hidden.exit_code, 0) << hidden.output;
  // --fp8-sim: the official FP8/FP4 simulation moves the logits by quantisation noise only.
  const std::string sim_out = ::testing::TempDir() + "/cuda_logits_fp8.safetensors";
  const testing::CommandResult sim =
      testing::RunV4rl(common + " --device cuda --fp8-sim --output " + sim_out);
  ASSERT_EQ(sim.exit_code, 0) << sim.output;
  const testing::CompareStats sim_stats =
      testing::Compare(ReadTensor(sim_out, "logits").view(), cpu_logits.view());
  std::printf("[measured] v4rl logits --device cuda --fp8-sim vs cpu: cosine distance %.3e\n",
              sim_stats.cosine_distance);
  EXPECT_LE(sim_stats.cosine_distance, 1e-1);
  EXPECT_NE(testing::RunV4rl(common + " --fp8-sim --output " + sim_out).exit_code, 0)
      << "--fp8-sim without --device cuda";
}

}  // namespace
}  // namespace v4rl
