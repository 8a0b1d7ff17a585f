#include "cli/flags.h"

#include <cstdio>
#include <iostream>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace v4rl::cli {

FlagParser::FlagParser(std::string command, std::string usage, std::string description)
    : command_(std::move(command)), usage_(std::move(usage)), description_(std::move(description)) {}

void FlagParser::AddString(const std::string& name, std::string* value, const std::string& help) {
  flags_.push_back({name, Kind::kString, value, help, value->empty() ? "" : "\"" + *value + "\""});
}
void FlagParser::AddInt(const std::string& name, int64_t* value, const std::string& help) {
  flags_.push_back({name, Kind::kInt, value, help, absl::StrCat(*value)});
}
void FlagParser::AddDouble(const std::string& name, double* value, const std::string& help) {
  flags_.push_back({name, Kind::kDouble, value, help, absl::StrCat(*value)});
}
void FlagParser::AddBool(const std::string& name, bool* value, const std::string& help) {
  flags_.push_back({name, Kind::kBool, value, help, *value ? "true" : "false"});
}
void FlagParser::AddPositional(const std::string& name, std::string* value,
                               const std::string& help, bool required) {
  positionals_.push_back({name, value, help, required});
}

FlagParser::Flag* FlagParser::FindFlag(const std::string& name) {
  for (Flag& flag : flags_) {
    if (flag.name == name) return &flag;
  }
  return nullptr;
}

bool FlagParser::WasSet(const std::string& name) const {
  for (const Flag& flag : flags_) {
    if (flag.name == name) return flag.set;
  }
  return false;
}

absl::Status FlagParser::Assign(Flag& flag, const std::string& text) {
  flag.set = true;
  switch (flag.kind) {
    case Kind::kString:
      *static_cast<std::string*>(flag.value) = text;
      return absl::OkStatus();
    case Kind::kInt: {
      int64_t parsed;
      if (!absl::SimpleAtoi(text, &parsed)) {
        return absl::InvalidArgumentError(
            absl::StrFormat("--%s expects an integer, got \"%s\"", flag.name, text));
      }
      *static_cast<int64_t*>(flag.value) = parsed;
      return absl::OkStatus();
    }
    case Kind::kDouble: {
      double parsed;
      if (!absl::SimpleAtod(text, &parsed)) {
        return absl::InvalidArgumentError(
            absl::StrFormat("--%s expects a number, got \"%s\"", flag.name, text));
      }
      *static_cast<double*>(flag.value) = parsed;
      return absl::OkStatus();
    }
    case Kind::kBool: {
      bool parsed;
      if (!absl::SimpleAtob(text, &parsed)) {
        return absl::InvalidArgumentError(
            absl::StrFormat("--%s expects true or false, got \"%s\"", flag.name, text));
      }
      *static_cast<bool*>(flag.value) = parsed;
      return absl::OkStatus();
    }
  }
  return absl::InternalError("unknown flag kind");
}

absl::Status FlagParser::Parse(const std::vector<std::string>& args) {
  size_t next_positional = 0;
  bool only_positionals = false;
  for (size_t i = 0; i < args.size(); ++i) {
    const std::string& arg = args[i];
    if (only_positionals || arg.size() < 2 || arg.rfind("--", 0) != 0) {
      if (next_positional >= positionals_.size()) {
        return absl::InvalidArgumentError(absl::StrFormat(
            "unexpected argument \"%s\" (takes %d positional argument%s)", arg,
            positionals_.size(), positionals_.size() == 1 ? "" : "s"));
      }
      *positionals_[next_positional++].value = arg;
      continue;
    }
    if (arg == "--") {
      only_positionals = true;
      continue;
    }
    if (arg == "--help" || arg == "-h") {
      std::cout << Help();
      return absl::CancelledError("help");
    }
    std::string name = arg.substr(2);
    std::string value;
    bool has_value = false;
    if (const size_t eq = name.find('='); eq != std::string::npos) {
      value = name.substr(eq + 1);
      name = name.substr(0, eq);
      has_value = true;
    }
    Flag* flag = FindFlag(name);
    if (flag == nullptr && !has_value && name.rfind("no", 0) == 0) {
      Flag* negated = FindFlag(name.substr(2));
      if (negated != nullptr && negated->kind == Kind::kBool) {
        negated->set = true;
        *static_cast<bool*>(negated->value) = false;
        continue;
      }
    }
    if (flag == nullptr) {
      return absl::InvalidArgumentError(
          absl::StrFormat("unknown flag --%s (see v4rl %s --help)", name, command_));
    }
    if (!has_value) {
      if (flag->kind == Kind::kBool) {
        flag->set = true;
        *static_cast<bool*>(flag->value) = true;
        continue;
      }
      if (i + 1 >= args.size()) {
        return absl::InvalidArgumentError(absl::StrFormat("--%s needs a value", name));
      }
      value = args[++i];
    }
    if (absl::Status status = Assign(*flag, value); !status.ok()) return status;
  }
  for (size_t p = next_positional; p < positionals_.size(); ++p) {
    if (positionals_[p].required) {
      return absl::InvalidArgumentError(
          absl::StrFormat("missing %s (usage: %s)", positionals_[p].name, usage_));
    }
  }
  return absl::OkStatus();
}

bool FlagParser::ParseOrExit(const std::vector<std::string>& args, int* exit_code) {
  absl::Status status = Parse(args);
  if (status.ok()) return true;
  if (absl::IsCancelled(status)) {
    *exit_code = 0;
    return false;
  }
  std::cerr << "v4rl " << command_ << ": " << status.message() << "\n";
  *exit_code = 2;
  return false;
}

std::string FlagParser::Help() const {
  std::string text = absl::StrCat("usage: ", usage_, "\n\n", description_, "\n");
  if (!positionals_.empty()) {
    text += "\narguments:\n";
    for (const Positional& p : positionals_) {
      absl::StrAppendFormat(&text, "  %-22s %s%s\n", p.name, p.help, p.required ? "" : " (optional)");
    }
  }
  if (!flags_.empty()) {
    text += "\nflags:\n";
    for (const Flag& flag : flags_) {
      const char* kind = flag.kind == Kind::kBool     ? ""
                         : flag.kind == Kind::kInt    ? " N"
                         : flag.kind == Kind::kDouble ? " X"
                                                      : " S";
      std::string left = absl::StrCat("--", flag.name, kind);
      absl::StrAppendFormat(&text, "  %-22s %s", left, flag.help);
      if (!flag.default_text.empty()) absl::StrAppend(&text, " (default ", flag.default_text, ")");
      text += "\n";
    }
  }
  text += "  --help                 show this text\n";
  return text;
}

}  // namespace v4rl::cli
