// Argument checks shared by the op families of kernels/ops.h and kernels/backward_ops.h: each
// CHECK-fails with a message naming the op, the argument and the shapes (a mismatch is a caller
// bug, see ops.h). Internal to kernels/; not part of the ops API.
#pragma once

#include <cstdint>
#include <initializer_list>

#include "core/logging.h"
#include "core/tensor.h"

namespace v4rl::kernels::internal {

using core::TensorView;

// A 2-D row view: element (r, c) at data[r * ld + c].
struct Rows {
  float* data;
  int64_t rows;
  int64_t cols;
  int64_t ld;
};

// An optional view is one with data == nullptr.
inline bool Present(const TensorView& v) { return v.data != nullptr; }

// f32 on the CPU (the only device with kernels behind these ops so far).
void CheckCpuF32(const char* op, const char* name, const TensorView& v);
void CheckContiguousF32(const char* op, const char* name, const TensorView& v);
void CheckShape(const char* op, const char* name, const TensorView& v,
                std::initializer_list<int64_t> shape);

// A rank-2 view with a unit inner stride, or a contiguous view of any rank flattened to
// [numel / last_dim, last_dim].
Rows AsRows(const char* op, const char* name, const TensorView& v);

// Checks the inputs common to the sparse attention forward and backward (q, kv, sink, comp_kv,
// comp_idx, the window and positions) and fills the matching fields of the CPU kernel's params.
// Args: kernels::SparseAttentionArgs or SparseAttentionBackwardArgs; Params: the matching
// cpu::SparseAttention(Backward)Params<float>. The op's own outputs are checked by the caller.
template <typename Args, typename Params>
void CheckSparseAttentionInputs(const char* op, const Args& args, Params* p) {
  CheckContiguousF32(op, "q", args.q);
  V4RL_CHECK_EQ(args.q.rank, 3) << op << ": q " << args.q.DebugString();
  const int64_t num_q = args.q.shape[0];
  const int64_t num_heads = args.q.shape[1];
  const int64_t head_dim = args.q.shape[2];
  CheckContiguousF32(op, "kv", args.kv);
  V4RL_CHECK(args.kv.rank == 2 && args.kv.shape[1] == head_dim)
      << op << ": kv " << args.kv.DebugString() << " vs q " << args.q.DebugString();
  CheckContiguousF32(op, "sink", args.sink);
  CheckShape(op, "sink", args.sink, {num_heads});
  V4RL_CHECK_GT(args.window, 0) << op;
  // The window of the last query must lie inside the given raw rows.
  V4RL_CHECK_LE(args.q_pos0 + num_q, args.kv_pos0 + args.kv.shape[0])
      << op << ": queries beyond the raw KV rows";
  p->q = args.q.template data_as<float>();
  p->kv = args.kv.template data_as<float>();
  p->sink = args.sink.template data_as<float>();
  p->num_q = num_q;
  p->num_heads = num_heads;
  p->head_dim = head_dim;
  p->num_kv = args.kv.shape[0];
  p->q_pos0 = args.q_pos0;
  p->kv_pos0 = args.kv_pos0;
  p->window = args.window;
  p->scale = args.scale;
  if (!Present(args.comp_kv)) return;
  CheckContiguousF32(op, "comp_kv", args.comp_kv);
  V4RL_CHECK(args.comp_kv.rank == 2 && args.comp_kv.shape[1] == head_dim)
      << op << ": comp_kv " << args.comp_kv.DebugString();
  p->comp_kv = args.comp_kv.template data_as<float>();
  p->num_comp = args.comp_kv.shape[0];
  if (Present(args.comp_idx)) {
    V4RL_CHECK(args.comp_idx.dtype == core::DType::kI32 && args.comp_idx.is_contiguous() &&
               args.comp_idx.rank == 2 && args.comp_idx.shape[0] == num_q)
        << op << ": comp_idx must be contiguous i32 [num_q, topk], got "
        << args.comp_idx.DebugString();
    p->comp_idx = args.comp_idx.template data_as<int32_t>();
    p->comp_topk = args.comp_idx.shape[1];
    for (int64_t i = 0; i < num_q * p->comp_topk; ++i) {
      V4RL_CHECK_LT(p->comp_idx[i], p->num_comp) << op << ": comp_idx entry " << i;
    }
  } else {
    V4RL_CHECK_GT(args.comp_ratio, 0) << op << ": comp_kv without comp_idx needs comp_ratio";
    p->comp_ratio = args.comp_ratio;
  }
}

}  // namespace v4rl::kernels::internal
