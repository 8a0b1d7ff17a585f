// Helpers shared by the model tests: paths of the committed transformers fixtures
// (tests/data/model/, made by scripts/make_model_fixtures.py) and reading their tensors.
#pragma once

#include <cstdlib>
#include <memory>
#include <string>

#include "core/safetensors.h"
#include "core/tensor.h"
#include "gtest/gtest.h"

namespace v4rl::model::testing {

inline std::string FixtureDir(const std::string& name) {
  const char* root = std::getenv("V4RL_SOURCE_DIR");
  return std::string(root ? root : ".") + "/tests/data/model/" + name;
}

// Tensors of one fixture's reference.safetensors.
class Reference {
 public:
  explicit Reference(const std::string& fixture) {
    auto file = core::SafetensorsFile::Open(FixtureDir(fixture) + "/reference.safetensors");
    EXPECT_TRUE(file.ok()) << file.status();
    if (file.ok()) file_ = *std::move(file);
  }
  bool ok() const { return file_ != nullptr; }
  bool Has(const std::string& name) const { return file_ && file_->Find(name) != nullptr; }
  core::Tensor Get(const std::string& name) const {
    const core::SafetensorsEntry* entry = file_->Find(name);
    EXPECT_NE(entry, nullptr) << name;
    return entry ? file_->Read(*entry) : core::Tensor();
  }

 private:
  std::unique_ptr<core::SafetensorsFile> file_;
};

}  // namespace v4rl::model::testing
