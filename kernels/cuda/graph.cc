#include "kernels/cuda/graph.h"

#include <cuda_runtime.h>

#include <algorithm>
#include <vector>

#include "absl/strings/str_format.h"
#include "kernels/cuda/device.h"
#include "kernels/cuda/stream.h"

namespace v4rl::kernels::cuda {
namespace {

absl::Status CudaError(const char* what, cudaError_t error) {
  return absl::InternalError(absl::StrFormat("CudaGraph: %s: %s", what, cudaGetErrorString(error)));
}

// This thread's capture in progress, if any: the capture stream and RunConcurrently's others.
struct CaptureStreams {
  cudaStream_t capture = nullptr;
  std::vector<cudaStream_t> sides;  // non-blocking; each joins the capture at a fork
  // sides[0, in_use) carry branches now. RunConcurrently calls nest (a call returns before its
  // caller's branch does), so each takes the streams past in_use and gives them back on return.
  size_t in_use = 0;

  bool Records(void* stream) const {
    return stream == capture || std::find(sides.begin(), sides.end(), stream) != sides.end();
  }
};
thread_local CaptureStreams* thread_capture = nullptr;

// Makes `waiter` wait for the work queued on `stream` so far (a graph edge while capturing).
absl::Status Await(cudaStream_t stream, cudaStream_t waiter, const char* what) {
  cudaEvent_t event = nullptr;
  if (cudaError_t e = cudaEventCreateWithFlags(&event, cudaEventDisableTiming); e != cudaSuccess) {
    return CudaError(what, e);
  }
  cudaError_t e = cudaEventRecord(event, stream);
  if (e == cudaSuccess) e = cudaStreamWaitEvent(waiter, event, 0);
  cudaEventDestroy(event);
  return e == cudaSuccess ? absl::OkStatus() : CudaError(what, e);
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
  CaptureStreams streams;
  streams.capture = stream;
  absl::Status status;
  {
    ScopedStream on_capture(stream);
    ScopedCachingDeviceAllocator in_graph_memory(graph->memory_.get());
    thread_capture = &streams;
    status = body();
    thread_capture = nullptr;
  }
  cudaGraph_t recorded = nullptr;
  const cudaError_t ended = cudaStreamEndCapture(stream, &recorded);
  for (cudaStream_t side : streams.sides) cudaStreamDestroy(side);
  cudaStreamDestroy(stream);
  graph->graph_ = recorded;
  if (!status.ok()) return status;
  if (ended != cudaSuccess) return CudaError("cudaStreamEndCapture", ended);
  size_t nodes = 0;
  if (cudaError_t e = cudaGraphGetNodes(recorded, nullptr, &nodes); e != cudaSuccess) {
    return CudaError("cudaGraphGetNodes", e);
  }
  graph->num_nodes_ = static_cast<int64_t>(nodes);
  size_t edges = 0;
  if (cudaError_t e = cudaGraphGetEdges(recorded, nullptr, nullptr, nullptr, &edges);
      e != cudaSuccess) {
    return CudaError("cudaGraphGetEdges", e);
  }
  graph->num_edges_ = static_cast<int64_t>(edges);
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

absl::Status RunConcurrently(absl::Span<const std::function<absl::Status()>> branches) {
  CaptureStreams* capture = thread_capture;
  if (capture == nullptr || branches.size() < 2 || !capture->Records(CurrentStream())) {
    for (const auto& branch : branches) {
      if (absl::Status s = branch(); !s.ok()) return s;
    }
    return absl::OkStatus();
  }
  // Branch 0 stays on the stream this call records on; the others take idle side streams.
  const auto origin = static_cast<cudaStream_t>(CurrentStream());
  const size_t first = capture->in_use, sides = branches.size() - 1;
  while (capture->sides.size() < first + sides) {
    cudaStream_t side = nullptr;
    if (cudaError_t e = cudaStreamCreateWithFlags(&side, cudaStreamNonBlocking); e != cudaSuccess) {
      return CudaError("RunConcurrently: cudaStreamCreateWithFlags", e);
    }
    capture->sides.push_back(side);
  }
  capture->in_use = first + sides;
  ScopedHeldFrees held;  // released after the join below
  absl::Status status;
  size_t forked = 0;  // side streams in the capture, each to be joined
  for (; forked < sides && status.ok(); ++forked) {
    status = Await(origin, capture->sides[first + forked], "RunConcurrently fork");
  }
  for (size_t i = 0; i < branches.size() && status.ok(); ++i) {
    ScopedStream on_branch(i == 0 ? origin : capture->sides[first + i - 1]);
    status = branches[i]();
  }
  // Joined even after an error: a capture with an unjoined stream cannot end.
  for (size_t i = 0; i < forked; ++i) {
    const absl::Status joined = Await(capture->sides[first + i], origin, "RunConcurrently join");
    if (status.ok()) status = joined;
  }
  capture->in_use = first;
  return status;
}

}  // namespace v4rl::kernels::cuda
