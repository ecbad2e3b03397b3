// NCCL for the GPU path: one communicator per run (one rank per GPU), the all-reduce of device
// buffers, and GradAllReducer, the bucketed all-reduce of the LoRA gradient that overlaps backward.
//
// Setup. Each rank binds GPU local_rank (bind_gpu, before it allocates anything), rank 0 makes the
// ncclUniqueId and broadcasts it over the bootstrap (MPI or TCP, dist/dist.h), and every rank calls
// ncclCommInitRankConfig. NCCL_NVLS_ENABLE=0 is set unless the user set it: NVLink SHARP needs
// multicast objects, which the machines we run on do not allow, and NCCL would fail at init.
//
// Failure. The communicator is non-blocking (ncclConfig_t.blocking = 0), so no NCCL call blocks
// forever: init must settle within LOOM_NCCL_INIT_TIMEOUT_S (default 120 s), a call that answers
// ncclInProgress (NCCL connects peers lazily, at their first collective) within LOOM_NCCL_TIMEOUT_S
// (default 300 s). A watchdog thread polls ncclCommGetAsyncError and the completion of every
// collective; an asynchronous error, or a collective unfinished LOOM_NCCL_TIMEOUT_S after it could
// start, prints what hung and ends every rank: ncclCommAbort (an abort cleanup, dist/dist.h), then
// the bootstrap's abort (MPI_Abort, or closed sockets).
//
// Sums are fp32 (or fp64) ncclSum. For a fixed world size and topology NCCL reduces in a fixed
// order, so runs repeat bit for bit and every rank receives the same bits; with 2 ranks the result
// is a0 + a1 exactly as the CPU computes it, since float addition commutes.
//
// World = 1: no communicator exists and every call returns at once. Lifetime: a GradAllReducer
// goes before its NcclComm; every rank destroys its NcclComm at the same point, before
// dist_finalize (ncclCommFinalize waits for all ranks).
#pragma once
#include <cuda_runtime.h>
#include <nccl.h>

#include <chrono>
#include <condition_variable>
#include <deque>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "dist/buckets.h"
#include "dist/dist.h"
#include "ops/cuda_common.h"

#define NCCL_CHECK(stmt) CHECK_GEN(stmt, ncclSuccess, ncclGetErrorString)

namespace loom {

// cudaSetDevice(local_rank), or GPU 0 when the launcher gave each rank one GPU through
// CUDA_VISIBLE_DEVICES; returns the device. Too few GPUs is a loom::Error.
int bind_gpu(const DistContext& ctx);

class NcclComm {
 public:
  explicit NcclComm(const DistContext& ctx);  // collective: every rank constructs it together
  ~NcclComm();
  NcclComm(const NcclComm&) = delete;
  NcclComm& operator=(const NcclComm&) = delete;

  int world() const { return world_; }
  int device() const { return device_; }
  // buf (n) on this rank's GPU, replaced by its sum over ranks; enqueued on `stream`. `what` names
  // the collective in error messages ("loss sum", "gradient bucket 3 of 28").
  void allreduce_sum(float* buf, size_t n, cudaStream_t stream, const std::string& what);
  void allreduce_sum(double* buf, size_t n, cudaStream_t stream, const std::string& what);

 private:
  using Clock = std::chrono::steady_clock;
  struct Pending {
    cudaEvent_t done;          // recorded after the collective on its stream
    Clock::time_point since;   // when it could start: enqueued, and the one before it finished
    std::string what;
  };

  void allreduce(void* buf, size_t n, ncclDataType_t type, cudaStream_t stream, const std::string& what);
  void settle(ncclResult_t r, double timeout_s, const char* timeout_var, const std::string& what);
  void watch(cudaStream_t stream, const std::string& what);
  void watchdog();
  void retire_finished(Clock::time_point now);
  [[noreturn]] void fail_comm(const std::string& msg);

  int world_ = 1, rank_ = 0, device_ = 0;
  double timeout_s_ = 300, init_timeout_s_ = 120;
  ncclComm_t comm_ = nullptr;
  int abort_cleanup_ = -1;

  std::mutex mu_;  // guards everything below; the watchdog and the enqueuing thread share it
  std::condition_variable wake_;
  bool stop_ = false;
  std::deque<Pending> pending_;      // oldest first
  std::vector<cudaEvent_t> spare_;   // finished events, reused
  std::thread watchdog_;
};

// The LoRA gradient's all-reduce in buckets (dist/buckets.h says which start when), each on a
// high-priority comm stream as soon as backward has finished it. Per step:
//   during the last backward:  mark_ready(layer range) as each layer's gradient is final
//   after it, on every rank:   finish(compute) (also on a rank that had no micro-batch)
class GradAllReducer {
 public:
  // grad: (n) fp32 on the device, n = bucket_bounds.back(); compute: the stream backward runs on.
  GradAllReducer(NcclComm& comm, float* grad, std::vector<size_t> bucket_bounds, cudaStream_t compute);
  ~GradAllReducer();
  GradAllReducer(const GradAllReducer&) = delete;
  GradAllReducer& operator=(const GradAllReducer&) = delete;

  // grad[begin, end) is final once the work enqueued so far on the compute stream has run.
  void mark_ready(size_t begin, size_t end);
  // Starts the buckets not started yet; `compute` then waits until every bucket is summed.
  void finish(cudaStream_t compute);

 private:
  void start(const std::vector<size_t>& buckets, cudaStream_t after);

  NcclComm& comm_;
  float* grad_;  // (n) fp32, device
  BucketTracker tracker_;
  cudaStream_t compute_;
  cudaStream_t comm_stream_ = nullptr;
  cudaEvent_t ready_ = nullptr;    // compute reached the marked range
  cudaEvent_t reduced_ = nullptr;  // every started bucket is summed
};

}  // namespace loom
