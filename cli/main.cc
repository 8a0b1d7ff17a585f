// Entry point of the `v4rl` binary: dispatches to the registered subcommands (cli/command.h).
#include <iostream>
#include <string>
#include <vector>

#include "absl/strings/str_format.h"
#include "cli/command.h"

namespace {

void PrintUsage(std::ostream& out) {
  out << "usage: v4rl SUBCOMMAND [flags]\n\n"
         "v4rl post-trains DeepSeek-V4-architecture models (RL, on-policy distillation).\n\n"
         "subcommands:\n";
  for (const v4rl::cli::Command& command : v4rl::cli::Commands()) {
    out << absl::StrFormat("  %-14s %s\n", command.name, command.summary);
  }
  out << "\n`v4rl SUBCOMMAND --help` describes each one.\n";
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    PrintUsage(std::cerr);
    return 2;
  }
  const std::string name = argv[1];
  if (name == "--help" || name == "-h" || name == "help") {
    PrintUsage(std::cout);
    return 0;
  }
  const v4rl::cli::Command* command = v4rl::cli::FindCommand(name);
  if (command == nullptr) {
    std::cerr << "v4rl: unknown subcommand \"" << name << "\"\n\n";
    PrintUsage(std::cerr);
    return 2;
  }
  return command->run(std::vector<std::string>(argv + 2, argv + argc));
}
