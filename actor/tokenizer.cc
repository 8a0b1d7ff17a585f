#include "actor/tokenizer.h"

#include <utility>

#include "absl/strings/str_format.h"
#include "absl/strings/string_view.h"
#include "actor/byte_level.h"
#include "actor/pretokenizer.h"
#include "actor/unicode.h"

namespace v4rl::actor {

Tokenizer::Tokenizer(absl::flat_hash_map<std::string, int32_t> vocab,
                     std::unique_ptr<BytePairEncoder> bpe)
    : vocab_(std::move(vocab)), bpe_(std::move(bpe)) {
  for (const auto& [token, id] : vocab_) SetTokenBytes(id, TokenStringToBytes(token));
}

void Tokenizer::SetTokenBytes(int32_t id, std::string bytes) {
  if (id >= vocab_size()) {
    id_to_bytes_.resize(id + 1);
    known_.resize(id + 1, false);
  }
  id_to_bytes_[id] = std::move(bytes);
  known_[id] = true;
}

absl::Status Tokenizer::AddTokens(std::span<const AddedToken> tokens) {
  for (const AddedToken& token : tokens) {
    if (token.content.empty() || token.content.size() > kMaxTokenBytes) {
      return absl::InvalidArgumentError(
          absl::StrFormat("added token %d: content must have 1 to %d bytes, got %d", token.id,
                          kMaxTokenBytes, token.content.size()));
    }
    if (token.id < 0 || token.id >= kMaxTokenId) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "added token \"%s\": id %d is outside [0, %d)", token.content, token.id, kMaxTokenId));
    }
    auto it = added_.find(absl::string_view(token.content));
    if (it != added_.end()) {
      if (it->second == token.id) continue;
      return absl::InvalidArgumentError(
          absl::StrFormat("added token \"%s\": wanted id %d, but it already has id %d",
                          token.content, token.id, it->second));
    }
    // DeepSeek's files list BOS/EOS/pad both in the vocabulary and as added tokens.
    if (token.id < vocab_size() && known_[token.id] && id_to_bytes_[token.id] != token.content) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "added token \"%s\": id %d already belongs to another token", token.content, token.id));
    }
    added_.emplace(token.content, token.id);
    SetTokenBytes(token.id, token.content);
    (token.normalized ? normalized_matcher_ : raw_matcher_).Add(token.content, token.id);
  }
  return absl::OkStatus();
}

void Tokenizer::Encode(std::string_view text, std::vector<int32_t>* ids) const {
  const auto push_id = [ids](int32_t id) { ids->push_back(id); };
  const auto encode_plain = [&](std::string_view gap) {
    PreTokenize(gap, [&](std::string_view piece) { bpe_->EncodePiece(piece, ids); });
  };
  const auto second_pass = [&](std::string_view gap) {
    if (normalized_matcher_.empty()) {
      encode_plain(gap);
    } else {
      normalized_matcher_.Split(gap, encode_plain, push_id);
    }
  };
  if (raw_matcher_.empty()) {
    second_pass(text);
  } else {
    raw_matcher_.Split(text, second_pass, push_id);
  }
}

std::vector<int32_t> Tokenizer::Encode(std::string_view text) const {
  std::vector<int32_t> ids;
  Encode(text, &ids);
  return ids;
}

std::optional<std::string_view> Tokenizer::TokenBytes(int32_t id) const {
  if (id < 0 || id >= vocab_size() || !known_[id]) return std::nullopt;
  return id_to_bytes_[id];
}

absl::StatusOr<std::string> Tokenizer::Decode(std::span<const int32_t> ids) const {
  std::string bytes;
  for (size_t i = 0; i < ids.size(); ++i) {
    const std::optional<std::string_view> token = TokenBytes(ids[i]);
    if (!token.has_value()) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "ids[%d]: %d is not a token id (vocab size %d)", i, ids[i], vocab_size()));
    }
    bytes.append(*token);
  }
  std::string text;
  AppendUtf8Lossy(bytes, &text);
  return text;
}

std::optional<int32_t> Tokenizer::TokenToId(std::string_view token) const {
  const absl::string_view key(token.data(), token.size());
  if (auto it = added_.find(key); it != added_.end()) return it->second;
  if (auto it = vocab_.find(key); it != vocab_.end()) return it->second;
  return std::nullopt;
}

}  // namespace v4rl::actor
