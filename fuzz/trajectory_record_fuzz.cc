// libFuzzer target for the trajectory store's record decoders (store/rocksdb_codec.h): what a
// corrupted or foreign database hands them must give a Status, never a crash, a hang or a huge
// allocation. Run it with `scripts/fuzz.sh trajectory_record SECONDS`.
//
// Input: one flags byte (bit 0: read routing), then records, each a 4-byte little-endian length
// and its bytes: the meta record, the prompt record, then the token chunks, each followed by its
// routing chunk when routing is read and recorded. The whole input is also decoded as a meta
// record alone. Whatever the decoders accept is re-checked here against their promises, so a
// wrong accept traps like a crash.
#include <cstddef>
#include <cstdint>
#include <string_view>
#include <vector>

#include "store/rocksdb_codec.h"
#include "store/trajectory.h"

namespace {

using v4rl::store::Trajectory;
using v4rl::store::TrajectoryMeta;
namespace codec = v4rl::store::codec;

void Require(bool condition) {
  if (!condition) __builtin_trap();
}

// Splits `input` into length-prefixed records; a truncated last record keeps what is there.
std::vector<std::string_view> SplitRecords(std::string_view input) {
  std::vector<std::string_view> records;
  while (input.size() >= 4) {
    const uint32_t length = static_cast<uint32_t>(static_cast<uint8_t>(input[0])) |
                            static_cast<uint32_t>(static_cast<uint8_t>(input[1])) << 8 |
                            static_cast<uint32_t>(static_cast<uint8_t>(input[2])) << 16 |
                            static_cast<uint32_t>(static_cast<uint8_t>(input[3])) << 24;
    input.remove_prefix(4);
    const size_t n = std::min<size_t>(length, input.size());
    records.push_back(input.substr(0, n));
    input.remove_prefix(n);
  }
  return records;
}

void CheckAcceptedMeta(const TrajectoryMeta& meta) {
  Require(meta.id != 0);
  Require(meta.num_prompt_tokens >= 1 && meta.num_prompt_tokens <= v4rl::store::kMaxPromptTokens);
  Require(meta.num_completion_tokens >= 0 &&
          meta.num_completion_tokens <= v4rl::store::kMaxCompletionTokens);
  Require(meta.num_chunks <= meta.num_completion_tokens);
  Require(v4rl::store::ValidateHeader(meta.header).ok());
  // What was accepted encodes and decodes to itself.
  const absl::StatusOr<TrajectoryMeta> again = codec::DecodeMeta(codec::EncodeMeta(meta));
  Require(again.ok() && again->id == meta.id && again->header.routing == meta.header.routing &&
          again->num_completion_tokens == meta.num_completion_tokens &&
          again->rewards.size() == meta.rewards.size());
}

void CheckAcceptedTrajectory(const Trajectory& t, bool with_routing) {
  const TrajectoryMeta& meta = t.meta;
  const int64_t n = t.completion.num_tokens();
  Require(n == meta.num_completion_tokens);
  Require(static_cast<int64_t>(t.prompt_token_ids.size()) == meta.num_prompt_tokens);
  Require(static_cast<int64_t>(t.completion.logprobs.size()) == n &&
          static_cast<int64_t>(t.completion.weight_versions.size()) == n &&
          static_cast<int64_t>(t.completion.kept_set_sizes.size()) == n);
  const bool routed = with_routing && meta.header.routing.enabled();
  Require(static_cast<int64_t>(t.completion.routed_experts.size()) ==
          (routed ? meta.header.routing.ids_per_token() * n : 0));
  for (uint16_t id : t.completion.routed_experts) {
    Require(id < meta.header.routing.num_experts);
  }
  for (int64_t i = 1; i < n; ++i) {
    Require(t.completion.weight_versions[i - 1] <= t.completion.weight_versions[i]);
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view input(reinterpret_cast<const char*>(data), size);
  if (absl::StatusOr<TrajectoryMeta> meta = codec::DecodeMeta(input); meta.ok()) {
    CheckAcceptedMeta(*meta);
  }
  if (input.empty()) return 0;
  const bool with_routing = (input[0] & 1) != 0;
  const std::vector<std::string_view> records = SplitRecords(input.substr(1));
  if (records.size() < 2) return 0;
  const absl::StatusOr<TrajectoryMeta> meta = codec::DecodeMeta(records[0]);
  if (!meta.ok()) return 0;
  CheckAcceptedMeta(*meta);
  codec::TrajectoryRecords stored;
  stored.prompt = records[1];
  const bool routed = with_routing && meta->header.routing.enabled();
  for (size_t i = 2; i < records.size(); ++i) {
    if (routed && (i - 2) % 2 == 1) {
      stored.routing_chunks.push_back(records[i]);
    } else {
      stored.token_chunks.push_back(records[i]);
    }
  }
  const absl::StatusOr<Trajectory> trajectory =
      codec::DecodeTrajectory(*meta, stored, with_routing);
  if (trajectory.ok()) CheckAcceptedTrajectory(*trajectory, with_routing);
  return 0;
}
