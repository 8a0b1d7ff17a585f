// Byte-level BPE over pre-tokenized pieces (spec/chat-encoding.md §8.4): each byte of a piece
// starts as its alphabet symbol, then the adjacent pair with the lowest merge rank is merged
// (leftmost on ties) until no pair has a rank. The merge loop follows Hugging Face tokenizers'
// `Word::merge_all` step for step, stale-entry check included, so ids match it exactly.
//
// Ownership: a BytePairEncoder owns its merge table and a bounded cache of encoded pieces.
// Thread-safe: EncodePiece may be called concurrently (the cache is sharded behind mutexes;
// scratch buffers are thread-local).
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/synchronization/mutex.h"

namespace v4rl::actor {

class BytePairEncoder {
 public:
  struct Merge {
    int32_t rank;  // position in tokenizer.json's merges list; lower merges first
    int32_t id;    // id of the merged token
  };
  static uint64_t PairKey(int32_t left, int32_t right) {
    return (static_cast<uint64_t>(static_cast<uint32_t>(left)) << 32) |
           static_cast<uint32_t>(right);
  }

  // byte_ids[b]: id of the alphabet symbol of byte b. merges: PairKey(left, right) -> Merge.
  BytePairEncoder(const std::array<int32_t, 256>& byte_ids,
                  absl::flat_hash_map<uint64_t, Merge> merges);
  BytePairEncoder(const BytePairEncoder&) = delete;
  BytePairEncoder& operator=(const BytePairEncoder&) = delete;

  // Appends the ids of one pre-tokenized piece (any bytes) to *ids.
  void EncodePiece(std::string_view piece, std::vector<int32_t>* ids) const;

 private:
  // Pieces already encoded, so frequent words skip the merge loop. Bounded: a shard that grows
  // past kMaxIdsPerShard ids is emptied.
  class PieceCache {
   public:
    // Appends the cached ids of `piece` to *ids and returns true, or returns false.
    bool Lookup(std::string_view piece, std::vector<int32_t>* ids) const;
    void Insert(std::string_view piece, const int32_t* ids, size_t num_ids) const;

   private:
    static constexpr int kNumShards = 16;
    static constexpr size_t kMaxIdsPerShard = size_t{1} << 16;
    struct Shard {
      mutable absl::Mutex mu;
      // piece -> (offset, count) in `ids`.
      absl::flat_hash_map<std::string, std::pair<uint32_t, uint32_t>> index ABSL_GUARDED_BY(mu);
      std::vector<int32_t> ids ABSL_GUARDED_BY(mu);
    };
    Shard& ShardFor(std::string_view piece) const;
    mutable std::array<Shard, kNumShards> shards_;
  };

  // Pieces of this many bytes or fewer go through the cache; longer ones (whitespace runs,
  // long words) are rare and would crowd it.
  static constexpr size_t kMaxCachedPieceBytes = 64;

  void MergeAll(std::string_view piece, std::vector<int32_t>* ids) const;
  const Merge* FindMerge(int32_t left, int32_t right) const;

  std::array<int32_t, 256> byte_ids_;
  absl::flat_hash_map<uint64_t, Merge> merges_;
  PieceCache cache_;
};

}  // namespace v4rl::actor
