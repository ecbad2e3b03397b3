#include "dist/launch.h"

#include <cerrno>
#include <cmath>
#include <cstdlib>

#include "ops/error.h"

namespace loom {
namespace {

bool is_set(const EnvLookup& env, const char* name) {
  const char* v = env(name);
  return v && *v;
}

bool launched_by_mpi(const EnvLookup& env) {
  for (const char* name : {"OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_LOCAL_RANK", "PMI_SIZE",
                           "PMI_RANK", "PMIX_RANK"})
    if (is_set(env, name)) return true;
  return false;
}

int env_int(const EnvLookup& env, const char* name, const char* meaning) {
  const char* v = env(name);
  char* end = nullptr;
  errno = 0;
  long x = std::strtol(v, &end, 10);
  LOOM_CHECK(end != v && *end == '\0' && errno == 0 && x >= 0 && x <= 1 << 30, name, "='", v,
             "' is not a non-negative integer; expected ", meaning);
  return int(x);
}

void check_rank_variables(const EnvLookup& env) {
  const bool rank = is_set(env, "RANK"), world = is_set(env, "WORLD_SIZE");
  LOOM_CHECK(rank == world, rank ? "RANK" : "WORLD_SIZE", " is set but ", rank ? "WORLD_SIZE" : "RANK",
             " is not; a torchrun-style launch sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT "
             "(or unset it for a single process, or use mpirun)");
}

void read_rendezvous(const EnvLookup& env, LaunchPlan& p) {
  if (is_set(env, "MASTER_ADDR")) p.master_addr = env("MASTER_ADDR");
  if (is_set(env, "MASTER_PORT")) {
    p.master_port = env_int(env, "MASTER_PORT", "a TCP port, 1..65535");
    LOOM_CHECK(p.master_port >= 1 && p.master_port <= 65535, "MASTER_PORT=", p.master_port,
               " is not a TCP port; expected 1..65535");
  }
  if (is_set(env, "LOOM_RENDEZVOUS_FILE")) {
    p.rendezvous_file = env("LOOM_RENDEZVOUS_FILE");
    p.bootstrap = Bootstrap::file;
    return;
  }
  LOOM_CHECK(!p.master_addr.empty() && p.master_port > 0, "WORLD_SIZE=", p.world,
             " needs a rendezvous, but ", p.master_addr.empty() ? "MASTER_ADDR" : "MASTER_PORT",
             " is not set: set MASTER_ADDR (rank 0's host) and MASTER_PORT (a free port on it), or "
             "LOOM_RENDEZVOUS_FILE (a path every rank can read)");
  p.bootstrap = Bootstrap::tcp;
}

}  // namespace

const char* bootstrap_name(Bootstrap b) {
  switch (b) {
    case Bootstrap::single: return "single";
    case Bootstrap::mpi: return "mpirun";
    case Bootstrap::tcp: return "tcp";
    case Bootstrap::file: return "file";
  }
  return "?";
}

double env_seconds(const EnvLookup& env, const char* name, double fallback) {
  if (!is_set(env, name)) return fallback;
  const char* v = env(name);
  char* end = nullptr;
  double s = std::strtod(v, &end);
  LOOM_CHECK(end != v && *end == '\0' && std::isfinite(s) && s > 0, name, "='", v,
             "' is not a number of seconds > 0 (e.g. ", name, "=600)");
  return s;
}

LaunchPlan plan_launch(const EnvLookup& env) {
  LaunchPlan p;
  if (launched_by_mpi(env)) {
    p.bootstrap = Bootstrap::mpi;
    return p;
  }
  check_rank_variables(env);
  if (!is_set(env, "RANK")) return p;
  p.world = env_int(env, "WORLD_SIZE", "the number of processes (e.g. WORLD_SIZE=2)");
  p.rank = env_int(env, "RANK", "this process's rank, 0..WORLD_SIZE-1");
  LOOM_CHECK(p.world >= 1, "WORLD_SIZE=0: expected the number of processes, at least 1");
  LOOM_CHECK(p.rank < p.world, "RANK=", p.rank, " is out of range for WORLD_SIZE=", p.world, "; expected 0..",
             p.world - 1);
  p.local_rank = is_set(env, "LOCAL_RANK") ? env_int(env, "LOCAL_RANK", "this process's GPU index on its node")
                                           : p.rank;
  p.local_world = p.world;
  if (is_set(env, "LOCAL_WORLD_SIZE")) {
    p.local_world = env_int(env, "LOCAL_WORLD_SIZE", "the number of processes on this node (e.g. LOCAL_WORLD_SIZE=8)");
    LOOM_CHECK(p.local_world >= 1 && p.local_rank < p.local_world, "LOCAL_RANK=", p.local_rank,
               " is out of range for LOCAL_WORLD_SIZE=", p.local_world,
               "; set LOCAL_WORLD_SIZE to the number of processes on this node");
  }
  p.timeout_s = env_seconds(env, "LOOM_DIST_TIMEOUT_S", p.timeout_s);
  if (p.world > 1) read_rendezvous(env, p);
  return p;
}

}  // namespace loom
