#include "tests/actor/actor_test_util.h"

#include <openssl/evp.h>

#include <cstdlib>

#include "absl/strings/escaping.h"
#include "absl/strings/string_view.h"
#include "actor/byte_level.h"
#include "actor/deepseek_v4_tokens.h"
#include "actor/pretokenizer.h"
#include "core/file.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"

namespace v4rl::actor::testing {
namespace {

std::string Env(const char* name) {
  const char* value = std::getenv(name);
  return value == nullptr ? "" : value;
}

std::string Symbol(uint8_t byte) {
  std::string s;
  AppendUtf8(ByteToChar(byte), &s);
  return s;
}

}  // namespace

std::string Sha256Hex(std::string_view data) {
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned int size = 0;
  EXPECT_EQ(EVP_Digest(data.data(), data.size(), digest, &size, EVP_sha256(), nullptr), 1);
  return absl::BytesToHexString(absl::string_view(reinterpret_cast<const char*>(digest), size));
}

std::string ReadTestData(const std::string& relative) {
  const std::string root = Env("V4RL_SOURCE_DIR");
  EXPECT_FALSE(root.empty()) << "V4RL_SOURCE_DIR is set by ctest";
  absl::StatusOr<std::string> text = core::ReadFile(root + "/tests/data/actor/" + relative);
  EXPECT_TRUE(text.ok()) << text.status();
  return text.ok() ? *text : "";
}

std::string RealTokenizerPath() {
  if (std::string path = Env("V4RL_TOKENIZER_JSON"); !path.empty()) return path;
  std::string cache = Env("V4RL_CACHE");
  if (cache.empty()) {
    const std::string xdg = Env("XDG_CACHE_HOME");
    cache = (xdg.empty() ? Env("HOME") + "/.cache" : xdg) + "/v4rl";
  }
  return cache + "/deepseek_v3/tokenizer.json";
}

const Tokenizer* RealTokenizer() {
  static const Tokenizer* tokenizer = []() -> const Tokenizer* {
    absl::StatusOr<std::unique_ptr<Tokenizer>> loaded = Tokenizer::FromFile(RealTokenizerPath());
    if (!loaded.ok()) return nullptr;
    if (!(*loaded)->AddTokens(DeepSeekV4AddedTokens()).ok()) return nullptr;
    return loaded->release();
  }();
  EXPECT_NE(tokenizer, nullptr)
      << "cannot load " << RealTokenizerPath()
      << "; run scripts/fetch_tokenizer.sh (ctest runs it as the actor_fetch_tokenizer fixture)";
  return tokenizer;
}

std::string SyntheticTokenizerJson() {
  nlohmann::ordered_json vocab = nlohmann::ordered_json::object();
  for (int b = 0; b < 256; ++b) vocab[Symbol(static_cast<uint8_t>(b))] = b;
  const std::vector<std::pair<std::string, std::string>> merges = {
      {"h", "e"}, {"l", "l"},   {"he", "ll"}, {"hell", "o"}, {"Ġ", "w"},
      {"o", "r"}, {"Ġw", "or"}, {"l", "d"},   {"Ġwor", "ld"}};
  nlohmann::ordered_json merge_list = nlohmann::ordered_json::array();
  int next_id = 256;
  for (const auto& [left, right] : merges) {
    vocab[left + right] = next_id++;
    merge_list.push_back(left + " " + right);
  }
  const auto added = [](int id, const std::string& content, bool normalized) {
    return nlohmann::ordered_json{
        {"id", id},        {"content", content},       {"single_word", false}, {"lstrip", false},
        {"rstrip", false}, {"normalized", normalized}, {"special", true}};
  };
  const auto split = [](std::string_view pattern) {
    return nlohmann::ordered_json{{"type", "Split"},
                                  {"pattern", {{"Regex", std::string(pattern)}}},
                                  {"behavior", "Isolated"},
                                  {"invert", false}};
  };
  nlohmann::ordered_json json = {
      {"version", "1.0"},
      {"added_tokens",
       {added(1000, "<｜end▁of▁sentence｜>", false), added(1001, "<｜User｜>", true),
        added(1002, "<a>", true), added(1003, "<ab>", true)}},
      {"normalizer", {{"type", "Sequence"}, {"normalizers", nlohmann::ordered_json::array()}}},
      {"pre_tokenizer",
       {{"type", "Sequence"},
        {"pretokenizers",
         {split(kDeepSeekDigitsPattern),
          split(kDeepSeekCjkPattern),
          split(kDeepSeekMainPattern),
          {{"type", "ByteLevel"},
           {"add_prefix_space", false},
           {"trim_offsets", true},
           {"use_regex", false}}}}}},
      {"post_processor", nullptr},
      {"decoder", {{"type", "ByteLevel"}}},
      {"model",
       {{"type", "BPE"},
        {"dropout", nullptr},
        {"unk_token", nullptr},
        {"byte_fallback", false},
        {"vocab", vocab},
        {"merges", merge_list}}},
  };
  return json.dump();
}

}  // namespace v4rl::actor::testing
