// ThreadPool with a blocking ParallelFor for the CPU reference kernels.
//
// ParallelFor splits [begin, end) into contiguous chunks and runs them on the workers and the
// calling thread; it returns when every chunk is done. Chunking depends only on the range, the
// grain and the thread count, and every index is visited exactly once, so kernels that write
// index-owned outputs give identical results for any thread count. A ParallelFor called from
// inside a worker runs serially in that worker (no deadlock, no oversubscription).
// Thread-safe: ParallelFor may be called from several threads; calls are serialised.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace v4rl::core {

class ThreadPool {
 public:
  // num_threads counts the caller too; 0 means std::thread::hardware_concurrency().
  explicit ThreadPool(int num_threads);
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;
  ~ThreadPool();

  // Process-wide pool; its size comes from V4RL_NUM_THREADS (default: all cores).
  static ThreadPool& Default();

  int num_threads() const { return static_cast<int>(workers_.size()) + 1; }

  // Runs fn(chunk_begin, chunk_end) over [begin, end) in chunks of at least `grain` indices.
  void ParallelFor(int64_t begin, int64_t end, int64_t grain,
                   const std::function<void(int64_t, int64_t)>& fn);

 private:
  void WorkerLoop();
  void RunChunks();

  std::vector<std::thread> workers_;
  std::mutex call_mutex_;  // serialises ParallelFor callers
  std::mutex mutex_;
  std::condition_variable work_ready_;
  std::condition_variable work_done_;
  const std::function<void(int64_t, int64_t)>* job_ = nullptr;
  int64_t job_begin_ = 0;
  int64_t job_chunk_ = 0;
  int64_t job_num_chunks_ = 0;
  int64_t job_end_ = 0;
  int64_t next_chunk_ = 0;
  int64_t chunks_done_ = 0;
  uint64_t generation_ = 0;
  bool stopping_ = false;
};

// Runs fn over [begin, end) on `pool`, or on the calling thread in one call when pool is null
// (the kernels take an optional pool).
void ParallelForOrInline(ThreadPool* pool, int64_t begin, int64_t end, int64_t grain,
                         const std::function<void(int64_t, int64_t)>& fn);

}  // namespace v4rl::core
