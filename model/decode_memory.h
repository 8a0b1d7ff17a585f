// Decode-state memory accounting: how many bytes one sequence's decode state takes at a given
// context length, by layer type (spec §3.7), next to the two baselines V4's report compares with.
//
// Per V4 layer (m = compression ratio, D = head_dim, rd = rope dims, I_D = index_head_dim):
//   every layer    window ring buffer      window x KV entry
//   HCA (m=128)    compressed entries      floor(N/m) x KV entry
//                  compressor open window  2 x m x D x 4 B          (c and gate scores, fp32)
//   CSA (m=4)      compressed entries      floor(N/m) x KV entry
//                  indexer keys            floor(N/m) x indexer entry
//                  compressor state        2 x 2m x 2D x 4 B, indexer's 2 x 2m x 2 I_D x 4 B
// KV entry: bf16 storage D x 2 B; fp8 storage (D - rd) x 1 B + (D - rd)/64 ue8m0 scales + rd x 2 B.
// Indexer entry: bf16 I_D x 2 B; fp8 storage = FP4 keys I_D / 2 B + I_D/32 ue8m0 scales.
// Baselines over the same number of layers L:
//   GQA-8, head dim 128, bf16:  2 (K and V) x 8 x 128 x 2 B = 4096 B per token per layer
//   V3.2-style MLA: latent 512 + rope 64 per token per layer, plus its indexer key (128):
//     bf16 (512 + 64) x 2 + 128 x 2 = 1408 B;  fp8 (V3.2's cache) 512 + 4 x 4 + 64 x 2 + 128 + 4
//     = 788 B.
// Thread-safety: pure functions.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "model/config.h"

namespace v4rl::model {

enum class KvStorage { kBf16, kFp8 };

struct DecodeStateBreakdown {
  int64_t window_bytes = 0;
  int64_t compressed_bytes = 0;
  int64_t indexer_bytes = 0;
  int64_t compressor_state_bytes = 0;
  int64_t total() const {
    return window_bytes + compressed_bytes + indexer_bytes + compressor_state_bytes;
  }
};

struct DecodeMemoryReport {
  int64_t context = 0;
  KvStorage storage = KvStorage::kBf16;
  DecodeStateBreakdown sliding, csa, hca;  // summed over the layers of each type
  int64_t num_sliding = 0, num_csa = 0, num_hca = 0;
  DecodeStateBreakdown mtp;                // the MTP blocks (sliding rings)
  int64_t v4_total = 0;                    // main layers + MTP
  int64_t gqa8_baseline = 0;
  int64_t mla_baseline = 0;
};

// Main layers follow config.layer_types; MTP blocks are counted separately and included in
// v4_total.
DecodeMemoryReport ComputeDecodeMemory(const ModelConfig& config, int64_t context,
                                       KvStorage storage);
// A human-readable table with the formulas and the ratios to both baselines.
std::string FormatDecodeMemory(const ModelConfig& config, const DecodeMemoryReport& report);

}  // namespace v4rl::model
