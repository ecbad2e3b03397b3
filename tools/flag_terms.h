// What the tools share about their flags. The libraries name config keys in their messages (data.template, model.path); a user of a tool's
// flags typed flags, and where each flag sets exactly one key, the tool puts the messages in the
// flags' terms.
#pragma once
#include <algorithm>
#include <array>
#include <cmath>
#include <cstdio>
#include <string>

#include "ops/error.h"
#include "ops/files.h"
#include <utility>
#include <vector>

namespace loom {

using FlagOfKey = std::pair<std::string, std::string>;  // {"data.template", "--template"}

inline std::string in_flag_terms(std::string message, const std::vector<FlagOfKey>& flag_of_key) {
  for (const auto& [key, flag] : flag_of_key)
    for (size_t at = message.find(key); at != std::string::npos; at = message.find(key, at + flag.size()))
      message.replace(at, key.size(), flag);
  return message;
}

// A flag whose value must be one of `allowed`: "--train-on must be one of responses, all (found ...)".
inline void check_choice(const std::string& flag, const std::string& value, const std::vector<std::string>& allowed) {
  std::string list;
  for (const auto& a : allowed) {
    if (a == value) return;
    list += (list.empty() ? "" : ", ") + a;
  }
  fail(flag, " must be one of ", list, " (found \"", shown(value, 80), "\")");
}

// The enum value whose YAML spelling (names, in enum order) is `value`; else check_choice's error.
template <class E, size_t N>
E parse_choice(const std::string& flag, const std::string& value, const std::array<const char*, N>& names) {
  const std::vector<std::string> allowed(names.begin(), names.end());
  check_choice(flag, value, allowed);
  return E(std::find(allowed.begin(), allowed.end(), value) - allowed.begin());
}

// A number flag's value: finite, the whole string, else an error naming the flag.
inline double parse_number(const std::string& flag, const std::string& v) {
  size_t used = 0;
  double x = 0;
  try {
    x = std::stod(v, &used);
  } catch (const std::exception&) {
    used = 0;
  }
  LOOM_CHECK(used == v.size() && std::isfinite(x), flag, " expects a number, got '", v.substr(0, 40), "'");
  return x;
}

// The main() of a tool whose messages are put in its flags' terms: --help / -h print the usage;
// an error prints "error: <message>" and exits 1.
inline int tool_main(int argc, char** argv, const char* usage, const std::vector<FlagOfKey>& flag_of_key,
                     int (*run)(int, char**)) {
  if (argc > 1 && (std::string(argv[1]) == "--help" || std::string(argv[1]) == "-h")) {
    std::fputs(usage, stdout);
    return 0;
  }
  try {
    return run(argc, argv);
  } catch (...) {
    std::fprintf(stderr, "error: %s\n", in_flag_terms(describe_current_exception(), flag_of_key).c_str());
    return 1;
  }
}

}  // namespace loom
