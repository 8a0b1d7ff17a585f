// Writer process for the durability test (rocksdb_trajectory_store_test.cc): opens the store with
// sync on and generates samples until it is killed, acknowledging every completed store call on
// an inherited pipe.
//
//   store_durability_writer DIR ACK_FD
//
// It first resumes the in-progress samples it finds (continuing each at its stored end, as a
// preempted rollout worker does), then starts new ones. Sample contents come from
// MakeCompletion(id, ...), each sample has TargetTokens(id) tokens, and appends are 1..32 tokens,
// so the checker can tell exactly what must be stored. Ack lines, each one write(2) < PIPE_BUF
// and so atomic across threads:
//   "A id end" tokens [0, end) are stored     "F id" finished complete     "R id" rewarded
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <deque>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_format.h"
#include "absl/synchronization/mutex.h"
#include "store/rocksdb_trajectory_store.h"
#include "tests/store/trajectory_test_util.h"

namespace v4rl::store::testing {
namespace {

int ack_fd = -1;

void Ack(const std::string& line) {
  // A short write only happens when the reader is gone, i.e. the test is over.
  if (write(ack_fd, line.data(), line.size()) != static_cast<ssize_t>(line.size())) _exit(3);
}

[[noreturn]] void Die(const absl::Status& status) {
  std::fprintf(stderr, "store_durability_writer: %s\n", status.ToString().c_str());
  _exit(2);
}

// Continues trajectory `id` from token `start` to TargetTokens(id), finishes and rewards it.
void Generate(TrajectoryStore& store, TrajectoryId id, int64_t policy_version, int64_t start,
              uint64_t seed) {
  const int64_t target = TargetTokens(id);
  for (int64_t first = start; first < target;) {
    seed = seed * 6364136223846793005ull + 1442695040888963407ull;
    const int64_t n = std::min<int64_t>(1 + (seed >> 33) % 32, target - first);
    const absl::Status status = store.AppendTokens(
        id, first, MakeCompletion(id, policy_version, kDurabilityRouting, first, n));
    if (!status.ok()) Die(status);
    first += n;
    Ack(absl::StrFormat("A %d %d\n", id, first));
  }
  if (absl::Status status = store.Finish(id, TrajectoryStatus::kComplete); !status.ok()) {
    Die(status);
  }
  Ack(absl::StrFormat("F %d\n", id));
  if (absl::Status status = store.AddReward(id, {RewardSource::kVerifier, "durability", 1.0f});
      !status.ok()) {
    Die(status);
  }
  Ack(absl::StrFormat("R %d\n", id));
}

int Main(int argc, char** argv) {
  if (argc != 3) {
    std::fprintf(stderr, "usage: store_durability_writer DIR ACK_FD\n");
    return 2;
  }
  ack_fd = std::atoi(argv[2]);
  RocksDbStoreOptions options;
  options.sync = true;
  options.write_buffer_bytes = 1 << 20;  // small memtables: flushes happen while we are killed
  auto opened = RocksDbTrajectoryStore::Open(argv[1], options);
  if (!opened.ok()) Die(opened.status());
  TrajectoryStore& store = **opened;

  // Samples a previous writer left in progress, resumed first.
  ScanQuery query;
  query.statuses = {TrajectoryStatus::kInProgress};
  auto in_progress = store.Scan(query);
  if (!in_progress.ok()) Die(in_progress.status());
  absl::Mutex mutex;
  std::deque<TrajectoryMeta> resumable(in_progress->begin(), in_progress->end());

  constexpr int kThreads = 4;
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      uint64_t seed = static_cast<uint64_t>(getpid()) * 1000 + t;
      for (uint64_t group = 0;; ++group) {
        TrajectoryMeta meta;
        bool resume = false;
        {
          absl::MutexLock lock(&mutex);
          if (!resumable.empty()) {
            meta = resumable.front();
            resumable.pop_front();
            resume = true;
          }
        }
        if (!resume) {
          auto id = store.Begin(MakeHeader("durability", group, t, kDurabilityRouting),
                                MakePrompt(64, group));
          if (!id.ok()) Die(id.status());
          meta.id = *id;
          meta.header.policy_version = t;
          Ack(absl::StrFormat("A %d 0\n", meta.id));
        }
        Generate(store, meta.id, meta.header.policy_version, meta.num_completion_tokens,
                 seed + group);
      }
    });
  }
  for (std::thread& thread : threads) thread.join();
  return 0;
}

}  // namespace
}  // namespace v4rl::store::testing

int main(int argc, char** argv) { return v4rl::store::testing::Main(argc, argv); }
