// Tokenizer tests: a synthetic tokenizer.json for the loader and the mechanics, then the real
// DeepSeek tokenizer.json against ids from Hugging Face tokenizers 0.23.2
// (tests/data/actor/tokenizer_expectations.json, made by make_tokenizer_expectations.py).
#include "actor/tokenizer.h"

#include <functional>
#include <random>
#include <thread>
#include <string>
#include <vector>

#include "actor/byte_level.h"
#include "actor/unicode.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/actor/actor_test_util.h"
#include "tests/testing/status_matchers.h"

namespace v4rl::actor {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::v4rl::testing::StatusIs;

std::unique_ptr<Tokenizer> Synthetic() {
  auto tokenizer = Tokenizer::FromJson(testing::SyntheticTokenizerJson(), "synthetic");
  EXPECT_TRUE(tokenizer.ok()) << tokenizer.status();
  return tokenizer.ok() ? std::move(*tokenizer) : nullptr;
}

// The synthetic tokenizer.json with one edit applied.
absl::Status LoadEdited(const std::function<void(nlohmann::json&)>& edit) {
  nlohmann::json json = nlohmann::json::parse(testing::SyntheticTokenizerJson());
  edit(json);
  return Tokenizer::FromJson(json.dump(), "edited").status();
}

TEST(SyntheticTokenizer, MergesAndBytes) {
  auto tok = Synthetic();
  ASSERT_NE(tok, nullptr);
  EXPECT_THAT(tok->Encode("hello world"), ElementsAre(259, 264));
  // "!" is byte 0x21; a space before a digit stays its own piece.
  EXPECT_THAT(tok->Encode("hello!"), ElementsAre(259, '!'));
  EXPECT_THAT(tok->Encode("he 1"), ElementsAre(256, ' ', '1'));
  EXPECT_TRUE(tok->Encode("").empty());
  EXPECT_EQ(tok->vocab_size(), 1004);
  EXPECT_EQ(tok->TokenToId("Ġworld"), 264);
  EXPECT_EQ(tok->TokenToId("<｜User｜>"), 1001);
  EXPECT_EQ(tok->TokenToId("nope"), std::nullopt);
}

TEST(SyntheticTokenizer, AddedTokensAreMatchedLeftmostLongest) {
  auto tok = Synthetic();
  ASSERT_NE(tok, nullptr);
  EXPECT_THAT(tok->Encode("x<ab>y"), ElementsAre('x', 1003, 'y'));
  EXPECT_THAT(tok->Encode("<a><ab"), ElementsAre(1002, '<', 'a', 'b'));
  EXPECT_THAT(tok->Encode("<｜User｜>hello<｜end▁of▁sentence｜>"), ElementsAre(1001, 259, 1000));
}

TEST(SyntheticTokenizer, NonNormalizedTokensAreMatchedFirst) {
  auto tok = Synthetic();
  ASSERT_NE(tok, nullptr);
  // "<a" + "b>" overlaps the normalized "<ab>" at an earlier position; the non-normalized
  // "b>" wins because tokenizers matches non-normalized tokens in a first pass.
  ASSERT_TRUE(tok->AddTokens(std::vector<AddedToken>{{1004, "b>", false}}).ok());
  EXPECT_THAT(tok->Encode("<ab>"), ElementsAre('<', 'a', 1004));
}

TEST(SyntheticTokenizer, AddTokensRejectsConflicts) {
  auto tok = Synthetic();
  ASSERT_NE(tok, nullptr);
  V4RL_EXPECT_OK(
      tok->AddTokens(std::vector<AddedToken>{{1001, "<｜User｜>", true}}));  // same token: skipped
  EXPECT_THAT(tok->AddTokens(std::vector<AddedToken>{{1500, "<｜User｜>", true}}),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("already has id 1001")));
  EXPECT_THAT(tok->AddTokens(std::vector<AddedToken>{{259, "<new>", true}}),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("id 259 already belongs")));
  EXPECT_THAT(tok->AddTokens(std::vector<AddedToken>{{-1, "<x>", true}}),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("outside")));
  EXPECT_THAT(tok->AddTokens(std::vector<AddedToken>{{2000, "", true}}),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("1 to 4096 bytes")));
}

TEST(SyntheticTokenizer, DecodeKeepsSpecialTokensAndRejectsUnknownIds) {
  auto tok = Synthetic();
  ASSERT_NE(tok, nullptr);
  const std::vector<int32_t> ids = {1001, 259, 264, 1000};
  EXPECT_EQ(*tok->Decode(ids), "<｜User｜>hello world<｜end▁of▁sentence｜>");
  EXPECT_THAT(tok->Decode(std::vector<int32_t>{259, 500}),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("ids[1]: 500")));
  EXPECT_THAT(tok->Decode(std::vector<int32_t>{-3}),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("ids[0]: -3")));
  // A lone UTF-8 lead byte decodes to U+FFFD.
  EXPECT_EQ(*tok->Decode(std::vector<int32_t>{0xE2, 'a'}),
            "\xEF\xBF\xBD"
            "a");
}

TEST(SyntheticTokenizer, InvalidUtf8IsEncodedBytewise) {
  auto tok = Synthetic();
  ASSERT_NE(tok, nullptr);
  const std::string bytes = "he\xff\xc0\x80llo\xed\xa0\x80";
  std::string round_trip;
  for (int32_t id : tok->Encode(bytes)) round_trip += *tok->TokenBytes(id);
  EXPECT_EQ(round_trip, bytes);
}

TEST(TokenizerLoader, RejectsMalformedFiles) {
  EXPECT_THAT(Tokenizer::FromJson("{not json", "t.json"),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("t.json")));
  EXPECT_THAT(Tokenizer::FromJson("[]", "t.json"),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("expected a JSON object")));
  EXPECT_THAT(LoadEdited([](auto& j) { j.erase("model"); }),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("model must be an object")));
  EXPECT_THAT(LoadEdited([](auto& j) { j["model"]["type"] = "WordPiece"; }),
              StatusIs(absl::StatusCode::kUnimplemented, HasSubstr("model.type")));
  EXPECT_THAT(LoadEdited([](auto& j) { j["model"]["vocab"]["he"] = -4; }),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("model.vocab[\"he\"]")));
  EXPECT_THAT(LoadEdited([](auto& j) { j["model"]["vocab"]["zz"] = 259; }),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("id 259 is used by")));
  EXPECT_THAT(LoadEdited([](auto& j) { j["model"]["vocab"].erase("Ġ"); }),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("byte 0x20")));
  EXPECT_THAT(LoadEdited([](auto& j) { j["model"]["merges"][2] = "he zz"; }),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       HasSubstr("model.merges[2]: \"zz\" is not in model.vocab")));
  EXPECT_THAT(LoadEdited([](auto& j) { j["model"]["merges"][0] = "h e x"; }),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("model.merges[0]")));
  EXPECT_THAT(LoadEdited([](auto& j) { j["model"]["merges"] = 5; }),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("model.merges")));
  EXPECT_THAT(LoadEdited([](auto& j) { j["model"]["byte_fallback"] = true; }),
              StatusIs(absl::StatusCode::kUnimplemented, HasSubstr("byte_fallback")));
  EXPECT_THAT(LoadEdited([](auto& j) {
                j["normalizer"] = {{"type", "NFC"}};
              }),
              StatusIs(absl::StatusCode::kUnimplemented, HasSubstr("normalizer")));
  EXPECT_THAT(LoadEdited([](auto& j) {
                j["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"] = "\\d+";
              }),
              StatusIs(absl::StatusCode::kUnimplemented, HasSubstr("pre_tokenizer")));
  EXPECT_THAT(LoadEdited([](auto& j) { j["added_tokens"][1]["lstrip"] = true; }),
              StatusIs(absl::StatusCode::kUnimplemented, HasSubstr("added_tokens[1].lstrip")));
  EXPECT_THAT(LoadEdited([](auto& j) { j["added_tokens"][0]["content"] = 7; }),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("added_tokens[0].content")));
  EXPECT_THAT(LoadEdited([](auto& j) { j["added_tokens"][0]["id"] = 259; }),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("already belongs")));
  EXPECT_THAT(Tokenizer::FromFile("/nonexistent/tokenizer.json"),
              StatusIs(absl::StatusCode::kNotFound, HasSubstr("/nonexistent")));
}

TEST(TokenizerLoader, AcceptsMergesAsPairs) {
  V4RL_EXPECT_OK(LoadEdited([](auto& j) {
    for (auto& merge : j["model"]["merges"]) {
      const std::string text = merge.template get<std::string>();
      merge =
          nlohmann::json::array({text.substr(0, text.find(' ')), text.substr(text.find(' ') + 1)});
    }
  }));
}

// --- The real DeepSeek tokenizer ---------------------------------------------------------------

TEST(DeepSeekTokenizer, MatchesHuggingFaceTokenizers) {
  const Tokenizer* tok = testing::RealTokenizer();
  ASSERT_NE(tok, nullptr);
  const nlohmann::json expectations =
      nlohmann::json::parse(testing::ReadTestData("tokenizer_expectations.json"));
  int checked = 0;
  for (const auto& c : expectations["cases"]) {
    const std::string text = c["text"].get<std::string>();
    EXPECT_EQ(tok->Encode(text), c["ids"].get<std::vector<int32_t>>()) << "text: " << text;
    ++checked;
  }
  EXPECT_GT(checked, 500);
}

TEST(DeepSeekTokenizer, PublishedVectors) {
  const Tokenizer* tok = testing::RealTokenizer();
  ASSERT_NE(tok, nullptr);
  // spec §1.1 and §8.6: vectors from DeepSeek's V4 tokenizer package.
  EXPECT_THAT(
      tok->Encode("<｜User｜>你好<｜Assistant｜><think>推理</think>答案<｜end▁of▁sentence｜>"),
      ElementsAre(128803, 30594, 128804, 128821, 36101, 128822, 7624, 1));
  EXPECT_EQ(tok->Encode("Hello! 毕老师！1 + 1 = 2 ĠÑĤÐ²ÑĬÑĢ"),
            (std::vector<int32_t>{19923, 3,    223,   5464, 5008, 1175,  19,    940, 223,
                                  19,    438,  223,   20,   6113, 257,   76589, 131, 100,
                                  76032, 1628, 76589, 131,  108,  76589, 131,   98}));
  // spec §6: example A and a completion.
  EXPECT_EQ(tok->Encode("<｜begin▁of▁sentence｜>You are a helpful assistant.<｜User｜>What is "
                        "2+2?<｜Assistant｜></think>"),
            (std::vector<int32_t>{0, 3476, 477, 260, 11502, 22896, 16, 128803, 3085, 344, 223, 20,
                                  13, 20, 33, 128804, 128822}));
  EXPECT_EQ(
      tok->Encode("Simple arithmetic.</think>2 + 2 = 4.<｜end▁of▁sentence｜>"),
      (std::vector<int32_t>{40593, 29568, 16, 128822, 20, 940, 223, 20, 438, 223, 22, 16, 1}));
  EXPECT_EQ(tok->vocab_size(), 128846);
}

std::string RandomValidUtf8(std::mt19937& rng, int length) {
  // Mostly ASCII, with a spread of 2-, 3- and 4-byte characters (no surrogates).
  std::uniform_int_distribution<int> kind(0, 9);
  std::string out;
  for (int i = 0; i < length; ++i) {
    char32_t cp;
    switch (kind(rng)) {
      case 0:
        cp = std::uniform_int_distribution<char32_t>(0x80, 0x7FF)(rng);
        break;
      case 1:
        cp = std::uniform_int_distribution<char32_t>(0x3000, 0x9FFF)(rng);
        break;
      case 2:
        cp = std::uniform_int_distribution<char32_t>(0x10000, 0x10FFFF)(rng);
        break;
      case 3:
        cp = std::uniform_int_distribution<char32_t>(0xE000, 0xFFFD)(rng);
        break;
      default:
        cp = std::uniform_int_distribution<char32_t>(0, 0x7F)(rng);
        break;
    }
    AppendUtf8(cp, &out);
  }
  return out;
}

TEST(DeepSeekTokenizer, DecodeInvertsEncodeOnValidUtf8) {
  const Tokenizer* tok = testing::RealTokenizer();
  ASSERT_NE(tok, nullptr);
  std::mt19937 rng(7);
  for (int i = 0; i < 2000; ++i) {
    const std::string text = RandomValidUtf8(rng, 1 + i % 64);
    ASSERT_EQ(*tok->Decode(tok->Encode(text)), text);
  }
  const std::string fixture = testing::ReadTestData("dsv4_fixtures/test_output_4.txt");
  EXPECT_EQ(*tok->Decode(tok->Encode(fixture)), fixture);
}

TEST(DeepSeekTokenizer, InvalidUtf8NeverFails) {
  const Tokenizer* tok = testing::RealTokenizer();
  ASSERT_NE(tok, nullptr);
  std::mt19937 rng(11);
  std::uniform_int_distribution<int> byte(0, 255);
  for (int i = 0; i < 2000; ++i) {
    std::string bytes(1 + i % 48, '\0');
    for (char& c : bytes) c = static_cast<char>(byte(rng));
    std::string expected;
    AppendUtf8Lossy(bytes, &expected);
    ASSERT_EQ(*tok->Decode(tok->Encode(bytes)), expected);
  }
}

TEST(DeepSeekTokenizer, LargeTextRoundTrips) {
  const Tokenizer* tok = testing::RealTokenizer();
  ASSERT_NE(tok, nullptr);
  std::string text;
  const std::string fixture = testing::ReadTestData("dsv4_fixtures/test_output_1.txt") +
                              testing::ReadTestData("dsv4_fixtures/test_output_4.txt");
  ASSERT_FALSE(fixture.empty());
  while (text.size() < (1 << 20)) text += fixture;
  text += std::string(5000, ' ') + "x" + std::string(3000, '\n');
  const std::vector<int32_t> ids = tok->Encode(text);
  EXPECT_GT(ids.size(), text.size() / 8);
  EXPECT_EQ(*tok->Decode(ids), text);
}

TEST(DeepSeekTokenizer, ConcurrentEncodesAgree) {
  const Tokenizer* tok = testing::RealTokenizer();
  ASSERT_NE(tok, nullptr);
  std::vector<std::string> texts;
  for (int i = 1; i <= 4; ++i) {
    texts.push_back(
        testing::ReadTestData("dsv4_fixtures/test_output_" + std::to_string(i) + ".txt"));
  }
  std::vector<std::vector<int32_t>> expected;
  for (const std::string& text : texts) expected.push_back(tok->Encode(text));
  // Threads share the piece cache; every result must match the single-threaded one.
  std::vector<int> mismatches(4, 0);
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      for (int round = 0; round < 50; ++round) {
        const size_t i = (t + round) % texts.size();
        if (tok->Encode(texts[i]) != expected[i]) ++mismatches[t];
      }
    });
  }
  for (std::thread& thread : threads) thread.join();
  EXPECT_THAT(mismatches, ::testing::Each(0));
}

}  // namespace
}  // namespace v4rl::actor
