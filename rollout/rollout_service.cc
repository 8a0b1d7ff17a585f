#include "rollout/rollout_service.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <iterator>
#include <thread>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "model/params.h"
#include "model/save.h"
#include "nlohmann/json.hpp"
#include "protos/server_service.h"
#include "rollout/generate.h"
#include "rollout/weight_stream.h"

namespace v4rl::rollout {
namespace {

grpc::Status Invalid(const std::string& message) {
  return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, message);
}

// absl and gRPC share the canonical code numbering.
grpc::Status ToGrpc(const absl::Status& status) {
  return grpc::Status(static_cast<grpc::StatusCode>(status.code()), std::string(status.message()));
}

// A validated GenerateRequest as rollout::Generate's inputs.
struct GenerateCall {
  std::vector<GenerationRequest> requests;
  GenerateOptions options;
};

// Checks every field against `config` before the model sees any of it; the message names the
// field, the value and the expectation.
grpc::Status ToGenerateCall(const GenerateRequest& request, const model::ModelConfig& config,
                            const RolloutServiceOptions& service_options, GenerateCall* call) {
  if (request.prompts_size() == 0) return Invalid("prompts: empty batch");
  if (request.prompts_size() > kMaxPromptsPerRequest) {
    return Invalid(absl::StrFormat("prompts: %d prompts exceed the limit of %d",
                                   request.prompts_size(), kMaxPromptsPerRequest));
  }
  int64_t cap = 0;
  switch (request.mode()) {
    case REASONING_MODE_NON_THINK:
      cap = service_options.max_new_tokens_non_think;
      break;
    case REASONING_MODE_THINK_HIGH:
      cap = service_options.max_new_tokens_think_high;
      break;
    case REASONING_MODE_THINK_MAX:
      cap = service_options.max_new_tokens_think_max;
      break;
    default:
      return Invalid(absl::StrFormat("mode: must be NON_THINK, THINK_HIGH or THINK_MAX, got %d",
                                     request.mode()));
  }
  const SamplingParams& sampling = request.sampling();
  if (sampling.max_new_tokens() < 0) {
    return Invalid(
        absl::StrFormat("sampling.max_new_tokens: %d, expected >= 0 (0 = the mode's "
                        "budget of %d)",
                        sampling.max_new_tokens(), cap));
  }
  GenerateOptions& options = call->options;
  options.max_new_tokens =
      sampling.max_new_tokens() == 0 ? cap : std::min<int64_t>(sampling.max_new_tokens(), cap);
  options.prefill_chunk = service_options.prefill_chunk;
  if (!std::isfinite(sampling.temperature()) || sampling.temperature() < 0) {
    return Invalid(
        absl::StrFormat("sampling.temperature: %g, expected 0 (greedy) or a finite value > 0",
                        sampling.temperature()));
  }
  if (sampling.top_k() < 0) {
    return Invalid(
        absl::StrFormat("sampling.top_k: %d, expected >= 0 (0 = off)", sampling.top_k()));
  }
  options.sampling.greedy = sampling.temperature() == 0;
  if (!options.sampling.greedy) {
    if (!(sampling.top_p() > 0 && sampling.top_p() <= 1)) {
      return Invalid(
          absl::StrFormat("sampling.top_p: %g, expected in (0, 1] (1 = off)", sampling.top_p()));
    }
    options.sampling.temperature = sampling.temperature();
    options.sampling.top_p = sampling.top_p();
    options.sampling.top_k = sampling.top_k();
  }
  if (request.stop_tokens_size() > kMaxStopTokens) {
    return Invalid(absl::StrFormat("stop_tokens: %d ids exceed the limit of %d",
                                   request.stop_tokens_size(), kMaxStopTokens));
  }
  for (int i = 0; i < request.stop_tokens_size(); ++i) {
    const int32_t id = request.stop_tokens(i);
    if (id < 0 || id >= config.vocab_size) {
      return Invalid(absl::StrFormat("stop_tokens[%d]: %d outside [0, vocab_size = %d)", i, id,
                                     config.vocab_size));
    }
    options.stop_tokens.push_back(id);
  }
  call->requests.resize(request.prompts_size());
  for (int b = 0; b < request.prompts_size(); ++b) {
    const Prompt& prompt = request.prompts(b);
    if (prompt.token_ids_size() == 0) {
      return Invalid(absl::StrFormat("prompts[%d].token_ids: empty prompt", b));
    }
    const int64_t total = prompt.token_ids_size() + options.max_new_tokens;
    if (total > config.max_position_embeddings) {
      return Invalid(absl::StrFormat(
          "prompts[%d]: prompt beyond the context: %d prompt tokens + max_new_tokens %d = %d "
          "exceed max_position_embeddings = %d",
          b, prompt.token_ids_size(), options.max_new_tokens, total,
          config.max_position_embeddings));
    }
    for (int t = 0; t < prompt.token_ids_size(); ++t) {
      const int32_t id = prompt.token_ids(t);
      if (id < 0 || id >= config.vocab_size) {
        return Invalid(absl::StrFormat("prompts[%d].token_ids[%d]: %d outside [0, vocab_size = %d)",
                                       b, t, id, config.vocab_size));
      }
    }
    call->requests[b].prompt.assign(prompt.token_ids().begin(), prompt.token_ids().end());
    call->requests[b].seed =
        prompt.has_seed() ? prompt.seed() : sampling.seed() + static_cast<uint64_t>(b);
  }
  return grpc::Status::OK;
}

// Calls with equal options (and the same model) can share one rollout::Generate: each sequence's
// tokens depend only on its prompt and seed, never on the rest of the batch.
bool SameOptions(const GenerateOptions& a, const GenerateOptions& b) {
  return a.max_new_tokens == b.max_new_tokens && a.sampling.greedy == b.sampling.greedy &&
         a.sampling.temperature == b.sampling.temperature && a.sampling.top_p == b.sampling.top_p &&
         a.sampling.top_k == b.sampling.top_k && a.stop_tokens == b.stop_tokens &&
         a.prefill_chunk == b.prefill_chunk;
}

void ToProto(const GenerationResult& result, const model::ModelConfig& config, int prompt_index,
             int64_t version, int64_t max_new_tokens, GenerateResult* out) {
  out->set_prompt_index(prompt_index);
  out->mutable_tokens()->Assign(result.tokens.begin(), result.tokens.end());
  out->mutable_sampling_logprobs()->Assign(result.sampling_logprobs.begin(),
                                           result.sampling_logprobs.end());
  out->mutable_model_logprobs()->Assign(result.model_logprobs.begin(), result.model_logprobs.end());
  out->mutable_kept_counts()->Assign(result.kept_counts.begin(), result.kept_counts.end());
  RoutingShape* routing = out->mutable_routing();
  routing->set_num_moe_layers(static_cast<int32_t>(config.num_layers));
  routing->set_num_topk(static_cast<int32_t>(config.num_experts_per_tok));
  routing->set_num_experts(static_cast<int32_t>(config.num_routed_experts));
  const int64_t row = config.num_layers * config.num_experts_per_tok;
  out->set_num_positions(static_cast<int32_t>(row == 0 ? 0 : result.routed_experts.size() / row));
  const int bytes_per_id = config.num_routed_experts <= 256 ? 1 : 2;
  std::string packed(result.routed_experts.size() * bytes_per_id, '\0');
  for (size_t i = 0; i < result.routed_experts.size(); ++i) {
    const uint32_t id = static_cast<uint32_t>(result.routed_experts[i]);
    packed[i * bytes_per_id] = static_cast<char>(id & 0xff);
    if (bytes_per_id == 2) packed[i * 2 + 1] = static_cast<char>((id >> 8) & 0xff);
  }
  out->set_routed_experts(std::move(packed));
  out->set_finish_reason(result.finish_reason == FinishReason::kStop ? FINISH_REASON_STOP
                                                                     : FINISH_REASON_LENGTH);
  out->set_weight_version(version);
  out->set_max_new_tokens(static_cast<int32_t>(max_new_tokens));
}

}  // namespace

absl::StatusOr<std::unique_ptr<RolloutServiceImpl>> RolloutServiceImpl::Create(
    model::Model initial_model, int64_t version, RolloutServiceOptions options) {
  const std::pair<const char*, int64_t> caps[] = {
      {"max_new_tokens_non_think", options.max_new_tokens_non_think},
      {"max_new_tokens_think_high", options.max_new_tokens_think_high},
      {"max_new_tokens_think_max", options.max_new_tokens_think_max}};
  for (const auto& [name, cap] : caps) {
    if (cap < 1) {
      return absl::InvalidArgumentError(absl::StrFormat("%s: %d, expected >= 1", name, cap));
    }
  }
  if (options.batch_window_us < 0) {
    return absl::InvalidArgumentError(
        absl::StrFormat("batch_window_us: %d, expected >= 0", options.batch_window_us));
  }
  if (options.prefill_chunk < 0) {
    return absl::InvalidArgumentError(
        absl::StrFormat("prefill_chunk: %d, expected >= 0", options.prefill_chunk));
  }
  return std::unique_ptr<RolloutServiceImpl>(
      new RolloutServiceImpl(std::move(initial_model), version, std::move(options)));
}

RolloutServiceImpl::RolloutServiceImpl(model::Model initial_model, int64_t version,
                                       RolloutServiceOptions options)
    : options_(std::move(options)),
      snapshot_{std::make_shared<const model::Model>(std::move(initial_model)), version} {}

// One Generate call waiting in queue_. Owned by its handler's stack; `model`, `requests` and
// `options` stay valid until `done`.
struct RolloutServiceImpl::PendingCall {
  const model::Model* model = nullptr;
  const std::vector<GenerationRequest>* requests = nullptr;
  const GenerateOptions* options = nullptr;
  absl::StatusOr<std::vector<GenerationResult>> results;
  bool done = false;
};

RolloutServiceImpl::Snapshot RolloutServiceImpl::Current() const {
  std::lock_guard<std::mutex> lock(snapshot_mutex_);
  return snapshot_;
}

int64_t RolloutServiceImpl::version() const { return Current().version; }

int64_t RolloutServiceImpl::batches_run() const {
  std::lock_guard<std::mutex> lock(queue_mutex_);
  return batches_run_;
}

absl::StatusOr<std::vector<GenerationResult>> RolloutServiceImpl::GenerateBatched(
    const std::shared_ptr<const model::Model>& model,
    const std::vector<GenerationRequest>& requests, const GenerateOptions& options) {
  PendingCall self;
  self.model = model.get();
  self.requests = &requests;
  self.options = &options;
  std::unique_lock<std::mutex> lock(queue_mutex_);
  queue_.push_back(&self);
  while (!self.done) {
    if (batch_running_) {
      queue_cv_.wait(lock);
      continue;
    }
    // This thread runs the next batch, which need not contain its own call (the loop goes on).
    batch_running_ = true;
    lock.unlock();
    std::this_thread::sleep_for(std::chrono::microseconds(options_.batch_window_us));
    lock.lock();
    const PendingCall* first = queue_.front();
    std::vector<PendingCall*> batch;
    size_t num_sequences = 0;  // bounded like one request's batch
    for (auto it = queue_.begin(); it != queue_.end();) {
      if ((*it)->model == first->model && SameOptions(*(*it)->options, *first->options) &&
          (batch.empty() || num_sequences + (*it)->requests->size() <= kMaxPromptsPerRequest)) {
        num_sequences += (*it)->requests->size();
        batch.push_back(*it);
        it = queue_.erase(it);
      } else {
        ++it;
      }
    }
    ++batches_run_;
    lock.unlock();
    std::vector<GenerationRequest> all;
    for (const PendingCall* call : batch) {
      all.insert(all.end(), call->requests->begin(), call->requests->end());
    }
    absl::StatusOr<std::vector<GenerationResult>> results =
        rollout::Generate(*first->model, all, *first->options);
    lock.lock();
    size_t offset = 0;
    for (PendingCall* call : batch) {
      const size_t count = call->requests->size();
      if (results.ok()) {
        call->results = std::vector<GenerationResult>(
            std::make_move_iterator(results->begin() + offset),
            std::make_move_iterator(results->begin() + offset + count));
      } else {
        call->results = results.status();
      }
      offset += count;
      call->done = true;
    }
    batch_running_ = false;
    queue_cv_.notify_all();
  }
  return std::move(self.results);
}

grpc::Status RolloutServiceImpl::Generate(grpc::ServerContext* context,
                                          const GenerateRequest* request,
                                          grpc::ServerWriter<GenerateResult>* writer) {
  if (grpc::Status auth = protos::CheckToken(*context, options_.token); !auth.ok()) return auth;
  // The whole call uses the weights served when it starts, even across an UpdateWeights.
  const Snapshot snapshot = Current();
  const model::ModelConfig& config = snapshot.model->config;
  GenerateCall call;
  if (grpc::Status status = ToGenerateCall(*request, config, options_, &call); !status.ok()) {
    return status;
  }
  if (context->IsCancelled()) return grpc::Status(grpc::StatusCode::CANCELLED, "cancelled");
  absl::StatusOr<std::vector<GenerationResult>> results =
      GenerateBatched(snapshot.model, call.requests, call.options);
  if (!results.ok()) return ToGrpc(results.status());
  for (size_t b = 0; b < results->size(); ++b) {
    GenerateResult out;
    ToProto((*results)[b], config, static_cast<int>(b), snapshot.version,
            call.options.max_new_tokens, &out);
    if (!writer->Write(out)) {
      return grpc::Status(grpc::StatusCode::CANCELLED, "client stopped reading the stream");
    }
  }
  return grpc::Status::OK;
}

grpc::Status RolloutServiceImpl::UpdateWeights(grpc::ServerContext* context,
                                               const UpdateWeightsRequest* request,
                                               UpdateWeightsResponse* response) {
  if (grpc::Status auth = protos::CheckToken(*context, options_.token); !auth.ok()) return auth;
  if (request->checkpoint_dir().empty()) return Invalid("checkpoint_dir: empty path");
  // Checked before the (slow) load, and again at the swap against concurrent updates.
  const auto stale = [&](int64_t served) {
    return grpc::Status(grpc::StatusCode::FAILED_PRECONDITION,
                        absl::StrFormat("version: %d must exceed the served version %d",
                                        request->version(), served));
  };
  if (const int64_t served = version(); request->version() <= served) return stale(served);
  absl::StatusOr<model::Model> loaded = model::Model::Load(request->checkpoint_dir());
  if (!loaded.ok()) {
    return ToGrpc(absl::Status(loaded.status().code(),
                               absl::StrFormat("checkpoint_dir %s: %s", request->checkpoint_dir(),
                                               loaded.status().message())));
  }
  if (grpc::Status swapped = SwapIn(*std::move(loaded), request->version()); !swapped.ok()) {
    return swapped;
  }
  response->set_version(request->version());
  return grpc::Status::OK;
}

grpc::Status RolloutServiceImpl::SwapIn(model::Model model, int64_t version) {
  Snapshot replaced;  // freed after the lock, unless a running call still holds it
  {
    std::lock_guard<std::mutex> lock(snapshot_mutex_);
    if (version <= snapshot_.version) {
      return grpc::Status(grpc::StatusCode::FAILED_PRECONDITION,
                          absl::StrFormat("version: %d must exceed the served version %d", version,
                                          snapshot_.version));
    }
    replaced = std::exchange(
        snapshot_, Snapshot{std::make_shared<const model::Model>(std::move(model)), version});
  }
  return grpc::Status::OK;
}

grpc::Status RolloutServiceImpl::StreamWeights(grpc::ServerContext* context,
                                               grpc::ServerReader<WeightChunk>* reader,
                                               UpdateWeightsResponse* response) {
  if (grpc::Status auth = protos::CheckToken(*context, options_.token); !auth.ok()) return auth;
  const auto cancelled = [&](const std::string& when) {
    return grpc::Status(grpc::StatusCode::CANCELLED,
                        absl::StrFormat("the client cancelled the weight stream %s", when));
  };
  WeightChunk message;
  if (!reader->Read(&message)) {
    if (context->IsCancelled()) return cancelled("before its header");
    return Invalid("header: empty stream; the first message must carry the header");
  }
  if (!message.has_header()) {
    return Invalid("header: the first message is not the header; the header must come first");
  }
  const WeightStreamHeader& header = message.header();
  const int64_t version = header.version();
  // Checked before the transfer, and again at the swap against concurrent updates.
  const Snapshot served = Current();
  if (version <= served.version) {
    return grpc::Status(grpc::StatusCode::FAILED_PRECONDITION,
                        absl::StrFormat("header.version: %d must exceed the served version %d",
                                        version, served.version));
  }
  // The update replaces weights, never the architecture: the config must be the served one's.
  const nlohmann::json config_json = nlohmann::json::parse(header.config_json(), nullptr, false);
  if (config_json.is_discarded()) return Invalid("header.config_json: not valid JSON");
  absl::StatusOr<model::ModelConfig> config =
      model::ParseModelConfig(config_json, "header.config_json");
  if (!config.ok()) return ToGrpc(config.status());
  const nlohmann::json streamed = model::ModelConfigToJson(*config);
  const nlohmann::json expected = model::ModelConfigToJson(served.model->config);
  for (const auto& [key, value] : expected.items()) {
    const auto it = streamed.find(key);
    if (it == streamed.end() || *it != value) {
      return grpc::Status(
          grpc::StatusCode::FAILED_PRECONDITION,
          absl::StrFormat("header.config_json: %s is %s, the served model's is %s (a weight "
                          "update cannot change the architecture)",
                          key, it == streamed.end() ? "missing" : it->dump(), value.dump()));
    }
  }
  // Bound the allocation by the architecture: every parameter (MTP included) at 8 bytes.
  int64_t max_total_bytes = 1 << 20;
  for (const model::ParamSpec& spec : model::ModelParamSpecs(*config, /*include_mtp=*/true)) {
    int64_t numel = 1;
    for (const int64_t dim : spec.shape) numel *= dim;
    max_total_bytes += 8 * numel;
  }
  // The directory: the header's entries, then any more_tensors messages before the data.
  std::vector<StreamTensor> tensors;
  const auto append =
      [&](const google::protobuf::RepeatedPtrField<WeightStreamHeader::Tensor>& entries) {
        for (const WeightStreamHeader::Tensor& in : entries) {
          StreamTensor& tensor = tensors.emplace_back();
          tensor.name = in.name();
          tensor.dtype = in.dtype();
          tensor.shape.assign(in.shape().begin(), in.shape().end());
          tensor.num_bytes = in.num_bytes();
        }
        return static_cast<int64_t>(tensors.size()) <= kMaxStreamTensors;
      };
  append(header.tensors());
  int64_t index = 1;  // of the message in `message`
  bool have_message = false;
  for (; (have_message = reader->Read(&message)) && message.has_more_tensors(); ++index) {
    if (!append(message.more_tensors().tensors())) {
      return Invalid(absl::StrFormat("more_tensors (message %d): more than %d tensors in all",
                                     index, kMaxStreamTensors));
    }
  }
  absl::StatusOr<std::unique_ptr<WeightStreamAssembler>> assembler =
      WeightStreamAssembler::Start(tensors, max_total_bytes);
  if (!assembler.ok()) {
    return ToGrpc(absl::Status(assembler.status().code(),
                               absl::StrCat("header.", assembler.status().message())));
  }
  for (; have_message; have_message = reader->Read(&message), ++index) {
    if (message.has_header()) {
      return Invalid(absl::StrFormat("header: a second header in message %d", index));
    }
    if (message.has_more_tensors()) {
      return Invalid(absl::StrFormat(
          "more_tensors (message %d): directory entries after data; they must precede it", index));
    }
    if (absl::Status added = (*assembler)->AddChunk(message.data()); !added.ok()) {
      return ToGrpc(
          absl::Status(added.code(), absl::StrFormat("message %d: %s", index, added.message())));
    }
  }
  if (context->IsCancelled()) {
    return cancelled(absl::StrFormat("after %d of %d bytes", (*assembler)->received_bytes(),
                                     (*assembler)->total_bytes()));
  }
  const std::string what = absl::StrFormat("streamed weights version %d", version);
  absl::StatusOr<std::unique_ptr<core::TensorDirectory>> directory = (*assembler)->Finish(what);
  if (!directory.ok()) return ToGrpc(directory.status());
  absl::StatusOr<model::ModelWeights> weights = model::LoadWeights(*config, **directory);
  directory->reset();  // the assembled bytes: freed before the swap, not after
  if (!weights.ok()) {
    return ToGrpc(absl::Status(weights.status().code(),
                               absl::StrCat("header.tensors: ", weights.status().message())));
  }
  if (grpc::Status swapped =
          SwapIn(model::Model::Create(*std::move(config), *std::move(weights)), version);
      !swapped.ok()) {
    return swapped;
  }
  ++streamed_updates_;
  response->set_version(version);
  return grpc::Status::OK;
}

grpc::Status SendWeightStream(v4rl::RolloutService::StubInterface* stub,
                              grpc::ClientContext* context, const model::ModelConfig& config,
                              const model::ModelWeights& weights, int64_t version,
                              int64_t chunk_bytes, UpdateWeightsResponse* response,
                              int64_t directory_message_bytes) {
  std::vector<core::Tensor> storage;
  const std::vector<core::NamedTensor> named = model::HubNamedTensors(config, weights, &storage);
  absl::StatusOr<std::vector<StreamTensor>> directory = MakeStreamDirectory(named);
  if (!directory.ok()) return ToGrpc(directory.status());
  // The directory goes in the header and, past directory_message_bytes, in more_tensors
  // messages, so no message nears gRPC's 4 MiB limit however many tensors the model has.
  std::vector<WeightChunk> directory_messages(1);
  WeightStreamHeader* header = directory_messages[0].mutable_header();
  header->set_version(version);
  header->set_config_json(model::ModelConfigToJson(config).dump());
  google::protobuf::RepeatedPtrField<WeightStreamHeader::Tensor>* entries =
      header->mutable_tensors();
  int64_t message_bytes = static_cast<int64_t>(header->config_json().size());
  for (const StreamTensor& tensor : *directory) {
    if (message_bytes >= directory_message_bytes) {
      entries = directory_messages.emplace_back().mutable_more_tensors()->mutable_tensors();
      message_bytes = 0;
    }
    WeightStreamHeader::Tensor* out = entries->Add();
    out->set_name(tensor.name);
    out->set_dtype(tensor.dtype);
    out->mutable_shape()->Assign(tensor.shape.begin(), tensor.shape.end());
    out->set_num_bytes(tensor.num_bytes);
    message_bytes += static_cast<int64_t>(out->ByteSizeLong()) + 4;
  }
  std::unique_ptr<grpc::ClientWriterInterface<WeightChunk>> writer =
      stub->StreamWeights(context, response);
  // A failed Write means the server ended the call; Finish says why.
  bool written = true;
  for (const WeightChunk& message : directory_messages) {
    if (!(written = writer->Write(message))) break;
  }
  if (written) {
    WeightChunk chunk;
    if (ForEachWeightChunk(named, chunk_bytes, [&](std::string_view bytes) {
          chunk.set_data(bytes.data(), bytes.size());
          return writer->Write(chunk);
        })) {
      writer->WritesDone();
    }
  }
  return writer->Finish();
}

}  // namespace v4rl::rollout
