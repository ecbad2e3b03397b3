// The MPI transport: MPI_Send / MPI_Recv between rank 0 and the others, MPI_Abort to end the run.
// MPI_CHECK has the shape of CHECK_GEN (ops/cuda_common.h) but lives apart from it: an MPI failure
// has no GPU to name, and the CPU path must not need CUDA.
// The C API is all we use; the deprecated C++ bindings only add warnings.
#define OMPI_SKIP_MPICXX 1
#define MPICH_SKIP_MPICXX 1
#include <mpi.h>

#include <algorithm>
#include <cstdlib>

#include "dist/link.h"
#include "ops/error.h"

#define MPI_CHECK(stmt)                                                         \
  do {                                                                          \
    int mpi_check_rc_ = (stmt);                                                 \
    if (mpi_check_rc_ != MPI_SUCCESS)                                           \
      ::loom::fatal_once(::loom::cat(#stmt, " failed at ", __FILE__, ":",       \
                                     __LINE__, ": ", mpi_error(mpi_check_rc_))); \
  } while (0)

namespace loom {
namespace {

std::string mpi_error(int code) {
  char text[MPI_MAX_ERROR_STRING];
  int len = 0;
  if (MPI_Error_string(code, text, &len) != MPI_SUCCESS) return cat("MPI error ", code);
  return std::string(text, size_t(len));
}

constexpr int kTag = 0x10c;
// MPI counts are int; 1 GiB pieces stay clear of INT_MAX.
constexpr size_t kMaxPiece = size_t(1) << 30;

class MpiLink final : public Link {
 public:
  explicit MpiLink(bool owns_mpi) : owns_mpi_(owns_mpi) {}

  void send(int peer, const void* data, size_t bytes) override {
    const char* p = static_cast<const char*>(data);
    do {
      const size_t piece = std::min(bytes, kMaxPiece);
      MPI_CHECK(MPI_Send(p, int(piece), MPI_BYTE, peer, kTag, MPI_COMM_WORLD));
      p += piece;
      bytes -= piece;
    } while (bytes > 0);
  }

  void recv(int peer, void* data, size_t bytes) override {
    char* p = static_cast<char*>(data);
    do {
      const size_t piece = std::min(bytes, kMaxPiece);
      MPI_CHECK(MPI_Recv(p, int(piece), MPI_BYTE, peer, kTag, MPI_COMM_WORLD, MPI_STATUS_IGNORE));
      p += piece;
      bytes -= piece;
    } while (bytes > 0);
  }

  void abort(int code) override {
    MPI_Abort(MPI_COMM_WORLD, code);
    std::_Exit(code);
  }

  void close() override {
    if (owns_mpi_) MPI_CHECK(MPI_Finalize());
  }

 private:
  bool owns_mpi_;  // we called MPI_Init, so we call MPI_Finalize
};

// This rank's index among the ranks of its node, and their number.
void place_on_node(DistContext& ctx) {
  MPI_Comm node;
  MPI_CHECK(MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, ctx.rank, MPI_INFO_NULL, &node));
  MPI_CHECK(MPI_Comm_rank(node, &ctx.local_rank));
  MPI_CHECK(MPI_Comm_size(node, &ctx.local_world));
  MPI_CHECK(MPI_Comm_free(&node));
}

}  // namespace

std::unique_ptr<Link> make_mpi_link(int* argc, char*** argv, DistContext& ctx) {
  int already = 0;
  MPI_CHECK(MPI_Initialized(&already));
  if (!already) {
    // THREAD_MULTIPLE: the NCCL watchdog thread may call MPI_Abort while the main thread is in MPI.
    int provided = 0;
    MPI_CHECK(MPI_Init_thread(argc, argv, MPI_THREAD_MULTIPLE, &provided));
  }
  // Errors come back as codes, so MPI_CHECK can say which call failed before ending every rank.
  MPI_CHECK(MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN));
  MPI_CHECK(MPI_Comm_rank(MPI_COMM_WORLD, &ctx.rank));
  MPI_CHECK(MPI_Comm_size(MPI_COMM_WORLD, &ctx.world));
  place_on_node(ctx);
  ctx.mpi = true;
  return std::make_unique<MpiLink>(!already);
}

}  // namespace loom
