// Keys and values of the RocksDB trajectory store: plain structs (store/trajectory.h) in, bytes
// out, and back. The values are protos/trajectory.proto messages, but this header exposes no
// generated type, so the fuzz target and tests include it freely (DESIGN.md §2).
//
// Note [Key layout]
//   column family  key                                   value
//   default        "format"                              kStoreFormat
//                  "id_limit"                            BE64: ids below it may have been used
//   meta           BE64(id)                              TrajectoryMeta
//   tokens         BE64(id) BE32(0)                      PromptRecord
//                  BE64(id) BE32(k), k = 1..num_chunks   TokenChunk of the k-th append
//   routing        BE64(id) BE32(k)                      RoutingChunk of the k-th append
//   index          'j' job_id NUL BE64(id)               ""  (a job's trajectories, by id)
//                  'g' job_id NUL BE64(group) BE64(id)   ""  (a job's group)
//                  'v' BE64(policy_version) BE64(id)     ""  (by policy version; versions >= 0)
// Big-endian integers make byte order equal numeric order, so every scan is a range scan. Job
// ids contain no NUL (ValidateHeader), so the NUL ends the job part unambiguously.
//
// Every decoder treats its input as untrusted (a corrupted or foreign database): sizes are
// bounded before allocation and every inconsistency is DataLoss naming the record and field.
// Thread-safety: pure functions.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "store/trajectory.h"

namespace v4rl::store::codec {

inline constexpr std::string_view kStoreFormat = "v4rl.trajectory_store.1";
inline constexpr std::string_view kFormatKey = "format";
inline constexpr std::string_view kIdLimitKey = "id_limit";

std::string EncodeBigEndian64(uint64_t value);
// DataLoss unless `bytes` is exactly 8 bytes.
absl::StatusOr<uint64_t> DecodeBigEndian64(std::string_view bytes, std::string_view what);

std::string MetaKey(TrajectoryId id);
// Key of chunk `seq` (0 = prompt) in the tokens and routing column families.
std::string ChunkKey(TrajectoryId id, uint32_t seq);
// DataLoss unless the key has the expected length.
absl::StatusOr<TrajectoryId> ParseMetaKey(std::string_view key);
absl::StatusOr<std::pair<TrajectoryId, uint32_t>> ParseChunkKey(std::string_view key);

std::string JobIndexPrefix(const std::string& job_id);
std::string JobIndexKey(const std::string& job_id, TrajectoryId id);
std::string GroupIndexPrefix(const std::string& job_id, uint64_t group_id);
std::string GroupIndexKey(const std::string& job_id, uint64_t group_id, TrajectoryId id);
std::string VersionIndexKey(int64_t policy_version, TrajectoryId id);
// The trajectory id that ends every index key; DataLoss for keys shorter than a prefix + 8.
absl::StatusOr<TrajectoryId> ParseIndexKeyId(std::string_view key);

std::string EncodeMeta(const TrajectoryMeta& meta);
// DataLoss when the bytes do not parse or describe an impossible trajectory (unknown enum values,
// a header ValidateHeader rejects, negative or oversized counts, invalid rewards).
absl::StatusOr<TrajectoryMeta> DecodeMeta(std::string_view bytes);

std::string EncodePrompt(absl::Span<const int32_t> prompt_token_ids);
// One append; the routing record is empty when the trajectory does not record routing.
std::string EncodeTokenChunk(int64_t first_token, const CompletionTokens& chunk);
std::string EncodeRoutingChunk(int64_t first_token, const RoutingShape& routing,
                               const CompletionTokens& chunk);

// The stored records of one trajectory, as read from the column families.
struct TrajectoryRecords {
  std::string_view prompt;                       // tokens CF, seq 0
  std::vector<std::string_view> token_chunks;    // tokens CF, seq 1..
  std::vector<std::string_view> routing_chunks;  // routing CF, seq 1..; empty without routing
};

// Decodes and cross-checks the records of `meta`'s trajectory: one token chunk (and, with
// routing, one routing chunk) per append, contiguous first_token, equal per-token array lengths,
// values ValidateAppend accepts, totals equal to the meta's counts. DataLoss names the trajectory,
// the record and the field.
absl::StatusOr<Trajectory> DecodeTrajectory(const TrajectoryMeta& meta,
                                            const TrajectoryRecords& records, bool with_routing);

}  // namespace v4rl::store::codec
