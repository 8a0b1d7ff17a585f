// Acceptance of issue 4 (model side): incremental decoding equals the full forward.
// A batch of prompts of different lengths is fed through DecodeStep in random chunks (half of
// them single tokens, the rest up to `max_chunk`, sequences skipping steps at random so they sit
// at different positions in one step), crossing window and compression boundaries; every
// position's logits must equal Forward's for that sequence to 1e-5 relative
// (max_v |a - r| / max_v |r|, per position). Models: the committed transformers fixtures
// (mixed_small: ratios 4/8; ratios_4_128) and random tiny configs with ratios 4 and 128
// (model/init.h kExercise weights). Plus: feeding transformers' greedy tokens after the prompt
// reproduces transformers' cached decode logits.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <vector>

#include "core/rng.h"
#include "gtest/gtest.h"
#include "model/decode.h"
#include "model/forward.h"
#include "model/init.h"
#include "tests/model/fixtures.h"
#include "tests/testing/status_matchers.h"

namespace v4rl::model {
namespace {

using core::DType;
using core::Tensor;

struct ParityStats {
  double max_rel = 0;        // worst position's max_v |a - r| / max_v |r|
  int64_t positions = 0;
  int64_t exact_positions = 0;  // bit-identical logits rows
};

// Compares row `a` with row `r` of `vocab` logits.
void Accumulate(const float* a, const float* r, int64_t vocab, ParityStats* stats) {
  double max_diff = 0, max_ref = 0;
  for (int64_t v = 0; v < vocab; ++v) {
    max_diff = std::max(max_diff, std::fabs(static_cast<double>(a[v]) - r[v]));
    max_ref = std::max(max_ref, std::fabs(static_cast<double>(r[v])));
  }
  stats->max_rel = std::max(stats->max_rel, max_diff / max_ref);
  ++stats->positions;
  stats->exact_positions += max_diff == 0;
}

Tensor ToIds(const std::vector<int32_t>& tokens) {
  Tensor ids = Tensor::Empty(DType::kI32, {1, static_cast<int64_t>(tokens.size())});
  std::copy(tokens.begin(), tokens.end(), ids.data<int32_t>());
  return ids;
}

// Feeds `prompts` through DecodeStep in random chunks and compares every position's logits with
// the full forward of its sequence.
ParityStats ChunkedParity(const Model& model, const std::vector<std::vector<int32_t>>& prompts,
                          uint64_t seed, int64_t max_chunk) {
  const int64_t vocab = model.config.vocab_size;
  const size_t batch = prompts.size();
  std::vector<DecodeState> states;
  std::vector<Tensor> logits(batch);
  for (size_t b = 0; b < batch; ++b) {
    const int64_t length = static_cast<int64_t>(prompts[b].size());
    auto state = CreateDecodeState(model.config, length);
    EXPECT_TRUE(state.ok()) << state.status();
    states.push_back(*std::move(state));
    logits[b] = Tensor::Empty(DType::kF32, {length, vocab});
  }
  const core::Rng rng(seed);
  uint64_t draw = 0;
  for (int step = 0;; ++step) {
    std::vector<DecodeInput> inputs;
    std::vector<size_t> owners;
    for (size_t b = 0; b < batch; ++b) {
      const int64_t done = states[b].num_tokens;
      const int64_t left = static_cast<int64_t>(prompts[b].size()) - done;
      if (left == 0 || rng.Uniform(draw++) < 0.2f) continue;  // finished, or sits this step out
      const int64_t chunk =
          rng.Uniform(draw++) < 0.5f
              ? 1
              : 2 + static_cast<int64_t>(rng.Uniform(draw++) * (max_chunk - 1));
      const int64_t count = std::min(chunk, left);
      inputs.push_back({&states[b], absl::MakeConstSpan(prompts[b].data() + done, count)});
      owners.push_back(b);
    }
    bool finished = true;
    for (size_t b = 0; b < batch; ++b) finished &= states[b].num_tokens == int64_t(prompts[b].size());
    if (finished) break;
    if (inputs.empty()) continue;
    std::vector<int64_t> before;
    for (const DecodeInput& input : inputs) before.push_back(input.state->num_tokens);
    auto out = DecodeStep(model, inputs, {.all_logits = true});
    EXPECT_TRUE(out.ok()) << out.status();
    if (!out.ok()) return {};
    int64_t row = 0;
    for (size_t i = 0; i < inputs.size(); ++i) {
      const int64_t count = static_cast<int64_t>(inputs[i].tokens.size());
      std::copy(out->logits.data<float>() + row * vocab,
                out->logits.data<float>() + (row + count) * vocab,
                logits[owners[i]].data<float>() + before[i] * vocab);
      row += count;
    }
  }
  ParityStats stats;
  for (size_t b = 0; b < batch; ++b) {
    auto full = Forward(model, ToIds(prompts[b]).view());
    EXPECT_TRUE(full.ok()) << full.status();
    if (!full.ok()) return {};
    for (size_t t = 0; t < prompts[b].size(); ++t) {
      Accumulate(logits[b].data<float>() + t * vocab, full->logits.data<float>() + t * vocab,
                 vocab, &stats);
    }
  }
  return stats;
}

void ExpectParity(const char* what, const ParityStats& stats) {
  std::printf("[decode parity] %-28s positions %4ld  max rel %.3e  bit-exact %ld\n", what,
              static_cast<long>(stats.positions), stats.max_rel,
              static_cast<long>(stats.exact_positions));
  EXPECT_GT(stats.positions, 0);
  EXPECT_LE(stats.max_rel, 1e-5) << what;
}

std::vector<int32_t> RandomTokens(int64_t length, int64_t vocab, uint64_t seed) {
  const core::Rng rng(seed);
  std::vector<int32_t> tokens(length);
  for (int64_t i = 0; i < length; ++i) {
    tokens[i] = static_cast<int32_t>(std::min<int64_t>(rng.Uniform(i) * vocab, vocab - 1));
  }
  return tokens;
}

// TinyConfig with the real ratios 4 and 128 and all three layer types.
ModelConfig Ratios4And128Config(int64_t window, int64_t index_topk) {
  ModelConfig c = TinyConfig();
  c.hca_compress_ratio = 128;
  c.sliding_window = window;
  c.index_topk = index_topk;
  c.index_n_heads = 4;
  c.layer_types = {AttentionType::kCompressedSparse, AttentionType::kHeavilyCompressed,
                   AttentionType::kSliding, AttentionType::kCompressedSparse};
  c.mlp_layer_types = {MlpType::kHashMoe, MlpType::kMoe, MlpType::kMoe, MlpType::kMoe};
  return c;
}

TEST(DecodeParityTest, RandomConfigRatios4And128) {
  const ModelConfig config = Ratios4And128Config(/*window=*/8, /*index_topk=*/3);
  V4RL_ASSERT_OK(config.Validate());
  const Model model = RandomModel(config, {.scheme = InitScheme::kExercise, .seed = 5});
  std::vector<std::vector<int32_t>> prompts;
  for (int64_t length : {300, 263, 129, 7, 1}) {
    prompts.push_back(RandomTokens(length, config.vocab_size, 100 + length));
  }
  ExpectParity("random 4/128 window 8", ChunkedParity(model, prompts, /*seed=*/1, 40));
}

TEST(DecodeParityTest, RandomConfigOddWindowLongChunks) {
  // A window (13) that is not a multiple of either ratio; chunks longer than the window and
  // than a CSA window; more picks than visible entries early on.
  const ModelConfig config = Ratios4And128Config(/*window=*/13, /*index_topk=*/6);
  V4RL_ASSERT_OK(config.Validate());
  const Model model = RandomModel(config, {.scheme = InitScheme::kExercise, .seed = 9});
  std::vector<std::vector<int32_t>> prompts;
  for (int64_t length : {281, 140, 30}) {
    prompts.push_back(RandomTokens(length, config.vocab_size, 200 + length));
  }
  ExpectParity("random 4/128 window 13", ChunkedParity(model, prompts, /*seed=*/2, 150));
}

// Prompts of different lengths cut from a fixture's reference input_ids (row b, rotated so the
// sequences differ).
std::vector<std::vector<int32_t>> FixturePrompts(const Tensor& input_ids,
                                                 const std::vector<int64_t>& lengths) {
  const int64_t rows = input_ids.size(0), width = input_ids.size(1);
  std::vector<std::vector<int32_t>> prompts;
  for (size_t i = 0; i < lengths.size(); ++i) {
    const int64_t row = static_cast<int64_t>(i) % rows;
    std::vector<int32_t> tokens(lengths[i]);
    for (int64_t t = 0; t < lengths[i]; ++t) {
      tokens[t] = static_cast<int32_t>(
          input_ids.data<int64_t>()[row * width + (t + 7 * static_cast<int64_t>(i)) % width]);
    }
    prompts.push_back(tokens);
  }
  return prompts;
}

TEST(DecodeParityTest, FixturesChunkedEqualsForward) {
  for (const char* fixture : {"mixed_small", "ratios_4_128"}) {
    V4RL_ASSERT_OK_AND_ASSIGN(const Model model,
                              Model::Load(testing::FixtureDir(fixture) + "/model"));
    testing::Reference ref(fixture);
    ASSERT_TRUE(ref.ok());
    const Tensor input_ids = ref.Get("input_ids");
    const int64_t width = input_ids.size(1);
    const auto prompts = FixturePrompts(input_ids, {width, width - 3, width / 2 + 1, 5});
    ExpectParity(fixture, ChunkedParity(model, prompts, /*seed=*/3, 64));
  }
}

TEST(DecodeParityTest, FixturesDecodeMatchesTransformersCache) {
  for (const char* fixture : {"mixed_small", "ratios_4_128"}) {
    V4RL_ASSERT_OK_AND_ASSIGN(const Model model,
                              Model::Load(testing::FixtureDir(fixture) + "/model"));
    testing::Reference ref(fixture);
    ASSERT_TRUE(ref.ok());
    const Tensor input_ids = ref.Get("input_ids");
    const Tensor tokens = ref.Get("decode_tokens");  // [B, steps] i64
    const Tensor expected = ref.Get("decode_logits");  // [B, steps, V] f32
    const int64_t prompt_len = ref.Get("decode_prompt_len").data<int64_t>()[0];
    const int64_t batch = tokens.size(0), steps = tokens.size(1), vocab = model.config.vocab_size;
    const int64_t width = input_ids.size(1);
    double max_rel = 0;
    for (int64_t b = 0; b < batch; ++b) {
      std::vector<int32_t> sequence(prompt_len + steps - 1);
      for (int64_t t = 0; t < prompt_len; ++t) {
        sequence[t] = static_cast<int32_t>(input_ids.data<int64_t>()[b * width + t]);
      }
      for (int64_t s = 0; s + 1 < steps; ++s) {
        sequence[prompt_len + s] = static_cast<int32_t>(tokens.data<int64_t>()[b * steps + s]);
      }
      V4RL_ASSERT_OK_AND_ASSIGN(DecodeState state,
                                CreateDecodeState(model.config, prompt_len + steps));
      // The prompt in one chunk, then one token per step, as transformers' generate does.
      int64_t done = 0;
      for (int64_t s = 0; s < steps; ++s) {
        const int64_t count = s == 0 ? prompt_len : 1;
        const DecodeInput input{&state, absl::MakeConstSpan(sequence.data() + done, count)};
        V4RL_ASSERT_OK_AND_ASSIGN(const DecodeStepOutput out, DecodeStep(model, {input}));
        done += count;
        ParityStats stats;
        Accumulate(out.logits.data<float>(),
                   expected.data<float>() + (b * steps + s) * vocab, vocab, &stats);
        max_rel = std::max(max_rel, stats.max_rel);
      }
    }
    std::printf("[decode vs transformers cache] %-13s max rel %.3e\n", fixture, max_rel);
    EXPECT_LE(max_rel, 1e-4) << fixture;
  }
}

}  // namespace
}  // namespace v4rl::model
