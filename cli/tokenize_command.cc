// `v4rl tokenize`: JSON lines on stdin -> token ids (or, with --decode, ids -> text) on stdout,
// with a Hugging Face tokenizer.json (the DeepSeek-V4 added tokens are added unless the file has
// them or --nov4_tokens is given).
#include <iostream>
#include <limits>

#include "absl/strings/str_format.h"
#include "actor/deepseek_v4_tokens.h"
#include "actor/tokenizer.h"
#include "cli/command.h"
#include "cli/flags.h"
#include "cli/json_lines.h"

namespace v4rl::cli {
namespace {

absl::StatusOr<actor::PyJson> EncodeLine(const actor::Tokenizer& tokenizer,
                                         const actor::PyJson& request) {
  const actor::PyJson* text = RequestField(request, "text");
  if (text == nullptr || !text->is_string()) {
    return absl::InvalidArgumentError("expected {\"text\": STRING}");
  }
  return actor::PyJson{{"ids", tokenizer.Encode(text->get_ref<const std::string&>())}};
}

absl::StatusOr<actor::PyJson> DecodeLine(const actor::Tokenizer& tokenizer,
                                         const actor::PyJson& request) {
  const actor::PyJson* ids = RequestField(request, "ids");
  if (ids == nullptr || !ids->is_array()) {
    return absl::InvalidArgumentError("expected {\"ids\": [INTEGER, ...]}");
  }
  std::vector<int32_t> values;
  values.reserve(ids->size());
  for (size_t i = 0; i < ids->size(); ++i) {
    const actor::PyJson& id = (*ids)[i];
    if (!id.is_number_integer() || id.get<int64_t>() < 0 ||
        id.get<int64_t>() > std::numeric_limits<int32_t>::max()) {
      return absl::InvalidArgumentError(
          absl::StrFormat("ids[%d]: expected a non-negative 32-bit integer", i));
    }
    values.push_back(static_cast<int32_t>(id.get<int64_t>()));
  }
  absl::StatusOr<std::string> text = tokenizer.Decode(values);
  if (!text.ok()) return text.status();
  return actor::PyJson{{"text", *text}};
}

int RunTokenize(const std::vector<std::string>& args) {
  FlagParser parser("tokenize", "v4rl tokenize --tokenizer FILE [--decode] < requests.jsonl",
                    "Tokenize JSON lines: {\"text\": ...} -> {\"ids\": [...]}; with --decode, "
                    "{\"ids\": [...]} -> {\"text\": ...}. A bad line gets {\"error\": ...} and "
                    "the rest are still processed; the exit code is 1 if any line failed.");
  std::string path;
  bool decode = false;
  bool v4_tokens = true;
  parser.AddString("tokenizer", &path, "Hugging Face tokenizer.json (required)");
  parser.AddBool("decode", &decode, "read ids and write text");
  parser.AddBool("v4_tokens", &v4_tokens,
                 "add the DeepSeek-V4 tokens (<think>, ｜DSML｜, ...) the V3 file lacks");
  int exit_code;
  if (!parser.ParseOrExit(args, &exit_code)) return exit_code;
  if (path.empty()) {
    std::cerr << "v4rl tokenize: --tokenizer is required\n";
    return 2;
  }
  absl::StatusOr<std::unique_ptr<actor::Tokenizer>> tokenizer = actor::Tokenizer::FromFile(path);
  if (tokenizer.ok() && v4_tokens) {
    if (absl::Status added = (*tokenizer)->AddTokens(actor::DeepSeekV4AddedTokens()); !added.ok()) {
      tokenizer = added;
    }
  }
  if (!tokenizer.ok()) {
    std::cerr << "v4rl tokenize: " << tokenizer.status().message() << "\n";
    return 1;
  }
  const actor::Tokenizer& tok = **tokenizer;
  return RunJsonLines(std::cin, std::cout, [&](const actor::PyJson& request) {
    return decode ? DecodeLine(tok, request) : EncodeLine(tok, request);
  });
}

}  // namespace
}  // namespace v4rl::cli

V4RL_REGISTER_COMMAND(tokenize, "Tokenize or detokenize JSON lines with a tokenizer.json",
                      v4rl::cli::RunTokenize);
