#include "actor/deepseek_v4_tokens.h"

#include <array>

namespace v4rl::actor {

std::span<const AddedToken> DeepSeekV4AddedTokens() {
  static const std::array<AddedToken, 11>* tokens = new std::array<AddedToken, 11>{{
      {128821, "<think>"},
      {128822, "</think>"},
      {128825, "｜DSML｜"},
      {128828, "<｜latest_reminder｜>"},
      {128829, "<｜action｜>"},
      {128830, "<｜query｜>"},
      {128831, "<｜authority｜>"},
      {128832, "<｜domain｜>"},
      {128836, "<｜title｜>"},
      {128844, "<｜extracted_url｜>"},
      {128845, "<｜read_url｜>"},
  }};
  return *tokens;
}

}  // namespace v4rl::actor
