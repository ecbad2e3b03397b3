// build/dist_check MODE [R]: the multi-process program behind tests/dist_test.cpp. Start it with
// mpirun, or as plain processes with RANK/WORLD_SIZE plus MASTER_ADDR/MASTER_PORT or
// LOOM_RENDEZVOUS_FILE (dist/launch.h). Each rank checks its own results and prints one line per
// check passed, "rank R of W: ...".
//   info         rank, world, local rank and bootstrap
//   collectives  allreduce_sum (float vector, double), broadcast from every root, barrier; results
//                must equal, bit for bit, the rank-order sum each rank computes by itself
//   fail-on R    rank R throws a loom::Error; the others wait in a barrier that only an abort ends
//   die-on R     rank R fails inside (loom::die); the others wait in a barrier
//   stuck-cleanup-on R  as die-on, with an abort cleanup that never returns (a hung ncclCommAbort)
//   crash-on R   rank R exits at once without a word; the others compute (sleep) outside any
//                collective, so only the connection watcher can end them
//   nccl         (one GPU per rank) GradAllReducer over uneven buckets, marked in a different order
//                on each rank and not at all by rank 1 in the second step; loss-sum all-reduce
//   nccl-hang R  (one GPU per rank) rank R skips an all-reduce; the NCCL watchdog must end every rank
#include <cuda_runtime.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "dist/buckets.h"
#include "dist/dist.h"
#include "dist/nccl_comm.h"
#include "ops/error.h"

namespace {

using loom::DistContext;

const char* kUsage =
    "usage: dist_check info | collectives | fail-on R | die-on R | stuck-cleanup-on R | crash-on R | nccl | nccl-hang R";

// Longer than any test waits: a rank still sleeping when the test gives up has not been ended.
constexpr auto kLongSleep = std::chrono::seconds(120);

void say(const DistContext& ctx, const std::string& text) {
  std::printf("rank %d of %d: %s\n", ctx.rank, ctx.world, text.c_str());
  std::fflush(stdout);
}

// Rank r's contribution: values of mixed sign and magnitude, so sums round.
std::vector<float> contribution(int rank, size_t n, int step) {
  std::mt19937 rng(uint32_t(1000 * rank + step + 1));
  std::uniform_real_distribution<float> u(-1.f, 1.f);
  std::vector<float> v(n);
  for (size_t i = 0; i < n; ++i) v[i] = u(rng) * float(1 + i % 7) * 1e3f;
  return v;
}

std::vector<float> rank_order_sum(int world, size_t n, int step) {
  std::vector<float> sum = contribution(0, n, step);
  for (int r = 1; r < world; ++r) {
    const std::vector<float> part = contribution(r, n, step);
    for (size_t i = 0; i < n; ++i) sum[i] += part[i];
  }
  return sum;
}

void check_equal_bits(const std::vector<float>& got, const std::vector<float>& want, const char* what) {
  for (size_t i = 0; i < got.size(); ++i)
    LOOM_CHECK(std::memcmp(&got[i], &want[i], sizeof(float)) == 0, what, ": value ", i, " is ", got[i], ", expected ",
               want[i], " (the rank-order sum)");
}

void check_collectives(const DistContext& ctx) {
  const size_t n = 1027;
  std::vector<float> v = contribution(ctx.rank, n, 0);
  loom::allreduce_sum(v.data(), n);
  check_equal_bits(v, rank_order_sum(ctx.world, n, 0), "allreduce_sum(float*)");
  say(ctx, "allreduce_sum(float*) ok");

  double want = 0;
  for (int r = 0; r < ctx.world; ++r) want += 0.1 * (r + 1);
  const double got = loom::allreduce_sum(0.1 * (ctx.rank + 1));
  LOOM_CHECK(got == want, "allreduce_sum(double): ", got, ", expected ", want);
  std::vector<double> several(5);
  for (size_t i = 0; i < several.size(); ++i) several[i] = ctx.rank == int(i) % ctx.world ? 0.25 * double(i) : 0.0;
  loom::allreduce_sum(several.data(), several.size());  // one rank holds each entry, as a reference table
  for (size_t i = 0; i < several.size(); ++i)
    LOOM_CHECK(several[i] == 0.25 * double(i), "allreduce_sum(double*): entry ", i, " is ", several[i]);
  say(ctx, "allreduce_sum(double) ok");

  for (int root = 0; root < ctx.world; ++root) {
    std::vector<int> data(33, ctx.rank == root ? 1000 + root : -1);
    loom::broadcast(data.data(), data.size() * sizeof(int), root);
    for (int x : data) LOOM_CHECK(x == 1000 + root, "broadcast from root ", root, ": got ", x);
  }
  say(ctx, "broadcast ok");
  loom::barrier();
  say(ctx, "barrier ok");
}

int rank_arg(int argc, char** argv) {
  LOOM_CHECK(argc >= 3, argv[1], " needs the rank that fails; ", kUsage);
  return std::atoi(argv[2]);
}

void fail_on(const DistContext& ctx, int victim, const std::string& how) {
  loom::barrier();  // everyone is up before the failure
  if (ctx.rank == victim && how == "fail-on") loom::fail("deliberate failure on rank ", victim);
  if (ctx.rank == victim && how == "stuck-cleanup-on")
    loom::add_abort_cleanup([] { std::this_thread::sleep_for(kLongSleep); });
  if (ctx.rank == victim && how != "crash-on") loom::die(loom::cat("deliberate internal failure on rank ", victim));
  if (ctx.rank == victim) std::_Exit(3);
  if (how == "crash-on") std::this_thread::sleep_for(kLongSleep);
  loom::barrier();
  say(ctx, "passed the barrier");
}

// ---------------------------------------------------------------------------------------------
// GPU modes

std::vector<float> to_host(const float* d, size_t n, cudaStream_t stream) {
  std::vector<float> h(n);
  CUDA_CHECK(cudaMemcpyAsync(h.data(), d, n * sizeof(float), cudaMemcpyDeviceToHost, stream));
  CUDA_CHECK(cudaStreamSynchronize(stream));
  return h;
}

// Rank 0 marks layers in backward order, rank 1 in forward order (the worst case) and nothing in
// step 1 (a rank without micro-batches), other ranks in backward order.
void mark_layers(loom::GradAllReducer& reducer, const std::vector<size_t>& layers, int rank, int step) {
  const size_t L = layers.size() - 1;
  if (rank == 1 && step == 1) return;
  for (size_t k = 0; k < L; ++k) {
    const size_t j = rank == 1 ? k : L - 1 - k;
    reducer.mark_ready(layers[j], layers[j + 1]);
  }
}

// With two ranks NCCL's a0 + a1 is the CPU's sum exactly; more ranks may add in another order.
// Bound: world-1 roundings of partial sums of magnitude <= 7e3·world, half an ulp (2^-24) each, in
// each of the two orders.
void check_close(const std::vector<float>& got, const std::vector<float>& want, int world, const char* what) {
  if (world == 2) return check_equal_bits(got, want, what);
  const float tol = 2.f * float(world) * float(world) * 7e3f * 6e-8f;
  for (size_t i = 0; i < got.size(); ++i)
    LOOM_CHECK(std::abs(got[i] - want[i]) <= tol, what, ": value ", i, " is ", got[i], ", expected ", want[i],
               " (tolerance ", tol, ")");
}

void check_nccl(const DistContext& ctx) {
  loom::NcclComm comm(ctx);
  cudaStream_t stream;
  CUDA_CHECK(cudaStreamCreate(&stream));
  // Uneven layers, one of a single value; merged into buckets of at least 4096 values.
  const std::vector<size_t> layers = {0, 1000, 5000, 5001, 40000, 40100, 100003};
  const std::vector<size_t> bounds = loom::merge_layer_buckets(layers, 4096);
  const size_t n = layers.back();
  float* grad = nullptr;  // (n) fp32
  CUDA_CHECK(cudaMalloc(&grad, n * sizeof(float)));
  {
    loom::GradAllReducer reducer(comm, grad, bounds, stream);
    for (int step = 0; step < 2; ++step) {
      const std::vector<float> mine = contribution(ctx.rank, n, step);
      CUDA_CHECK(cudaMemcpyAsync(grad, mine.data(), n * sizeof(float), cudaMemcpyHostToDevice, stream));
      mark_layers(reducer, layers, ctx.rank, step);
      reducer.finish(stream);
      check_close(to_host(grad, n, stream), rank_order_sum(ctx.world, n, step), ctx.world, "GradAllReducer");
    }
  }
  say(ctx, loom::cat("GradAllReducer ok (", bounds.size() - 1, " buckets, ", n, " values, 2 steps)"));

  const float mine = 0.25f + float(ctx.rank);
  float want = 0;
  for (int r = 0; r < ctx.world; ++r) want += 0.25f + float(r);
  CUDA_CHECK(cudaMemcpyAsync(grad, &mine, sizeof mine, cudaMemcpyHostToDevice, stream));
  comm.allreduce_sum(grad, 1, stream, "loss sum");
  const std::vector<float> got = to_host(grad, 1, stream);
  LOOM_CHECK(got[0] == want, "loss sum: ", got[0], ", expected ", want);
  say(ctx, "device scalar allreduce ok");
  CUDA_CHECK(cudaFree(grad));
  CUDA_CHECK(cudaStreamDestroy(stream));
}

void nccl_hang(const DistContext& ctx, int skipper) {
  loom::NcclComm comm(ctx);
  cudaStream_t stream;
  CUDA_CHECK(cudaStreamCreate(&stream));
  float* value = nullptr;
  CUDA_CHECK(cudaMalloc(&value, sizeof(float)));
  loom::barrier();
  if (ctx.rank == skipper) std::this_thread::sleep_for(kLongSleep);
  comm.allreduce_sum(value, 1, stream, "loss sum");
  CUDA_CHECK(cudaStreamSynchronize(stream));
  say(ctx, "finished an all-reduce that a rank skipped");
}

void run(const DistContext& ctx, int argc, char** argv) {
  LOOM_CHECK(argc >= 2, kUsage);
  const std::string mode = argv[1];
  if (mode == "info")
    say(ctx, loom::cat("local ", ctx.local_rank, ", bootstrap ", loom::bootstrap_name(ctx.bootstrap), ", mpi ",
                       ctx.mpi ? "yes" : "no"));
  else if (mode == "collectives")
    check_collectives(ctx);
  else if (mode == "fail-on" || mode == "die-on" || mode == "stuck-cleanup-on" || mode == "crash-on")
    fail_on(ctx, rank_arg(argc, argv), mode);
  else if (mode == "nccl")
    check_nccl(ctx);
  else if (mode == "nccl-hang")
    nccl_hang(ctx, rank_arg(argc, argv));
  else
    loom::fail("unknown mode '", mode, "'; ", kUsage);
}

}  // namespace

int main(int argc, char** argv) {
  try {
    const DistContext& ctx = loom::dist_init(&argc, &argv);
    run(ctx, argc, argv);
    loom::dist_finalize();
    return 0;
  } catch (...) {
    loom::dist_abort_with(loom::describe_current_exception());
  }
}
