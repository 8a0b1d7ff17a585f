#include "cli/command.h"

#include <algorithm>

namespace v4rl::cli {
namespace {
std::vector<Command>& MutableCommands() {
  static auto* commands = new std::vector<Command>();
  return *commands;
}
}  // namespace

const std::vector<Command>& Commands() { return MutableCommands(); }

const Command* FindCommand(const std::string& name) {
  for (const Command& command : Commands()) {
    if (command.name == name) return &command;
  }
  return nullptr;
}

CommandRegistrar::CommandRegistrar(const char* name, const char* summary, CommandFunction run) {
  auto& commands = MutableCommands();
  commands.push_back(Command{name, summary, run});
  std::sort(commands.begin(), commands.end(),
            [](const Command& a, const Command& b) { return a.name < b.name; });
}

}  // namespace v4rl::cli
