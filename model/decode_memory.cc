#include "model/decode_memory.h"

#include <algorithm>

#include "absl/strings/str_format.h"

namespace v4rl::model {
namespace {

int64_t KvEntryBytes(const ModelConfig& c, KvStorage storage) {
  if (storage == KvStorage::kBf16) return c.head_dim * 2;
  const int64_t nope = c.head_dim - c.rope_head_dim;
  return nope + (nope + 63) / 64 + c.rope_head_dim * 2;
}

int64_t IndexerEntryBytes(const ModelConfig& c, KvStorage storage) {
  if (storage == KvStorage::kBf16) return c.index_head_dim * 2;
  return c.index_head_dim / 2 + (c.index_head_dim + 31) / 32;
}

DecodeStateBreakdown LayerState(const ModelConfig& c, AttentionType type, int64_t context,
                                KvStorage storage) {
  DecodeStateBreakdown state;
  const int64_t kv_entry = KvEntryBytes(c, storage);
  state.window_bytes = c.sliding_window * kv_entry;
  const int64_t m = c.CompressRatio(type);
  if (m == 0) return state;
  const int64_t entries = context / m;
  state.compressed_bytes = entries * kv_entry;
  if (type == AttentionType::kHeavilyCompressed) {
    state.compressor_state_bytes = 2 * m * c.head_dim * 4;
  } else {
    state.indexer_bytes = entries * IndexerEntryBytes(c, storage);
    state.compressor_state_bytes = 2 * (2 * m) * (2 * c.head_dim) * 4 +
                                   2 * (2 * m) * (2 * c.index_head_dim) * 4;
  }
  return state;
}

void Add(DecodeStateBreakdown& sum, const DecodeStateBreakdown& layer) {
  sum.window_bytes += layer.window_bytes;
  sum.compressed_bytes += layer.compressed_bytes;
  sum.indexer_bytes += layer.indexer_bytes;
  sum.compressor_state_bytes += layer.compressor_state_bytes;
}

std::string Bytes(double bytes) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  int unit = 0;
  while (bytes >= 1024 && unit < 4) {
    bytes /= 1024;
    ++unit;
  }
  return absl::StrFormat("%.2f %s", bytes, units[unit]);
}

}  // namespace

DecodeMemoryReport ComputeDecodeMemory(const ModelConfig& config, int64_t context,
                                       KvStorage storage) {
  DecodeMemoryReport report;
  report.context = context;
  report.storage = storage;
  for (AttentionType type : config.layer_types) {
    const DecodeStateBreakdown layer = LayerState(config, type, context, storage);
    switch (type) {
      case AttentionType::kSliding: Add(report.sliding, layer); ++report.num_sliding; break;
      case AttentionType::kCompressedSparse: Add(report.csa, layer); ++report.num_csa; break;
      case AttentionType::kHeavilyCompressed: Add(report.hca, layer); ++report.num_hca; break;
    }
  }
  for (int64_t i = 0; i < config.num_mtp_layers; ++i) {
    Add(report.mtp, LayerState(config, config.mtp_layer_type, context, storage));
  }
  report.v4_total = report.sliding.total() + report.csa.total() + report.hca.total() +
                    report.mtp.total();
  report.gqa8_baseline = config.num_layers * context * (2 * 8 * 128 * 2);
  const int64_t mla_per_token = storage == KvStorage::kBf16
                                    ? (512 + 64) * 2 + 128 * 2
                                    : 512 + 4 * 4 + 64 * 2 + 128 + 4;
  report.mla_baseline = config.num_layers * context * mla_per_token;
  return report;
}

std::string FormatDecodeMemory(const ModelConfig& config, const DecodeMemoryReport& report) {
  std::string text = absl::StrFormat(
      "decode state per sequence at context %d, %s storage (%d layers: %d sliding, %d CSA, %d "
      "HCA; %d MTP)\n",
      report.context, report.storage == KvStorage::kBf16 ? "bf16" : "fp8 (+ fp4 indexer keys)",
      config.num_layers, report.num_sliding, report.num_csa, report.num_hca, config.num_mtp_layers);
  absl::StrAppendFormat(&text, "  %-9s %14s %14s %14s %14s %14s\n", "layers", "window",
                        "compressed", "indexer keys", "compressor", "total");
  auto row = [&](const char* name, const DecodeStateBreakdown& b) {
    absl::StrAppendFormat(&text, "  %-9s %14s %14s %14s %14s %14s\n", name, Bytes(b.window_bytes),
                          Bytes(b.compressed_bytes), Bytes(b.indexer_bytes),
                          Bytes(b.compressor_state_bytes), Bytes(b.total()));
  };
  row("sliding", report.sliding);
  row("CSA", report.csa);
  row("HCA", report.hca);
  row("MTP", report.mtp);
  const double context = static_cast<double>(std::max<int64_t>(report.context, 1));
  absl::StrAppendFormat(&text, "  V4 total: %s per sequence, %.1f B per token\n",
                        Bytes(report.v4_total), report.v4_total / context);
  absl::StrAppendFormat(
      &text,
      "  GQA-8 baseline (2 x 8 heads x 128 x 2 B x %d layers, bf16): %s, %.1f B per token; V4 = "
      "%.2f%%\n",
      config.num_layers, Bytes(report.gqa8_baseline), report.gqa8_baseline / context,
      100.0 * report.v4_total / std::max<int64_t>(report.gqa8_baseline, 1));
  absl::StrAppendFormat(
      &text,
      "  V3.2 MLA baseline (%s per token per layer x %d layers): %s, %.1f B per token; V4 = "
      "%.2f%%\n",
      report.storage == KvStorage::kBf16 ? "(512 + 64) x 2 B + indexer 128 x 2 B"
                                         : "fp8 512 + 4 fp32 scales + 64 x 2 B rope + fp8 indexer "
                                           "128 + scale",
      config.num_layers, Bytes(report.mla_baseline), report.mla_baseline / context,
      100.0 * report.v4_total / std::max<int64_t>(report.mla_baseline, 1));
  return text;
}

}  // namespace v4rl::model
