#include "kernels/cuda/graph.h"

#include <cuda_runtime.h>

#include "absl/strings/str_format.h"
#include "kernels/cuda/device.h"
#include "kernels/cuda/stream.h"

namespace v4rl::kernels::cuda {
namespace {

absl::Status CudaError(const char* what, cudaError_t error) {
  return absl::InternalError(absl::StrFormat("CudaGraph: %s: %s", what, cudaGetErrorString(error)));
}

}  // namespace

absl::StatusOr<std::unique_ptr<CudaGraph>> CudaGraph::Capture(
    const std::function<absl::Status()>& body) {
  std::unique_ptr<CudaGraph> graph(new CudaGraph());
  graph->memory_ = NewCachingDeviceAllocator();
  // A blocking stream: a stray launch on the legacy stream during the capture then conflicts
  // with it and fails the capture instead of running outside the graph.
  cudaStream_t stream = nullptr;
  if (cudaError_t e = cudaStreamCreate(&stream); e != cudaSuccess) {
    return CudaError("cudaStreamCreate", e);
  }
  // Relaxed: the body may cudaMalloc (the graph's memory grows while it records).
  if (cudaError_t e = cudaStreamBeginCapture(stream, cudaStreamCaptureModeRelaxed);
      e != cudaSuccess) {
    cudaStreamDestroy(stream);
    return CudaError("cudaStreamBeginCapture", e);
  }
  absl::Status status;
  {
    ScopedStream on_capture(stream);
    ScopedCachingDeviceAllocator in_graph_memory(graph->memory_.get());
    status = body();
  }
  cudaGraph_t recorded = nullptr;
  const cudaError_t ended = cudaStreamEndCapture(stream, &recorded);
  cudaStreamDestroy(stream);
  graph->graph_ = recorded;
  if (!status.ok()) return status;
  if (ended != cudaSuccess) return CudaError("cudaStreamEndCapture", ended);
  size_t nodes = 0;
  if (cudaError_t e = cudaGraphGetNodes(recorded, nullptr, &nodes); e != cudaSuccess) {
    return CudaError("cudaGraphGetNodes", e);
  }
  graph->num_nodes_ = static_cast<int64_t>(nodes);
  cudaGraphExec_t exec = nullptr;
  if (cudaError_t e = cudaGraphInstantiate(&exec, recorded, 0); e != cudaSuccess) {
    return CudaError("cudaGraphInstantiate", e);
  }
  graph->exec_ = exec;
  return graph;
}

CudaGraph::~CudaGraph() {
  cudaDeviceSynchronize();
  if (exec_ != nullptr) cudaGraphExecDestroy(static_cast<cudaGraphExec_t>(exec_));
  if (graph_ != nullptr) cudaGraphDestroy(static_cast<cudaGraph_t>(graph_));
  cudaGetLastError();  // a failed capture leaves its error here; the status reported it
}

absl::Status CudaGraph::Launch() {
  if (cudaError_t e = cudaGraphLaunch(static_cast<cudaGraphExec_t>(exec_), nullptr);
      e != cudaSuccess) {
    return CudaError("cudaGraphLaunch", e);
  }
  return absl::OkStatus();
}

}  // namespace v4rl::kernels::cuda
