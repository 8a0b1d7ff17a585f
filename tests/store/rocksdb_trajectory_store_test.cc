// What only the RocksDB store promises: reopening, read-only inspection, stats and verify, clear
// errors for corrupted or foreign directories, and durability under SIGKILL (a writer process
// killed at random moments keeps every acknowledged append and never shows a half-written sample
// as finished).
#include "store/rocksdb_trajectory_store.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <random>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/store/trajectory_test_util.h"
#include "tests/testing/status_matchers.h"

namespace v4rl::store {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;
using ::v4rl::store::testing::DiffFromExpected;
using ::v4rl::store::testing::kDurabilityRouting;
using ::v4rl::store::testing::kSmallRouting;
using ::v4rl::store::testing::MakeCompletion;
using ::v4rl::store::testing::MakeHeader;
using ::v4rl::store::testing::MakePrompt;
using ::v4rl::store::testing::NewTempPath;
using ::v4rl::store::testing::TargetTokens;
using ::v4rl::testing::StatusIs;

class RocksDbTrajectoryStoreTest : public ::testing::Test {
 protected:
  void TearDown() override { fs::remove_all(path_); }

  std::unique_ptr<RocksDbTrajectoryStore> OpenOrDie(const RocksDbStoreOptions& options = {}) {
    auto store = RocksDbTrajectoryStore::Open(path_, options);
    EXPECT_TRUE(store.ok()) << store.status();
    return store.ok() ? *std::move(store) : nullptr;
  }

  // Writes `count` finished trajectories of 300 tokens and compacts them into SST files.
  std::vector<TrajectoryId> Populate(RocksDbTrajectoryStore& store, int count) {
    std::vector<TrajectoryId> ids;
    for (int i = 0; i < count; ++i) {
      absl::StatusOr<TrajectoryId> id = store.Begin(MakeHeader("job", i, i % 3), MakePrompt(50, i));
      EXPECT_TRUE(id.ok()) << id.status();
      for (int64_t first = 0; first < 300; first += 100) {
        EXPECT_TRUE(
            store.AppendTokens(*id, first, MakeCompletion(*id, i % 3, kSmallRouting, first, 100))
                .ok());
      }
      EXPECT_TRUE(store.Finish(*id, TrajectoryStatus::kComplete).ok());
      ids.push_back(*id);
    }
    EXPECT_TRUE(store.Compact().ok());
    return ids;
  }

  // The largest SST file of the store.
  fs::path LargestSst() {
    fs::path largest;
    for (const fs::directory_entry& entry : fs::directory_iterator(path_)) {
      if (entry.path().extension() == ".sst" &&
          (largest.empty() || entry.file_size() > fs::file_size(largest))) {
        largest = entry.path();
      }
    }
    return largest;
  }

  const std::string path_ = NewTempPath("rocksdb");
};

TEST_F(RocksDbTrajectoryStoreTest, ReopenKeepsEverythingAndNeverReusesIds) {
  std::vector<TrajectoryId> ids;
  {
    auto store = OpenOrDie();
    ids = Populate(*store, 5);
    // Delete the newest: its id must still never come back.
    auto deleted = store->DeleteOlderThan(3);
    ASSERT_TRUE(deleted.ok());
    EXPECT_EQ(*deleted, 5);
  }
  auto store = OpenOrDie();
  V4RL_ASSERT_OK_AND_ASSIGN(const TrajectoryId next,
                            store->Begin(MakeHeader("job", 9, 0), MakePrompt(3, 0)));
  EXPECT_GT(next, ids.back());
  V4RL_ASSERT_OK(store->AppendTokens(next, 0, MakeCompletion(next, 0, kSmallRouting, 0, 5)));
  store.reset();
  store = OpenOrDie();
  V4RL_ASSERT_OK_AND_ASSIGN(const Trajectory t, store->Read(next));
  EXPECT_EQ(t.meta.status, TrajectoryStatus::kInProgress);
  EXPECT_EQ(DiffFromExpected(t), "");
}

TEST_F(RocksDbTrajectoryStoreTest, ReadOnlyOpenInspectsALiveStoreAndRefusesWrites) {
  auto writer = OpenOrDie();
  const std::vector<TrajectoryId> ids = Populate(*writer, 2);
  RocksDbStoreOptions read_only;
  read_only.read_only = true;
  auto reader = OpenOrDie(read_only);
  ASSERT_NE(reader, nullptr);
  V4RL_ASSERT_OK_AND_ASSIGN(const Trajectory t, reader->Read(ids[1]));
  EXPECT_EQ(DiffFromExpected(t), "");
  EXPECT_THAT(reader->Begin(MakeHeader("job", 0, 0), MakePrompt(1, 0)),
              StatusIs(absl::StatusCode::kFailedPrecondition, HasSubstr("read-only")));
  EXPECT_THAT(reader->Finish(ids[0], TrajectoryStatus::kAborted),
              StatusIs(absl::StatusCode::kFailedPrecondition, HasSubstr("read-only")));
}

TEST_F(RocksDbTrajectoryStoreTest, StatsAndVerifyDescribeAHealthyStore) {
  auto store = OpenOrDie();
  Populate(*store, 4);
  V4RL_ASSERT_OK_AND_ASSIGN(const TrajectoryId open,
                            store->Begin(MakeHeader("job", 7, 0), MakePrompt(3, 0)));
  V4RL_ASSERT_OK(store->AppendTokens(open, 0, MakeCompletion(open, 0, kSmallRouting, 0, 9)));

  V4RL_ASSERT_OK_AND_ASSIGN(const std::vector<ColumnFamilyStats> stats, store->Stats());
  ASSERT_EQ(stats.size(), 5u);
  EXPECT_EQ(stats[0].name, "meta");
  EXPECT_EQ(stats[0].num_records, 5);
  EXPECT_EQ(stats[1].name, "tokens");
  EXPECT_EQ(stats[1].num_records, 5 + 4 * 3 + 1);  // prompts + chunks
  EXPECT_EQ(stats[2].name, "routing");
  EXPECT_EQ(stats[2].num_records, 4 * 3 + 1);
  EXPECT_GT(stats[2].value_bytes, 4 * 300 * kSmallRouting.ids_per_token());
  EXPECT_GT(stats[2].sst_file_bytes, 0);
  EXPECT_EQ(stats[3].name, "index");
  EXPECT_EQ(stats[3].num_records, 5 * 3);
  EXPECT_EQ(stats[4].name, "default");

  V4RL_ASSERT_OK_AND_ASSIGN(const VerifyReport report, store->Verify());
  EXPECT_TRUE(report.ok()) << report.problems.front();
  EXPECT_EQ(report.num_trajectories, 5);
}

TEST_F(RocksDbTrajectoryStoreTest, CreatesInAnEmptyDirectoryGivenWithATrailingSlash) {
  fs::create_directories(path_);
  V4RL_ASSERT_OK(RocksDbTrajectoryStore::Open(path_ + "/"));
  // Built beside the directory, then renamed over it.
  EXPECT_TRUE(fs::exists(fs::path(path_) / "CURRENT"));
  EXPECT_FALSE(fs::exists(path_ + ".v4rl-creating"));
  auto store = OpenOrDie();
  ASSERT_NE(store, nullptr);
  V4RL_ASSERT_OK(store->Begin(MakeHeader("job", 0, 0), MakePrompt(2, 0)));
}

TEST_F(RocksDbTrajectoryStoreTest, MissingDirectoryWithoutCreateIsNotFound) {
  RocksDbStoreOptions options;
  options.create_if_missing = false;
  EXPECT_THAT(RocksDbTrajectoryStore::Open(path_, options),
              StatusIs(absl::StatusCode::kNotFound, HasSubstr("no trajectory store at")));
  EXPECT_FALSE(fs::exists(path_));
}

TEST_F(RocksDbTrajectoryStoreTest, RefusesADirectoryThatIsNotARocksDb) {
  fs::create_directories(path_);
  std::ofstream(fs::path(path_) / "notes.txt") << "not a database\n";
  EXPECT_THAT(RocksDbTrajectoryStore::Open(path_),
              StatusIs(absl::StatusCode::kFailedPrecondition,
                       HasSubstr("is not a RocksDB database (no CURRENT file)")));
  // Nothing was created among the foreign files.
  EXPECT_EQ(std::distance(fs::directory_iterator(path_), fs::directory_iterator()), 1);
}

TEST_F(RocksDbTrajectoryStoreTest, RefusesARegularFile) {
  std::ofstream(path_) << "x";
  EXPECT_THAT(RocksDbTrajectoryStore::Open(path_),
              StatusIs(absl::StatusCode::kFailedPrecondition, HasSubstr("is not a directory")));
}

TEST_F(RocksDbTrajectoryStoreTest, GarbageInCurrentIsAClearError) {
  Populate(*OpenOrDie(), 1);
  std::ofstream(fs::path(path_) / "CURRENT", std::ios::trunc) << "\x01garbage\xff\n";
  EXPECT_THAT(
      RocksDbTrajectoryStore::Open(path_),
      StatusIs(absl::StatusCode::kDataLoss, HasSubstr("cannot open trajectory store at " + path_)));
}

TEST_F(RocksDbTrajectoryStoreTest, TruncatedSstIsAClearError) {
  const std::vector<TrajectoryId> ids = Populate(*OpenOrDie(), 8);
  const fs::path sst = LargestSst();
  ASSERT_FALSE(sst.empty());
  fs::resize_file(sst, fs::file_size(sst) / 2);
  absl::StatusOr<std::unique_ptr<RocksDbTrajectoryStore>> store =
      RocksDbTrajectoryStore::Open(path_);
  // RocksDB checks SST sizes against its manifest on open.
  EXPECT_THAT(store, StatusIs(absl::StatusCode::kDataLoss,
                              HasSubstr("cannot open trajectory store at " + path_)));
}

TEST_F(RocksDbTrajectoryStoreTest, FlippedBytesInAnSstAreReportedByVerifyAndReads) {
  const std::vector<TrajectoryId> ids = Populate(*OpenOrDie(), 8);
  const fs::path sst = LargestSst();
  ASSERT_FALSE(sst.empty());
  {
    std::fstream file(sst, std::ios::in | std::ios::out | std::ios::binary);
    file.seekp(static_cast<std::streamoff>(fs::file_size(sst) / 4));
    file.write("\xde\xad\xbe\xef\xde\xad\xbe\xef", 8);
  }
  auto store = OpenOrDie();
  ASSERT_NE(store, nullptr);
  V4RL_ASSERT_OK_AND_ASSIGN(const VerifyReport report, store->Verify());
  EXPECT_FALSE(report.ok());
  ASSERT_FALSE(report.problems.empty());
  EXPECT_THAT(report.problems.front(), HasSubstr("Corruption"));
  int data_loss = 0;
  for (TrajectoryId id : ids) {
    absl::StatusOr<Trajectory> t = store->Read(id);
    if (!t.ok()) {
      EXPECT_THAT(t, StatusIs(absl::StatusCode::kDataLoss, HasSubstr("")));
      ++data_loss;
    }
  }
  EXPECT_GT(data_loss, 0);
}

// ---------------------------------------------------------------------------------------------
// Durability under SIGKILL.

// What the killed writers acknowledged, merged over all rounds.
struct Acked {
  int64_t num_tokens = 0;
  bool finished = false;
  bool rewarded = false;
};

void ParseAcks(const std::string& text, std::map<TrajectoryId, Acked>* acked, int64_t* num_acks) {
  std::istringstream lines(text);
  std::string kind;
  TrajectoryId id;
  while (lines >> kind >> id) {
    Acked& a = (*acked)[id];
    ++*num_acks;
    if (kind == "A") {
      int64_t end;
      lines >> end;
      a.num_tokens = std::max(a.num_tokens, end);
    } else if (kind == "F") {
      a.finished = true;
    } else {
      ASSERT_EQ(kind, "R");
      a.rewarded = true;
    }
  }
}

// Runs the writer, SIGKILLs it `run_for` after its start (which may land while it creates, opens
// or recovers the store) or, with `after_first_ack`, after its first acknowledgement (which lands
// amid appends however slowly a loaded machine starts it), and returns everything it
// acknowledged.
std::string RunAndKillWriter(const std::string& path, std::chrono::milliseconds run_for,
                             bool after_first_ack) {
  int fds[2];
  if (pipe2(fds, O_CLOEXEC) != 0) {
    ADD_FAILURE() << "pipe2 failed";
    return "";
  }
  const std::string ack_fd = std::to_string(fds[1]);
  const pid_t pid = fork();
  if (pid == 0) {
    // Only async-signal-safe calls between fork and exec: the write end alone survives exec.
    fcntl(fds[1], F_SETFD, 0);
    execl(V4RL_STORE_WRITER, V4RL_STORE_WRITER, path.c_str(), ack_fd.c_str(),
          static_cast<char*>(nullptr));
    _exit(127);
  }
  close(fds[1]);
  std::string acks;
  char buffer[4096];
  // Until the first ack (when waiting for it), the deadline is a generous bound on start-up.
  bool waiting_for_ack = after_first_ack;
  auto deadline = std::chrono::steady_clock::now() +
                  (waiting_for_ack ? std::chrono::milliseconds(20000) : run_for);
  bool killed = false;
  while (true) {
    if (waiting_for_ack && !acks.empty()) {
      deadline = std::chrono::steady_clock::now() + run_for;
      waiting_for_ack = false;
    }
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
        deadline - std::chrono::steady_clock::now());
    if (!killed && left.count() <= 0) {
      kill(pid, SIGKILL);
      killed = true;
    }
    pollfd poll_fd{fds[0], POLLIN, 0};
    if (poll(&poll_fd, 1, killed ? -1 : static_cast<int>(left.count())) <= 0) continue;
    const ssize_t n = read(fds[0], buffer, sizeof(buffer));
    if (n <= 0) break;  // EOF: the writer is gone
    acks.append(buffer, n);
  }
  close(fds[0]);
  int wait_status = 0;
  waitpid(pid, &wait_status, 0);
  EXPECT_TRUE(WIFSIGNALED(wait_status) && WTERMSIG(wait_status) == SIGKILL)
      << "the writer ended on its own (status " << wait_status << "); see its stderr";
  return acks;
}

// After a crash: every acknowledged write is there, every stored sample is intact, and nothing
// reads as finished unless it was fully written. Adds the samples the crash interrupted to
// `interrupted`.
void CheckAfterCrash(const std::string& path, const std::map<TrajectoryId, Acked>& acked, int round,
                     std::set<TrajectoryId>* interrupted) {
  SCOPED_TRACE(::testing::Message() << "after kill " << round);
  RocksDbStoreOptions options;
  options.create_if_missing = false;
  absl::StatusOr<std::unique_ptr<RocksDbTrajectoryStore>> opened =
      RocksDbTrajectoryStore::Open(path, options);
  // A writer killed while creating the store leaves none (creation is atomic).
  if (acked.empty() && absl::IsNotFound(opened.status())) return;
  V4RL_ASSERT_OK(opened);
  RocksDbTrajectoryStore* store = opened->get();
  for (const auto& [id, a] : acked) {
    V4RL_ASSERT_OK_AND_ASSIGN(const TrajectoryMeta meta, store->GetMeta(id));
    EXPECT_GE(meta.num_completion_tokens, a.num_tokens) << "trajectory " << id;
    if (a.finished) {
      EXPECT_EQ(meta.status, TrajectoryStatus::kComplete) << "trajectory " << id;
    }
    if (a.rewarded) {
      EXPECT_EQ(meta.rewards.size(), 1u) << "trajectory " << id;
    }
  }
  V4RL_ASSERT_OK_AND_ASSIGN(const std::vector<TrajectoryMeta> all, store->Scan(ScanQuery()));
  for (const TrajectoryMeta& meta : all) {
    V4RL_ASSERT_OK_AND_ASSIGN(const Trajectory t, store->Read(meta.id));
    EXPECT_EQ(DiffFromExpected(t), "");
    EXPECT_EQ(t.meta.header.routing, kDurabilityRouting);
    if (IsTerminal(meta.status)) {
      EXPECT_EQ(meta.status, TrajectoryStatus::kComplete);
      EXPECT_EQ(meta.num_completion_tokens, TargetTokens(meta.id)) << "trajectory " << meta.id;
    } else {
      EXPECT_TRUE(meta.rewards.empty());
      if (meta.num_completion_tokens > 0) interrupted->insert(meta.id);
      // A kill between the last append and Finish leaves a full sample in progress.
      EXPECT_LE(meta.num_completion_tokens, TargetTokens(meta.id)) << "trajectory " << meta.id;
    }
  }
  V4RL_ASSERT_OK_AND_ASSIGN(const VerifyReport report, store->Verify());
  EXPECT_TRUE(report.ok()) << report.problems.front();
}

TEST(RocksDbDurabilityTest, SigkillAtRandomMomentsLosesNoAcknowledgedWrite) {
  const std::string path = NewTempPath("durability");
  std::mt19937 rng(20261128);  // fixed: the kill moments are reproducible up to scheduling
  std::uniform_int_distribution<int> run_ms(10, 300);
  constexpr int kKills = 24;
  std::map<TrajectoryId, Acked> acked;
  int64_t num_acks = 0;
  std::set<TrajectoryId> interrupted;
  for (int round = 0; round < kKills; ++round) {
    // Odd rounds are sure to interrupt appends; even ones may hit start-up and recovery.
    const std::string acks =
        RunAndKillWriter(path, std::chrono::milliseconds(run_ms(rng)), round % 2 == 1);
    ParseAcks(acks, &acked, &num_acks);
    CheckAfterCrash(path, acked, round, &interrupted);
    if (::testing::Test::HasFatalFailure()) break;
  }
  int64_t num_finished = 0;
  int64_t num_resumed = 0;  // interrupted mid-sample, then finished by a later writer
  for (const auto& [id, a] : acked) {
    num_finished += a.finished;
    num_resumed += a.finished && interrupted.contains(id);
  }
  // The kills must have interrupted real work, and resumed samples must have completed.
  EXPECT_GT(num_acks, 100);
  EXPECT_GT(num_finished, 5);
  EXPECT_GT(num_resumed, 0);
  std::cout << "durability: " << kKills << " kills, " << num_acks << " acknowledged writes, "
            << acked.size() << " samples, " << num_finished << " finished, " << num_resumed
            << " resumed after a kill and finished\n";
  fs::remove_all(path);
  fs::remove_all(path + ".v4rl-creating");  // left by a kill during the last creation, if any
}

}  // namespace
}  // namespace v4rl::store
