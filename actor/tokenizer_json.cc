// Tokenizer::FromJson: validation of a Hugging Face tokenizer.json. Every size is bounded and
// every field the tokenizer relies on is type-checked; anything it does not implement is rejected
// rather than silently tokenized differently from Hugging Face tokenizers.
#include <array>
#include <utility>

#include "absl/strings/str_format.h"
#include "absl/strings/string_view.h"
#include "actor/byte_level.h"
#include "actor/pretokenizer.h"
#include "actor/tokenizer.h"
#include "core/file.h"
#include "core/json.h"
#include "core/status.h"

namespace v4rl::actor {
namespace {

using Json = nlohmann::json;

constexpr size_t kMaxVocab = size_t{1} << 22;
constexpr size_t kMaxMerges = size_t{1} << 22;
constexpr size_t kMaxAddedTokens = size_t{1} << 20;

absl::Status Invalid(std::string_view what, const std::string& message) {
  return absl::InvalidArgumentError(absl::StrFormat("%s: %s", std::string(what), message));
}
absl::Status Unsupported(std::string_view what, const std::string& message) {
  return absl::UnimplementedError(absl::StrFormat("%s: %s", std::string(what), message));
}

const Json* Find(const Json& object, const char* key) {
  auto it = object.find(key);
  return it == object.end() ? nullptr : &*it;
}

bool IsNullOrAbsent(const Json* value) { return value == nullptr || value->is_null(); }

// A field that must be absent, null or equal to `allowed` (false, "", ...).
absl::Status ExpectDefault(const Json& object, const char* key, const Json& allowed,
                           std::string_view what, std::string_view path) {
  const Json* value = Find(object, key);
  if (IsNullOrAbsent(value) || *value == allowed) return absl::OkStatus();
  return Unsupported(what,
                     absl::StrFormat("%s.%s = %s is not supported", std::string(path), key,
                                     value->dump(-1, ' ', false, Json::error_handler_t::replace)));
}

absl::Status CheckNormalizer(const Json& root, std::string_view what) {
  const Json* normalizer = Find(root, "normalizer");
  if (IsNullOrAbsent(normalizer)) return absl::OkStatus();
  const Json empty_sequence = {{"type", "Sequence"}, {"normalizers", Json::array()}};
  if (*normalizer == empty_sequence) return absl::OkStatus();
  return Unsupported(what, "normalizer: only none or an empty Sequence is supported");
}

// Accepts only DeepSeek's pre-tokenizer (pretokenizer.h): three Isolated splits, then ByteLevel
// without prefix space or regex.
absl::Status CheckPreTokenizer(const Json& root, std::string_view what) {
  const auto unsupported = [&] {
    return Unsupported(what,
                       "pre_tokenizer: only the DeepSeek-V3 Sequence (digits, CJK, main pattern, "
                       "ByteLevel) is supported");
  };
  const Json* pre = Find(root, "pre_tokenizer");
  if (pre == nullptr || !pre->is_object()) return unsupported();
  const Json* type = Find(*pre, "type");
  const Json* steps = Find(*pre, "pretokenizers");
  if (type == nullptr || *type != "Sequence" || steps == nullptr || !steps->is_array() ||
      steps->size() != 4) {
    return unsupported();
  }
  const std::array<std::string_view, 3> patterns = {kDeepSeekDigitsPattern, kDeepSeekCjkPattern,
                                                    kDeepSeekMainPattern};
  for (size_t i = 0; i < patterns.size(); ++i) {
    const Json& step = (*steps)[i];
    const Json expected = {{"type", "Split"},
                           {"pattern", {{"Regex", std::string(patterns[i])}}},
                           {"behavior", "Isolated"},
                           {"invert", false}};
    if (step != expected) return unsupported();
  }
  const Json& byte_level = (*steps)[3];
  if (!byte_level.is_object()) return unsupported();
  const Json* byte_level_type = Find(byte_level, "type");
  const Json* prefix_space = Find(byte_level, "add_prefix_space");
  const Json* use_regex = Find(byte_level, "use_regex");
  if (byte_level_type == nullptr || *byte_level_type != "ByteLevel" || prefix_space == nullptr ||
      *prefix_space != false || use_regex == nullptr || *use_regex != false) {
    return unsupported();
  }
  return absl::OkStatus();
}

absl::StatusOr<absl::flat_hash_map<std::string, int32_t>> ReadVocab(const Json& model,
                                                                    std::string_view what) {
  const Json* vocab = Find(model, "vocab");
  if (vocab == nullptr || !vocab->is_object()) {
    return Invalid(what, "model.vocab must be an object of token -> id");
  }
  if (vocab->size() > kMaxVocab) {
    return Invalid(what, absl::StrFormat("model.vocab has %d entries, more than %d", vocab->size(),
                                         kMaxVocab));
  }
  absl::flat_hash_map<std::string, int32_t> result;
  absl::flat_hash_map<int32_t, std::string> by_id;
  result.reserve(vocab->size());
  for (const auto& [token, id] : vocab->items()) {
    if (!id.is_number_integer() || id.get<int64_t>() < 0 ||
        id.get<int64_t>() >= Tokenizer::kMaxTokenId) {
      return Invalid(what, absl::StrFormat("model.vocab[\"%s\"]: id must be an integer in [0, %d)",
                                           token, Tokenizer::kMaxTokenId));
    }
    if (token.empty() || token.size() > Tokenizer::kMaxTokenBytes) {
      return Invalid(what, absl::StrFormat("model.vocab: token of %d bytes (must be 1 to %d)",
                                           token.size(), Tokenizer::kMaxTokenBytes));
    }
    const int32_t token_id = static_cast<int32_t>(id.get<int64_t>());
    auto [it, inserted] = by_id.emplace(token_id, token);
    if (!inserted) {
      return Invalid(what, absl::StrFormat("model.vocab: id %d is used by \"%s\" and \"%s\"",
                                           token_id, it->second, token));
    }
    result.emplace(token, token_id);
  }
  return result;
}

absl::StatusOr<std::array<int32_t, 256>> ByteIds(
    const absl::flat_hash_map<std::string, int32_t>& vocab, std::string_view what) {
  std::array<int32_t, 256> ids;
  for (int b = 0; b < 256; ++b) {
    std::string symbol;
    AppendUtf8(ByteToChar(static_cast<uint8_t>(b)), &symbol);
    auto it = vocab.find(absl::string_view(symbol));
    if (it == vocab.end()) {
      return Invalid(
          what, absl::StrFormat("model.vocab lacks \"%s\", the byte-level symbol of byte 0x%02x",
                                symbol, b));
    }
    ids[b] = it->second;
  }
  return ids;
}

// One merge as its two token strings: "left right" (older files) or ["left", "right"].
absl::Status SplitMerge(const Json& merge, size_t index, std::string_view what, std::string* left,
                        std::string* right) {
  if (merge.is_string()) {
    const std::string& text = merge.get_ref<const std::string&>();
    const size_t space = text.find(' ');
    if (space != std::string::npos && text.find(' ', space + 1) == std::string::npos) {
      *left = text.substr(0, space);
      *right = text.substr(space + 1);
      return absl::OkStatus();
    }
  } else if (merge.is_array() && merge.size() == 2 && merge[0].is_string() &&
             merge[1].is_string()) {
    *left = merge[0].get<std::string>();
    *right = merge[1].get<std::string>();
    return absl::OkStatus();
  }
  return Invalid(
      what,
      absl::StrFormat("model.merges[%d]: expected \"left right\" or [\"left\", \"right\"]", index));
}

absl::StatusOr<absl::flat_hash_map<uint64_t, BytePairEncoder::Merge>> ReadMerges(
    const Json& model, const absl::flat_hash_map<std::string, int32_t>& vocab,
    std::string_view what) {
  const Json* merges = Find(model, "merges");
  if (merges == nullptr || !merges->is_array()) {
    return Invalid(what, "model.merges must be an array");
  }
  if (merges->size() > kMaxMerges) {
    return Invalid(what, absl::StrFormat("model.merges has %d entries, more than %d",
                                         merges->size(), kMaxMerges));
  }
  absl::flat_hash_map<uint64_t, BytePairEncoder::Merge> result;
  result.reserve(merges->size());
  std::string left, right;
  const auto id_of = [&](const std::string& token, size_t index) -> absl::StatusOr<int32_t> {
    auto it = vocab.find(absl::string_view(token));
    if (it == vocab.end()) {
      return Invalid(
          what, absl::StrFormat("model.merges[%d]: \"%s\" is not in model.vocab", index, token));
    }
    return it->second;
  };
  for (size_t i = 0; i < merges->size(); ++i) {
    V4RL_RETURN_IF_ERROR(SplitMerge((*merges)[i], i, what, &left, &right));
    V4RL_ASSIGN_OR_RETURN(const int32_t left_id, id_of(left, i));
    V4RL_ASSIGN_OR_RETURN(const int32_t right_id, id_of(right, i));
    V4RL_ASSIGN_OR_RETURN(const int32_t merged_id, id_of(left + right, i));
    // A repeated pair takes its later rank, as tokenizers' map construction does.
    result[BytePairEncoder::PairKey(left_id, right_id)] = {static_cast<int32_t>(i), merged_id};
  }
  return result;
}

absl::StatusOr<std::vector<AddedToken>> ReadAddedTokens(const Json& root, std::string_view what) {
  std::vector<AddedToken> tokens;
  const Json* added = Find(root, "added_tokens");
  if (IsNullOrAbsent(added)) return tokens;
  if (!added->is_array() || added->size() > kMaxAddedTokens) {
    return Invalid(what, absl::StrFormat("added_tokens must be an array of at most %d tokens",
                                         kMaxAddedTokens));
  }
  for (size_t i = 0; i < added->size(); ++i) {
    const Json& entry = (*added)[i];
    const std::string path = absl::StrFormat("added_tokens[%d]", i);
    if (!entry.is_object()) return Invalid(what, path + " must be an object");
    const Json* id = Find(entry, "id");
    const Json* content = Find(entry, "content");
    if (id == nullptr || !id->is_number_integer()) {
      return Invalid(what, path + ".id must be an integer");
    }
    if (content == nullptr || !content->is_string()) {
      return Invalid(what, path + ".content must be a string");
    }
    for (const char* flag : {"single_word", "lstrip", "rstrip"}) {
      V4RL_RETURN_IF_ERROR(ExpectDefault(entry, flag, false, what, path));
    }
    const Json* special = Find(entry, "special");
    const Json* normalized = Find(entry, "normalized");
    if ((special != nullptr && !special->is_boolean()) ||
        (normalized != nullptr && !normalized->is_boolean())) {
      return Invalid(what, path + ": special and normalized must be true or false");
    }
    // tokenizers' default: special tokens are not normalized, the others are.
    const bool is_special = special != nullptr && special->get<bool>();
    const bool is_normalized = normalized != nullptr ? normalized->get<bool>() : !is_special;
    const int64_t id_value = id->get<int64_t>();
    if (id_value < 0 || id_value >= Tokenizer::kMaxTokenId) {
      return Invalid(what, absl::StrFormat("%s.id %d is outside [0, %d)", path, id_value,
                                           Tokenizer::kMaxTokenId));
    }
    tokens.push_back({static_cast<int32_t>(id_value), content->get<std::string>(), is_normalized});
  }
  return tokens;
}

}  // namespace

absl::StatusOr<std::unique_ptr<Tokenizer>> Tokenizer::FromJson(std::string_view json,
                                                               std::string_view what) {
  V4RL_ASSIGN_OR_RETURN(const Json root,
                        core::ParseJson(json, what, {.max_bytes = kMaxJsonBytes, .max_depth = 16}));
  if (!root.is_object()) return Invalid(what, "expected a JSON object");
  const Json* model = Find(root, "model");
  if (model == nullptr || !model->is_object()) return Invalid(what, "model must be an object");
  const Json* type = Find(*model, "type");
  if (type == nullptr || *type != "BPE") {
    return Unsupported(what, "model.type: only \"BPE\" is supported");
  }
  V4RL_RETURN_IF_ERROR(ExpectDefault(*model, "dropout", Json(), what, "model"));
  V4RL_RETURN_IF_ERROR(ExpectDefault(*model, "unk_token", Json(), what, "model"));
  V4RL_RETURN_IF_ERROR(ExpectDefault(*model, "continuing_subword_prefix", "", what, "model"));
  V4RL_RETURN_IF_ERROR(ExpectDefault(*model, "end_of_word_suffix", "", what, "model"));
  V4RL_RETURN_IF_ERROR(ExpectDefault(*model, "byte_fallback", false, what, "model"));
  V4RL_RETURN_IF_ERROR(ExpectDefault(*model, "ignore_merges", false, what, "model"));
  V4RL_RETURN_IF_ERROR(CheckNormalizer(root, what));
  V4RL_RETURN_IF_ERROR(CheckPreTokenizer(root, what));
  // The post-processor only matters with add_special_tokens=True, which v4rl never uses; the
  // decoder is ByteLevel by construction of a byte-level vocabulary.

  V4RL_ASSIGN_OR_RETURN(auto vocab, ReadVocab(*model, what));
  V4RL_ASSIGN_OR_RETURN(const auto byte_ids, ByteIds(vocab, what));
  V4RL_ASSIGN_OR_RETURN(auto merges, ReadMerges(*model, vocab, what));
  V4RL_ASSIGN_OR_RETURN(const std::vector<AddedToken> added, ReadAddedTokens(root, what));

  std::unique_ptr<Tokenizer> tokenizer(new Tokenizer(
      std::move(vocab), std::make_unique<BytePairEncoder>(byte_ids, std::move(merges))));
  if (absl::Status status = tokenizer->AddTokens(added); !status.ok()) {
    return Invalid(what, std::string(status.message()));
  }
  return tokenizer;
}

absl::StatusOr<std::unique_ptr<Tokenizer>> Tokenizer::FromFile(const std::string& path) {
  V4RL_ASSIGN_OR_RETURN(const std::string json, core::ReadFile(path, kMaxJsonBytes));
  return FromJson(json, path);
}

}  // namespace v4rl::actor
