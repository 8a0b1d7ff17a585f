// The TrajectoryStore contract, run against every implementation (MemoryTrajectoryStore and
// RocksDbTrajectoryStore): lifecycle, the token-level WAL's offset rule, validation messages,
// scans, learner batches, deletion and concurrent appenders.
#include "store/trajectory_store.h"

#include <atomic>
#include <filesystem>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "store/memory_trajectory_store.h"
#include "tests/store/trajectory_test_util.h"
#include "tests/testing/status_matchers.h"
#include "v4rl/build_config.h"
#if V4RL_WITH_ROCKSDB
#include "store/rocksdb_trajectory_store.h"
#endif

namespace v4rl::store {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::v4rl::store::testing::DiffFromExpected;
using ::v4rl::store::testing::kSmallRouting;
using ::v4rl::store::testing::MakeCompletion;
using ::v4rl::store::testing::MakeHeader;
using ::v4rl::store::testing::MakePrompt;
using ::v4rl::testing::StatusIs;

enum class StoreKind { kMemory, kRocksDb };

// ScanQuery built field by field: Query().Job("a").MinVersion(1).Limit(5).
struct Query : ScanQuery {
  Query& Job(std::string job) {
    job_id = std::move(job);
    return *this;
  }
  Query& Group(uint64_t group) {
    group_id = group;
    return *this;
  }
  Query& MinVersion(int64_t version) {
    min_policy_version = version;
    return *this;
  }
  Query& MaxVersion(int64_t version) {
    max_policy_version = version;
    return *this;
  }
  Query& Statuses(std::vector<TrajectoryStatus> wanted) {
    statuses = std::move(wanted);
    return *this;
  }
  Query& After(TrajectoryId id) {
    after_id = id;
    return *this;
  }
  Query& Limit(int64_t n) {
    limit = n;
    return *this;
  }
};

class TrajectoryStoreTest : public ::testing::TestWithParam<StoreKind> {
 protected:
  void SetUp() override {
    if (GetParam() == StoreKind::kMemory) {
      store_ = std::make_unique<MemoryTrajectoryStore>();
      return;
    }
#if V4RL_WITH_ROCKSDB
    path_ = testing::NewTempPath("suite");
    RocksDbStoreOptions options;
    options.sync = false;  // durability has its own test; this suite checks the contract
    auto store = RocksDbTrajectoryStore::Open(path_, options);
    V4RL_ASSERT_OK(store);
    store_ = *std::move(store);
#endif
  }

  void TearDown() override {
    store_.reset();
    if (!path_.empty()) std::filesystem::remove_all(path_);
  }

  // A trajectory of `num_tokens` completion tokens appended in chunks of `chunk_tokens`.
  TrajectoryId AddTrajectory(const TrajectoryHeader& header, int64_t num_tokens,
                             int64_t chunk_tokens, TrajectoryStatus finish_as) {
    absl::StatusOr<TrajectoryId> id = store_->Begin(header, MakePrompt(17, header.group_id));
    EXPECT_TRUE(id.ok()) << id.status();
    for (int64_t first = 0; first < num_tokens; first += chunk_tokens) {
      const int64_t n = std::min(chunk_tokens, num_tokens - first);
      EXPECT_TRUE(
          store_
              ->AppendTokens(*id, first,
                             MakeCompletion(*id, header.policy_version, header.routing, first, n))
              .ok());
    }
    if (IsTerminal(finish_as)) {
      EXPECT_TRUE(store_->Finish(*id, finish_as).ok());
    }
    return *id;
  }

  std::vector<TrajectoryId> ScanIds(const ScanQuery& query) {
    absl::StatusOr<std::vector<TrajectoryMeta>> metas = store_->Scan(query);
    EXPECT_TRUE(metas.ok()) << metas.status();
    std::vector<TrajectoryId> ids;
    if (metas.ok()) {
      for (const TrajectoryMeta& meta : *metas) ids.push_back(meta.id);
    }
    return ids;
  }

  std::string path_;
  std::unique_ptr<TrajectoryStore> store_;
};

TEST_P(TrajectoryStoreTest, RoundTripsEveryField) {
  TrajectoryHeader header = MakeHeader("job-a", 3, 5, kSmallRouting, "teacher-math");
  header.mode = ReasoningMode::kThinkMax;
  header.sampling = {0.7f, 0.9f, 40, 2048, 1234};
  const std::vector<int32_t> prompt = MakePrompt(33, 1);
  V4RL_ASSERT_OK_AND_ASSIGN(const TrajectoryId id, store_->Begin(header, prompt));
  V4RL_ASSERT_OK(store_->AppendTokens(id, 0, MakeCompletion(id, 5, kSmallRouting, 0, 150)));
  V4RL_ASSERT_OK(store_->AppendTokens(id, 150, MakeCompletion(id, 5, kSmallRouting, 150, 1)));
  V4RL_ASSERT_OK(store_->AppendTokens(id, 151, MakeCompletion(id, 5, kSmallRouting, 151, 60)));
  V4RL_ASSERT_OK(store_->Finish(id, TrajectoryStatus::kTruncated));
  V4RL_ASSERT_OK(store_->AddReward(id, {RewardSource::kVerifier, "math_exact", 1.0f}));
  V4RL_ASSERT_OK(store_->AddReward(id, {RewardSource::kGrm, "rubric/helpfulness-v2", 0.25f}));

  V4RL_ASSERT_OK_AND_ASSIGN(const Trajectory t, store_->Read(id));
  EXPECT_EQ(t.meta.id, id);
  EXPECT_EQ(t.meta.header.job_id, "job-a");
  EXPECT_EQ(t.meta.header.group_id, 3u);
  EXPECT_EQ(t.meta.header.teacher_id, "teacher-math");
  EXPECT_EQ(t.meta.header.policy_version, 5);
  EXPECT_EQ(t.meta.header.mode, ReasoningMode::kThinkMax);
  EXPECT_EQ(t.meta.header.sampling.temperature, 0.7f);
  EXPECT_EQ(t.meta.header.sampling.top_p, 0.9f);
  EXPECT_EQ(t.meta.header.sampling.top_k, 40);
  EXPECT_EQ(t.meta.header.sampling.max_new_tokens, 2048);
  EXPECT_EQ(t.meta.header.sampling.seed, 1234u);
  EXPECT_EQ(t.meta.header.routing, kSmallRouting);
  EXPECT_EQ(t.meta.status, TrajectoryStatus::kTruncated);
  EXPECT_EQ(t.meta.num_prompt_tokens, 33);
  EXPECT_EQ(t.meta.num_completion_tokens, 211);
  EXPECT_EQ(t.meta.num_chunks, 3);
  EXPECT_EQ(t.meta.max_weight_version, 7);  // tokens 200..210 were sampled by version 5 + 2
  ASSERT_EQ(t.meta.rewards.size(), 2u);
  EXPECT_EQ(t.meta.rewards[0].source, RewardSource::kVerifier);
  EXPECT_EQ(t.meta.rewards[0].source_id, "math_exact");
  EXPECT_EQ(t.meta.rewards[0].value, 1.0f);
  EXPECT_EQ(t.meta.rewards[1].source, RewardSource::kGrm);
  EXPECT_EQ(t.meta.rewards[1].source_id, "rubric/helpfulness-v2");
  EXPECT_GT(t.meta.rewards[1].created_us, 0);
  EXPECT_GT(t.meta.created_us, 0);
  EXPECT_GE(t.meta.finished_us, t.meta.created_us);
  EXPECT_GE(t.meta.updated_us, t.meta.finished_us);
  EXPECT_EQ(t.prompt_token_ids, prompt);
  EXPECT_EQ(DiffFromExpected(t), "");
  ASSERT_EQ(t.completion.routed_experts.size(), 211u * kSmallRouting.ids_per_token());

  V4RL_ASSERT_OK_AND_ASSIGN(const Trajectory without, store_->Read(id, {.with_routing = false}));
  EXPECT_TRUE(without.completion.routed_experts.empty());
  EXPECT_EQ(DiffFromExpected(without, /*with_routing=*/false), "");
}

TEST_P(TrajectoryStoreTest, RoundTripsTwoByteExpertIdsAndNoRouting) {
  const RoutingShape pro{/*num_moe_layers=*/3, /*num_topk=*/2, /*num_experts=*/384};
  const TrajectoryId wide =
      AddTrajectory(MakeHeader("j", 1, 0, pro), 40, 7, TrajectoryStatus::kComplete);
  const TrajectoryId none =
      AddTrajectory(MakeHeader("j", 2, 0, RoutingShape{}), 40, 7, TrajectoryStatus::kComplete);
  V4RL_ASSERT_OK_AND_ASSIGN(const Trajectory t, store_->Read(wide));
  EXPECT_EQ(DiffFromExpected(t), "");
  EXPECT_GT(
      *std::max_element(t.completion.routed_experts.begin(), t.completion.routed_experts.end()),
      255);
  V4RL_ASSERT_OK_AND_ASSIGN(const Trajectory u, store_->Read(none));
  EXPECT_EQ(DiffFromExpected(u), "");
  EXPECT_TRUE(u.completion.routed_experts.empty());
}

TEST_P(TrajectoryStoreTest, AppendOffsetMustBeTheStoredEnd) {
  V4RL_ASSERT_OK_AND_ASSIGN(const TrajectoryId id,
                            store_->Begin(MakeHeader("j", 1, 0), MakePrompt(4, 1)));
  V4RL_ASSERT_OK(store_->AppendTokens(id, 0, MakeCompletion(id, 0, kSmallRouting, 0, 10)));
  // A retried append (its ack was lost) and a gap are both refused, and change nothing.
  EXPECT_THAT(store_->AppendTokens(id, 0, MakeCompletion(id, 0, kSmallRouting, 0, 10)),
              StatusIs(absl::StatusCode::kFailedPrecondition,
                       HasSubstr("starts at token 0 but 10 completion tokens are stored")));
  EXPECT_THAT(store_->AppendTokens(id, 12, MakeCompletion(id, 0, kSmallRouting, 12, 1)),
              StatusIs(absl::StatusCode::kFailedPrecondition, HasSubstr("starts at token 12")));
  V4RL_ASSERT_OK_AND_ASSIGN(const TrajectoryMeta meta, store_->GetMeta(id));
  EXPECT_EQ(meta.num_completion_tokens, 10);
  EXPECT_EQ(meta.num_chunks, 1);
}

TEST_P(TrajectoryStoreTest, PreemptedGeneratorResumesTheSameSample) {
  V4RL_ASSERT_OK_AND_ASSIGN(const TrajectoryId id,
                            store_->Begin(MakeHeader("job", 9, 2), MakePrompt(8, 2)));
  V4RL_ASSERT_OK(store_->AppendTokens(id, 0, MakeCompletion(id, 2, kSmallRouting, 0, 37)));
  // The generator restarts: it finds its in-progress samples and continues each at its end.
  V4RL_ASSERT_OK_AND_ASSIGN(
      const std::vector<TrajectoryMeta> open,
      store_->Scan(Query().Job("job").Statuses({TrajectoryStatus::kInProgress})));
  ASSERT_EQ(open.size(), 1u);
  const int64_t resume_at = open[0].num_completion_tokens;
  EXPECT_EQ(resume_at, 37);
  V4RL_ASSERT_OK(
      store_->AppendTokens(id, resume_at, MakeCompletion(id, 2, kSmallRouting, resume_at, 63)));
  V4RL_ASSERT_OK(store_->Finish(id, TrajectoryStatus::kComplete));
  V4RL_ASSERT_OK_AND_ASSIGN(const Trajectory t, store_->Read(id));
  EXPECT_EQ(t.meta.num_completion_tokens, 100);
  EXPECT_EQ(DiffFromExpected(t), "");
}

TEST_P(TrajectoryStoreTest, BatchAppendsAreAllOrNothing) {
  std::vector<TrajectoryId> ids;
  for (int g = 0; g < 3; ++g) {
    V4RL_ASSERT_OK_AND_ASSIGN(const TrajectoryId id,
                              store_->Begin(MakeHeader("j", g, 1), MakePrompt(4, g)));
    ids.push_back(id);
  }
  // One decode step: one token for each sequence, one write.
  for (int64_t step = 0; step < 20; ++step) {
    std::vector<CompletionTokens> tokens;
    for (TrajectoryId id : ids) tokens.push_back(MakeCompletion(id, 1, kSmallRouting, step, 1));
    const std::vector<TokenAppend> appends = {
        {ids[0], step, &tokens[0]}, {ids[1], step, &tokens[1]}, {ids[2], step, &tokens[2]}};
    V4RL_ASSERT_OK(store_->AppendTokensBatch(appends));
  }
  const CompletionTokens next0 = MakeCompletion(ids[0], 1, kSmallRouting, 20, 2);
  const CompletionTokens next1 = MakeCompletion(ids[1], 1, kSmallRouting, 20, 2);
  EXPECT_THAT(store_->AppendTokensBatch({{ids[0], 20, &next0}, {ids[1], 19, &next1}}),
              StatusIs(absl::StatusCode::kFailedPrecondition,
                       HasSubstr("appends[1]: append to trajectory")));
  EXPECT_THAT(store_->AppendTokensBatch({{ids[0], 20, &next0}, {777, 0, &next1}}),
              StatusIs(absl::StatusCode::kNotFound, HasSubstr("appends[1]: trajectory 777")));
  EXPECT_THAT(store_->AppendTokensBatch({{ids[0], 20, &next0}, {ids[0], 22, &next1}}),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("appends[1] repeats")));
  EXPECT_THAT(store_->AppendTokensBatch({{ids[0], 20, nullptr}}),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("appends[0].chunk is null")));
  for (TrajectoryId id : ids) {
    V4RL_ASSERT_OK_AND_ASSIGN(const Trajectory t, store_->Read(id));
    EXPECT_EQ(t.meta.num_completion_tokens, 20);  // the failed batches wrote nothing
    EXPECT_EQ(t.meta.num_chunks, 20);
    EXPECT_EQ(DiffFromExpected(t), "");
  }
  V4RL_EXPECT_OK(store_->AppendTokensBatch({}));
}

TEST_P(TrajectoryStoreTest, RejectsInvalidBeginWithFieldNames) {
  const std::vector<int32_t> prompt = MakePrompt(3, 1);
  struct Case {
    std::string expected;
    void (*mutate)(TrajectoryHeader*);
  };
  const Case cases[] = {
      {"job_id is empty", [](TrajectoryHeader* h) { h->job_id.clear(); }},
      {"job_id contains a NUL", [](TrajectoryHeader* h) { h->job_id = std::string("a\0b", 3); }},
      {"job_id has 300 bytes", [](TrajectoryHeader* h) { h->job_id = std::string(300, 'x'); }},
      {"teacher_id has 257 bytes",
       [](TrajectoryHeader* h) { h->teacher_id = std::string(257, 't'); }},
      {"policy_version is -1", [](TrajectoryHeader* h) { h->policy_version = -1; }},
      {"mode is 7", [](TrajectoryHeader* h) { h->mode = static_cast<ReasoningMode>(7); }},
      {"sampling.temperature", [](TrajectoryHeader* h) { h->sampling.temperature = -1; }},
      {"sampling.top_p is 0", [](TrajectoryHeader* h) { h->sampling.top_p = 0; }},
      {"sampling.top_k is -2", [](TrajectoryHeader* h) { h->sampling.top_k = -2; }},
      {"routing.num_topk is 0", [](TrajectoryHeader* h) { h->routing.num_topk = 0; }},
      {"routing.num_experts is 70000", [](TrajectoryHeader* h) { h->routing.num_experts = 70000; }},
      {"routing.num_moe_layers is 0 (routing off)",
       [](TrajectoryHeader* h) { h->routing.num_moe_layers = 0; }},
  };
  for (const Case& c : cases) {
    TrajectoryHeader header = MakeHeader("j", 1, 0);
    c.mutate(&header);
    EXPECT_THAT(store_->Begin(header, prompt),
                StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr(c.expected)));
  }
  EXPECT_THAT(store_->Begin(MakeHeader("j", 1, 0), {}),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("prompt_token_ids is empty")));
  EXPECT_THAT(store_->Begin(MakeHeader("j", 1, 0), {5, -3}),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("prompt_token_ids[1] is -3")));
  EXPECT_THAT(ScanIds(Query()), ElementsAre());
}

TEST_P(TrajectoryStoreTest, RejectsInvalidAppendsWithFieldNames) {
  V4RL_ASSERT_OK_AND_ASSIGN(const TrajectoryId id,
                            store_->Begin(MakeHeader("j", 1, 3), MakePrompt(4, 1)));
  struct Case {
    std::string expected;
    void (*mutate)(CompletionTokens*);
  };
  const Case cases[] = {
      {"chunk.token_ids is empty", [](CompletionTokens* c) { *c = CompletionTokens{}; }},
      {"chunk.logprobs has 4 entries; expected 5",
       [](CompletionTokens* c) { c->logprobs.pop_back(); }},
      {"chunk.weight_versions has 6 entries",
       [](CompletionTokens* c) { c->weight_versions.push_back(3); }},
      {"chunk.kept_set_sizes has 0 entries", [](CompletionTokens* c) { c->kept_set_sizes = {}; }},
      {"chunk.routed_experts has 119 ids; expected 120",
       [](CompletionTokens* c) { c->routed_experts.pop_back(); }},
      {"chunk.token_ids[2] is -1", [](CompletionTokens* c) { c->token_ids[2] = -1; }},
      {"chunk.logprobs[1] is nan", [](CompletionTokens* c) { c->logprobs[1] = std::nanf(""); }},
      {"chunk.kept_set_sizes[4] is 0", [](CompletionTokens* c) { c->kept_set_sizes[4] = 0; }},
      {"chunk.weight_versions[0] is 2, older than 3",
       [](CompletionTokens* c) { c->weight_versions[0] = 2; }},
      {"chunk.weight_versions[3] is 3, older than 4",
       [](CompletionTokens* c) {
         c->weight_versions = {3, 4, 4, 3, 4};
       }},
      {"chunk.routed_experts[7] is 64; expected < num_experts (64)",
       [](CompletionTokens* c) { c->routed_experts[7] = 64; }},
  };
  for (const Case& c : cases) {
    CompletionTokens chunk = MakeCompletion(id, 3, kSmallRouting, 0, 5);
    c.mutate(&chunk);
    EXPECT_THAT(store_->AppendTokens(id, 0, chunk),
                StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr(c.expected)));
  }
  V4RL_ASSERT_OK_AND_ASSIGN(const TrajectoryMeta meta, store_->GetMeta(id));
  EXPECT_EQ(meta.num_completion_tokens, 0);
  EXPECT_EQ(meta.num_chunks, 0);
}

TEST_P(TrajectoryStoreTest, FinishIsOnceAndOnlyToATerminalStatus) {
  const TrajectoryId id = AddTrajectory(MakeHeader("j", 1, 0), 5, 5, TrajectoryStatus::kInProgress);
  EXPECT_THAT(store_->Finish(id, TrajectoryStatus::kInProgress),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("Finish status is 0")));
  V4RL_ASSERT_OK(store_->Finish(id, TrajectoryStatus::kAborted));
  EXPECT_THAT(store_->Finish(id, TrajectoryStatus::kComplete),
              StatusIs(absl::StatusCode::kFailedPrecondition, HasSubstr("already aborted")));
  EXPECT_THAT(store_->AppendTokens(id, 5, MakeCompletion(id, 0, kSmallRouting, 5, 1)),
              StatusIs(absl::StatusCode::kFailedPrecondition,
                       HasSubstr("is aborted; appends need in_progress")));
}

TEST_P(TrajectoryStoreTest, RewardsAttachToFinishedTrajectoriesOnly) {
  const TrajectoryId id = AddTrajectory(MakeHeader("j", 1, 0), 5, 5, TrajectoryStatus::kInProgress);
  EXPECT_THAT(store_->AddReward(id, {RewardSource::kVerifier, "v", 1.0f}),
              StatusIs(absl::StatusCode::kFailedPrecondition, HasSubstr("is in_progress")));
  V4RL_ASSERT_OK(store_->Finish(id, TrajectoryStatus::kComplete));
  EXPECT_THAT(store_->AddReward(id, {RewardSource::kGrm, "", 1.0f}),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("reward.source_id is empty")));
  EXPECT_THAT(store_->AddReward(id, {RewardSource::kGrm, "r", INFINITY}),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("reward.value is inf")));
  V4RL_ASSERT_OK_AND_ASSIGN(const TrajectoryMeta meta, store_->GetMeta(id));
  EXPECT_TRUE(meta.rewards.empty());
}

TEST_P(TrajectoryStoreTest, UnknownIdsAreNotFound) {
  const TrajectoryId missing = 424242;
  const auto not_found = StatusIs(absl::StatusCode::kNotFound, HasSubstr("trajectory 424242"));
  EXPECT_THAT(store_->GetMeta(missing), not_found);
  EXPECT_THAT(store_->Read(missing), not_found);
  EXPECT_THAT(store_->AppendTokens(missing, 0, MakeCompletion(missing, 0, kSmallRouting, 0, 1)),
              not_found);
  EXPECT_THAT(store_->Finish(missing, TrajectoryStatus::kComplete), not_found);
  EXPECT_THAT(store_->AddReward(missing, {RewardSource::kVerifier, "v", 0.0f}), not_found);
  EXPECT_THAT(store_->ReadBatch({missing}), not_found);
}

TEST_P(TrajectoryStoreTest, ScansByJobGroupVersionAndStatusInIdOrder) {
  const auto done = TrajectoryStatus::kComplete;
  const TrajectoryId a1 = AddTrajectory(MakeHeader("a", 1, 0), 3, 3, done);
  const TrajectoryId b1 = AddTrajectory(MakeHeader("b", 1, 1), 3, 3, done);
  const TrajectoryId a2 = AddTrajectory(MakeHeader("a", 2, 2), 3, 3, TrajectoryStatus::kInProgress);
  const TrajectoryId a1b = AddTrajectory(MakeHeader("a", 1, 2), 3, 3, TrajectoryStatus::kAborted);
  const TrajectoryId a3 = AddTrajectory(MakeHeader("a", 3, 1), 3, 3, done);
  // A job whose name extends another's must not leak into its scans.
  const TrajectoryId ab = AddTrajectory(MakeHeader("ab", 1, 0), 3, 3, done);
  EXPECT_LT(a1, b1);
  EXPECT_LT(b1, a2);

  EXPECT_THAT(ScanIds(Query()), ElementsAre(a1, b1, a2, a1b, a3, ab));
  EXPECT_THAT(ScanIds(Query().Job("a")), ElementsAre(a1, a2, a1b, a3));
  EXPECT_THAT(ScanIds(Query().Job("a").Group(1)), ElementsAre(a1, a1b));
  EXPECT_THAT(ScanIds(Query().MinVersion(1).MaxVersion(1)), ElementsAre(b1, a3));
  EXPECT_THAT(ScanIds(Query().MinVersion(2)), ElementsAre(a2, a1b));
  EXPECT_THAT(ScanIds(Query().MaxVersion(0)), ElementsAre(a1, ab));
  EXPECT_THAT(ScanIds(Query().Job("a").MinVersion(1).MaxVersion(2)), ElementsAre(a2, a1b, a3));
  EXPECT_THAT(
      ScanIds(Query().Statuses({TrajectoryStatus::kInProgress, TrajectoryStatus::kAborted})),
      ElementsAre(a2, a1b));
  EXPECT_THAT(ScanIds(Query().MinVersion(3)), ElementsAre());
  EXPECT_THAT(ScanIds(Query().MinVersion(2).MaxVersion(1)), ElementsAre());
  EXPECT_THAT(ScanIds(Query().Job("nope")), ElementsAre());
  // Paging.
  EXPECT_THAT(ScanIds(Query().Limit(2)), ElementsAre(a1, b1));
  EXPECT_THAT(ScanIds(Query().After(b1).Limit(2)), ElementsAre(a2, a1b));
  EXPECT_THAT(ScanIds(Query().Job("a").After(a2).Limit(1)), ElementsAre(a1b));
  EXPECT_THAT(ScanIds(Query().MinVersion(1).After(b1).Limit(1)), ElementsAre(a2));

  EXPECT_THAT(store_->Scan(Query().Group(1)),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("job_id is empty")));
  EXPECT_THAT(store_->Scan(Query().Limit(-1)),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("limit is -1")));
}

TEST_P(TrajectoryStoreTest, ReadBatchSortsByTeacherThenId) {
  const auto done = TrajectoryStatus::kComplete;
  const TrajectoryId x = AddTrajectory(MakeHeader("j", 1, 0, kSmallRouting, "t-b"), 9, 4, done);
  const TrajectoryId y = AddTrajectory(MakeHeader("j", 2, 0, kSmallRouting, "t-a"), 9, 4, done);
  const TrajectoryId z = AddTrajectory(MakeHeader("j", 3, 0, kSmallRouting, ""), 9, 4, done);
  const TrajectoryId w = AddTrajectory(MakeHeader("j", 4, 0, kSmallRouting, "t-a"), 9, 4, done);
  V4RL_ASSERT_OK_AND_ASSIGN(const std::vector<Trajectory> batch,
                            store_->ReadBatch({x, w, z, y}, {.with_routing = false}));
  std::vector<TrajectoryId> order;
  for (const Trajectory& t : batch) {
    order.push_back(t.meta.id);
    EXPECT_EQ(DiffFromExpected(t, /*with_routing=*/false), "");
  }
  EXPECT_THAT(order, ElementsAre(z, y, w, x));
  EXPECT_THAT(store_->ReadBatch({x, 999}),
              StatusIs(absl::StatusCode::kNotFound, HasSubstr("trajectory 999")));
}

TEST_P(TrajectoryStoreTest, DeleteOlderThanKeepsInProgressAndNewer) {
  const TrajectoryId old_done =
      AddTrajectory(MakeHeader("j", 1, 1), 20, 6, TrajectoryStatus::kComplete);
  const TrajectoryId old_open =
      AddTrajectory(MakeHeader("j", 2, 1), 20, 6, TrajectoryStatus::kInProgress);
  const TrajectoryId old_aborted =
      AddTrajectory(MakeHeader("j", 3, 2), 20, 6, TrajectoryStatus::kAborted);
  const TrajectoryId current =
      AddTrajectory(MakeHeader("j", 4, 3), 20, 6, TrajectoryStatus::kComplete);
  V4RL_ASSERT_OK_AND_ASSIGN(const int64_t deleted, store_->DeleteOlderThan(3));
  EXPECT_EQ(deleted, 2);
  EXPECT_THAT(store_->Read(old_done), StatusIs(absl::StatusCode::kNotFound, HasSubstr("")));
  EXPECT_THAT(store_->GetMeta(old_aborted), StatusIs(absl::StatusCode::kNotFound, HasSubstr("")));
  EXPECT_THAT(ScanIds(Query()), ElementsAre(old_open, current));
  EXPECT_THAT(ScanIds(Query().Job("j").Group(1)), ElementsAre());
  EXPECT_THAT(ScanIds(Query().MaxVersion(2)), ElementsAre(old_open));
  V4RL_ASSERT_OK(store_->Compact());
  V4RL_ASSERT_OK_AND_ASSIGN(const Trajectory kept, store_->Read(current));
  EXPECT_EQ(DiffFromExpected(kept), "");
  V4RL_ASSERT_OK_AND_ASSIGN(const int64_t none, store_->DeleteOlderThan(0));
  EXPECT_EQ(none, 0);
  // Ids are never reused.
  const TrajectoryId next = AddTrajectory(MakeHeader("j", 5, 3), 1, 1, TrajectoryStatus::kComplete);
  EXPECT_GT(next, current);
}

TEST_P(TrajectoryStoreTest, ConcurrentAppendersKeepEverySampleIntact) {
  constexpr int kThreads = 8;
  constexpr int kTrajectoriesPerThread = 6;
  std::vector<std::vector<TrajectoryId>> ids(kThreads);
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < kTrajectoriesPerThread; ++i) {
        ids[t].push_back(AddTrajectory(MakeHeader("j", t, i), 30 + 7 * i, 1 + (t + i) % 9,
                                       TrajectoryStatus::kComplete));
      }
    });
  }
  // Racing appends to one trajectory at the same offset: exactly one wins each offset.
  V4RL_ASSERT_OK_AND_ASSIGN(const TrajectoryId shared,
                            store_->Begin(MakeHeader("shared", 0, 0), MakePrompt(2, 0)));
  std::atomic<int> wins{0};
  std::vector<std::thread> racers;
  for (int r = 0; r < 4; ++r) {
    racers.emplace_back([&] {
      for (int64_t first = 0; first < 40; first += 4) {
        if (store_->AppendTokens(shared, first, MakeCompletion(shared, 0, kSmallRouting, first, 4))
                .ok()) {
          ++wins;
        }
      }
    });
  }
  for (std::thread& thread : threads) thread.join();
  for (std::thread& thread : racers) thread.join();

  for (const std::vector<TrajectoryId>& thread_ids : ids) {
    for (TrajectoryId id : thread_ids) {
      V4RL_ASSERT_OK_AND_ASSIGN(const Trajectory t, store_->Read(id));
      EXPECT_EQ(t.meta.status, TrajectoryStatus::kComplete);
      EXPECT_EQ(DiffFromExpected(t), "");
    }
  }
  V4RL_ASSERT_OK_AND_ASSIGN(const Trajectory t, store_->Read(shared));
  EXPECT_EQ(DiffFromExpected(t), "");
  EXPECT_EQ(t.meta.num_chunks, wins.load());
  EXPECT_EQ(t.meta.num_completion_tokens, 4 * wins.load());
  EXPECT_EQ(ScanIds(Query()).size(), kThreads * kTrajectoriesPerThread + 1u);
}

std::vector<StoreKind> BuiltStoreKinds() {
  std::vector<StoreKind> kinds = {StoreKind::kMemory};
#if V4RL_WITH_ROCKSDB
  kinds.push_back(StoreKind::kRocksDb);
#endif
  return kinds;
}

INSTANTIATE_TEST_SUITE_P(Stores, TrajectoryStoreTest, ::testing::ValuesIn(BuiltStoreKinds()),
                         [](const ::testing::TestParamInfo<StoreKind>& info) {
                           return info.param == StoreKind::kMemory ? "Memory" : "RocksDb";
                         });

}  // namespace
}  // namespace v4rl::store
