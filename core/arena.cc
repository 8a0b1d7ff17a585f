#include "core/arena.h"

#include <algorithm>
#include <cstring>

namespace v4rl::core {

Arena::Arena(Allocator* allocator, int64_t block_bytes)
    : allocator_(allocator), block_bytes_(block_bytes) {}

Arena::~Arena() {
  for (const Block& block : blocks_) allocator_->Free(block.base);
}

void* Arena::AllocateBytes(int64_t bytes) {
  const int64_t rounded = (std::max<int64_t>(bytes, 1) + 63) / 64 * 64;
  if (blocks_.empty() || blocks_.back().used + rounded > blocks_.back().size) {
    const int64_t size = std::max(block_bytes_, rounded);
    blocks_.push_back({static_cast<char*>(allocator_->Allocate(size)), size, 0});
  }
  Block& block = blocks_.back();
  void* pointer = block.base + block.used;
  block.used += rounded;
  bytes_in_use_ += rounded;
  peak_bytes_ = std::max(peak_bytes_, bytes_in_use_);
  return pointer;
}

TensorView Arena::Allocate(DType dtype, absl::Span<const int64_t> shape) {
  int64_t numel = 1;
  for (int64_t dim : shape) numel *= dim;
  return TensorView::Contiguous(AllocateBytes(DTypeBytes(dtype, numel)), dtype, shape,
                                allocator_->device());
}

TensorView Arena::AllocateZeros(DType dtype, absl::Span<const int64_t> shape) {
  V4RL_CHECK(allocator_->device() == Device::kCpu) << "AllocateZeros needs a CPU arena";
  TensorView view = Allocate(dtype, shape);
  std::memset(view.data, 0, view.nbytes());
  return view;
}

void Arena::Reset() {
  if (blocks_.empty()) return;
  // Keep the largest block so steady-state steps do not touch the allocator.
  auto largest = std::max_element(blocks_.begin(), blocks_.end(),
                                  [](const Block& a, const Block& b) { return a.size < b.size; });
  Block keep = *largest;
  for (const Block& block : blocks_) {
    if (block.base != keep.base) allocator_->Free(block.base);
  }
  keep.used = 0;
  blocks_.assign(1, keep);
  bytes_in_use_ = 0;
}

}  // namespace v4rl::core
