#include "protos/server_service.h"

#include "absl/strings/str_format.h"
#include "grpcpp/health_check_service_interface.h"

namespace v4rl::protos {

absl::StatusOr<RunningServer> StartServer(const std::vector<grpc::Service*>& services,
                                          const std::string& address) {
  grpc::EnableDefaultHealthCheckService(true);
  grpc::ServerBuilder builder;
  RunningServer running;
  builder.AddListeningPort(address, grpc::InsecureServerCredentials(), &running.port);
  for (grpc::Service* service : services) builder.RegisterService(service);
  running.server = builder.BuildAndStart();
  if (running.server == nullptr || running.port == 0) {
    return absl::UnavailableError(absl::StrFormat("cannot listen on %s", address));
  }
  if (auto* health = running.server->GetHealthCheckService()) health->SetServingStatus(true);
  return running;
}

grpc::Status CheckToken(const grpc::ServerContext& context, const std::string& expected_token) {
  if (expected_token.empty()) return grpc::Status::OK;
  const auto& metadata = context.client_metadata();
  auto it = metadata.find("authorization");
  if (it != metadata.end() &&
      std::string(it->second.data(), it->second.size()) == "Bearer " + expected_token) {
    return grpc::Status::OK;
  }
  return grpc::Status(grpc::StatusCode::UNAUTHENTICATED,
                      "missing or wrong shared token (send 'authorization: Bearer <token>')");
}

void AttachToken(grpc::ClientContext& context, const std::string& token) {
  if (!token.empty()) context.AddMetadata("authorization", "Bearer " + token);
}

}  // namespace v4rl::protos
