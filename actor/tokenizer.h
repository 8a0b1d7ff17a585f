// The tokenizer of DeepSeek-V3/V4 models: a Hugging Face tokenizer.json with a byte-level BPE
// model, DeepSeek's pre-tokenizer (pretokenizer.h) and added tokens matched literally in text
// (spec/chat-encoding.md §8). Encoding equals tokenizers' `encode(text, add_special_tokens=False)`
// (the chat encoder writes BOS itself); decoding keeps special tokens.
//
//   V4RL_ASSIGN_OR_RETURN(auto tokenizer, Tokenizer::FromFile(path));
//   V4RL_RETURN_IF_ERROR(tokenizer->AddTokens(DeepSeekV4AddedTokens()));  // for the V3 file
//   std::vector<int32_t> ids = tokenizer->Encode(prompt);
//
// Ownership: a Tokenizer owns all its tables. Thread-safety: Encode, Decode and lookups may run
// concurrently; AddTokens must happen before the tokenizer is shared.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "actor/added_tokens.h"
#include "actor/bpe.h"

namespace v4rl::actor {

// A token matched literally in text before pre-tokenization (a special marker).
struct AddedToken {
  int32_t id;
  std::string content;
  // tokenizers matches tokens with normalized=false first, then the others in what is left
  // (AddedVocabulary's two passes); the order only matters when two tokens overlap.
  bool normalized = false;
};

class Tokenizer {
 public:
  // Limits on tokenizer.json; anything beyond them is rejected as malformed.
  static constexpr int64_t kMaxJsonBytes = int64_t{256} << 20;
  static constexpr int32_t kMaxTokenId = 1 << 24;
  static constexpr size_t kMaxTokenBytes = 4096;

  // Parses a tokenizer.json. InvalidArgument names the offending field (`what` prefixes the
  // messages); Unimplemented when the file uses a feature this tokenizer does not have (another
  // model type or pre-tokenizer, a normalizer, lstrip/rstrip/single_word added tokens, ...).
  static absl::StatusOr<std::unique_ptr<Tokenizer>> FromJson(std::string_view json,
                                                             std::string_view what);
  // Reads and parses `path`; NotFound when missing.
  static absl::StatusOr<std::unique_ptr<Tokenizer>> FromFile(const std::string& path);

  Tokenizer(const Tokenizer&) = delete;
  Tokenizer& operator=(const Tokenizer&) = delete;

  // Adds tokens that the file lacks. A token already present with the same id is skipped;
  // InvalidArgument when a content or id is already taken by another token, or out of bounds.
  absl::Status AddTokens(std::span<const AddedToken> tokens);

  // Appends the ids of `text` (any bytes, < 2 GiB) to *ids. Invalid UTF-8 is encoded byte by
  // byte and never fails.
  void Encode(std::string_view text, std::vector<int32_t>* ids) const;
  std::vector<int32_t> Encode(std::string_view text) const;

  // The text of `ids`: token bytes concatenated, invalid UTF-8 replaced by U+FFFD (as tokenizers'
  // ByteLevel decoder). InvalidArgument naming the position when an id is not a token.
  absl::StatusOr<std::string> Decode(std::span<const int32_t> ids) const;
  // The raw bytes of one token (a piece of a UTF-8 character for some ids); nullopt if unknown.
  std::optional<std::string_view> TokenBytes(int32_t id) const;

  // Id of an added token's content or of a vocabulary string (byte-level alphabet, e.g. "Ġthe").
  std::optional<int32_t> TokenToId(std::string_view token) const;

  // One past the largest id; ids below it may be unused.
  int32_t vocab_size() const { return static_cast<int32_t>(id_to_bytes_.size()); }

 private:
  Tokenizer(absl::flat_hash_map<std::string, int32_t> vocab, std::unique_ptr<BytePairEncoder> bpe);
  void SetTokenBytes(int32_t id, std::string bytes);

  absl::flat_hash_map<std::string, int32_t> vocab_;  // byte-level string -> id
  absl::flat_hash_map<std::string, int32_t> added_;  // added token content -> id
  std::vector<std::string> id_to_bytes_;             // indexed by id
  std::vector<bool> known_;                          // whether an id is a token
  std::unique_ptr<BytePairEncoder> bpe_;
  AddedTokenMatcher raw_matcher_;         // added tokens with normalized=false
  AddedTokenMatcher normalized_matcher_;  // the others
};

}  // namespace v4rl::actor
