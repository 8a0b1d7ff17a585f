// Test helpers for the trajectory stores: headers, deterministic completions and temp dirs.
//
// Completion contents are a pure function of (trajectory id, token position), so a test (or the
// durability test's killed writer process) can append any range of a sample and a checker can
// regenerate what must be stored without keeping a copy. Thread-safe: pure functions.
#pragma once

#include <cstdint>
#include <string>

#include "store/trajectory.h"

namespace v4rl::store::testing {

// V4-Flash-like routing, scaled down: 1-byte ids.
inline constexpr RoutingShape kSmallRouting{/*num_moe_layers=*/4, /*num_topk=*/6,
                                            /*num_experts=*/64};

TrajectoryHeader MakeHeader(const std::string& job_id, uint64_t group_id, int64_t policy_version,
                            const RoutingShape& routing = kSmallRouting,
                            const std::string& teacher_id = "");

// The durability test's samples: V4-Flash-like routing ids and a per-sample length.
inline constexpr RoutingShape kDurabilityRouting{/*num_moe_layers=*/8, /*num_topk=*/6,
                                                 /*num_experts=*/256};
int64_t TargetTokens(TrajectoryId id);

std::vector<int32_t> MakePrompt(int64_t num_tokens, uint64_t seed);

// Completion tokens [first_token, first_token + num_tokens) of trajectory `id`: weight versions
// start at `policy_version` and step up every 100 tokens, as a sample spanning weight updates.
CompletionTokens MakeCompletion(TrajectoryId id, int64_t policy_version,
                                const RoutingShape& routing, int64_t first_token,
                                int64_t num_tokens);

// Empty string when `trajectory` holds exactly MakeCompletion(id, ..., 0, n) for its n tokens
// (and no routing when it was read without), else a description of the first difference.
std::string DiffFromExpected(const Trajectory& trajectory, bool with_routing = true);

// A fresh path under $TEST_TMPDIR, $TMPDIR or /tmp (as ::testing::TempDir()); not created.
std::string NewTempPath(const std::string& name);

}  // namespace v4rl::store::testing
