// `v4rl store stats|dump|verify` against real stores: a healthy one, one with a corrupted SST
// block, and a directory that is not a store. Runs the built binary (V4RL_BINARY).

#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "store/rocksdb_trajectory_store.h"
#include "tests/store/trajectory_test_util.h"
#include "tests/testing/run_command.h"
#include "tests/testing/status_matchers.h"

namespace v4rl::store {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;
using ::v4rl::store::testing::kSmallRouting;
using ::v4rl::store::testing::MakeCompletion;
using ::v4rl::store::testing::MakeHeader;
using ::v4rl::store::testing::MakePrompt;

using CliResult = ::v4rl::testing::CommandResult;

CliResult RunV4rl(const std::string& arguments) {
  return ::v4rl::testing::RunCommand(std::string(V4RL_BINARY) + " " + arguments + " 2>&1");
}

class StoreCliTest : public ::testing::Test {
 protected:
  void SetUp() override {
    V4RL_ASSERT_OK_AND_ASSIGN(auto store, RocksDbTrajectoryStore::Open(path_));
    for (int i = 0; i < 6; ++i) {
      V4RL_ASSERT_OK_AND_ASSIGN(
          const TrajectoryId id,
          store->Begin(MakeHeader(i < 4 ? "math" : "code", i % 2, i), MakePrompt(20, i)));
      for (int64_t first = 0; first < 400; first += 100) {
        V4RL_ASSERT_OK(
            store->AppendTokens(id, first, MakeCompletion(id, i, kSmallRouting, first, 100)));
      }
      if (i != 5) {
        V4RL_ASSERT_OK(store->Finish(id, TrajectoryStatus::kComplete));
      }
    }
    V4RL_ASSERT_OK(store->Compact());
  }
  void TearDown() override { fs::remove_all(path_); }

  const std::string path_ = testing::NewTempPath("cli");
};

TEST_F(StoreCliTest, StatsCountsRecordsPerColumnFamilyAndStatus) {
  const CliResult run = RunV4rl("store stats " + path_);
  EXPECT_EQ(run.exit_code, 0) << run.output;
  EXPECT_THAT(run.output, HasSubstr("meta"));
  EXPECT_THAT(run.output, HasSubstr("routing"));
  EXPECT_THAT(run.output, HasSubstr("trajectories: 6, complete 5, in_progress 1"));
  EXPECT_THAT(run.output, HasSubstr("tokens: 120 prompt, 2400 completion"));
}

TEST_F(StoreCliTest, DumpPrintsOneJsonObjectPerTrajectory) {
  const CliResult run = RunV4rl("store dump " + path_ + " --job math --group 1 --tokens --routing");
  ASSERT_EQ(run.exit_code, 0) << run.output;
  std::istringstream lines(run.output);
  std::vector<nlohmann::json> objects;
  for (std::string line; std::getline(lines, line);) objects.push_back(nlohmann::json::parse(line));
  ASSERT_EQ(objects.size(), 2u);  // groups 1 of job "math": trajectories 2 and 4
  EXPECT_EQ(objects[0]["id"], 2);
  EXPECT_EQ(objects[0]["status"], "complete");
  EXPECT_EQ(objects[0]["completion"]["token_ids"].size(), 400u);
  EXPECT_EQ(objects[0]["routed_experts"].size(), 400u * kSmallRouting.ids_per_token());
  EXPECT_EQ(objects[1]["id"], 4);
  EXPECT_EQ(objects[1]["policy_version"], 3);

  const CliResult usage = RunV4rl("store dump " + path_ + " --group 1");
  EXPECT_EQ(usage.exit_code, 2);
  EXPECT_THAT(usage.output, HasSubstr("--group needs --job"));
}

TEST_F(StoreCliTest, VerifyPassesAHealthyStoreAndFailsACorruptedOne) {
  const CliResult healthy = RunV4rl("store verify " + path_);
  EXPECT_EQ(healthy.exit_code, 0) << healthy.output;
  EXPECT_THAT(healthy.output, HasSubstr("6 trajectories"));
  EXPECT_THAT(healthy.output, HasSubstr(": ok"));

  fs::path largest;
  for (const fs::directory_entry& entry : fs::directory_iterator(path_)) {
    if (entry.path().extension() == ".sst" &&
        (largest.empty() || entry.file_size() > fs::file_size(largest))) {
      largest = entry.path();
    }
  }
  ASSERT_FALSE(largest.empty());
  {
    std::fstream file(largest, std::ios::in | std::ios::out | std::ios::binary);
    file.seekp(static_cast<std::streamoff>(fs::file_size(largest) / 3));
    file.write("\xde\xad\xbe\xef\xde\xad\xbe\xef", 8);
  }
  const CliResult corrupted = RunV4rl("store verify " + path_);
  EXPECT_EQ(corrupted.exit_code, 1) << corrupted.output;
  EXPECT_THAT(corrupted.output, HasSubstr("Corruption"));
  EXPECT_THAT(corrupted.output, HasSubstr("problems"));
}

TEST_F(StoreCliTest, ForeignDirectoryIsAClearError) {
  const std::string foreign = testing::NewTempPath("cli_foreign");
  fs::create_directories(foreign);
  std::ofstream(fs::path(foreign) / "data.bin") << "hello";
  const CliResult run = RunV4rl("store stats " + foreign);
  EXPECT_EQ(run.exit_code, 1);
  EXPECT_THAT(run.output, HasSubstr("is not a RocksDB database"));
  fs::remove_all(foreign);
}

}  // namespace
}  // namespace v4rl::store
