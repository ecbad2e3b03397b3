// The distributed runtime: who this process is (rank, world, local rank), CPU collectives, and how
// any rank's failure ends every rank.
//
// Launch (dist/launch.h): under mpirun, MPI_Init and MPI_COMM_WORLD give rank and world, and
// MPI_Comm_split_type(MPI_COMM_TYPE_SHARED) the local rank; with RANK/WORLD_SIZE (torchrun style)
// the ranks meet over TCP (MASTER_ADDR:MASTER_PORT) or through LOOM_RENDEZVOUS_FILE without MPI;
// otherwise one process, and MPI is never initialised (so `build/train cfg.yaml` runs where MPI
// singleton init is unavailable). Collectives called before dist_init act on that single process.
//
// Collectives form a star around rank 0: allreduce_sum sends each rank's buffer to rank 0, which
// adds them in rank order, ((x0 + x1) + x2) + ..., and broadcasts the sum. Every rank therefore gets
// bit-identical results, and MPI and TCP give the same bits. It moves (world-1)·n values through
// rank 0, fine for the CPU reference path this serves; GPU gradients go through NCCL
// (dist/nccl_comm.h). Every message carries the collective's name and size, so ranks that call
// different collectives end with a message instead of reading each other's bytes. At world = 1
// every collective returns at once.
//
// Failure, with world > 1: loom::die (internal errors) and dist_abort_with (any exception caught
// at the top of main) end every rank. Under MPI through MPI_Abort(MPI_COMM_WORLD, 1). Under the
// tcp/file bootstrap the failing rank closes its sockets and _exits; a watcher thread on each peer
// sees the connection close, even while that peer computes outside any collective, and ends it
// the same way. A collective that waits longer than LOOM_DIST_TIMEOUT_S for a peer ends the run.
//
// Usage in a main():
//   loom::DistContext& ctx = loom::dist_init(&argc, &argv);
//   try { ...; loom::dist_finalize(); return 0; }
//   catch (...) { loom::dist_abort_with(loom::describe_current_exception()); }
// Every rank must reach dist_finalize: a rank that returns without it looks like a crash to the
// others.
#pragma once
#include <cstddef>
#include <functional>
#include <string>

#include "dist/launch.h"

namespace loom {

struct DistContext {
  int rank = 0, world = 1, local_rank = 0;  // local_rank: this process's GPU on its node
  int local_world = 1;                      // processes on this node: they share its CPUs
  bool mpi = false;                         // MPI_Init was called (launched by mpirun)
  Bootstrap bootstrap = Bootstrap::single;
  bool initialized = false;
};

// Idempotent. A launch that is inconsistent (dist/launch.h) or a rendezvous that times out is a
// loom::Error naming the variables and the fix.
DistContext& dist_init(int* argc, char*** argv);
// The context dist_init made, or the single-process one before it.
const DistContext& dist_context();
// Waits for every rank, then closes the sockets or calls MPI_Finalize. Idempotent.
void dist_finalize();
bool is_main();  // rank 0: the rank that logs, saves checkpoints and exports

// Under mpirun with np <= 2, Open MPI binds each rank to one core, so the host work of loading
// (random init, NF4 quantization, OpenMP-parallel) runs on a single thread: minutes for an 8B model
// instead of seconds. A warning with the fix (`--bind-to none`) when this process may use one CPU
// of several; empty otherwise.
std::string cpu_binding_warning();

// OpenMP threads for one of `local_world` ranks on a node with `online` CPUs, `usable` of which this
// rank may run on: its share of the node, never more than its binding allows. Unset OMP_NUM_THREADS,
// every rank would start one thread per CPU and 4 ranks would run 4 threads per core, where OpenMP's
// barriers spin on descheduled threads. dist_init applies it unless OMP_NUM_THREADS is set.
int host_threads_per_rank(int usable, int online, int local_world);

// Prints "[rank R] error: msg" ("error: msg" when world = 1) and ends every rank with exit code 1.
[[noreturn]] void dist_abort_with(const std::string& msg);

void allreduce_sum(float* buf, size_t n);
void allreduce_sum(double* buf, size_t n);
double allreduce_sum(double x);
void barrier();
void broadcast(void* data, size_t bytes, int root);

// Run, in registration order, when this rank aborts, before the other ranks are told (the NCCL
// communicator registers ncclCommAbort); after 5 s the abort goes on without them.
// remove_abort_cleanup takes the id add_abort_cleanup gave.
int add_abort_cleanup(std::function<void()> fn);
void remove_abort_cleanup(int id);

}  // namespace loom
