#pragma once
// A usage or input error (a bad flag, config key, file or value): main prints
// "kvmtrain: error: <what>" on one line and exits with status 2. Every room may throw it.
#include <stdexcept>

struct UsageError : std::runtime_error {
  using std::runtime_error::runtime_error;
};
