#include "cli/json_lines.h"

#include <string>

#include "absl/strings/str_format.h"

namespace v4rl::cli {
namespace {

std::string Dump(const actor::PyJson& value) {
  // `replace` keeps dump() from throwing on invalid UTF-8.
  return value.dump(-1, ' ', false, actor::PyJson::error_handler_t::replace);
}

}  // namespace

int RunJsonLines(std::istream& in, std::ostream& out, JsonLineHandler handle) {
  int exit_code = 0;
  std::string line;
  for (int number = 1; std::getline(in, line); ++number) {
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    const std::string what = absl::StrFormat("line %d", number);
    absl::StatusOr<actor::PyJson> answer = actor::ParsePyJson(line, what);
    if (answer.ok()) {
      answer = handle(*answer);
      if (!answer.ok()) {
        answer = absl::Status(answer.status().code(),
                              absl::StrFormat("%s: %s", what, answer.status().message()));
      }
    }
    if (answer.ok()) {
      out << Dump(*answer) << '\n';
    } else {
      out << Dump(actor::PyJson{{"error", std::string(answer.status().message())}}) << '\n';
      exit_code = 1;
    }
    out.flush();
  }
  return exit_code;
}

const actor::PyJson* RequestField(const actor::PyJson& request, const char* key) {
  if (!request.is_object()) return nullptr;
  auto it = request.find(key);
  return it == request.end() ? nullptr : &*it;
}

}  // namespace v4rl::cli
