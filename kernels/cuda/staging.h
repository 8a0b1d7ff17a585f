// Small host-to-device tables for the next launches (the decode step's per-sequence items)
// without waiting for the device: the bytes go through a ring of pinned host slots into a
// matching ring of device slots with cudaMemcpyAsync on the default stream. A host slot is
// refilled only after its previous copy has run (one event per slot); a device slot is refilled
// by a copy queued after every launch that read it (stream order), so a caller may launch kernels
// that read the returned pointer until it has staged kSlots more tables.
// Thread-safety: one process-wide ring behind a mutex; every launch must use the default stream
// (FailedPrecondition while a ScopedStream (stream.h) names another, e.g. during a graph capture).
#pragma once

#include <cstddef>

#include "absl/status/statusor.h"

namespace v4rl::kernels::cuda {

inline constexpr int kStagingSlots = 64;
inline constexpr size_t kStagingSlotBytes = size_t{64} << 10;

// A device copy of bytes [host, host + bytes), valid for launches queued before the next
// kStagingSlots calls. Tables larger than a slot take a synchronous cudaMalloc'd copy kept until
// the next oversized call. Internal on CUDA errors.
absl::StatusOr<void*> StageAsync(const void* host, size_t bytes);

}  // namespace v4rl::kernels::cuda
