// The Learner gRPC service (protos/learner_service.proto) over the learner's store and its
// meeting points (learner/learner_inbox.h): SubmitTrajectories checks submitted ids against the
// store, or validates and writes whole trajectories to it, and queues the ids in the inbox;
// WaitForWeightVersion blocks on the version board. Every field is checked before anything is
// written; bad requests get INVALID_ARGUMENT naming the field, and nothing a request holds can
// crash the server.
// Ownership: store, board and inbox are not owned and outlive the service.
// Thread-safety: gRPC may call every method concurrently (the store, board and inbox are
// thread-safe).
#pragma once

#include <string>

#include "learner/learner_inbox.h"
#include "protos/learner_service.grpc.pb.h"
#include "store/trajectory_store.h"

namespace v4rl::learner {

inline constexpr int kMaxSubmittedIds = 65536;
inline constexpr int kMaxSubmittedTrajectories = 4096;
inline constexpr int64_t kMaxWaitMs = 10 * 60 * 1000;

class LearnerServiceImpl final : public v4rl::LearnerService::Service {
 public:
  // `token`: shared secret required from clients; empty = none (loopback use).
  LearnerServiceImpl(store::TrajectoryStore* store, WeightVersionBoard* board,
                     TrajectoryInbox* inbox, std::string token = "")
      : store_(store), board_(board), inbox_(inbox), token_(std::move(token)) {}

  grpc::Status SubmitTrajectories(grpc::ServerContext* context,
                                  const SubmitTrajectoriesRequest* request,
                                  SubmitTrajectoriesResponse* response) override;
  grpc::Status WaitForWeightVersion(grpc::ServerContext* context,
                                    const WaitForWeightVersionRequest* request,
                                    WaitForWeightVersionResponse* response) override;

 private:
  store::TrajectoryStore* store_;
  WeightVersionBoard* board_;
  TrajectoryInbox* inbox_;
  std::string token_;
};

}  // namespace v4rl::learner
