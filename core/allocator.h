// Memory allocators. Tensors and arenas take an Allocator so the same code paths serve CPU and
// CUDA memory; the CUDA allocator lives in kernels/cuda (core includes no CUDA header).
// Thread-safe: allocators may be called from any thread.
#pragma once

#include <cstddef>
#include <cstdint>

namespace v4rl::core {

enum class Device : uint8_t { kCpu, kCuda };

class Allocator {
 public:
  virtual ~Allocator() = default;
  // Returns memory aligned to at least 64 bytes; CHECK-fails when out of memory.
  virtual void* Allocate(size_t bytes) = 0;
  virtual void Free(void* pointer) = 0;
  virtual Device device() const = 0;
};

// Process-wide CPU allocator (64-byte aligned).
Allocator* CpuAllocator();

}  // namespace v4rl::core
