// Literal matching of added tokens (special markers such as "<｜User｜>" and "<think>") before
// pre-tokenization, leftmost-longest like Hugging Face tokenizers' AddedVocabulary: scanning from
// the left, the first position where any token matches wins, and there the longest token.
//
// Ownership: owns a byte trie of the token strings. Thread-safe after construction (Add is not).
#pragma once

#include <array>
#include <cstdint>
#include <string_view>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/functional/function_ref.h"

namespace v4rl::actor {

class AddedTokenMatcher {
 public:
  AddedTokenMatcher();

  // Adds a non-empty token string; a string added twice keeps the later id.
  void Add(std::string_view content, int32_t id);
  bool empty() const { return num_tokens_ == 0; }

  // Splits `text` into the gaps between matches and the matches: calls on_gap(gap) for each
  // non-empty gap and on_token(id) for each match, in text order.
  void Split(std::string_view text, absl::FunctionRef<void(std::string_view)> on_gap,
             absl::FunctionRef<void(int32_t)> on_token) const;

 private:
  // Longest token starting at text[pos]: its length in bytes (0 if none) and id.
  size_t LongestMatch(std::string_view text, size_t pos, int32_t* id) const;

  // Trie node i's token id (-1: none); edges keyed by (node << 8) | byte.
  std::vector<int32_t> node_token_;
  absl::flat_hash_map<uint64_t, int32_t> edges_;
  std::array<bool, 256> can_start_{};
  int num_tokens_ = 0;
};

}  // namespace v4rl::actor
