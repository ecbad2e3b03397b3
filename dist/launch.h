// How this process was launched, read from the environment before anything is started.
//
//   mpi     mpirun / srun set OMPI_COMM_WORLD_SIZE, OMPI_COMM_WORLD_RANK, OMPI_COMM_WORLD_LOCAL_RANK
//           (Open MPI), PMI_SIZE / PMI_RANK (MPICH, Intel MPI, Slurm PMI-2) or PMIX_RANK (PMIx):
//           MPI itself then gives rank, world and local rank.
//   tcp     torchrun style: RANK, WORLD_SIZE, LOCAL_RANK (default: RANK, right for one node),
//           LOCAL_WORLD_SIZE (default: WORLD_SIZE, likewise), MASTER_ADDR, MASTER_PORT. Rank 0
//           listens on MASTER_PORT, the others connect.
//   file    RANK, WORLD_SIZE and LOOM_RENDEZVOUS_FILE (a path every rank can read): rank 0 listens
//           on MASTER_PORT or any free port and writes its address (MASTER_ADDR if set, else its
//           host name) to the file.
//   single  none of the above, or WORLD_SIZE=1: one process, MPI is never touched.
// LOOM_DIST_TIMEOUT_S (default 300) bounds the tcp/file rendezvous and every wait in a collective.
#pragma once
#include <functional>
#include <string>

namespace loom {

enum class Bootstrap { single, mpi, tcp, file };
const char* bootstrap_name(Bootstrap b);  // "single", "mpirun", "tcp", "file"

struct LaunchPlan {
  Bootstrap bootstrap = Bootstrap::single;
  int rank = 0, world = 1, local_rank = 0;  // tcp/file/single; under mpi MPI answers these
  int local_world = 1;                      // processes on this node (LOCAL_WORLD_SIZE)
  std::string master_addr;                  // MASTER_ADDR (tcp: where rank 0 is; file: what rank 0 publishes)
  int master_port = 0;                      // MASTER_PORT; 0 = any free port (file only)
  std::string rendezvous_file;              // LOOM_RENDEZVOUS_FILE
  double timeout_s = 300;                   // LOOM_DIST_TIMEOUT_S
};

// `env` returns a variable's value or nullptr (std::getenv in production; a map in tests).
// Inconsistent or malformed variables are a loom::Error naming the variable and the fix.
using EnvLookup = std::function<const char*(const char*)>;
LaunchPlan plan_launch(const EnvLookup& env);

// A timeout variable in seconds (> 0), or `fallback` when unset; anything else is a loom::Error.
double env_seconds(const EnvLookup& env, const char* name, double fallback);

}  // namespace loom
