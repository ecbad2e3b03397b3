#include "engine/error.h"

#include <cstdio>
#include <cstdlib>

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

}  // namespace loom
