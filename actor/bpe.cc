#include "actor/bpe.h"

#include <algorithm>
#include <utility>

#include "absl/hash/hash.h"
#include "absl/strings/string_view.h"
#include "core/logging.h"

namespace v4rl::actor {
namespace {

// One symbol of the word being merged; a doubly linked list over a flat array.
struct Symbol {
  int32_t id;
  int32_t prev;  // -1 at the start
  int32_t next;  // -1 at the end
  int32_t len;   // bytes covered; 0 once merged into its left neighbour
};

// A candidate merge of the symbol at `pos` with its right neighbour.
struct Candidate {
  int32_t rank;
  int32_t pos;
  int32_t new_id;
};

// Heap order: the lowest rank on top, then the leftmost position (tokenizers' `Merge` ordering).
bool LowerPriority(const Candidate& a, const Candidate& b) {
  if (a.rank != b.rank) return a.rank > b.rank;
  return a.pos > b.pos;
}

absl::string_view AsAbsl(std::string_view s) { return absl::string_view(s.data(), s.size()); }

}  // namespace

BytePairEncoder::BytePairEncoder(const std::array<int32_t, 256>& byte_ids,
                                 absl::flat_hash_map<uint64_t, Merge> merges)
    : byte_ids_(byte_ids), merges_(std::move(merges)) {}

const BytePairEncoder::Merge* BytePairEncoder::FindMerge(int32_t left, int32_t right) const {
  auto it = merges_.find(PairKey(left, right));
  return it == merges_.end() ? nullptr : &it->second;
}

void BytePairEncoder::EncodePiece(std::string_view piece, std::vector<int32_t>* ids) const {
  if (piece.size() == 1) {
    ids->push_back(byte_ids_[static_cast<uint8_t>(piece[0])]);
    return;
  }
  const bool cacheable = piece.size() <= kMaxCachedPieceBytes;
  if (cacheable && cache_.Lookup(piece, ids)) return;
  const size_t first = ids->size();
  MergeAll(piece, ids);
  if (cacheable) cache_.Insert(piece, ids->data() + first, ids->size() - first);
}

void BytePairEncoder::MergeAll(std::string_view piece, std::vector<int32_t>* ids) const {
  V4RL_CHECK_LT(piece.size(), size_t{1} << 31) << "pieces are indexed with int32";
  thread_local std::vector<Symbol> symbols;
  thread_local std::vector<Candidate> heap;
  const int32_t n = static_cast<int32_t>(piece.size());
  symbols.resize(n);
  heap.clear();
  for (int32_t i = 0; i < n; ++i) {
    symbols[i] = {byte_ids_[static_cast<uint8_t>(piece[i])], i - 1, i + 1 < n ? i + 1 : -1, 1};
  }
  for (int32_t i = 0; i + 1 < n; ++i) {
    if (const Merge* m = FindMerge(symbols[i].id, symbols[i + 1].id)) {
      heap.push_back({m->rank, i, m->id});
    }
  }
  std::make_heap(heap.begin(), heap.end(), LowerPriority);

  const auto push = [](Candidate c) {
    heap.push_back(c);
    std::push_heap(heap.begin(), heap.end(), LowerPriority);
  };
  while (!heap.empty()) {
    std::pop_heap(heap.begin(), heap.end(), LowerPriority);
    const Candidate top = heap.back();
    heap.pop_back();
    Symbol& left = symbols[top.pos];
    if (left.len == 0 || left.next == -1) continue;
    const Symbol right = symbols[left.next];
    // Skip entries made stale by earlier merges: the pair there must still produce new_id.
    const Merge* current = FindMerge(left.id, right.id);
    if (current == nullptr || current->id != top.new_id) continue;

    symbols[left.next].len = 0;
    left.id = top.new_id;
    left.len += right.len;
    left.next = right.next;
    if (right.next != -1) symbols[right.next].prev = top.pos;
    if (left.prev != -1) {
      if (const Merge* m = FindMerge(symbols[left.prev].id, left.id)) {
        push({m->rank, left.prev, m->id});
      }
    }
    if (left.next != -1) {
      if (const Merge* m = FindMerge(left.id, symbols[left.next].id)) {
        push({m->rank, top.pos, m->id});
      }
    }
  }
  for (int32_t i = 0; i != -1; i = symbols[i].next) ids->push_back(symbols[i].id);
}

BytePairEncoder::PieceCache::Shard& BytePairEncoder::PieceCache::ShardFor(
    std::string_view piece) const {
  // The top bits pick the shard: the map inside uses the low ones.
  const uint64_t hash = absl::Hash<absl::string_view>{}(AsAbsl(piece));
  return shards_[(hash >> 56) % kNumShards];
}

bool BytePairEncoder::PieceCache::Lookup(std::string_view piece, std::vector<int32_t>* ids) const {
  Shard& shard = ShardFor(piece);
  absl::MutexLock lock(&shard.mu);
  auto it = shard.index.find(AsAbsl(piece));
  if (it == shard.index.end()) return false;
  const auto [offset, count] = it->second;
  ids->insert(ids->end(), shard.ids.begin() + offset, shard.ids.begin() + offset + count);
  return true;
}

void BytePairEncoder::PieceCache::Insert(std::string_view piece, const int32_t* ids,
                                         size_t num_ids) const {
  Shard& shard = ShardFor(piece);
  absl::MutexLock lock(&shard.mu);
  if (shard.ids.size() + num_ids > kMaxIdsPerShard) {
    shard.index.clear();
    shard.ids.clear();
  }
  const auto [it, inserted] = shard.index.try_emplace(
      std::string(piece), static_cast<uint32_t>(shard.ids.size()), static_cast<uint32_t>(num_ids));
  if (inserted) shard.ids.insert(shard.ids.end(), ids, ids + num_ids);
}

}  // namespace v4rl::actor
