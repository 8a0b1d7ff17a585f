#include "store/rocksdb_trajectory_store.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <set>
#include <system_error>
#include <utility>

#include "absl/cleanup/cleanup.h"
#include "absl/container/flat_hash_map.h"
#include "absl/functional/function_ref.h"
#include "absl/strings/escaping.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "core/status.h"
#include "rocksdb/convenience.h"
#include "rocksdb/db.h"
#include "rocksdb/filter_policy.h"
#include "rocksdb/options.h"
#include "rocksdb/snapshot.h"
#include "rocksdb/table.h"
#include "rocksdb/write_batch.h"
#include "store/rocksdb_codec.h"

namespace v4rl::store {
namespace {

namespace fs = std::filesystem;

// Ids are handed out in persisted blocks so that Begin rarely writes the id limit.
constexpr TrajectoryId kIdBlock = 1024;

// Column family names, indexed by the ColumnFamily enum.
const char* const kColumnFamilyNames[] = {"default", "meta", "tokens", "routing", "index"};

// rocksdb::Status -> absl::Status, keeping RocksDB's message (spec/style-anchors.md §5).
absl::Status FromRocks(const rocksdb::Status& status, const std::string& context) {
  const std::string message = absl::StrFormat("%s: %s", context, status.ToString());
  switch (status.code()) {
    case rocksdb::Status::kOk:
      return absl::OkStatus();
    case rocksdb::Status::kNotFound:
      return absl::NotFoundError(message);
    case rocksdb::Status::kCorruption:
      return absl::DataLossError(message);
    case rocksdb::Status::kInvalidArgument:
      return absl::InvalidArgumentError(message);
    case rocksdb::Status::kNotSupported:
      return absl::UnimplementedError(message);
    case rocksdb::Status::kBusy:
    case rocksdb::Status::kTryAgain:
      return absl::UnavailableError(message);
    case rocksdb::Status::kTimedOut:
      return absl::DeadlineExceededError(message);
    default:
      return absl::InternalError(message);
  }
}

rocksdb::CompressionType ToRocks(RocksDbStoreOptions::Compression compression) {
  switch (compression) {
    case RocksDbStoreOptions::Compression::kNone:
      return rocksdb::kNoCompression;
    case RocksDbStoreOptions::Compression::kLz4:
      return rocksdb::kLZ4Compression;
    case RocksDbStoreOptions::Compression::kZstd:
      return rocksdb::kZSTD;
  }
  return rocksdb::kNoCompression;
}

bool Supported(rocksdb::CompressionType type) {
  if (type == rocksdb::kNoCompression) return true;
  const std::vector<rocksdb::CompressionType> supported = rocksdb::GetSupportedCompressions();
  return std::find(supported.begin(), supported.end(), type) != supported.end();
}

// `is_payload`: the tokens and routing column families.
rocksdb::ColumnFamilyOptions ColumnFamilyOptionsFor(bool is_payload,
                                                    const RocksDbStoreOptions& options) {
  rocksdb::ColumnFamilyOptions cf;
  cf.write_buffer_size = static_cast<size_t>(options.write_buffer_bytes);
  rocksdb::BlockBasedTableOptions table;
  if (is_payload) {
    // Chunks are read whole and in order; large blocks compress better.
    cf.compression = ToRocks(options.compression);
    table.block_size = 64 << 10;
  } else {
    // Appends look up their meta record by key on every call.
    cf.compression = rocksdb::kLZ4Compression;
    table.filter_policy.reset(rocksdb::NewBloomFilterPolicy(10));
  }
  cf.table_factory.reset(rocksdb::NewBlockBasedTableFactory(table));
  return cf;
}

rocksdb::DBOptions MakeDbOptions() {
  rocksdb::DBOptions db_options;
  db_options.paranoid_checks = true;
  // A SIGKILL can leave a torn record at the WAL tail: recover everything before it.
  db_options.wal_recovery_mode = rocksdb::WALRecoveryMode::kPointInTimeRecovery;
  db_options.max_background_jobs = 2;
  db_options.keep_log_file_num = 10;  // RocksDB's info LOG rotates at every open
  return db_options;
}

// In kColumnFamilyNames order, which handles_ follows.
std::vector<rocksdb::ColumnFamilyDescriptor> Descriptors(const RocksDbStoreOptions& options) {
  std::vector<rocksdb::ColumnFamilyDescriptor> descriptors;
  for (const char* name : kColumnFamilyNames) {
    const bool is_payload =
        std::string_view(name) == "tokens" || std::string_view(name) == "routing";
    descriptors.emplace_back(name, ColumnFamilyOptionsFor(is_payload, options));
  }
  return descriptors;
}

// Creates an empty store at `path` (missing, or an empty directory). The database is built in a
// sibling directory and renamed into place, so a crash during creation leaves no half-made store
// at `path`, only the sibling, which the next creation replaces.
absl::Status CreateStore(const std::string& path, const RocksDbStoreOptions& options) {
  fs::path target = fs::path(path).lexically_normal();
  if (!target.has_filename()) target = target.parent_path();  // "dir/" names "dir"
  const fs::path staging = target.parent_path() / (target.filename().string() + ".v4rl-creating");
  const std::string context = absl::StrFormat("cannot create trajectory store at %s", path);
  std::error_code error;
  fs::remove_all(staging, error);
  if (error) {
    return absl::InternalError(
        absl::StrFormat("%s: cannot remove %s: %s", context, staging.string(), error.message()));
  }
  rocksdb::DBOptions db_options = MakeDbOptions();
  db_options.create_if_missing = true;
  db_options.create_missing_column_families = true;
  db_options.error_if_exists = true;
  std::vector<rocksdb::ColumnFamilyHandle*> handles;
  rocksdb::DB* raw_db = nullptr;
  V4RL_RETURN_IF_ERROR(FromRocks(
      rocksdb::DB::Open(db_options, staging.string(), Descriptors(options), &handles, &raw_db),
      context));
  std::unique_ptr<rocksdb::DB> db(raw_db);
  rocksdb::WriteOptions sync_write;
  sync_write.sync = true;
  rocksdb::Status status = db->Put(sync_write, handles[0], std::string(codec::kFormatKey),
                                   std::string(codec::kStoreFormat));
  for (rocksdb::ColumnFamilyHandle* handle : handles) {
    if (status.ok()) {
      status = db->DestroyColumnFamilyHandle(handle);
    } else {
      db->DestroyColumnFamilyHandle(handle).PermitUncheckedError();
    }
  }
  if (status.ok()) status = db->Close();
  V4RL_RETURN_IF_ERROR(FromRocks(status, context));
  db.reset();
  // rename(2) replaces an empty directory; then make the new entry durable.
  fs::rename(staging, target, error);
  if (error) {
    return absl::InternalError(absl::StrFormat("%s: cannot rename %s into place: %s", context,
                                               staging.string(), error.message()));
  }
  const std::string parent = target.parent_path().empty() ? "." : target.parent_path().string();
  const int fd = open(parent.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0 || fsync(fd) != 0) {
    const int saved_errno = errno;
    if (fd >= 0) close(fd);
    return absl::InternalError(absl::StrFormat("%s: cannot sync directory %s: %s", context, parent,
                                               std::strerror(saved_errno)));
  }
  close(fd);
  return absl::OkStatus();
}

// Index keys of a trajectory, written at Begin and deleted with it.
std::vector<std::string> IndexKeys(const TrajectoryMeta& meta) {
  const TrajectoryHeader& header = meta.header;
  return {codec::JobIndexKey(header.job_id, meta.id),
          codec::GroupIndexKey(header.job_id, header.group_id, meta.id),
          codec::VersionIndexKey(header.policy_version, meta.id)};
}

}  // namespace

absl::Status RocksDbStoreOptions::Validate() const {
  if (write_buffer_bytes < (int64_t{1} << 20) || write_buffer_bytes > (int64_t{1} << 34)) {
    return absl::InvalidArgumentError(
        absl::StrFormat("write_buffer_bytes is %d; expected 1 MiB..16 GiB", write_buffer_bytes));
  }
  if (!Supported(ToRocks(compression))) {
    return absl::InvalidArgumentError(
        absl::StrFormat("compression %d is not supported by this RocksDB build; use kLz4 or kNone",
                        static_cast<int>(compression)));
  }
  return absl::OkStatus();
}

RocksDbTrajectoryStore::RocksDbTrajectoryStore(std::string path, const RocksDbStoreOptions& options)
    : path_(std::move(path)), options_(options) {}

RocksDbTrajectoryStore::~RocksDbTrajectoryStore() {
  if (db_ == nullptr) return;
  for (rocksdb::ColumnFamilyHandle* handle : handles_) {
    if (handle != nullptr) db_->DestroyColumnFamilyHandle(handle).PermitUncheckedError();
  }
  // Every acknowledged write is already in the WAL; a failed close loses nothing.
  db_->Close().PermitUncheckedError();
}

absl::StatusOr<std::unique_ptr<RocksDbTrajectoryStore>> RocksDbTrajectoryStore::Open(
    const std::string& path, const RocksDbStoreOptions& options) {
  V4RL_RETURN_IF_ERROR(options.Validate());
  std::error_code error;
  const fs::file_status file_status = fs::status(path, error);
  bool create = false;
  if (!fs::exists(file_status)) {
    if (!options.create_if_missing || options.read_only) {
      return absl::NotFoundError(absl::StrFormat("no trajectory store at %s", path));
    }
    create = true;
  } else if (!fs::is_directory(file_status)) {
    return absl::FailedPreconditionError(
        absl::StrFormat("%s is not a directory; expected a trajectory store directory", path));
  } else if (!fs::exists(fs::path(path) / "CURRENT", error)) {
    if (!fs::is_empty(path, error) || error) {
      return absl::FailedPreconditionError(absl::StrFormat(
          "%s is not a RocksDB database (no CURRENT file) and is not empty; refusing to create a "
          "trajectory store among other files",
          path));
    }
    if (!options.create_if_missing || options.read_only) {
      return absl::NotFoundError(
          absl::StrFormat("no trajectory store in empty directory %s", path));
    }
    create = true;
  }
  if (create) V4RL_RETURN_IF_ERROR(CreateStore(path, options));

  const rocksdb::DBOptions db_options = MakeDbOptions();
  std::vector<std::string> names;
  V4RL_RETURN_IF_ERROR(FromRocks(rocksdb::DB::ListColumnFamilies(db_options, path, &names),
                                 absl::StrFormat("cannot open trajectory store at %s", path)));
  const std::set<std::string> found(names.begin(), names.end());
  const std::set<std::string> expected(std::begin(kColumnFamilyNames),
                                       std::end(kColumnFamilyNames));
  if (found != expected) {
    return absl::FailedPreconditionError(absl::StrFormat(
        "%s is a RocksDB database but not a v4rl trajectory store: column families [%s]; "
        "expected [%s]",
        path, absl::StrJoin(found, ", "), absl::StrJoin(expected, ", ")));
  }
  std::vector<rocksdb::ColumnFamilyHandle*> handles;
  rocksdb::DB* raw_db = nullptr;
  const rocksdb::Status open_status =
      options.read_only
          ? rocksdb::DB::OpenForReadOnly(db_options, path, Descriptors(options), &handles, &raw_db)
          : rocksdb::DB::Open(db_options, path, Descriptors(options), &handles, &raw_db);
  V4RL_RETURN_IF_ERROR(
      FromRocks(open_status, absl::StrFormat("cannot open trajectory store at %s", path)));
  std::unique_ptr<RocksDbTrajectoryStore> store(new RocksDbTrajectoryStore(path, options));
  store->db_.reset(raw_db);
  std::copy(handles.begin(), handles.end(), store->handles_.begin());

  // The format marker is written at creation and checked on every open.
  rocksdb::DB* db = store->db_.get();
  rocksdb::ColumnFamilyHandle* defaults = store->handles_[kDefault];
  std::string value;
  rocksdb::Status status =
      db->Get(rocksdb::ReadOptions(), defaults, std::string(codec::kFormatKey), &value);
  if (status.IsNotFound()) {
    return absl::FailedPreconditionError(absl::StrFormat(
        "%s is a RocksDB database with v4rl's column families but no format marker; not a v4rl "
        "trajectory store",
        path));
  }
  V4RL_RETURN_IF_ERROR(FromRocks(status, absl::StrFormat("cannot read format of %s", path)));
  if (value != codec::kStoreFormat) {
    return absl::FailedPreconditionError(
        absl::StrFormat("%s holds trajectory store format \"%s\"; this build reads \"%s\"", path,
                        value, std::string(codec::kStoreFormat)));
  }
  status = db->Get(rocksdb::ReadOptions(), defaults, std::string(codec::kIdLimitKey), &value);
  if (!status.IsNotFound()) {
    V4RL_RETURN_IF_ERROR(FromRocks(status, absl::StrFormat("cannot read id limit of %s", path)));
    V4RL_ASSIGN_OR_RETURN(const uint64_t id_limit,
                          codec::DecodeBigEndian64(value, "id_limit record"));
    absl::MutexLock lock(&store->id_mutex_);
    store->next_id_ = store->id_limit_ = std::max<uint64_t>(id_limit, 1);
  }
  return store;
}

absl::Status RocksDbTrajectoryStore::CheckWritable() const {
  if (options_.read_only) {
    return absl::FailedPreconditionError(
        absl::StrFormat("trajectory store %s is open read-only", path_));
  }
  return absl::OkStatus();
}

absl::StatusOr<TrajectoryId> RocksDbTrajectoryStore::AllocateId() {
  absl::MutexLock lock(&id_mutex_);
  if (next_id_ == id_limit_) {
    // Always synced: after a crash, ids below the persisted limit must count as used.
    rocksdb::WriteOptions sync_write;
    sync_write.sync = true;
    const TrajectoryId new_limit = id_limit_ + kIdBlock;
    V4RL_RETURN_IF_ERROR(
        FromRocks(db_->Put(sync_write, handles_[kDefault], std::string(codec::kIdLimitKey),
                           codec::EncodeBigEndian64(new_limit)),
                  "cannot persist trajectory id limit"));
    id_limit_ = new_limit;
  }
  return next_id_++;
}

absl::StatusOr<TrajectoryMeta> RocksDbTrajectoryStore::ReadMeta(TrajectoryId id,
                                                                const rocksdb::Snapshot* snapshot) {
  rocksdb::ReadOptions read_options;
  read_options.snapshot = snapshot;
  rocksdb::PinnableSlice value;
  const rocksdb::Status status =
      db_->Get(read_options, handles_[kMeta], codec::MetaKey(id), &value);
  if (status.IsNotFound()) {
    return absl::NotFoundError(absl::StrFormat("trajectory %d not found", id));
  }
  V4RL_RETURN_IF_ERROR(FromRocks(status, absl::StrFormat("cannot read trajectory %d", id)));
  V4RL_ASSIGN_OR_RETURN(TrajectoryMeta meta, codec::DecodeMeta(value.ToStringView()));
  if (meta.id != id) {
    return absl::DataLossError(
        absl::StrFormat("meta record under key %d holds trajectory %d", id, meta.id));
  }
  return meta;
}

absl::StatusOr<Trajectory> RocksDbTrajectoryStore::ReadTrajectory(TrajectoryId id,
                                                                  const rocksdb::Snapshot* snapshot,
                                                                  bool with_routing) {
  V4RL_ASSIGN_OR_RETURN(const TrajectoryMeta meta, ReadMeta(id, snapshot));
  // Chunk keys of `id` sort between ChunkKey(id, 0) and MetaKey(id + 1) (Note [Key layout]).
  const std::string begin = codec::ChunkKey(id, 0);
  const std::string end = codec::MetaKey(id + 1);
  const rocksdb::Slice upper_bound(end);
  auto read_chunks = [&](ColumnFamily cf, uint32_t first_seq,
                         std::vector<std::string>* values) -> absl::Status {
    rocksdb::ReadOptions read_options;
    read_options.snapshot = snapshot;
    read_options.iterate_upper_bound = &upper_bound;
    std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(read_options, handles_[cf]));
    uint32_t expected_seq = first_seq;
    for (it->Seek(begin); it->Valid(); it->Next()) {
      V4RL_ASSIGN_OR_RETURN(const auto key, codec::ParseChunkKey(it->key().ToStringView()));
      if (key.second != expected_seq) {
        return absl::DataLossError(
            absl::StrFormat("trajectory %d: %s chunk %d found where %d was expected", id,
                            kColumnFamilyNames[cf], key.second, expected_seq));
      }
      values->push_back(it->value().ToString());
      ++expected_seq;
    }
    return FromRocks(it->status(), absl::StrFormat("cannot read trajectory %d", id));
  };
  std::vector<std::string> tokens;
  std::vector<std::string> routing;
  V4RL_RETURN_IF_ERROR(read_chunks(kTokens, 0, &tokens));
  if (tokens.empty()) {
    return absl::DataLossError(absl::StrFormat("trajectory %d has no prompt record", id));
  }
  const bool read_routing = with_routing && meta.header.routing.enabled();
  if (read_routing) V4RL_RETURN_IF_ERROR(read_chunks(kRouting, 1, &routing));
  codec::TrajectoryRecords records;
  records.prompt = tokens[0];
  records.token_chunks.assign(tokens.begin() + 1, tokens.end());
  records.routing_chunks.assign(routing.begin(), routing.end());
  return codec::DecodeTrajectory(meta, records, read_routing);
}

absl::Status RocksDbTrajectoryStore::PutMeta(const TrajectoryMeta& meta) {
  rocksdb::WriteOptions write_options;
  write_options.sync = options_.sync;
  return FromRocks(
      db_->Put(write_options, handles_[kMeta], codec::MetaKey(meta.id), codec::EncodeMeta(meta)),
      absl::StrFormat("cannot write trajectory %d", meta.id));
}

absl::StatusOr<TrajectoryId> RocksDbTrajectoryStore::Begin(
    const TrajectoryHeader& header, absl::Span<const int32_t> prompt_token_ids) {
  V4RL_RETURN_IF_ERROR(CheckWritable());
  V4RL_RETURN_IF_ERROR(ValidateBegin(header, prompt_token_ids));
  V4RL_ASSIGN_OR_RETURN(const TrajectoryId id, AllocateId());
  TrajectoryMeta meta;
  meta.id = id;
  meta.header = header;
  meta.num_prompt_tokens = static_cast<int64_t>(prompt_token_ids.size());
  meta.max_weight_version = header.policy_version;
  meta.created_us = meta.updated_us = NowMicros();
  rocksdb::WriteBatch batch;
  rocksdb::Status status = batch.Put(handles_[kMeta], codec::MetaKey(id), codec::EncodeMeta(meta));
  if (status.ok()) {
    status =
        batch.Put(handles_[kTokens], codec::ChunkKey(id, 0), codec::EncodePrompt(prompt_token_ids));
  }
  for (const std::string& key : IndexKeys(meta)) {
    if (status.ok()) status = batch.Put(handles_[kIndex], key, rocksdb::Slice());
  }
  rocksdb::WriteOptions write_options;
  write_options.sync = options_.sync;
  if (status.ok()) status = db_->Write(write_options, &batch);
  V4RL_RETURN_IF_ERROR(FromRocks(status, absl::StrFormat("cannot write trajectory %d", id)));
  return id;
}

absl::Status RocksDbTrajectoryStore::AppendTokens(TrajectoryId id, int64_t first_token,
                                                  const CompletionTokens& chunk) {
  const TokenAppend append{id, first_token, &chunk};
  return AppendTokensBatch({&append, 1});
}

absl::Status RocksDbTrajectoryStore::AppendTokensBatch(absl::Span<const TokenAppend> appends) {
  V4RL_RETURN_IF_ERROR(CheckWritable());
  V4RL_RETURN_IF_ERROR(ValidateBatchShape(appends));
  // Lock every stripe the batch touches once, in index order, so batches cannot deadlock.
  std::vector<int> stripes;
  for (const TokenAppend& append : appends) stripes.push_back(append.id % kNumStripes);
  std::sort(stripes.begin(), stripes.end());
  stripes.erase(std::unique(stripes.begin(), stripes.end()), stripes.end());
  for (int stripe : stripes) stripes_[stripe].Lock();
  absl::Cleanup unlock = [&] {
    for (int stripe : stripes) stripes_[stripe].Unlock();
  };

  const int64_t now_us = NowMicros();
  rocksdb::WriteBatch batch;
  rocksdb::Status status;
  for (size_t i = 0; i < appends.size() && status.ok(); ++i) {
    const TokenAppend& append = appends[i];
    absl::StatusOr<TrajectoryMeta> meta = ReadMeta(append.id, nullptr);
    if (meta.ok()) {
      V4RL_RETURN_IF_ERROR(AnnotateBatchError(
          ValidateAppend(*meta, append.first_token, *append.chunk), i, appends.size()));
    }
    V4RL_RETURN_IF_ERROR(AnnotateBatchError(meta.status(), i, appends.size()));
    ApplyAppend(*append.chunk, now_us, &*meta);
    const std::string key = codec::ChunkKey(append.id, static_cast<uint32_t>(meta->num_chunks));
    status = batch.Put(handles_[kTokens], key,
                       codec::EncodeTokenChunk(append.first_token, *append.chunk));
    if (status.ok() && meta->header.routing.enabled()) {
      status = batch.Put(
          handles_[kRouting], key,
          codec::EncodeRoutingChunk(append.first_token, meta->header.routing, *append.chunk));
    }
    if (status.ok()) {
      status = batch.Put(handles_[kMeta], codec::MetaKey(append.id), codec::EncodeMeta(*meta));
    }
  }
  rocksdb::WriteOptions write_options;
  write_options.sync = options_.sync;
  if (status.ok()) status = db_->Write(write_options, &batch);
  return FromRocks(status,
                   appends.size() == 1
                       ? absl::StrFormat("cannot append to trajectory %d", appends[0].id)
                       : absl::StrFormat("cannot append to %d trajectories", appends.size()));
}

absl::Status RocksDbTrajectoryStore::Finish(TrajectoryId id, TrajectoryStatus status) {
  V4RL_RETURN_IF_ERROR(CheckWritable());
  absl::MutexLock lock(&Stripe(id));
  V4RL_ASSIGN_OR_RETURN(TrajectoryMeta meta, ReadMeta(id, nullptr));
  V4RL_RETURN_IF_ERROR(ValidateFinish(meta, status));
  meta.status = status;
  meta.updated_us = meta.finished_us = NowMicros();
  return PutMeta(meta);
}

absl::Status RocksDbTrajectoryStore::AddReward(TrajectoryId id, const Reward& reward) {
  V4RL_RETURN_IF_ERROR(CheckWritable());
  absl::MutexLock lock(&Stripe(id));
  V4RL_ASSIGN_OR_RETURN(TrajectoryMeta meta, ReadMeta(id, nullptr));
  V4RL_RETURN_IF_ERROR(ValidateReward(meta, reward));
  Reward stored = reward;
  stored.created_us = meta.updated_us = NowMicros();
  meta.rewards.push_back(std::move(stored));
  return PutMeta(meta);
}

absl::StatusOr<TrajectoryMeta> RocksDbTrajectoryStore::GetMeta(TrajectoryId id) {
  return ReadMeta(id, nullptr);
}

absl::StatusOr<Trajectory> RocksDbTrajectoryStore::Read(TrajectoryId id,
                                                        const ReadOptions& options) {
  rocksdb::ManagedSnapshot snapshot(db_.get());
  return ReadTrajectory(id, snapshot.snapshot(), options.with_routing);
}

absl::Status RocksDbTrajectoryStore::ForEachIndexId(
    const std::string& prefix, const std::string& start, const rocksdb::Snapshot* snapshot,
    absl::FunctionRef<absl::StatusOr<bool>(TrajectoryId)> fn) {
  rocksdb::ReadOptions read_options;
  read_options.snapshot = snapshot;
  std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(read_options, handles_[kIndex]));
  for (it->Seek(start); it->Valid() && it->key().starts_with(prefix); it->Next()) {
    V4RL_ASSIGN_OR_RETURN(const TrajectoryId id, codec::ParseIndexKeyId(it->key().ToStringView()));
    V4RL_ASSIGN_OR_RETURN(const bool more, fn(id));
    if (!more) return absl::OkStatus();
  }
  return FromRocks(it->status(), "cannot scan the trajectory index");
}

absl::StatusOr<std::vector<TrajectoryMeta>> RocksDbTrajectoryStore::Scan(const ScanQuery& query) {
  V4RL_RETURN_IF_ERROR(ValidateScanQuery(query));
  std::vector<TrajectoryMeta> result;
  if (query.after_id == UINT64_MAX) return result;
  const TrajectoryId start_id = query.after_id + 1;
  rocksdb::ManagedSnapshot snapshot(db_.get());
  const rocksdb::Snapshot* snap = snapshot.snapshot();
  // Adds `meta` when it matches; false once the limit is reached.
  auto consider = [&](TrajectoryMeta meta) {
    if (MatchesQuery(query, meta)) result.push_back(std::move(meta));
    return query.limit == 0 || static_cast<int64_t>(result.size()) < query.limit;
  };
  auto consider_id = [&](TrajectoryId id) -> absl::StatusOr<bool> {
    absl::StatusOr<TrajectoryMeta> meta = ReadMeta(id, snap);
    if (absl::IsNotFound(meta.status())) {
      return absl::DataLossError(
          absl::StrFormat("index entry for trajectory %d has no meta record", id));
    }
    V4RL_RETURN_IF_ERROR(meta.status());
    return consider(*std::move(meta));
  };
  const std::string start_key = codec::EncodeBigEndian64(start_id);

  if (query.group_id.has_value() || !query.job_id.empty()) {
    // Index keys end with the id, so within one job (or group) they are in id order.
    const std::string prefix = query.group_id.has_value()
                                   ? codec::GroupIndexPrefix(query.job_id, *query.group_id)
                                   : codec::JobIndexPrefix(query.job_id);
    V4RL_RETURN_IF_ERROR(ForEachIndexId(prefix, prefix + start_key, snap, consider_id));
    return result;
  }
  if (query.min_policy_version > 0 || query.max_policy_version < INT64_MAX) {
    // The version index orders by (version, id): collect the ids in range, then go in id order.
    std::vector<TrajectoryId> ids;
    if (query.max_policy_version >= 0 && query.min_policy_version <= query.max_policy_version) {
      const int64_t first_version = std::max<int64_t>(query.min_policy_version, 0);
      const std::string end = codec::VersionIndexKey(query.max_policy_version, UINT64_MAX);
      rocksdb::ReadOptions read_options;
      read_options.snapshot = snap;
      std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(read_options, handles_[kIndex]));
      for (it->Seek(codec::VersionIndexKey(first_version, 0));
           it->Valid() && it->key().compare(end) <= 0; it->Next()) {
        V4RL_ASSIGN_OR_RETURN(const TrajectoryId id,
                              codec::ParseIndexKeyId(it->key().ToStringView()));
        if (id >= start_id) ids.push_back(id);
      }
      V4RL_RETURN_IF_ERROR(FromRocks(it->status(), "cannot scan the trajectory index"));
    }
    std::sort(ids.begin(), ids.end());
    for (TrajectoryId id : ids) {
      V4RL_ASSIGN_OR_RETURN(const bool more, consider_id(id));
      if (!more) break;
    }
    return result;
  }
  rocksdb::ReadOptions read_options;
  read_options.snapshot = snap;
  std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(read_options, handles_[kMeta]));
  for (it->Seek(start_key); it->Valid(); it->Next()) {
    V4RL_ASSIGN_OR_RETURN(TrajectoryMeta meta, codec::DecodeMeta(it->value().ToStringView()));
    if (!consider(std::move(meta))) return result;
  }
  V4RL_RETURN_IF_ERROR(FromRocks(it->status(), "cannot scan trajectory metadata"));
  return result;
}

absl::StatusOr<std::vector<Trajectory>> RocksDbTrajectoryStore::ReadBatch(
    absl::Span<const TrajectoryId> ids, const ReadOptions& options) {
  rocksdb::ManagedSnapshot snapshot(db_.get());
  std::vector<Trajectory> batch;
  batch.reserve(ids.size());
  for (TrajectoryId id : ids) {
    V4RL_ASSIGN_OR_RETURN(Trajectory trajectory,
                          ReadTrajectory(id, snapshot.snapshot(), options.with_routing));
    batch.push_back(std::move(trajectory));
  }
  SortForLearner(&batch);
  return batch;
}

absl::StatusOr<int64_t> RocksDbTrajectoryStore::DeleteOlderThan(int64_t policy_version) {
  V4RL_RETURN_IF_ERROR(CheckWritable());
  if (policy_version <= 0) return 0;
  // Candidates from the version index; each is re-checked under its stripe lock, since it may have
  // finished (or been deleted) since.
  std::vector<TrajectoryId> candidates;
  {
    rocksdb::ManagedSnapshot snapshot(db_.get());
    rocksdb::ReadOptions read_options;
    read_options.snapshot = snapshot.snapshot();
    const std::string end = codec::VersionIndexKey(policy_version, 0);
    std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(read_options, handles_[kIndex]));
    for (it->Seek(codec::VersionIndexKey(0, 0)); it->Valid() && it->key().compare(end) < 0;
         it->Next()) {
      V4RL_ASSIGN_OR_RETURN(const TrajectoryId id,
                            codec::ParseIndexKeyId(it->key().ToStringView()));
      candidates.push_back(id);
    }
    V4RL_RETURN_IF_ERROR(FromRocks(it->status(), "cannot scan the trajectory index"));
  }
  rocksdb::WriteOptions write_options;
  write_options.sync = false;
  int64_t deleted = 0;
  for (TrajectoryId id : candidates) {
    absl::MutexLock lock(&Stripe(id));
    absl::StatusOr<TrajectoryMeta> meta = ReadMeta(id, nullptr);
    if (absl::IsNotFound(meta.status())) continue;
    V4RL_RETURN_IF_ERROR(meta.status());
    if (!IsTerminal(meta->status)) continue;
    rocksdb::WriteBatch batch;
    rocksdb::Status status = batch.Delete(handles_[kMeta], codec::MetaKey(id));
    for (ColumnFamily cf : {kTokens, kRouting}) {
      if (status.ok()) {
        status = batch.DeleteRange(handles_[cf], codec::ChunkKey(id, 0), codec::MetaKey(id + 1));
      }
    }
    for (const std::string& key : IndexKeys(*meta)) {
      if (status.ok()) status = batch.Delete(handles_[kIndex], key);
    }
    if (status.ok()) status = db_->Write(write_options, &batch);
    V4RL_RETURN_IF_ERROR(FromRocks(status, absl::StrFormat("cannot delete trajectory %d", id)));
    ++deleted;
  }
  if (deleted > 0 && options_.sync) {
    V4RL_RETURN_IF_ERROR(FromRocks(db_->SyncWAL(), "cannot sync deletes"));
  }
  return deleted;
}

absl::Status RocksDbTrajectoryStore::Compact() {
  V4RL_RETURN_IF_ERROR(CheckWritable());
  rocksdb::CompactRangeOptions compact_options;
  compact_options.bottommost_level_compaction = rocksdb::BottommostLevelCompaction::kForce;
  for (rocksdb::ColumnFamilyHandle* handle : handles_) {
    V4RL_RETURN_IF_ERROR(FromRocks(
        db_->CompactRange(compact_options, handle, nullptr, nullptr),
        absl::StrFormat("cannot compact column family %s of %s", handle->GetName(), path_)));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::vector<ColumnFamilyStats>> RocksDbTrajectoryStore::Stats() {
  rocksdb::ManagedSnapshot snapshot(db_.get());
  std::vector<ColumnFamilyStats> stats;
  for (int cf : {kMeta, kTokens, kRouting, kIndex, kDefault}) {
    ColumnFamilyStats s;
    s.name = kColumnFamilyNames[cf];
    rocksdb::ReadOptions read_options;
    read_options.snapshot = snapshot.snapshot();
    read_options.fill_cache = false;
    std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(read_options, handles_[cf]));
    for (it->SeekToFirst(); it->Valid(); it->Next()) {
      ++s.num_records;
      s.key_bytes += static_cast<int64_t>(it->key().size());
      s.value_bytes += static_cast<int64_t>(it->value().size());
    }
    V4RL_RETURN_IF_ERROR(
        FromRocks(it->status(), absl::StrFormat("cannot scan column family %s", s.name)));
    uint64_t value = 0;
    if (db_->GetIntProperty(handles_[cf], "rocksdb.total-sst-files-size", &value)) {
      s.sst_file_bytes = static_cast<int64_t>(value);
    }
    if (db_->GetIntProperty(handles_[cf], "rocksdb.cur-size-all-mem-tables", &value)) {
      s.memtable_bytes = static_cast<int64_t>(value);
    }
    stats.push_back(std::move(s));
  }
  return stats;
}

absl::StatusOr<VerifyReport> RocksDbTrajectoryStore::Verify() {
  VerifyReport report;
  auto problem = [&report](std::string message) {
    if (report.problems.size() < VerifyReport::kMaxReportedProblems) {
      report.problems.push_back(std::move(message));
    }
    ++report.num_problems;
  };
  if (rocksdb::Status status = db_->VerifyChecksum(); !status.ok()) {
    problem(absl::StrFormat("block checksums: %s", status.ToString()));
  }
  rocksdb::ManagedSnapshot snapshot(db_.get());
  rocksdb::ReadOptions read_options;
  read_options.snapshot = snapshot.snapshot();
  read_options.fill_cache = false;
  auto scan = [&](ColumnFamily cf,
                  absl::FunctionRef<void(std::string_view key, std::string_view value)> fn) {
    std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(read_options, handles_[cf]));
    for (it->SeekToFirst(); it->Valid(); it->Next()) {
      ++report.num_records;
      fn(it->key().ToStringView(), it->value().ToStringView());
    }
    if (!it->status().ok()) {
      problem(absl::StrFormat("scan of column family %s stopped: %s", kColumnFamilyNames[cf],
                              it->status().ToString()));
    }
  };

  // Trajectories: meta, chunks, index entries.
  absl::flat_hash_map<TrajectoryId, int64_t> num_chunks;  // of every decodable meta record
  scan(kMeta, [&](std::string_view key, std::string_view value) {
    ++report.num_trajectories;
    absl::StatusOr<TrajectoryId> id = codec::ParseMetaKey(key);
    if (!id.ok()) return problem(std::string(id.status().message()));
    absl::StatusOr<TrajectoryMeta> meta = codec::DecodeMeta(value);
    if (!meta.ok()) return problem(std::string(meta.status().message()));
    if (meta->id != *id) {
      return problem(
          absl::StrFormat("meta record under key %d holds trajectory %d", *id, meta->id));
    }
    num_chunks[*id] = meta->num_chunks;
    absl::StatusOr<Trajectory> trajectory =
        ReadTrajectory(*id, snapshot.snapshot(), /*with_routing=*/true);
    if (!trajectory.ok()) problem(std::string(trajectory.status().message()));
    for (const std::string& index_key : IndexKeys(*meta)) {
      std::string ignored;
      const rocksdb::Status status = db_->Get(read_options, handles_[kIndex], index_key, &ignored);
      if (!status.ok()) {
        problem(absl::StrFormat("trajectory %d: index entry '%c...' missing (%s)", *id,
                                index_key[0], status.ToString()));
      }
    }
  });
  for (ColumnFamily cf : {kTokens, kRouting}) {
    scan(cf, [&](std::string_view key, std::string_view) {
      absl::StatusOr<std::pair<TrajectoryId, uint32_t>> parsed = codec::ParseChunkKey(key);
      if (!parsed.ok()) return problem(std::string(parsed.status().message()));
      auto it = num_chunks.find(parsed->first);
      if (it == num_chunks.end()) {
        problem(absl::StrFormat("%s chunk %d of trajectory %d has no meta record",
                                kColumnFamilyNames[cf], parsed->second, parsed->first));
      } else if (parsed->second > it->second) {
        problem(absl::StrFormat("%s chunk %d of trajectory %d is beyond its %d chunks",
                                kColumnFamilyNames[cf], parsed->second, parsed->first, it->second));
      }
    });
  }
  scan(kIndex, [&](std::string_view key, std::string_view) {
    absl::StatusOr<TrajectoryId> id = codec::ParseIndexKeyId(key);
    if (!id.ok()) return problem(std::string(id.status().message()));
    if (!num_chunks.contains(*id)) {
      problem(absl::StrFormat("index entry '%c...' names trajectory %d, which has no meta record",
                              key[0], *id));
    }
  });
  scan(kDefault, [&](std::string_view key, std::string_view) {
    if (key != codec::kFormatKey && key != codec::kIdLimitKey) {
      problem(absl::StrFormat("unexpected key \"%s\" in the default column family",
                              absl::CEscape(std::string(key))));
    }
  });
  return report;
}

}  // namespace v4rl::store
