// A small flag parser for subcommands: `--name value`, `--name=value`, boolean `--name` /
// `--noname`, positional arguments, and a generated `--help` text.
//
//   FlagParser parser("inspect", "v4rl inspect PATH", "List the tensors of ...");
//   std::string path;
//   parser.AddPositional("PATH", &path, "safetensors file or model directory");
//   int exit_code;
//   if (!parser.ParseOrExit(args, &exit_code)) return exit_code;
//
// Unknown flags, missing values, unparsable numbers and missing required positionals are errors
// that name the flag and the expectation. Not thread-safe (used once per process).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"

namespace v4rl::cli {

class FlagParser {
 public:
  FlagParser(std::string command, std::string usage, std::string description);

  void AddString(const std::string& name, std::string* value, const std::string& help);
  void AddInt(const std::string& name, int64_t* value, const std::string& help);
  void AddDouble(const std::string& name, double* value, const std::string& help);
  void AddBool(const std::string& name, bool* value, const std::string& help);
  // Positionals are filled in the order added; `required` ones must be present.
  void AddPositional(const std::string& name, std::string* value, const std::string& help,
                     bool required = true);

  // Parses args; on `--help` prints Help() to stdout and returns Cancelled.
  absl::Status Parse(const std::vector<std::string>& args);
  // Parse, printing errors as "v4rl <command>: <message>" to stderr. Returns false when the
  // command should exit now with *exit_code (0 after --help, 2 on a usage error).
  bool ParseOrExit(const std::vector<std::string>& args, int* exit_code);
  std::string Help() const;

  // Flags that were given explicitly.
  bool WasSet(const std::string& name) const;

 private:
  enum class Kind { kString, kInt, kDouble, kBool };
  struct Flag {
    std::string name;
    Kind kind;
    void* value;
    std::string help;
    std::string default_text;
    bool set = false;
  };
  struct Positional {
    std::string name;
    std::string* value;
    std::string help;
    bool required;
  };
  absl::Status Assign(Flag& flag, const std::string& text);
  Flag* FindFlag(const std::string& name);

  std::string command_;
  std::string usage_;
  std::string description_;
  std::vector<Flag> flags_;
  std::vector<Positional> positionals_;
};

}  // namespace v4rl::cli
