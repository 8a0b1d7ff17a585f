// Decode-state accounting: hand-computed bytes for V4-Pro at 1M tokens and the report's ratios.
#include "model/decode_memory.h"

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace v4rl::model {
namespace {

TEST(DecodeMemory, ProAtOneMillionTokensByHand) {
  const ModelConfig pro = ProConfig();
  const int64_t n = 1 << 20;
  const DecodeMemoryReport bf16 = ComputeDecodeMemory(pro, n, KvStorage::kBf16);
  EXPECT_EQ(bf16.num_csa, 30);
  EXPECT_EQ(bf16.num_hca, 31);
  EXPECT_EQ(bf16.num_sliding, 0);
  // CSA: (N/4) entries x 512 x 2 B + (N/4) indexer keys x 128 x 2 B, per layer.
  EXPECT_EQ(bf16.csa.compressed_bytes, 30 * (n / 4) * 1024);
  EXPECT_EQ(bf16.csa.indexer_bytes, 30 * (n / 4) * 256);
  EXPECT_EQ(bf16.hca.compressed_bytes, 31 * (n / 128) * 1024);
  EXPECT_EQ(bf16.hca.compressor_state_bytes, 31 * 2 * 128 * 512 * 4);
  EXPECT_EQ(bf16.csa.compressor_state_bytes, 30 * (2 * 8 * 1024 * 4 + 2 * 8 * 256 * 4));
  EXPECT_EQ(bf16.sliding.window_bytes + bf16.csa.window_bytes + bf16.hca.window_bytes,
            61 * 128 * 1024);
  EXPECT_EQ(bf16.gqa8_baseline, int64_t{61} * n * 4096);
  // fp8 entries: 448 fp8 + 7 scale bytes + 64 bf16 rope = 583 B; fp4 indexer keys 64 + 4 B.
  const DecodeMemoryReport fp8 = ComputeDecodeMemory(pro, n, KvStorage::kFp8);
  EXPECT_EQ(fp8.csa.compressed_bytes, 30 * (n / 4) * 583);
  EXPECT_EQ(fp8.csa.indexer_bytes, 30 * (n / 4) * 68);
  // The report's claims: about 2% of GQA-8 and about 10% of V3.2's MLA cache.
  const double vs_gqa = static_cast<double>(fp8.v4_total) / fp8.gqa8_baseline;
  const double vs_mla = static_cast<double>(fp8.v4_total) / fp8.mla_baseline;
  EXPECT_GT(vs_gqa, 0.015);
  EXPECT_LT(vs_gqa, 0.025);
  EXPECT_GT(vs_mla, 0.08);
  EXPECT_LT(vs_mla, 0.13);
  EXPECT_THAT(FormatDecodeMemory(pro, fp8), ::testing::HasSubstr("GQA-8 baseline"));
}

TEST(DecodeMemory, ZeroContextHasOnlyFixedState) {
  const DecodeMemoryReport report = ComputeDecodeMemory(FlashConfig(), 0, KvStorage::kBf16);
  EXPECT_EQ(report.csa.compressed_bytes, 0);
  EXPECT_GT(report.sliding.window_bytes, 0);
  EXPECT_EQ(report.gqa8_baseline, 0);
}

}  // namespace
}  // namespace v4rl::model
