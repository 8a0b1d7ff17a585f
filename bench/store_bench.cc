// Trajectory store throughput: appends/s and reads/s of realistic records (4,096 completion
// tokens, routing ids for 40 MoE layers x top-6 of 256 experts = 240 B/token, as V4-Flash) with
// sync off and on, against two baselines measured in the same run:
//   - raw log: the same per-token bytes (260 B/token) appended to one file with write(2), plus
//     fdatasync(2) per append when sync is on: the floor cost of any durable token log;
//   - memory: MemoryTrajectoryStore, the cost of validation and copying alone;
// and against the demand of one rollout worker (assumption below). Appends come from 1 or 8
// threads, 16 or 1 tokens each, singly or 128 trajectories per AppendTokensBatch.
//
//   store_bench [--dir DIR] [--seconds S]     (DIR on the disk to measure; default $TMPDIR)
#include <fcntl.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_format.h"
#include "store/memory_trajectory_store.h"
#include "store/rocksdb_trajectory_store.h"

namespace v4rl::store {
namespace {

constexpr int64_t kRecordTokens = 4096;
constexpr RoutingShape kFlashRouting{/*num_moe_layers=*/40, /*num_topk=*/6, /*num_experts=*/256};
// Bytes per token a raw log would write: id, logprob, kept-set size (4 B each), version (8 B),
// routing (240 B).
constexpr int64_t kRawBytesPerToken = 4 + 4 + 4 + 8 + 40 * 6;

// Assumption: one rollout worker (a V4-Flash engine on one node) decodes 128 sequences at
// 40 tokens/s each, 5,120 tokens/s. It appends each sequence's tokens every 16 tokens (320
// appends/s), after every token (5,120 appends/s), or after each decode step as one
// AppendTokensBatch of 128 one-token appends (40 writes/s).
constexpr double kWorkerTokensPerSecond = 128 * 40;

// Records per thread the memory baseline keeps.
constexpr int kMemoryRecords = 16;

uint64_t Next(uint64_t* state) {
  *state = *state * 6364136223846793005ull + 1442695040888963407ull;
  return *state >> 33;
}

// One 4,096-token completion cut into appends of `chunk_tokens`.
std::vector<CompletionTokens> MakeChunks(int64_t chunk_tokens) {
  std::vector<CompletionTokens> chunks;
  uint64_t state = 42;
  for (int64_t first = 0; first < kRecordTokens; first += chunk_tokens) {
    CompletionTokens chunk;
    for (int64_t i = 0; i < chunk_tokens; ++i) {
      chunk.token_ids.push_back(static_cast<int32_t>(Next(&state) % 129280));
      chunk.logprobs.push_back(-static_cast<float>(Next(&state) % 1000) / 100.0f);
      chunk.weight_versions.push_back(7);
      chunk.kept_set_sizes.push_back(1 + static_cast<int32_t>(Next(&state) % 64));
    }
    // Router choices repeat across neighbouring tokens in real traces; random ids are the
    // compression worst case.
    for (int64_t i = 0; i < kFlashRouting.ids_per_token() * chunk_tokens; ++i) {
      chunk.routed_experts.push_back(static_cast<uint16_t>(Next(&state) % 256));
    }
    chunks.push_back(std::move(chunk));
  }
  return chunks;
}

void OrDie(const absl::Status& status) {
  if (status.ok()) return;
  std::fprintf(stderr, "store_bench: %s\n", status.ToString().c_str());
  std::exit(1);
}

template <typename T>
T OrDie(absl::StatusOr<T> value) {
  OrDie(value.status());
  return *std::move(value);
}

TrajectoryHeader Header(int thread) {
  TrajectoryHeader header;
  header.job_id = "bench";
  header.group_id = static_cast<uint64_t>(thread);
  header.policy_version = 7;
  header.mode = ReasoningMode::kThinkHigh;
  header.routing = kFlashRouting;
  return header;
}

struct Throughput {
  double writes_per_second = 0;  // store calls (or raw-log write+fsync); a batch is one
  double tokens_per_second = 0;
  double megabytes_per_second = 0;     // raw per-token bytes (kRawBytesPerToken) appended
  std::vector<TrajectoryId> complete;  // records fully written
};

// `threads` writers each append records chunk by chunk for `seconds`, or until each has written
// `max_records` (which bounds the memory store's footprint, ~1 MB per record). With `batch` > 1 a
// writer keeps `batch` records in flight and appends the next chunk of all of them with one
// AppendTokensBatch, as a rollout worker after a decode step.
Throughput MeasureAppends(TrajectoryStore& store, int threads, int64_t chunk_tokens, int batch,
                          double seconds, int max_records = 1 << 30) {
  const std::vector<CompletionTokens> chunks = MakeChunks(chunk_tokens);
  const std::vector<int32_t> prompt(512, 1000);
  std::atomic<int64_t> writes{0};
  std::vector<std::vector<TrajectoryId>> complete(threads);
  const auto start = std::chrono::steady_clock::now();
  const auto deadline = start + std::chrono::duration<double>(seconds);
  std::vector<std::thread> workers;
  for (int t = 0; t < threads; ++t) {
    workers.emplace_back([&, t] {
      for (int r = 0; r < max_records && std::chrono::steady_clock::now() < deadline; r += batch) {
        std::vector<TrajectoryId> ids;
        for (int b = 0; b < batch; ++b) ids.push_back(OrDie(store.Begin(Header(t), prompt)));
        int64_t first = 0;
        std::vector<TokenAppend> appends(batch);
        for (const CompletionTokens& chunk : chunks) {
          if (std::chrono::steady_clock::now() >= deadline) return;
          if (batch == 1) {
            OrDie(store.AppendTokens(ids[0], first, chunk));
          } else {
            for (int b = 0; b < batch; ++b) appends[b] = {ids[b], first, &chunk};
            OrDie(store.AppendTokensBatch(appends));
          }
          first += chunk.num_tokens();
          ++writes;
        }
        for (TrajectoryId id : ids) OrDie(store.Finish(id, TrajectoryStatus::kComplete));
        complete[t].insert(complete[t].end(), ids.begin(), ids.end());
      }
    });
  }
  for (std::thread& worker : workers) worker.join();
  const double elapsed =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  Throughput result;
  result.writes_per_second = writes.load() / elapsed;
  result.tokens_per_second = result.writes_per_second * batch * chunk_tokens;
  result.megabytes_per_second = result.tokens_per_second * kRawBytesPerToken / 1e6;
  for (const auto& ids : complete)
    result.complete.insert(result.complete.end(), ids.begin(), ids.end());
  return result;
}

// The raw-log baseline: each thread appends the bytes of `tokens_per_write` tokens to one shared
// O_APPEND file per write.
Throughput MeasureRawLog(const std::string& path, int threads, int64_t tokens_per_write, bool sync,
                         double seconds) {
  const int fd = open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_APPEND | O_CLOEXEC, 0644);
  if (fd < 0) {
    std::perror("store_bench: raw log");
    std::exit(1);
  }
  const std::string record(static_cast<size_t>(tokens_per_write * kRawBytesPerToken), 'x');
  std::atomic<int64_t> writes{0};
  const auto start = std::chrono::steady_clock::now();
  const auto deadline = start + std::chrono::duration<double>(seconds);
  std::vector<std::thread> workers;
  for (int t = 0; t < threads; ++t) {
    workers.emplace_back([&] {
      while (std::chrono::steady_clock::now() < deadline) {
        if (write(fd, record.data(), record.size()) != static_cast<ssize_t>(record.size()) ||
            (sync && fdatasync(fd) != 0)) {
          std::perror("store_bench: raw log");
          std::exit(1);
        }
        ++writes;
      }
    });
  }
  for (std::thread& worker : workers) worker.join();
  const double elapsed =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  close(fd);
  std::filesystem::remove(path);
  Throughput result;
  result.writes_per_second = writes.load() / elapsed;
  result.tokens_per_second = result.writes_per_second * tokens_per_write;
  result.megabytes_per_second = result.tokens_per_second * kRawBytesPerToken / 1e6;
  return result;
}

// Whole-record reads (`threads` readers over `ids`) for `seconds`; returns reads/s.
double MeasureReads(TrajectoryStore& store, const std::vector<TrajectoryId>& ids, int threads,
                    bool with_routing, double seconds) {
  std::atomic<int64_t> reads{0};
  const auto start = std::chrono::steady_clock::now();
  const auto deadline = start + std::chrono::duration<double>(seconds);
  std::vector<std::thread> workers;
  for (int t = 0; t < threads; ++t) {
    workers.emplace_back([&, t] {
      for (size_t i = t; std::chrono::steady_clock::now() < deadline; i += threads) {
        absl::StatusOr<Trajectory> trajectory =
            store.Read(ids[i % ids.size()], {.with_routing = with_routing});
        if (!trajectory.ok() || trajectory->completion.num_tokens() != kRecordTokens) {
          std::fprintf(stderr, "store_bench: read failed: %s\n",
                       trajectory.status().ToString().c_str());
          std::exit(1);
        }
        ++reads;
      }
    });
  }
  for (std::thread& worker : workers) worker.join();
  return reads.load() /
         std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

std::unique_ptr<RocksDbTrajectoryStore> OpenFresh(const std::string& path, bool sync) {
  RocksDbStoreOptions options;
  options.sync = sync;
  absl::StatusOr<std::unique_ptr<RocksDbTrajectoryStore>> store =
      RocksDbTrajectoryStore::Open(path, options);
  if (!store.ok()) {
    std::fprintf(stderr, "store_bench: %s\n", store.status().ToString().c_str());
    std::exit(1);
  }
  return *std::move(store);
}

void PrintRow(const std::string& name, const Throughput& t, const Throughput& raw) {
  absl::PrintF("%-42s %10.0f %11.0f %8.1f %8.2fx %8.2fx\n", name, t.writes_per_second,
               t.tokens_per_second, t.megabytes_per_second,
               t.tokens_per_second / raw.tokens_per_second,
               t.tokens_per_second / kWorkerTokensPerSecond);
}

int Main(int argc, char** argv) {
  std::string dir;
  double seconds = 2.0;
  for (int i = 1; i + 1 < argc; i += 2) {
    if (std::strcmp(argv[i], "--dir") == 0) {
      dir = argv[i + 1];
    } else if (std::strcmp(argv[i], "--seconds") == 0) {
      seconds = std::atof(argv[i + 1]);
    }
  }
  if (dir.empty()) {
    const char* tmp = std::getenv("TMPDIR");
    dir = absl::StrFormat("%s/v4rl_store_bench_%d", tmp != nullptr ? tmp : "/tmp", getpid());
  }
  std::filesystem::create_directories(dir);
  const std::string raw_path = dir + "/raw.log";
  absl::PrintF(
      "record: %d tokens, routing %d layers x %d experts (1 B ids), %d B/token raw; %d cores\n"
      "worker assumption: 128 sequences x 40 tok/s = %.0f tokens/s; appends every 16 tokens "
      "(%.0f/s), every token (%.0f/s) or one batch per decode step (40/s)\n"
      "vs raw: tokens/s over the raw log's with the same threads and bytes per write; workers: "
      "tokens/s over one worker's\n\n",
      kRecordTokens, kFlashRouting.num_moe_layers, kFlashRouting.num_topk, kRawBytesPerToken,
      std::thread::hardware_concurrency(), kWorkerTokensPerSecond, kWorkerTokensPerSecond / 16,
      kWorkerTokensPerSecond);
  absl::PrintF("%-42s %10s %11s %8s %9s %9s\n", "appends", "writes/s", "tokens/s", "MB/s", "vs raw",
               "workers");

  struct Config {
    int threads;
    int64_t chunk_tokens;  // per trajectory and write
    int batch;             // trajectories per write (AppendTokensBatch when > 1)
  };
  const Config configs[] = {{1, 16, 1}, {8, 16, 1}, {8, 1, 1}, {1, 1, 128}, {1, 16, 128}};
  std::vector<TrajectoryId> readable;                  // complete records of the last sync-off run
  std::unique_ptr<RocksDbTrajectoryStore> read_store;  // kept open with its records
  int run = 0;
  for (const bool sync : {false, true}) {
    for (const Config& c : configs) {
      const std::string db_path = absl::StrFormat("%s/db%d", dir, run++);
      const std::string what = absl::StrFormat("%d thr x %d seq x %d tok, sync %s", c.threads,
                                               c.batch, c.chunk_tokens, sync ? "on" : "off");
      const Throughput raw =
          MeasureRawLog(raw_path, c.threads, c.batch * c.chunk_tokens, sync, seconds);
      PrintRow("raw log  " + what, raw, raw);
      std::unique_ptr<RocksDbTrajectoryStore> store = OpenFresh(db_path, sync);
      const Throughput rocks = MeasureAppends(*store, c.threads, c.chunk_tokens, c.batch, seconds);
      PrintRow("rocksdb  " + what, rocks, raw);
      if (!sync && c.batch == 1) {
        MemoryTrajectoryStore memory;
        PrintRow("memory   " + what,
                 MeasureAppends(memory, c.threads, c.chunk_tokens, 1, seconds, kMemoryRecords),
                 raw);
      }
      if (!sync && c.chunk_tokens == 16 && c.threads == 8) {
        readable = rocks.complete;
        read_store = std::move(store);
      } else {
        store.reset();
        std::filesystem::remove_all(db_path);
      }
    }
  }

  absl::PrintF("\n%-34s %11s %12s %10s\n", "reads (whole 4K-token records)", "reads/s", "tokens/s",
               "vs memory");
  if (readable.empty()) {
    absl::PrintF("no complete record to read; raise --seconds\n");
    return 1;
  }
  // The memory baseline reads the same records, appended the same way.
  MemoryTrajectoryStore memory;
  const Throughput memory_records = MeasureAppends(memory, 1, 16, 1, seconds, kMemoryRecords);
  for (const bool with_routing : {true, false}) {
    for (const int threads : {1, 4}) {
      const double rocks = MeasureReads(*read_store, readable, threads, with_routing, seconds);
      const double mem =
          MeasureReads(memory, memory_records.complete, threads, with_routing, seconds);
      absl::PrintF(
          "%-34s %11.1f %12.0f %9.2fx\n",
          absl::StrFormat("rocksdb %d thr, routing %s", threads, with_routing ? "on" : "off")
              .c_str(),
          rocks, rocks * kRecordTokens, rocks / mem);
      absl::PrintF(
          "%-34s %11.1f %12.0f\n",
          absl::StrFormat("memory  %d thr, routing %s", threads, with_routing ? "on" : "off")
              .c_str(),
          mem, mem * kRecordTokens);
    }
  }
  read_store.reset();
  std::filesystem::remove_all(dir);
  return 0;
}

}  // namespace
}  // namespace v4rl::store

int main(int argc, char** argv) { return v4rl::store::Main(argc, argv); }
