#pragma once
// Command-line parsing for kvmtrain's subcommands: every flag is declared with its help text,
// so `kvmtrain SUBCOMMAND --help` documents exactly what is parsed.
#include <cstdint>
#include <map>
#include <stdexcept>
#include <string>
#include <vector>

#include "common/usage_error.h"

namespace cli {

class Args {
 public:
  Args(std::string command, std::string summary);

  // Declarations, in the order --help lists them.
  void positional(const std::string& name, const std::string& help, bool required = true);
  void option(const std::string& name, const std::string& value_name, const std::string& help,
              const std::string& default_value = "");
  // An option that may repeat and takes one or more values each time (--input A B --input C).
  void multi(const std::string& name, const std::string& value_name, const std::string& help);
  // An option that may repeat, one value each time (--set a=1 --set b=2).
  void repeated(const std::string& name, const std::string& value_name, const std::string& help);
  void flag(const std::string& name, const std::string& help);

  // Parses argv[first..argc). Prints help and exits 0 on --help; throws UsageError otherwise.
  void parse(int argc, char** argv, int first);

  bool has(const std::string& name) const;  // given on the command line (or a flag set)
  std::string str(const std::string& name) const;
  // An integer in [lo, hi] (the whole int64 range by default); out of range is a UsageError.
  int64_t integer(const std::string& name, int64_t lo = INT64_MIN, int64_t hi = INT64_MAX) const;
  double number(const std::string& name) const;  // finite: nan and inf are UsageErrors
  std::vector<std::string> list(const std::string& name) const;
  std::string help() const;

 private:
  struct Spec {
    std::string name, value_name, help, default_value;
    enum Kind { Positional, Option, Multi, Repeated, Flag } kind;
    bool required = false;
  };
  const Spec& spec(const std::string& name) const;
  std::string command_, summary_;
  std::vector<Spec> specs_;
  std::map<std::string, std::vector<std::string>> values_;
};

}  // namespace cli
