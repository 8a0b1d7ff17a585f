#include "model/weights.h"

#include <map>
#include <set>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "core/status.h"
#include "model/checkpoint_names.h"
#include "model/params.h"
#include "model/quant.h"

namespace v4rl::model {
namespace {

using core::DType;

constexpr size_t kMaxListed = 40;

std::string JoinCapped(const std::vector<std::string>& items) {
  std::vector<std::string> shown(items.begin(),
                                 items.begin() + std::min(items.size(), kMaxListed));
  std::string text = absl::StrJoin(shown, ", ");
  if (items.size() > kMaxListed) absl::StrAppend(&text, ", ... and ", items.size() - kMaxListed, " more");
  return text;
}

// Reads checkpoint tensors by canonical name and records what was used and what went wrong.
class CheckpointReader {
 public:
  explicit CheckpointReader(const core::TensorDirectory& directory) : directory_(directory) {
    for (const auto& [key, location] : directory.tensors()) {
      const std::string canonical = CanonicalTensorName(key);
      auto [it, inserted] = keys_.emplace(canonical, key);
      if (!inserted) {
        invalid_.push_back(absl::StrFormat("%s and %s both name %s", it->second, key, canonical));
      }
    }
  }

  bool Has(const std::string& canonical) const { return keys_.count(canonical) > 0; }
  bool HasPrefix(const std::string& prefix) const {
    auto it = keys_.lower_bound(prefix);
    return it != keys_.end() && it->first.compare(0, prefix.size(), prefix) == 0;
  }

  // Decodes `canonical` (with its scale companion, if any) to f32 of `shape`; records a missing
  // or undecodable tensor and returns an undefined tensor then.
  core::Tensor ReadF32(const std::string& canonical, const core::Shape& shape) {
    auto it = keys_.find(canonical);
    if (it == keys_.end()) {
      missing_.push_back(canonical);
      return {};
    }
    used_.insert(canonical);
    const core::Tensor stored = Read(it->second);
    core::Tensor scale;
    const std::string scale_name = ScaleName(canonical);
    if (auto s = keys_.find(scale_name); s != keys_.end()) {
      used_.insert(scale_name);
      scale = Read(s->second);
    }
    absl::StatusOr<core::Tensor> decoded =
        DecodeToF32(stored.view(), scale.view(), shape, it->second);
    if (!decoded.ok()) {
      invalid_.push_back(std::string(decoded.status().message()));
      return {};
    }
    return *std::move(decoded);
  }

  // tid2eid: integer ids [V, k] -> i32, every id in [0, num_experts).
  core::Tensor ReadIndexTable(const std::string& canonical, const core::Shape& shape,
                              int64_t num_experts) {
    auto it = keys_.find(canonical);
    if (it == keys_.end()) {
      missing_.push_back(canonical);
      return {};
    }
    used_.insert(canonical);
    const core::Tensor stored = Read(it->second);
    const core::TensorView& v = stored.view();
    if (v.dtype != DType::kI64 && v.dtype != DType::kI32) {
      invalid_.push_back(absl::StrFormat("%s: dtype %s, expected integer expert ids (I64/I32)",
                                         it->second, core::DTypeName(v.dtype)));
      return {};
    }
    if (v.shape_vector() != shape) {
      invalid_.push_back(absl::StrFormat("%s: shape [%s], expected [%s]", it->second,
                                         absl::StrJoin(v.shape_vector(), ", "),
                                         absl::StrJoin(shape, ", ")));
      return {};
    }
    core::Tensor out = core::Tensor::Empty(DType::kI32, shape);
    for (int64_t i = 0; i < v.numel(); ++i) {
      const int64_t id = v.dtype == DType::kI64 ? v.data_as<int64_t>()[i] : v.data_as<int32_t>()[i];
      if (id < 0 || id >= num_experts) {
        invalid_.push_back(absl::StrFormat("%s: entry %d is expert %d, expected [0, %d)",
                                           it->second, i, id, num_experts));
        return {};
      }
      out.data<int32_t>()[i] = static_cast<int32_t>(id);
    }
    return out;
  }

  // Routed experts stacked to [E, rows, cols], from per-expert tensors
  // "<prefix><e>.<proj>.weight" or transformers' merged gate_up_proj / down_proj.
  core::Tensor ReadExperts(const std::string& canonical, const core::Shape& shape) {
    // canonical = "<layer>ffn.experts.<proj>.weight"
    const size_t experts_at = canonical.rfind("experts.") + 8;
    const std::string prefix = canonical.substr(0, experts_at);
    const std::string proj = canonical.substr(experts_at, 2);
    const int64_t num_experts = shape[0], rows = shape[1], cols = shape[2];
    if (Has(absl::StrCat(prefix, 0, ".", proj, ".weight"))) {
      core::Tensor out = core::Tensor::Empty(DType::kF32, shape);
      for (int64_t e = 0; e < num_experts; ++e) {
        const core::Tensor one =
            ReadF32(absl::StrCat(prefix, e, ".", proj, ".weight"), {rows, cols});
        if (!one.defined()) continue;
        std::copy(one.data<float>(), one.data<float>() + rows * cols,
                  out.data<float>() + e * rows * cols);
      }
      return out;
    }
    const bool is_down = proj == "w2";
    const std::string merged = prefix + (is_down ? "down_proj" : "gate_up_proj");
    if (!Has(merged)) {
      missing_.push_back(absl::StrFormat("%s{0..%d}.%s.weight (or merged %s)", prefix,
                                         num_experts - 1, proj, merged));
      return {};
    }
    if (is_down) return ReadF32(merged, shape);
    // gate_up_proj [E, 2I, H]: rows [0, I) are w1 (gate), rows [I, 2I) are w3 (up).
    auto cached = merged_.find(merged);
    if (cached == merged_.end()) {
      cached = merged_.emplace(merged, ReadF32(merged, {num_experts, 2 * rows, cols})).first;
    }
    const core::Tensor& both = cached->second;
    if (!both.defined()) return {};
    core::Tensor out = core::Tensor::Empty(DType::kF32, shape);
    const int64_t offset = proj == "w1" ? 0 : rows;
    for (int64_t e = 0; e < num_experts; ++e) {
      const float* src = both.data<float>() + (e * 2 * rows + offset) * cols;
      std::copy(src, src + rows * cols, out.data<float>() + e * rows * cols);
    }
    return out;
  }

  absl::Status Finish(const std::string& where) const {
    std::vector<std::string> unexpected;
    for (const auto& [canonical, key] : keys_) {
      if (!used_.count(canonical)) unexpected.push_back(key);
    }
    if (missing_.empty() && unexpected.empty() && invalid_.empty()) return absl::OkStatus();
    std::vector<std::string> parts;
    if (!missing_.empty()) {
      parts.push_back(absl::StrFormat("%d missing: %s", missing_.size(), JoinCapped(missing_)));
    }
    if (!unexpected.empty()) {
      parts.push_back(
          absl::StrFormat("%d unexpected: %s", unexpected.size(), JoinCapped(unexpected)));
    }
    if (!invalid_.empty()) {
      parts.push_back(absl::StrFormat("%d invalid: %s", invalid_.size(), JoinCapped(invalid_)));
    }
    return absl::InvalidArgumentError(absl::StrFormat(
        "checkpoint %s does not match the model config: %s", where, absl::StrJoin(parts, "; ")));
  }

 private:
  core::Tensor Read(const std::string& key) const {
    const core::TensorDirectory::Location* location = directory_.Find(key);
    return location->file->Read(*location->entry);
  }

  const core::TensorDirectory& directory_;
  std::map<std::string, std::string> keys_;  // canonical -> checkpoint key
  std::set<std::string> used_;
  std::map<std::string, core::Tensor> merged_;
  std::vector<std::string> missing_;
  std::vector<std::string> invalid_;
};

}  // namespace

absl::StatusOr<ModelWeights> LoadWeights(const ModelConfig& config, const std::string& path) {
  V4RL_ASSIGN_OR_RETURN(std::unique_ptr<core::TensorDirectory> directory,
                        core::TensorDirectory::Open(path));
  absl::StatusOr<ModelWeights> weights = LoadWeights(config, *directory);
  if (!weights.ok()) {
    return absl::Status(weights.status().code(),
                        absl::StrCat(path, ": ", weights.status().message()));
  }
  return weights;
}

absl::StatusOr<ModelWeights> LoadWeights(const ModelConfig& config,
                                         const core::TensorDirectory& directory) {
  V4RL_RETURN_IF_ERROR(config.Validate());
  CheckpointReader reader(directory);
  const bool include_mtp = config.num_mtp_layers > 0 && reader.HasPrefix("mtp.");
  ModelWeights weights;
  VisitParams(config, &weights, include_mtp, [&](const ParamSpec& spec, core::Tensor* slot) {
    if (spec.is_routed_experts) {
      *slot = reader.ReadExperts(spec.name, spec.shape);
    } else if (spec.is_index_table) {
      *slot = reader.ReadIndexTable(spec.name, spec.shape, config.num_routed_experts);
    } else {
      *slot = reader.ReadF32(spec.name, spec.shape);
    }
  });
  if (config.tie_word_embeddings) weights.head = weights.embed;
  const std::string where =
      directory.files().empty() ? std::string("(empty)") : directory.files()[0]->path();
  V4RL_RETURN_IF_ERROR(reader.Finish(where));
  return weights;
}

}  // namespace v4rl::model
