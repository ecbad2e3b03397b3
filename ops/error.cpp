#include "ops/error.h"

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <new>
#include <stdexcept>

namespace loom {
namespace {
AbortHook g_abort_hook = nullptr;
BeforeDieHook g_before_die = nullptr;
int g_log_rank = -1;
}  // namespace

void set_abort_hook(AbortHook hook) { g_abort_hook = hook; }
void set_log_rank(int rank) { g_log_rank = rank; }
void set_before_die_hook(BeforeDieHook hook) { g_before_die = hook; }

void die(const std::string& msg) {
  if (g_before_die) g_before_die();
  if (g_log_rank >= 0)
    std::fprintf(stderr, "[rank %d] fatal: %s\n", g_log_rank, msg.c_str());
  else
    std::fprintf(stderr, "fatal: %s\n", msg.c_str());
  std::fflush(stderr);
  if (g_abort_hook) g_abort_hook(1);
  std::_Exit(1);
}

std::string describe_current_exception() {
  try {
    throw;
  } catch (const Error& e) {
    return e.what();
  } catch (const std::bad_alloc&) {
    return "out of host memory (std::bad_alloc): the model, lora.r, train.token_budget or the input is larger "
           "than this machine can hold; lower them or use a machine with more memory";
  } catch (const std::filesystem::filesystem_error& e) {
    return cat(e.what(), "; check that the path exists, is of the right kind and is writable");
  } catch (const std::exception& e) {
    return cat("unexpected failure (", e.what(), "); this is a loom bug: please report it with the command");
  } catch (...) {
    return "unexpected failure of unknown type; this is a loom bug: please report it with the command";
  }
}

}  // namespace loom
