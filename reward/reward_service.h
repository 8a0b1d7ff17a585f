// The Reward gRPC service (protos/reward_service.proto): validates each request, converts it to
// plain structs and scores every item with the rule verifier (reward/verifier.h). Bad requests get
// INVALID_ARGUMENT naming the item and field; nothing a request holds can crash the server.
// Thread-safety: stateless; gRPC may call Score concurrently.
#pragma once

#include <string>

#include "protos/reward_service.grpc.pb.h"

namespace v4rl::reward {

inline constexpr size_t kMaxCompletionBytes = 16 << 20;
inline constexpr int kMaxItemsPerRequest = 65536;

class RewardServiceImpl final : public v4rl::RewardService::Service {
 public:
  // `token`: shared secret required from clients; empty = none (loopback use).
  explicit RewardServiceImpl(std::string token = "") : token_(std::move(token)) {}

  grpc::Status Score(grpc::ServerContext* context, const ScoreRequest* request,
                     ScoreResponse* response) override;

 private:
  std::string token_;
};

}  // namespace v4rl::reward
