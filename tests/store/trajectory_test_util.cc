#include "tests/store/trajectory_test_util.h"

#include <unistd.h>

#include <atomic>
#include <cstdlib>
#include <filesystem>

#include "absl/strings/str_format.h"

namespace v4rl::store::testing {
namespace {

// splitmix64: a good 64-bit mix of a counter.
uint64_t Mix(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

uint64_t Hash(uint64_t a, uint64_t b, uint64_t c = 0) { return Mix(Mix(Mix(a) ^ b) ^ c); }

}  // namespace

TrajectoryHeader MakeHeader(const std::string& job_id, uint64_t group_id, int64_t policy_version,
                            const RoutingShape& routing, const std::string& teacher_id) {
  TrajectoryHeader header;
  header.job_id = job_id;
  header.group_id = group_id;
  header.teacher_id = teacher_id;
  header.policy_version = policy_version;
  header.mode = ReasoningMode::kThinkHigh;
  header.sampling.temperature = 1.0f;
  header.sampling.top_p = 0.95f;
  header.sampling.max_new_tokens = 4096;
  header.sampling.seed = Hash(group_id, 7);
  header.routing = routing;
  return header;
}

int64_t TargetTokens(TrajectoryId id) { return 64 + static_cast<int64_t>(Hash(id, 99) % 192); }

std::vector<int32_t> MakePrompt(int64_t num_tokens, uint64_t seed) {
  std::vector<int32_t> prompt(num_tokens);
  for (int64_t i = 0; i < num_tokens; ++i) prompt[i] = static_cast<int32_t>(Hash(seed, i) % 129280);
  return prompt;
}

CompletionTokens MakeCompletion(TrajectoryId id, int64_t policy_version,
                                const RoutingShape& routing, int64_t first_token,
                                int64_t num_tokens) {
  CompletionTokens chunk;
  for (int64_t p = first_token; p < first_token + num_tokens; ++p) {
    const uint64_t h = Hash(id, p);
    chunk.token_ids.push_back(static_cast<int32_t>(h % 129280));
    chunk.logprobs.push_back(-static_cast<float>((h >> 20) % 1000) / 100.0f);
    chunk.weight_versions.push_back(policy_version + p / 100);
    chunk.kept_set_sizes.push_back(1 + static_cast<int32_t>((h >> 40) % 50));
  }
  // Layer-major: [layers, num_tokens, topk].
  for (int64_t layer = 0; layer < routing.num_moe_layers; ++layer) {
    for (int64_t p = first_token; p < first_token + num_tokens; ++p) {
      for (int64_t k = 0; k < routing.num_topk; ++k) {
        chunk.routed_experts.push_back(
            static_cast<uint16_t>(Hash(id, p, layer * 64 + k) % routing.num_experts));
      }
    }
  }
  return chunk;
}

std::string DiffFromExpected(const Trajectory& trajectory, bool with_routing) {
  const TrajectoryMeta& meta = trajectory.meta;
  const CompletionTokens& got = trajectory.completion;
  const int64_t n = got.num_tokens();
  if (n != meta.num_completion_tokens) {
    return absl::StrFormat("trajectory %d: %d tokens read, meta says %d", meta.id, n,
                           meta.num_completion_tokens);
  }
  const CompletionTokens want =
      MakeCompletion(meta.id, meta.header.policy_version,
                     with_routing ? meta.header.routing : RoutingShape{}, 0, n);
  for (int64_t i = 0; i < n; ++i) {
    if (got.token_ids[i] != want.token_ids[i] || got.logprobs[i] != want.logprobs[i] ||
        got.weight_versions[i] != want.weight_versions[i] ||
        got.kept_set_sizes[i] != want.kept_set_sizes[i]) {
      return absl::StrFormat("trajectory %d: token %d differs", meta.id, i);
    }
  }
  if (got.routed_experts != want.routed_experts) {
    return absl::StrFormat("trajectory %d: routed experts differ (%d vs %d ids)", meta.id,
                           got.routed_experts.size(), want.routed_experts.size());
  }
  return "";
}

std::string NewTempPath(const std::string& name) {
  static std::atomic<int> counter{0};
  const char* tmp = std::getenv("TEST_TMPDIR");
  if (tmp == nullptr) tmp = std::getenv("TMPDIR");
  const std::filesystem::path root = tmp != nullptr ? tmp : "/tmp";
  const std::filesystem::path path =
      root / absl::StrFormat("v4rl_store_%s_%d_%d", name, getpid(), counter++);
  std::filesystem::remove_all(path);
  return path.string();
}

}  // namespace v4rl::store::testing
