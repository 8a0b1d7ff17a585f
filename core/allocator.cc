#include "core/allocator.h"

#include <cstdlib>

#include "core/logging.h"

namespace v4rl::core {
namespace {

class CpuAllocatorImpl final : public Allocator {
 public:
  void* Allocate(size_t bytes) override {
    // aligned_alloc needs a size that is a multiple of the alignment.
    const size_t rounded = ((bytes == 0 ? 1 : bytes) + 63) / 64 * 64;
    void* pointer = std::aligned_alloc(64, rounded);
    V4RL_CHECK(pointer != nullptr) << "out of memory allocating " << bytes << " bytes";
    return pointer;
  }
  void Free(void* pointer) override { std::free(pointer); }
  Device device() const override { return Device::kCpu; }
};

}  // namespace

Allocator* CpuAllocator() {
  static CpuAllocatorImpl* allocator = new CpuAllocatorImpl();
  return allocator;
}

}  // namespace v4rl::core
