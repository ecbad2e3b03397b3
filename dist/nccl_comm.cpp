#include "dist/nccl_comm.h"

#include <algorithm>
#include <cstdlib>
#include <utility>

#include "dist/link.h"
#include "ops/device.h"

namespace loom {
namespace {

// How often the watchdog looks: an error or a timeout ends the run within this much of happening.
constexpr auto kWatchdogPoll = std::chrono::milliseconds(200);
constexpr auto kSettlePoll = std::chrono::microseconds(100);

const char* getenv_or_null(const char* name) { return std::getenv(name); }

}  // namespace

int bind_gpu(const DistContext& ctx) {
  const int n = cuda_device_count();
  LOOM_CHECK(n > 0, "rank ", ctx.rank, " needs a GPU but finds none (", cuda_device_summary(), ")");
  const int device = n == 1 ? 0 : ctx.local_rank;
  LOOM_CHECK(device < n, "rank ", ctx.rank, " has local rank ", ctx.local_rank, " but its node shows ", n,
             " GPUs; start at most ", n, " ranks per node, or give each rank its own CUDA_VISIBLE_DEVICES");
  CUDA_CHECK(cudaSetDevice(device));
  return device;
}

// ---------------------------------------------------------------------------------------------
// NcclComm

NcclComm::NcclComm(const DistContext& ctx) : world_(ctx.world), rank_(ctx.rank) {
  timeout_s_ = env_seconds(getenv_or_null, "LOOM_NCCL_TIMEOUT_S", timeout_s_);
  init_timeout_s_ = env_seconds(getenv_or_null, "LOOM_NCCL_INIT_TIMEOUT_S", init_timeout_s_);
  device_ = bind_gpu(ctx);
  if (world_ == 1) return;
  setenv("NCCL_NVLS_ENABLE", "0", 0);
  ncclUniqueId id{};
  if (rank_ == 0) NCCL_CHECK(ncclGetUniqueId(&id));
  broadcast(&id, sizeof id, 0);
  ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
  config.blocking = 0;
  const ncclResult_t r = ncclCommInitRankConfig(&comm_, world_, id, rank_, &config);
  if (comm_) abort_cleanup_ = add_abort_cleanup([comm = comm_] { ncclCommAbort(comm); });
  settle(r, init_timeout_s_, "LOOM_NCCL_INIT_TIMEOUT_S",
         cat("NCCL communicator setup (ncclCommInitRankConfig, rank ", rank_, " of ", world_, ", GPU ", device_, ")"));
  watchdog_ = std::thread([this] { watchdog(); });
}

NcclComm::~NcclComm() {
  if (!comm_) return;
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
  }
  wake_.notify_all();
  watchdog_.join();
  settle(ncclCommFinalize(comm_), timeout_s_, "LOOM_NCCL_TIMEOUT_S", "ncclCommFinalize (every rank ends NCCL)");
  remove_abort_cleanup(abort_cleanup_);
  NCCL_CHECK(ncclCommDestroy(comm_));
  for (Pending& p : pending_) spare_.push_back(p.done);
  for (cudaEvent_t e : spare_) CUDA_CHECK(cudaEventDestroy(e));
}

void NcclComm::allreduce_sum(float* buf, size_t n, cudaStream_t stream, const std::string& what) {
  allreduce(buf, n, ncclFloat32, stream, what);
}

void NcclComm::allreduce_sum(double* buf, size_t n, cudaStream_t stream, const std::string& what) {
  allreduce(buf, n, ncclFloat64, stream, what);
}

void NcclComm::allreduce(void* buf, size_t n, ncclDataType_t type, cudaStream_t stream, const std::string& what) {
  if (!comm_) return;
  settle(ncclAllReduce(buf, buf, n, type, ncclSum, comm_, stream), timeout_s_, "LOOM_NCCL_TIMEOUT_S", what);
  watch(stream, what);
}

// A non-blocking communicator answers ncclInProgress while it still sets up or connects; NCCL
// takes no other call on it until its state settles, so wait for that, within the timeout.
void NcclComm::settle(ncclResult_t r, double timeout_s, const char* timeout_var, const std::string& what) {
  const auto deadline =
      Clock::now() + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(timeout_s));
  while (r == ncclInProgress) {
    if (Clock::now() > deadline)
      fail_comm(cat(what, " did not finish within ", timeout_s, " s (", timeout_var,
                    "): a rank may have failed, hung, or not reached this call"));
    std::this_thread::sleep_for(kSettlePoll);
    NCCL_CHECK(ncclCommGetAsyncError(comm_, &r));
  }
  if (r != ncclSuccess) fail_comm(cat(what, " failed: ", ncclGetErrorString(r), " (", ncclGetLastError(comm_), ")"));
}

void NcclComm::watch(cudaStream_t stream, const std::string& what) {
  std::lock_guard<std::mutex> lock(mu_);
  cudaEvent_t done;
  if (spare_.empty()) {
    CUDA_CHECK(cudaEventCreateWithFlags(&done, cudaEventDisableTiming));
  } else {
    done = spare_.back();
    spare_.pop_back();
  }
  CUDA_CHECK(cudaEventRecord(done, stream));
  pending_.push_back({done, Clock::now(), what});
}

void NcclComm::watchdog() {
  cudaSetDevice(device_);  // the events live on this rank's GPU
  std::unique_lock<std::mutex> lock(mu_);
  while (!wake_.wait_for(lock, kWatchdogPoll, [this] { return stop_; })) {
    ncclResult_t async = ncclSuccess;
    if (ncclCommGetAsyncError(comm_, &async) == ncclSuccess && async != ncclSuccess && async != ncclInProgress)
      fail_comm(cat("asynchronous error: ", ncclGetErrorString(async), " (", ncclGetLastError(comm_), ")"));
    retire_finished(Clock::now());
  }
}

void NcclComm::retire_finished(Clock::time_point now) {
  while (!pending_.empty()) {
    Pending& p = pending_.front();
    const cudaError_t e = cudaEventQuery(p.done);
    if (e == cudaErrorNotReady) {
      if (now - p.since > std::chrono::duration<double>(timeout_s_))
        fail_comm(cat(p.what, " did not complete within ", timeout_s_, " s (LOOM_NCCL_TIMEOUT_S); ", pending_.size(),
                      " collective(s) pending. Another rank failed, hung, or skipped this collective"));
      return;
    }
    if (e != cudaSuccess) fail_comm(cat(p.what, ": the GPU reported ", cudaGetErrorString(e)));
    spare_.push_back(p.done);
    pending_.pop_front();
    // The next collective could not start before this one ended; its clock starts now.
    if (!pending_.empty()) pending_.front().since = std::max(pending_.front().since, now);
  }
}

void NcclComm::fail_comm(const std::string& msg) { fatal_once(cat("NCCL on GPU ", device_, ": ", msg)); }

// ---------------------------------------------------------------------------------------------
// GradAllReducer

GradAllReducer::GradAllReducer(NcclComm& comm, float* grad, std::vector<size_t> bucket_bounds, cudaStream_t compute)
    : comm_(comm), grad_(grad), tracker_(std::move(bucket_bounds)), compute_(compute) {
  if (comm_.world() == 1) return;
  // Highest priority: a finished bucket's reduction is scheduled ahead of the backward kernels
  // queued behind it, so it overlaps them instead of trailing them.
  int least = 0, greatest = 0;
  CUDA_CHECK(cudaDeviceGetStreamPriorityRange(&least, &greatest));
  CUDA_CHECK(cudaStreamCreateWithPriority(&comm_stream_, cudaStreamNonBlocking, greatest));
  CUDA_CHECK(cudaEventCreateWithFlags(&ready_, cudaEventDisableTiming));
  CUDA_CHECK(cudaEventCreateWithFlags(&reduced_, cudaEventDisableTiming));
}

GradAllReducer::~GradAllReducer() {
  if (!comm_stream_) return;
  CUDA_CHECK(cudaStreamSynchronize(comm_stream_));
  CUDA_CHECK(cudaEventDestroy(ready_));
  CUDA_CHECK(cudaEventDestroy(reduced_));
  CUDA_CHECK(cudaStreamDestroy(comm_stream_));
}

void GradAllReducer::mark_ready(size_t begin, size_t end) { start(tracker_.mark(begin, end), compute_); }

void GradAllReducer::finish(cudaStream_t compute) {
  start(tracker_.flush(), compute);
  if (!comm_stream_) return;
  CUDA_CHECK(cudaEventRecord(reduced_, comm_stream_));
  CUDA_CHECK(cudaStreamWaitEvent(compute, reduced_, 0));
}

void GradAllReducer::start(const std::vector<size_t>& buckets, cudaStream_t after) {
  if (buckets.empty() || !comm_stream_) return;
  // One event covers every bucket started here: the stream is ordered, so all were final by now.
  CUDA_CHECK(cudaEventRecord(ready_, after));
  CUDA_CHECK(cudaStreamWaitEvent(comm_stream_, ready_, 0));
  for (size_t b : buckets)
    comm_.allreduce_sum(grad_ + tracker_.begin(b), tracker_.size(b), comm_stream_,
                        cat("gradient bucket ", b, " of ", tracker_.buckets()));
}

}  // namespace loom
