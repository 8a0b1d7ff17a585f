// Encode throughput of actor::Tokenizer (DeepSeek tokenizer.json + V4 tokens) on a text file, one
// thread. bench/tokenizer_bench.sh runs it next to Hugging Face tokenizers on the same text and
// prints the ratio; this program prints one JSON line with its own figures and a hash of the ids,
// so the script can check that both tokenizers produced the same ids.
//
//   tokenizer_bench TOKENIZER_JSON TEXT_FILE [REPEATS]
#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "actor/deepseek_v4_tokens.h"
#include "actor/tokenizer.h"
#include "core/file.h"

namespace {

double Seconds(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

// FNV-1a over the ids as decimal text joined by commas (what the Python baseline hashes).
uint64_t HashIds(const std::vector<int32_t>& ids) {
  uint64_t hash = 1469598103934665603ull;
  for (size_t i = 0; i < ids.size(); ++i) {
    const std::string text = (i ? "," : "") + std::to_string(ids[i]);
    for (char c : text) hash = (hash ^ static_cast<uint8_t>(c)) * 1099511628211ull;
  }
  return hash;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 3) {
    std::fprintf(stderr, "usage: tokenizer_bench TOKENIZER_JSON TEXT_FILE [REPEATS]\n");
    return 2;
  }
  const int repeats = argc > 3 ? std::max(1, std::atoi(argv[3])) : 5;
  auto start = std::chrono::steady_clock::now();
  auto tokenizer = v4rl::actor::Tokenizer::FromFile(argv[1]);
  if (!tokenizer.ok() || !(*tokenizer)->AddTokens(v4rl::actor::DeepSeekV4AddedTokens()).ok()) {
    std::fprintf(stderr, "tokenizer_bench: cannot load %s\n", argv[1]);
    return 1;
  }
  const double load_s = Seconds(start);
  auto text = v4rl::core::ReadFile(argv[2]);
  if (!text.ok()) {
    std::fprintf(stderr, "tokenizer_bench: %s\n", std::string(text.status().message()).c_str());
    return 1;
  }
  // The first pass also fills the piece cache, as the baseline's first pass fills its own.
  std::vector<int32_t> ids;
  start = std::chrono::steady_clock::now();
  (*tokenizer)->Encode(*text, &ids);
  const double first_s = Seconds(start);
  double best_s = first_s;
  for (int r = 0; r < repeats; ++r) {
    ids.clear();
    start = std::chrono::steady_clock::now();
    (*tokenizer)->Encode(*text, &ids);
    best_s = std::min(best_s, Seconds(start));
  }
  const double mb = static_cast<double>(text->size()) / 1e6;
  std::printf(
      "{\"name\": \"v4rl\", \"bytes\": %zu, \"tokens\": %zu, \"ids_fnv1a\": \"%016llx\", "
      "\"load_s\": %.3f, \"first_mb_per_s\": %.2f, \"mb_per_s\": %.2f}\n",
      text->size(), ids.size(), static_cast<unsigned long long>(HashIds(ids)), load_s, mb / first_s,
      mb / best_s);
  return 0;
}
