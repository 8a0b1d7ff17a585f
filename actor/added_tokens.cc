#include "actor/added_tokens.h"

namespace v4rl::actor {
namespace {

uint64_t EdgeKey(int32_t node, uint8_t byte) { return (static_cast<uint64_t>(node) << 8) | byte; }

}  // namespace

AddedTokenMatcher::AddedTokenMatcher() : node_token_(1, -1) {}

void AddedTokenMatcher::Add(std::string_view content, int32_t id) {
  int32_t node = 0;
  for (char c : content) {
    const uint8_t byte = static_cast<uint8_t>(c);
    auto [it, inserted] = edges_.try_emplace(EdgeKey(node, byte), 0);
    if (inserted) {
      it->second = static_cast<int32_t>(node_token_.size());
      node_token_.push_back(-1);
    }
    node = it->second;
  }
  can_start_[static_cast<uint8_t>(content[0])] = true;
  if (node_token_[node] == -1) ++num_tokens_;
  node_token_[node] = id;
}

size_t AddedTokenMatcher::LongestMatch(std::string_view text, size_t pos, int32_t* id) const {
  size_t best = 0;
  int32_t node = 0;
  for (size_t i = pos; i < text.size(); ++i) {
    auto it = edges_.find(EdgeKey(node, static_cast<uint8_t>(text[i])));
    if (it == edges_.end()) break;
    node = it->second;
    if (node_token_[node] != -1) {
      best = i + 1 - pos;
      *id = node_token_[node];
    }
  }
  return best;
}

void AddedTokenMatcher::Split(std::string_view text,
                              absl::FunctionRef<void(std::string_view)> on_gap,
                              absl::FunctionRef<void(int32_t)> on_token) const {
  size_t gap_start = 0;
  size_t pos = 0;
  while (pos < text.size()) {
    int32_t id = -1;
    const size_t length =
        can_start_[static_cast<uint8_t>(text[pos])] ? LongestMatch(text, pos, &id) : 0;
    if (length == 0) {
      ++pos;
      continue;
    }
    if (gap_start < pos) on_gap(text.substr(gap_start, pos - gap_start));
    on_token(id);
    gap_start = pos = pos + length;
  }
  if (gap_start < text.size()) on_gap(text.substr(gap_start));
}

}  // namespace v4rl::actor
