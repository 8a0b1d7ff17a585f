// RocksDbTrajectoryStore: the durable TrajectoryStore, one RocksDB database per store directory.
//
// Column families separate what planning scans read from the bulk (spec/post-training.md §6):
// `meta` (small per-trajectory records), `tokens` (prompt and per-token arrays), `routing` (routed
// expert ids, ~1 MB per 4K tokens for V4-Flash) and `index` (job, group and version keys); the
// key layout is Note [Key layout] in store/rocksdb_codec.h. Every operation is one atomic
// WriteBatch: an append writes its token chunk, its routing chunk and the updated meta together,
// so after a crash a trajectory holds exactly the appends that were acknowledged (with sync on)
// plus possibly the last one in flight, never part of one. Reads use a snapshot.
//
// Opening refuses what is not a v4rl trajectory store with a Status, never a crash: a non-empty
// directory without a RocksDB CURRENT file (FailedPrecondition), a RocksDB database with other
// column families or no format marker (FailedPrecondition), corrupted files (DataLoss).
//
// Ownership: the store owns the database; destroying it closes the database.
// Thread-safety: all methods are thread-safe (TrajectoryStore contract). Appends to different
// trajectories write concurrently, and with sync on RocksDB's group commit shares one fsync among
// concurrent writers.
// RocksDB types stay out of this header so that code outside store/rocksdb* can use the store
// (DESIGN.md §2).
#pragma once

#include <array>
#include <memory>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/functional/function_ref.h"
#include "absl/synchronization/mutex.h"
#include "store/trajectory_store.h"

namespace rocksdb {
class ColumnFamilyHandle;
class DB;
class Snapshot;
}  // namespace rocksdb

namespace v4rl::store {

struct RocksDbStoreOptions {
  enum class Compression { kNone, kLz4, kZstd };

  // Create the store when the directory does not exist or is empty. Default: true.
  bool create_if_missing = true;
  // Open for reading only: takes no lock, so `v4rl store` can inspect a store a writer has open
  // (seeing its state as of the open). Writes return FailedPrecondition. Default: false.
  bool read_only = false;
  // fsync the write-ahead log before a write returns (rocksdb::WriteOptions::sync). Off, an
  // acknowledged write survives a process crash but not a power loss or kernel panic.
  // Default: true.
  bool sync = true;
  // Compression of the tokens and routing column families; meta and index always use LZ4, which
  // is cheaper to scan. Open fails with InvalidArgument if this RocksDB build lacks the codec.
  // Default: kZstd.
  Compression compression = Compression::kZstd;
  // Memtable size of each column family. Default: 64 MiB.
  int64_t write_buffer_bytes = int64_t{64} << 20;

  // InvalidArgument naming the field.
  absl::Status Validate() const;
};

// What one column family holds. Record counts and logical bytes come from a full scan; file and
// memtable sizes from RocksDB's properties.
struct ColumnFamilyStats {
  std::string name;
  int64_t num_records = 0;
  int64_t key_bytes = 0;
  int64_t value_bytes = 0;     // before compression
  int64_t sst_file_bytes = 0;  // on disk, compressed
  int64_t memtable_bytes = 0;
};

struct VerifyReport {
  int64_t num_trajectories = 0;
  int64_t num_records = 0;  // every key of every column family
  int64_t num_problems = 0;
  std::vector<std::string> problems;  // the first kMaxReportedProblems

  static constexpr int kMaxReportedProblems = 100;
  bool ok() const { return num_problems == 0; }
};

class RocksDbTrajectoryStore final : public TrajectoryStore {
 public:
  // Opens (or creates, per options) the store in directory `path`. InvalidArgument for bad
  // options; NotFound when `path` is missing and creating is off; FailedPrecondition for a path
  // that is not a v4rl trajectory store; DataLoss for corrupted files; Internal for I/O errors.
  static absl::StatusOr<std::unique_ptr<RocksDbTrajectoryStore>> Open(
      const std::string& path, const RocksDbStoreOptions& options = {});

  RocksDbTrajectoryStore(const RocksDbTrajectoryStore&) = delete;
  RocksDbTrajectoryStore& operator=(const RocksDbTrajectoryStore&) = delete;
  ~RocksDbTrajectoryStore() override;

  absl::StatusOr<TrajectoryId> Begin(const TrajectoryHeader& header,
                                     absl::Span<const int32_t> prompt_token_ids) override;
  absl::Status AppendTokens(TrajectoryId id, int64_t first_token,
                            const CompletionTokens& chunk) override;
  absl::Status AppendTokensBatch(absl::Span<const TokenAppend> appends) override;
  absl::Status Finish(TrajectoryId id, TrajectoryStatus status) override;
  absl::Status AddReward(TrajectoryId id, const Reward& reward) override;
  absl::StatusOr<TrajectoryMeta> GetMeta(TrajectoryId id) override;
  absl::StatusOr<Trajectory> Read(TrajectoryId id, const ReadOptions& options = {}) override;
  absl::StatusOr<std::vector<TrajectoryMeta>> Scan(const ScanQuery& query) override;
  absl::StatusOr<std::vector<Trajectory>> ReadBatch(absl::Span<const TrajectoryId> ids,
                                                    const ReadOptions& options = {}) override;
  // Deletes are not synced one by one (a lost delete only brings a trajectory back); the WAL is
  // synced once at the end.
  absl::StatusOr<int64_t> DeleteOlderThan(int64_t policy_version) override;
  absl::Status Compact() override;

  // Per column family, in the order meta, tokens, routing, index, default.
  absl::StatusOr<std::vector<ColumnFamilyStats>> Stats();

  // Checks every record: block checksums, that each meta record decodes and its chunks agree with
  // it (DecodeTrajectory), that index entries and chunks belong to existing trajectories and every
  // trajectory has its index entries. Problems go in the report; a non-OK Status means the check
  // itself could not run.
  absl::StatusOr<VerifyReport> Verify();

 private:
  enum ColumnFamily { kDefault = 0, kMeta, kTokens, kRouting, kIndex, kNumColumnFamilies };
  static constexpr int kNumStripes = 64;

  RocksDbTrajectoryStore(std::string path, const RocksDbStoreOptions& options);

  absl::Status CheckWritable() const;
  absl::StatusOr<TrajectoryId> AllocateId();
  // Reads and decodes the meta record of `id` (at `snapshot`, or the latest state when null).
  absl::StatusOr<TrajectoryMeta> ReadMeta(TrajectoryId id, const rocksdb::Snapshot* snapshot);
  absl::StatusOr<Trajectory> ReadTrajectory(TrajectoryId id, const rocksdb::Snapshot* snapshot,
                                            bool with_routing);
  // Calls fn(id) for the index entries that start with `prefix`, from key `start` on, in key
  // order, until fn returns false or an error.
  absl::Status ForEachIndexId(const std::string& prefix, const std::string& start,
                              const rocksdb::Snapshot* snapshot,
                              absl::FunctionRef<absl::StatusOr<bool>(TrajectoryId)> fn);
  // Writes `meta` alone (Finish, AddReward).
  absl::Status PutMeta(const TrajectoryMeta& meta);
  absl::Mutex& Stripe(TrajectoryId id) { return stripes_[id % kNumStripes]; }

  const std::string path_;
  const RocksDbStoreOptions options_;
  std::unique_ptr<rocksdb::DB> db_;
  std::array<rocksdb::ColumnFamilyHandle*, kNumColumnFamilies> handles_{};  // owned
  // Serialises read-modify-write of one trajectory's meta record.
  std::array<absl::Mutex, kNumStripes> stripes_;
  absl::Mutex id_mutex_;
  TrajectoryId next_id_ ABSL_GUARDED_BY(id_mutex_) = 1;
  // Persisted bound: ids below it may have been handed out before a crash, so never reuse them.
  TrajectoryId id_limit_ ABSL_GUARDED_BY(id_mutex_) = 1;
};

}  // namespace v4rl::store
