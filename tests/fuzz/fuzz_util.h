// Shared by the libFuzzer targets of `make fuzz` (one per reader of user files, tests/fuzz/*_fuzz.cpp).
//
// The rule every target applies: for any input, a reader either accepts it or throws loom::Error.
// loom::Error is therefore caught and ignored; anything else is left to escape and end the process
// (std::bad_alloc, std::out_of_range, nlohmann::json's exceptions, a sanitizer report, a signal),
// because each of those would end a user's program without one clear message.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>

#include "ops/error.h"

namespace loom::fuzz {

// A private folder for the files a reader must be given by path; removed at exit.
const std::string& scratch_dir();
// Writes size bytes to scratch_dir()/name (replacing it) and returns the path.
std::string write_scratch(const std::string& name, const uint8_t* data, size_t size);
// Ends the process with a finding that is not an exception or a crash: a broken invariant of
// accepted input (what it is, printed to stderr, then abort so libFuzzer saves the input).
[[noreturn]] void finding(const std::string& what);

// Runs fn; a loom::Error is the clean outcome of bad input, everything else escapes.
template <class Fn>
void expect_clean(Fn&& fn) {
  try {
    fn();
  } catch (const Error&) {
  }
}

}  // namespace loom::fuzz
