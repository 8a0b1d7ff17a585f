// Writer process for the durability test (rocksdb_trajectory_store_test.cc): opens the store with
// sync on and generates samples until it is killed, acknowledging every completed store call on
// an inherited pipe.
//
//   store_durability_writer DIR ACK_FD
//
// It first resumes the in-progress samples it finds (continuing each at its stored end, as a
// preempted rollout worker does), then starts new ones. Four threads write: three append one
// sample at a time with AppendTokens, one advances three samples per AppendTokensBatch (a decode
// step). Sample contents come from MakeCompletion(id, ...), each sample has TargetTokens(id)
// tokens and appends are 1..32 tokens, so the checker can tell exactly what must be stored.
// Ack lines, each one write(2) < PIPE_BUF and so atomic across threads:
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

void DieUnlessOk(const absl::Status& status) {
  if (status.ok()) return;
  std::fprintf(stderr, "store_durability_writer: %s\n", status.ToString().c_str());
  _exit(2);
}

struct Sample {
  TrajectoryId id;
  int64_t policy_version;
  int64_t num_tokens;  // stored so far
};

// Advances `samples` to TargetTokens each, in rounds of 1..32 tokens per sample: one
// AppendTokensBatch per round when `batched`, else one AppendTokens per sample. Finishes and
// rewards each sample that reaches its target.
void Generate(TrajectoryStore& store, std::vector<Sample> samples, bool batched, uint64_t seed) {
  while (!samples.empty()) {
    std::vector<CompletionTokens> chunks;
    std::vector<TokenAppend> appends;
    chunks.reserve(samples.size());
    for (const Sample& s : samples) {
      seed = seed * 6364136223846793005ull + 1442695040888963407ull;
      const int64_t n = std::min<int64_t>(1 + (seed >> 33) % 32, TargetTokens(s.id) - s.num_tokens);
      // n is 0 for a resumed sample killed between its last append and Finish.
      chunks.push_back(MakeCompletion(s.id, s.policy_version, kDurabilityRouting, s.num_tokens, n));
      if (n > 0) appends.push_back({s.id, s.num_tokens, &chunks.back()});
    }
    if (batched) {
      DieUnlessOk(store.AppendTokensBatch(appends));
    } else {
      for (const TokenAppend& a : appends) {
        DieUnlessOk(store.AppendTokens(a.id, a.first_token, *a.chunk));
        Ack(absl::StrFormat("A %d %d\n", a.id, a.first_token + a.chunk->num_tokens()));
      }
    }
    std::vector<Sample> unfinished;
    for (size_t i = 0; i < samples.size(); ++i) {
      Sample& s = samples[i];
      s.num_tokens += chunks[i].num_tokens();
      if (batched && chunks[i].num_tokens() > 0) {
        Ack(absl::StrFormat("A %d %d\n", s.id, s.num_tokens));
      }
      if (s.num_tokens < TargetTokens(s.id)) {
        unfinished.push_back(s);
        continue;
      }
      DieUnlessOk(store.Finish(s.id, TrajectoryStatus::kComplete));
      Ack(absl::StrFormat("F %d\n", s.id));
      DieUnlessOk(store.AddReward(s.id, {RewardSource::kVerifier, "durability", 1.0f}));
      Ack(absl::StrFormat("R %d\n", s.id));
    }
    samples = std::move(unfinished);
  }
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
  DieUnlessOk(opened.status());
  TrajectoryStore& store = **opened;

  // Samples a previous writer left in progress, resumed first.
  ScanQuery query;
  query.statuses = {TrajectoryStatus::kInProgress};
  auto in_progress = store.Scan(query);
  DieUnlessOk(in_progress.status());
  absl::Mutex mutex;
  std::deque<TrajectoryMeta> resumable(in_progress->begin(), in_progress->end());

  constexpr int kThreads = 4;
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      const bool batched = t == 0;
      uint64_t seed = static_cast<uint64_t>(getpid()) * 1000 + t;
      for (uint64_t group = 0;; ++group) {
        std::vector<Sample> samples;
        while (samples.size() < (batched ? 3u : 1u)) {
          absl::MutexLock lock(&mutex);
          if (resumable.empty()) break;
          const TrajectoryMeta& meta = resumable.front();
          samples.push_back({meta.id, meta.header.policy_version, meta.num_completion_tokens});
          resumable.pop_front();
        }
        while (samples.size() < (batched ? 3u : 1u)) {
          auto id = store.Begin(MakeHeader("durability", group, t, kDurabilityRouting),
                                MakePrompt(64, group));
          DieUnlessOk(id.status());
          Ack(absl::StrFormat("A %d 0\n", *id));
          samples.push_back({*id, t, 0});
        }
        Generate(store, std::move(samples), batched, seed + group);
      }
    });
  }
  for (std::thread& thread : threads) thread.join();
  return 0;
}

}  // namespace
}  // namespace v4rl::store::testing

int main(int argc, char** argv) { return v4rl::store::testing::Main(argc, argv); }
