#include "core/thread_pool.h"

#include <algorithm>
#include <cstdlib>

namespace v4rl::core {
namespace {
thread_local bool inside_worker = false;
}  // namespace

ThreadPool::ThreadPool(int num_threads) {
  if (num_threads <= 0) num_threads = static_cast<int>(std::thread::hardware_concurrency());
  num_threads = std::max(num_threads, 1);
  for (int i = 1; i < num_threads; ++i) {
    workers_.emplace_back([this] { WorkerLoop(); });
  }
}

ThreadPool::~ThreadPool() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stopping_ = true;
  }
  work_ready_.notify_all();
  for (std::thread& worker : workers_) worker.join();
}

ThreadPool& ThreadPool::Default() {
  static ThreadPool* pool = [] {
    const char* env = std::getenv("V4RL_NUM_THREADS");
    return new ThreadPool(env ? std::atoi(env) : 0);
  }();
  return *pool;
}

void ThreadPool::RunChunks() {
  // Claims chunks until none are left; called with mutex_ unlocked.
  while (true) {
    const std::function<void(int64_t, int64_t)>* job;
    int64_t begin, end;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      if (job_ == nullptr || next_chunk_ >= job_num_chunks_) return;
      const int64_t chunk = next_chunk_++;
      job = job_;
      begin = job_begin_ + chunk * job_chunk_;
      end = std::min(begin + job_chunk_, job_end_);
    }
    (*job)(begin, end);
    {
      std::lock_guard<std::mutex> lock(mutex_);
      if (++chunks_done_ == job_num_chunks_) work_done_.notify_all();
    }
  }
}

void ThreadPool::WorkerLoop() {
  inside_worker = true;
  uint64_t seen_generation = 0;
  while (true) {
    {
      std::unique_lock<std::mutex> lock(mutex_);
      work_ready_.wait(lock, [&] { return stopping_ || generation_ != seen_generation; });
      if (stopping_) return;
      seen_generation = generation_;
    }
    RunChunks();
  }
}

void ThreadPool::ParallelFor(int64_t begin, int64_t end, int64_t grain,
                             const std::function<void(int64_t, int64_t)>& fn) {
  if (end <= begin) return;
  grain = std::max<int64_t>(grain, 1);
  const int64_t count = end - begin;
  if (inside_worker || workers_.empty() || count <= grain) {
    fn(begin, end);
    return;
  }
  // A few chunks per thread balance uneven work without much locking.
  const int64_t max_chunks = std::max<int64_t>(1, count / grain);
  const int64_t num_chunks = std::min<int64_t>(max_chunks, 4 * num_threads());
  std::lock_guard<std::mutex> call_lock(call_mutex_);
  {
    std::lock_guard<std::mutex> lock(mutex_);
    job_ = &fn;
    job_begin_ = begin;
    job_end_ = end;
    job_chunk_ = (count + num_chunks - 1) / num_chunks;
    job_num_chunks_ = (count + job_chunk_ - 1) / job_chunk_;
    next_chunk_ = 0;
    chunks_done_ = 0;
    ++generation_;
  }
  work_ready_.notify_all();
  // The caller works too, marked as a worker so nested ParallelFor calls run inline.
  inside_worker = true;
  RunChunks();
  inside_worker = false;
  std::unique_lock<std::mutex> lock(mutex_);
  work_done_.wait(lock, [&] { return chunks_done_ == job_num_chunks_; });
  job_ = nullptr;
}

void ParallelForOrInline(ThreadPool* pool, int64_t begin, int64_t end, int64_t grain,
                         const std::function<void(int64_t, int64_t)>& fn) {
  if (pool == nullptr) {
    if (end > begin) fn(begin, end);
  } else {
    pool->ParallelFor(begin, end, grain, fn);
  }
}

}  // namespace v4rl::core
