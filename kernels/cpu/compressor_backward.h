// CPU reference backward of the compressor's gated pooling (kernels/cpu/compressor.h):
// gradients of the projected values and of the gate scores (projection + positional bias) of
// every row, through the per-channel softmax over each entry's slots, for CSA's overlapping
// windows and HCA's plain ones alike.
//
// Each (row, channel) feeds exactly one entry (series A channels the next window's entry,
// series B channels its own), so entries are independent; rows of an incomplete trailing window,
// and series A of the last complete window, receive no gradient. Gradients are ADDED to dkv and
// dscore (the caller zeroes them). The positional bias gradient is the sum of dscore over the
// rows sharing a slot (row mod ratio); the caller reduces it.
// Templated on the element type: float for training, double for the finite-difference checks.
// Thread-safety: reentrant; parallel over entries, each writing only its own rows' channels.
#pragma once

#include <cstdint>

namespace v4rl::core {
class ThreadPool;
}

namespace v4rl::kernels::cpu {

// kv, score: [num_windows · ratio, width], width = (overlap ? 2 : 1) · head_dim, as in
// CompressPoolRef; dout: [num_windows - first_entry, head_dim] dL/d(entries);
// dkv, dscore: [num_windows · ratio, width], +=.
template <typename T>
void CompressPoolBackwardRef(const T* kv, const T* score, int64_t num_windows, int64_t ratio,
                             int64_t head_dim, bool overlap, int64_t first_entry, const T* dout,
                             T* dkv, T* dscore, core::ThreadPool* pool);

}  // namespace v4rl::kernels::cpu
