// Arena: bump allocation of per-step activations (DESIGN.md §3: kernels never allocate).
//
// Memory comes from an Allocator in blocks; Allocate never moves earlier allocations, so views
// stay valid until Reset(). Reset() keeps the largest block for reuse. Not thread-safe: one
// arena per step per thread.
#pragma once

#include <cstdint>
#include <vector>

#include "absl/types/span.h"
#include "core/allocator.h"
#include "core/tensor.h"

namespace v4rl::core {

class Arena {
 public:
  explicit Arena(Allocator* allocator = CpuAllocator(), int64_t block_bytes = 64 << 20);
  Arena(const Arena&) = delete;
  Arena& operator=(const Arena&) = delete;
  ~Arena();

  // 64-byte aligned, uninitialised.
  void* AllocateBytes(int64_t bytes);
  // Contiguous uninitialised view.
  TensorView Allocate(DType dtype, absl::Span<const int64_t> shape);
  // Contiguous zero-filled view (CPU arenas only).
  TensorView AllocateZeros(DType dtype, absl::Span<const int64_t> shape);

  // Invalidates every view handed out since the last Reset.
  void Reset();
  int64_t bytes_in_use() const { return bytes_in_use_; }
  int64_t peak_bytes() const { return peak_bytes_; }

 private:
  struct Block {
    char* base;
    int64_t size;
    int64_t used;
  };
  Allocator* allocator_;
  int64_t block_bytes_;
  std::vector<Block> blocks_;
  int64_t bytes_in_use_ = 0;
  int64_t peak_bytes_ = 0;
};

}  // namespace v4rl::core
