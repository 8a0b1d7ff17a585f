// `v4rl store stats|dump|verify DIR`: inspects a RocksDB trajectory store without changing it.
// The store is opened read-only, so a store a running job holds open can be inspected too (as of
// the moment it is opened).
//   stats   records and bytes per column family, then trajectories by status and token totals
//   dump    one JSON object per trajectory and line (metadata; --tokens and --routing add arrays)
//   verify  checks every record decodes and agrees with its trajectory; exits 1 on any problem
#include <algorithm>
#include <iostream>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_format.h"
#include "cli/command.h"
#include "cli/flags.h"
#include "nlohmann/json.hpp"
#include "store/rocksdb_trajectory_store.h"

namespace v4rl::cli {
namespace {

using store::RocksDbTrajectoryStore;
using store::ScanQuery;
using store::TrajectoryMeta;

// Scans page by page so that a large store is never held in memory at once.
constexpr int64_t kPageSize = 4096;

nlohmann::ordered_json MetaJson(const TrajectoryMeta& meta) {
  const store::TrajectoryHeader& h = meta.header;
  nlohmann::ordered_json rewards = nlohmann::ordered_json::array();
  for (const store::Reward& reward : meta.rewards) {
    rewards.push_back({{"source", store::RewardSourceName(reward.source)},
                       {"source_id", reward.source_id},
                       {"value", reward.value},
                       {"created_us", reward.created_us}});
  }
  return {
      {"id", meta.id},
      {"job_id", h.job_id},
      {"group_id", h.group_id},
      {"teacher_id", h.teacher_id},
      {"policy_version", h.policy_version},
      {"mode", store::ReasoningModeName(h.mode)},
      {"sampling",
       {{"temperature", h.sampling.temperature},
        {"top_p", h.sampling.top_p},
        {"top_k", h.sampling.top_k},
        {"max_new_tokens", h.sampling.max_new_tokens},
        {"seed", h.sampling.seed}}},
      {"routing",
       {{"num_moe_layers", h.routing.num_moe_layers},
        {"num_topk", h.routing.num_topk},
        {"num_experts", h.routing.num_experts}}},
      {"status", store::TrajectoryStatusName(meta.status)},
      {"num_prompt_tokens", meta.num_prompt_tokens},
      {"num_completion_tokens", meta.num_completion_tokens},
      {"num_chunks", meta.num_chunks},
      {"max_weight_version", meta.max_weight_version},
      {"rewards", rewards},
      {"created_us", meta.created_us},
      {"updated_us", meta.updated_us},
      {"finished_us", meta.finished_us},
  };
}

// Calls fn(meta) for every trajectory matching `query`, in id order; false on the first error
// (printed).
template <typename Fn>
bool ForEachMeta(RocksDbTrajectoryStore& store, ScanQuery query, int64_t limit, Fn fn) {
  int64_t seen = 0;
  while (limit == 0 || seen < limit) {
    query.limit = limit == 0 ? kPageSize : std::min(kPageSize, limit - seen);
    absl::StatusOr<std::vector<TrajectoryMeta>> page = store.Scan(query);
    if (!page.ok()) {
      std::cerr << "v4rl store: " << page.status().message() << "\n";
      return false;
    }
    for (const TrajectoryMeta& meta : *page) {
      if (!fn(meta)) return false;
    }
    seen += static_cast<int64_t>(page->size());
    if (static_cast<int64_t>(page->size()) < query.limit) break;
    query.after_id = page->back().id;
  }
  return true;
}

int Stats(RocksDbTrajectoryStore& store) {
  absl::StatusOr<std::vector<store::ColumnFamilyStats>> stats = store.Stats();
  if (!stats.ok()) {
    std::cerr << "v4rl store stats: " << stats.status().message() << "\n";
    return 1;
  }
  std::cout << absl::StrFormat("%-10s %12s %14s %14s %14s %14s\n", "column", "records", "key bytes",
                               "value bytes", "sst bytes", "memtable bytes");
  for (const store::ColumnFamilyStats& s : *stats) {
    std::cout << absl::StrFormat("%-10s %12d %14d %14d %14d %14d\n", s.name, s.num_records,
                                 s.key_bytes, s.value_bytes, s.sst_file_bytes, s.memtable_bytes);
  }
  std::map<std::string_view, int64_t> by_status;
  int64_t num_trajectories = 0, prompt_tokens = 0, completion_tokens = 0;
  const bool ok = ForEachMeta(store, ScanQuery(), 0, [&](const TrajectoryMeta& meta) {
    ++num_trajectories;
    ++by_status[store::TrajectoryStatusName(meta.status)];
    prompt_tokens += meta.num_prompt_tokens;
    completion_tokens += meta.num_completion_tokens;
    return true;
  });
  if (!ok) return 1;
  std::cout << absl::StrFormat("trajectories: %d", num_trajectories);
  for (const auto& [status, count] : by_status) {
    std::cout << absl::StrFormat(", %s %d", status, count);
  }
  std::cout << absl::StrFormat("\ntokens: %d prompt, %d completion\n", prompt_tokens,
                               completion_tokens);
  return 0;
}

int Dump(RocksDbTrajectoryStore& store, const ScanQuery& query, int64_t limit, bool with_tokens,
         bool with_routing) {
  const bool ok = ForEachMeta(store, query, limit, [&](const TrajectoryMeta& meta) {
    nlohmann::ordered_json line = MetaJson(meta);
    if (with_tokens || with_routing) {
      absl::StatusOr<store::Trajectory> trajectory =
          store.Read(meta.id, {.with_routing = with_routing});
      if (!trajectory.ok()) {
        std::cerr << "v4rl store dump: " << trajectory.status().message() << "\n";
        return false;
      }
      const store::CompletionTokens& completion = trajectory->completion;
      if (with_tokens) {
        line["prompt_token_ids"] = trajectory->prompt_token_ids;
        line["completion"] = {{"token_ids", completion.token_ids},
                              {"logprobs", completion.logprobs},
                              {"weight_versions", completion.weight_versions},
                              {"kept_set_sizes", completion.kept_set_sizes}};
      }
      // [num_moe_layers, num_completion_tokens, num_topk], flattened.
      if (with_routing) line["routed_experts"] = completion.routed_experts;
    }
    // Ids are bytes, not necessarily UTF-8: replace what is not rather than throw.
    std::cout << line.dump(-1, ' ', false, nlohmann::ordered_json::error_handler_t::replace)
              << "\n";
    return true;
  });
  return ok ? 0 : 1;
}

int Verify(RocksDbTrajectoryStore& store) {
  absl::StatusOr<store::VerifyReport> report = store.Verify();
  if (!report.ok()) {
    std::cerr << "v4rl store verify: " << report.status().message() << "\n";
    return 1;
  }
  for (const std::string& problem : report->problems) std::cout << problem << "\n";
  if (report->num_problems > static_cast<int64_t>(report->problems.size())) {
    std::cout << absl::StrFormat("... and %d more\n",
                                 report->num_problems - report->problems.size());
  }
  std::cout << absl::StrFormat(
      "%d trajectories, %d records: %s\n", report->num_trajectories, report->num_records,
      report->ok() ? "ok" : absl::StrFormat("%d problems", report->num_problems));
  return report->ok() ? 0 : 1;
}

int RunStore(const std::vector<std::string>& args) {
  FlagParser parser(
      "store", "v4rl store stats|dump|verify DIR [flags]",
      "Inspect a trajectory store (read-only). stats: records and bytes per column family and "
      "trajectories by status. dump: one JSON object per trajectory and line. verify: check "
      "every record; exits 1 when any is corrupt or inconsistent.");
  std::string action, path, job_id;
  int64_t group_id = -1, min_version = -1, max_version = -1, limit = 0;
  bool with_tokens = false, with_routing = false;
  parser.AddPositional("ACTION", &action, "stats, dump or verify");
  parser.AddPositional("DIR", &path, "the store directory");
  parser.AddString("job", &job_id, "dump: only this job's trajectories");
  parser.AddInt("group", &group_id, "dump: only this group of --job (-1 = all)");
  parser.AddInt("min_version", &min_version, "dump: policy version >= this (-1 = any)");
  parser.AddInt("max_version", &max_version, "dump: policy version <= this (-1 = any)");
  parser.AddInt("limit", &limit, "dump: at most this many trajectories (0 = all)");
  parser.AddBool("tokens", &with_tokens, "dump: add prompt and completion token arrays");
  parser.AddBool("routing", &with_routing, "dump: add routed expert ids");
  int exit_code;
  if (!parser.ParseOrExit(args, &exit_code)) return exit_code;
  if (action != "stats" && action != "dump" && action != "verify") {
    std::cerr << "v4rl store: ACTION is \"" << action << "\"; expected stats, dump or verify\n";
    return 2;
  }
  if (group_id >= 0 && job_id.empty()) {
    std::cerr << "v4rl store: --group needs --job (group ids are unique within a job)\n";
    return 2;
  }
  if (limit < 0) {
    std::cerr << "v4rl store: --limit is " << limit << "; expected >= 0\n";
    return 2;
  }

  store::RocksDbStoreOptions options;
  options.read_only = true;
  absl::StatusOr<std::unique_ptr<RocksDbTrajectoryStore>> opened =
      RocksDbTrajectoryStore::Open(path, options);
  if (!opened.ok()) {
    std::cerr << "v4rl store: " << opened.status().message() << "\n";
    return 1;
  }
  RocksDbTrajectoryStore& store = **opened;
  if (action == "stats") return Stats(store);
  if (action == "verify") return Verify(store);
  ScanQuery query;
  query.job_id = job_id;
  if (group_id >= 0) query.group_id = static_cast<uint64_t>(group_id);
  if (min_version >= 0) query.min_policy_version = min_version;
  if (max_version >= 0) query.max_policy_version = max_version;
  return Dump(store, query, limit, with_tokens, with_routing);
}

}  // namespace
}  // namespace v4rl::cli

V4RL_REGISTER_COMMAND(store, "Inspect a trajectory store: stats, dump (JSON lines) or verify",
                      v4rl::cli::RunStore);
