// CPU reference of the compressor's gated pooling (spec §3.4): each complete window of `ratio`
// tokens becomes one entry, a per-channel softmax over the window's slots of the gate scores
// weighting the projected values.
//
// Without overlap (HCA): entry w pools rows w·ratio .. w·ratio + ratio - 1, channels [0, head_dim).
// With overlap (CSA and the indexer): rows carry 2·head_dim channels; entry w pools the previous
// window's rows on channels [0, head_dim) (series A) and its own window's rows on channels
// [head_dim, 2·head_dim) (series B), 2·ratio slots; entry 0 of the input has no series A
// (weight 0, pitfall 7). Slots are summed A then B in row order, as transformers does.
// Templated on the element type: float for the model, double for the finite-difference checks
// of kernels/cpu/compressor_backward.h. Thread-safety: reentrant; parallel over entries.
#pragma once

#include <cstdint>

namespace v4rl::core {
class ThreadPool;
}

namespace v4rl::kernels::cpu {

// kv, score: [num_windows · ratio, width] with width = (overlap ? 2 : 1) · head_dim; `score` is
// the gate projection plus the positional bias. out: [num_windows - first_entry, head_dim], the
// entries first_entry .. num_windows - 1 (the rows before first_entry only feed series A).
template <typename T>
void CompressPoolRef(const T* kv, const T* score, int64_t num_windows, int64_t ratio,
                     int64_t head_dim, bool overlap, int64_t first_entry, T* out,
                     core::ThreadPool* pool);

}  // namespace v4rl::kernels::cpu
