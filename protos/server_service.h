// Shared plumbing for v4rl's gRPC servers: start a server on an address (127.0.0.1 by default,
// port 0 picks a free one) with gRPC's standard health service, and the optional shared-token
// check every handler runs first (clients send "authorization: Bearer <token>").
// Thread-safety: StartServer is thread-safe; CheckToken is a pure function of the context.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "grpcpp/grpcpp.h"

namespace v4rl::protos {

struct RunningServer {
  std::unique_ptr<grpc::Server> server;
  int port = 0;
  std::string address() const { return "127.0.0.1:" + std::to_string(port); }
};

// Binds `address` ("127.0.0.1:0" by default) with insecure credentials, registers `services`
// (not owned; they must outlive the server) and the health service (status SERVING).
// Unavailable when the address cannot be bound.
absl::StatusOr<RunningServer> StartServer(const std::vector<grpc::Service*>& services,
                                          const std::string& address = "127.0.0.1:0");

// OK when `expected_token` is empty or the request carries it; UNAUTHENTICATED otherwise.
grpc::Status CheckToken(const grpc::ServerContext& context, const std::string& expected_token);

// Adds the token to an outgoing call (no-op for an empty token).
void AttachToken(grpc::ClientContext& context, const std::string& token);

}  // namespace v4rl::protos
