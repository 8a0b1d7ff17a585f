#include "kernels/cuda/stream.h"

#include <cuda_runtime.h>

#include "absl/strings/str_format.h"

namespace v4rl::kernels::cuda {
namespace {

absl::Status CudaError(const char* what, cudaError_t error) {
  return absl::InternalError(
      absl::StrFormat("SideStream: %s: %s", what, cudaGetErrorString(error)));
}

}  // namespace

absl::StatusOr<std::unique_ptr<SideStream>> SideStream::Create() {
  std::unique_ptr<SideStream> side(new SideStream());
  cudaStream_t stream = nullptr;
  // Non-blocking: work on the legacy default stream (the launch stream outside graph captures)
  // does not wait for the side's, nor the side's for it, but through Fork's and Join's events.
  if (cudaError_t e = cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking); e != cudaSuccess) {
    return CudaError("cudaStreamCreateWithFlags", e);
  }
  side->stream_ = stream;
  for (void** event : {&side->forked_, &side->done_}) {
    cudaEvent_t created = nullptr;
    if (cudaError_t e = cudaEventCreateWithFlags(&created, cudaEventDisableTiming);
        e != cudaSuccess) {
      return CudaError("cudaEventCreateWithFlags", e);
    }
    *event = created;
  }
  return side;
}

SideStream::~SideStream() {
  if (stream_ != nullptr) cudaStreamSynchronize(static_cast<cudaStream_t>(stream_));
  for (void* event : {forked_, done_}) {
    if (event != nullptr) cudaEventDestroy(static_cast<cudaEvent_t>(event));
  }
  if (stream_ != nullptr) cudaStreamDestroy(static_cast<cudaStream_t>(stream_));
}

absl::Status SideStream::Fork(const std::function<absl::Status()>& queue) {
  if (pending_) return absl::FailedPreconditionError("SideStream::Fork: the last fork awaits Join");
  const auto main = static_cast<cudaStream_t>(CurrentStream());
  const auto side = static_cast<cudaStream_t>(stream_);
  if (cudaError_t e = cudaEventRecord(static_cast<cudaEvent_t>(forked_), main); e != cudaSuccess) {
    return CudaError("cudaEventRecord", e);
  }
  if (cudaError_t e = cudaStreamWaitEvent(side, static_cast<cudaEvent_t>(forked_), 0);
      e != cudaSuccess) {
    return CudaError("cudaStreamWaitEvent", e);
  }
  pending_ = true;
  absl::Status status;
  {
    ScopedStream on_side(stream_);
    status = queue();
  }
  if (cudaError_t e = cudaEventRecord(static_cast<cudaEvent_t>(done_), side); e != cudaSuccess) {
    return CudaError("cudaEventRecord", e);
  }
  return status;
}

absl::Status SideStream::Join() {
  if (!pending_) return absl::OkStatus();
  pending_ = false;
  if (cudaError_t e = cudaStreamWaitEvent(static_cast<cudaStream_t>(CurrentStream()),
                                          static_cast<cudaEvent_t>(done_), 0);
      e != cudaSuccess) {
    return CudaError("cudaStreamWaitEvent", e);
  }
  return absl::OkStatus();
}

}  // namespace v4rl::kernels::cuda
