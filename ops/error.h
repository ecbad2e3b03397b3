// Errors, two kinds. At the bottom of the include graph (every folder reports through it).
//  - loom::Error: a user-facing problem (bad config, missing file, malformed input). Thrown,
//    caught at the top of each program, printed as "error: <message>", exit code 1. Messages say
//    what was expected, what was found, where (file, key, line, tensor) and what to change.
//  - loom::die(): an internal failure (CUDA/cuBLAS/NCCL/MPI error). Prints and ends the process
//    through the registered abort hook, so every rank of a distributed run ends (never a hang).
#pragma once
#include <sstream>
#include <stdexcept>
#include <string>

namespace loom {

struct Error : std::runtime_error {
  using std::runtime_error::runtime_error;
};

template <class... A>
std::string cat(const A&... parts) {
  std::ostringstream s;
  (s << ... << parts);
  return s.str();
}

template <class... A>
[[noreturn]] void fail(const A&... parts) {
  throw Error(cat(parts...));
}

// The distributed runtime replaces this with MPI_Abort / ncclCommAbort; the default exits(1).
using AbortHook = void (*)(int code);
void set_abort_hook(AbortHook hook);
// Prints "[rank R] fatal: msg" (rank omitted in single-process runs) to stderr and aborts.
[[noreturn]] void die(const std::string& msg);
// The message for the exception in flight, for a program's outermost `catch (...)`: a loom::Error's
// text as it is; anything else (std::bad_alloc, std::filesystem_error, a library's exception) says
// what it was, so no input can end a program with `terminate` instead of one clear line.
std::string describe_current_exception();
// The rank printed by die(); set by dist/ once the rank is known.
void set_log_rank(int rank);
// Called by die() before it prints; may not return, when another thread is reporting the failure
// that caused this one (dist/: a peer that died while this rank's GPU read its memory).
using BeforeDieHook = void (*)();
void set_before_die_hook(BeforeDieHook hook);

}  // namespace loom

// User-facing precondition: LOOM_CHECK(r > 0, "lora.r must be > 0 (", file, ": lora.r = ", r, ")")
#define LOOM_CHECK(cond, ...)                   \
  do {                                          \
    if (!(cond)) ::loom::fail(__VA_ARGS__);     \
  } while (0)
