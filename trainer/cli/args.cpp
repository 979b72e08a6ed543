#include "trainer/cli/args.h"

#include <cerrno>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <sstream>

namespace cli {

Args::Args(std::string command, std::string summary) : command_(std::move(command)), summary_(std::move(summary)) {
  flag("help", "show this help and exit");
}

void Args::positional(const std::string& name, const std::string& help, bool required) {
  specs_.push_back({name, name, help, "", Spec::Positional, required});
}
void Args::option(const std::string& name, const std::string& value_name, const std::string& help,
                  const std::string& default_value) {
  specs_.push_back({name, value_name, help, default_value, Spec::Option});
}
void Args::multi(const std::string& name, const std::string& value_name, const std::string& help) {
  specs_.push_back({name, value_name, help, "", Spec::Multi});
}
void Args::repeated(const std::string& name, const std::string& value_name, const std::string& help) {
  specs_.push_back({name, value_name, help, "", Spec::Repeated});
}
void Args::flag(const std::string& name, const std::string& help) {
  specs_.push_back({name, "", help, "", Spec::Flag});
}

const Args::Spec& Args::spec(const std::string& name) const {
  for (const auto& s : specs_)
    if (s.name == name) return s;
  throw std::logic_error("cli: undeclared argument " + name);
}

void Args::parse(int argc, char** argv, int first) {
  std::vector<const Spec*> positionals;
  for (const auto& s : specs_)
    if (s.kind == Spec::Positional) positionals.push_back(&s);
  size_t next_positional = 0;
  for (int i = first; i < argc; i++) {
    std::string a = argv[i];
    if (a == "--help" || a == "-h") {
      std::fputs(help().c_str(), stdout);
      std::exit(0);
    }
    if (a.rfind("--", 0) == 0) {
      std::string name = a.substr(2), value;
      size_t eq = name.find('=');
      bool inline_value = eq != std::string::npos;
      if (inline_value) {
        value = name.substr(eq + 1);
        name = name.substr(0, eq);
      }
      const Spec* s = nullptr;
      for (const auto& x : specs_)
        if (x.name == name && x.kind != Spec::Positional) s = &x;
      if (!s) throw UsageError(command_ + ": unknown option --" + name + " (see kvmtrain " + command_ + " --help)");
      if (s->kind == Spec::Flag) {
        if (inline_value) throw UsageError(command_ + ": --" + name + " takes no value");
        values_[name].push_back("true");
      } else if (s->kind == Spec::Option || s->kind == Spec::Repeated) {
        if (!inline_value) {
          if (i + 1 >= argc) throw UsageError(command_ + ": --" + name + " expects " + s->value_name);
          value = argv[++i];
        }
        if (s->kind == Spec::Option) values_[name] = {value};
        else values_[name].push_back(value);
      } else {  // Multi: one or more values up to the next --option
        auto& v = values_[name];
        size_t before = v.size();
        if (inline_value) v.push_back(value);
        while (i + 1 < argc && std::string(argv[i + 1]).rfind("--", 0) != 0) v.push_back(argv[++i]);
        if (v.size() == before) throw UsageError(command_ + ": --" + name + " expects " + s->value_name);
      }
      continue;
    }
    if (next_positional >= positionals.size())
      throw UsageError(command_ + ": unexpected argument '" + a + "' (see kvmtrain " + command_ + " --help)");
    values_[positionals[next_positional++]->name] = {a};
  }
  for (const auto* p : positionals)
    if (p->required && !values_.count(p->name))
      throw UsageError(command_ + ": missing " + p->name + " (see kvmtrain " + command_ + " --help)");
}

bool Args::has(const std::string& name) const {
  spec(name);
  return values_.count(name) > 0;
}

std::string Args::str(const std::string& name) const {
  const Spec& s = spec(name);
  auto it = values_.find(name);
  if (it == values_.end()) return s.default_value;
  return it->second.back();
}

int64_t Args::integer(const std::string& name, int64_t lo, int64_t hi) const {
  std::string v = str(name);
  char* end = nullptr;
  errno = 0;
  long long x = std::strtoll(v.c_str(), &end, 10);
  if (v.empty() || *end != '\0' || errno == ERANGE || x < lo || x > hi) {
    const bool ranged = lo != INT64_MIN || hi != INT64_MAX;
    throw UsageError(command_ + ": --" + name + " expects an integer" +
                     (ranged ? " in [" + std::to_string(lo) + ", " + std::to_string(hi) + "]" : "") + ", got '" + v +
                     "'");
  }
  return x;
}

double Args::number(const std::string& name) const {
  std::string v = str(name);
  char* end = nullptr;
  double x = std::strtod(v.c_str(), &end);
  if (v.empty() || *end != '\0' || !std::isfinite(x))
    throw UsageError(command_ + ": --" + name + " expects a number, got '" + v + "'");
  return x;
}

std::vector<std::string> Args::list(const std::string& name) const {
  spec(name);
  auto it = values_.find(name);
  return it == values_.end() ? std::vector<std::string>{} : it->second;
}

std::string Args::help() const {
  std::ostringstream o;
  o << "usage: kvmtrain " << command_;
  for (const auto& s : specs_)
    if (s.kind == Spec::Positional) o << (s.required ? " " : " [") << s.name << (s.required ? "" : "]");
  o << " [options]\n\n" << summary_ << "\n\n";
  for (const auto& s : specs_) {
    std::string left;
    if (s.kind == Spec::Positional) left = s.name;
    else if (s.kind == Spec::Flag) left = "--" + s.name;
    else left = "--" + s.name + " " + s.value_name + (s.kind == Spec::Multi ? "..." : "");
    if (s.kind == Spec::Repeated) left += " (repeatable)";
    o << "  " << left;
    o << std::string(left.size() < 28 ? 28 - left.size() : 1, ' ') << s.help;
    if (!s.default_value.empty()) o << " (default: " << s.default_value << ")";
    o << "\n";
  }
  return o.str();
}

}  // namespace cli
