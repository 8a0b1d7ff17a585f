// Subcommand registry of the `v4rl` binary.
//
// Each subcommand lives in its own file and registers itself:
//   V4RL_REGISTER_COMMAND(inspect, "List the tensors of a safetensors file or model directory",
//                         RunInspect);
// where `int RunInspect(const std::vector<std::string>& args)` receives the arguments after the
// subcommand name and returns the process exit code. Registration happens during static
// initialisation; the registry is read-only afterwards.
#pragma once

#include <string>
#include <vector>

namespace v4rl::cli {

using CommandFunction = int (*)(const std::vector<std::string>& args);

struct Command {
  std::string name;
  std::string summary;  // one line for `v4rl --help`
  CommandFunction run;
};

// Sorted by name.
const std::vector<Command>& Commands();
const Command* FindCommand(const std::string& name);

struct CommandRegistrar {
  CommandRegistrar(const char* name, const char* summary, CommandFunction run);
};

}  // namespace v4rl::cli

#define V4RL_REGISTER_COMMAND(name, summary, function) \
  static ::v4rl::cli::CommandRegistrar v4rl_command_registrar_##name(#name, summary, function)
