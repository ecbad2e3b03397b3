// Inside dist/: the point-to-point transport the star collectives of dist.cpp run on, and the one
// way a rank ends the run. Not for use outside dist/.
#pragma once
#include <cstddef>
#include <memory>
#include <string>

#include "dist/dist.h"
#include "dist/launch.h"

namespace loom {

// Bytes between rank 0 and each other rank (the only pairs a star needs). Every rank of a run is
// the same build on the same kind of machine, so payloads travel in host byte order.
class Link {
 public:
  virtual ~Link() = default;
  virtual void send(int peer, const void* data, size_t bytes) = 0;
  virtual void recv(int peer, void* data, size_t bytes) = 0;
  // Ends this process so that every peer ends too (MPI_Abort; or close the sockets, then _exit).
  [[noreturn]] virtual void abort(int code) = 0;
  // Orderly end, called by every rank from dist_finalize.
  virtual void close() = 0;
};

// MPI_Init (if nobody did yet), then rank, world and local rank into ctx.
std::unique_ptr<Link> make_mpi_link(int* argc, char*** argv, DistContext& ctx);
// The tcp/file rendezvous of plan (dist/launch.h); returns once all plan.world ranks are connected.
std::unique_ptr<Link> make_socket_link(const LaunchPlan& plan);

// Prints "[rank R] fatal: msg" and ends every rank; when several threads get here (a dead peer seen
// by the watcher and by a collective at once), only the first reports and the others wait for the end.
[[noreturn]] void fatal_once(const std::string& msg);

}  // namespace loom
