// Rule verifier: answer extraction, correctness, and the per-mode format rules.
#include "reward/verifier.h"

#include "actor/chat_tokens.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace v4rl::reward {
namespace {

using actor::ThinkingMode;

std::string WithEos(const std::string& text) { return text + std::string(actor::kEosToken); }

TEST(Verifier, ExtractsBoxedOrWholeContent) {
  EXPECT_EQ(ExtractFinalAnswer("so the sum is \\boxed{168}."), "168");
  EXPECT_EQ(ExtractFinalAnswer("\\boxed{a} then \\boxed{\\frac{1}{2}}"), "\\frac{1}{2}");
  EXPECT_EQ(ExtractFinalAnswer("  cba \n"), "cba");
  EXPECT_EQ(LastInteger("x = -12, y = 40 done"), "40");
  EXPECT_EQ(LastInteger("minus -7"), "-7");
  EXPECT_FALSE(LastInteger("none").has_value());
}

TEST(Verifier, ThinkingModeNeedsReasoningAndCorrectAnswer) {
  const VerifierSpec spec{.kind = AnswerKind::kInteger, .expected = "168"};
  Verdict good = Verify(spec, WithEos("12+156: add units...</think>The answer is 168"),
                        ThinkingMode::kThinking);
  EXPECT_TRUE(good.format_ok);
  EXPECT_TRUE(good.correct);
  EXPECT_EQ(good.reward, 1.0);
  Verdict wrong = Verify(spec, WithEos("thinking</think>167"), ThinkingMode::kThinking);
  EXPECT_TRUE(wrong.format_ok);
  EXPECT_FALSE(wrong.correct);
  EXPECT_EQ(wrong.reward, 0.0);
  Verdict no_close = Verify(spec, WithEos("168"), ThinkingMode::kThinking);
  EXPECT_FALSE(no_close.format_ok);
  EXPECT_EQ(no_close.reward, -0.5);
  Verdict empty_reasoning = Verify(spec, WithEos("</think>168"), ThinkingMode::kThinking);
  EXPECT_FALSE(empty_reasoning.format_ok);
  EXPECT_THAT(empty_reasoning.explanation, ::testing::HasSubstr("non-empty reasoning"));
}

TEST(Verifier, NonThinkRejectsReasoningMarkersAndMissingEos) {
  const VerifierSpec spec{.kind = AnswerKind::kExact, .expected = "cba"};
  EXPECT_EQ(Verify(spec, WithEos("cba"), ThinkingMode::kChat).reward, 1.0);
  EXPECT_FALSE(Verify(spec, WithEos("hmm</think>cba"), ThinkingMode::kChat).format_ok);
  EXPECT_FALSE(Verify(spec, "cba", ThinkingMode::kChat).format_ok);  // no EOS
}

TEST(Verifier, VerbatimIsByteExactWithoutFormatRules) {
  const VerifierSpec spec{.kind = AnswerKind::kVerbatim, .expected = "cba<eos>"};
  EXPECT_EQ(Verify(spec, "cba<eos>", ThinkingMode::kChat).reward, 1.0);
  EXPECT_EQ(Verify(spec, "cba<eos>", ThinkingMode::kThinking).reward, 1.0);
  const Verdict wrong = Verify(spec, "cba <eos>", ThinkingMode::kChat);
  EXPECT_TRUE(wrong.format_ok);
  EXPECT_FALSE(wrong.correct);
  EXPECT_EQ(wrong.reward, 0.0);
}

TEST(Verifier, SpecValidation) {
  EXPECT_FALSE((VerifierSpec{.kind = AnswerKind::kInteger, .expected = "x"}).Validate().ok());
  EXPECT_TRUE((VerifierSpec{.kind = AnswerKind::kInteger, .expected = "-3"}).Validate().ok());
}

}  // namespace
}  // namespace v4rl::reward
