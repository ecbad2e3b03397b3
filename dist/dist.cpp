#include "dist/dist.h"

#include <omp.h>
#include <sched.h>
#include <sys/sysinfo.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <future>
#include <memory>
#include <mutex>
#include <thread>
#include <utility>
#include <vector>

#include "dist/link.h"
#include "ops/error.h"

namespace loom {
namespace {

struct Runtime {
  DistContext ctx;
  std::unique_ptr<Link> link;  // null when world = 1
  bool finalized = false;
  std::mutex cleanup_mu;
  std::vector<std::pair<int, std::function<void()>>> cleanups;
  int next_cleanup_id = 0;
  std::atomic<bool> reporting{false};  // a fatal message is being printed
  std::atomic<bool> ending{false};     // the abort path has started
};

// Never destroyed: the abort path may run on any thread while the process exits.
Runtime& runtime() {
  static Runtime* r = new Runtime;
  return *r;
}

[[noreturn]] void park() {
  for (;;) std::this_thread::sleep_for(std::chrono::hours(1));
}

// A cleanup stuck on a dead peer (ncclCommAbort can wait on NCCL's own threads) must not keep
// the other ranks waiting: cleanups get this long, then the run ends regardless.
constexpr auto kCleanupGrace = std::chrono::seconds(5);

void run_cleanups(Runtime& r) {
  std::vector<std::function<void()>> fns;
  {
    std::lock_guard<std::mutex> lock(r.cleanup_mu);
    for (auto& c : r.cleanups) fns.push_back(c.second);
  }
  if (fns.empty()) return;
  auto finished = std::make_shared<std::promise<void>>();
  std::future<void> done = finished->get_future();
  std::thread([fns = std::move(fns), finished] {
    for (auto& fn : fns) fn();
    finished->set_value();
  }).detach();
  done.wait_for(kCleanupGrace);
}

// The abort hook of loom::die once world > 1.
[[noreturn]] void end_all_ranks(int code) {
  Runtime& r = runtime();
  r.reporting = true;  // a peer's hangup, seen while we end, is our own doing: not worth a message
  if (r.ending.exchange(true)) park();
  run_cleanups(r);
  if (r.link && !r.finalized) r.link->abort(code);
  std::_Exit(code);
}

// ---------------------------------------------------------------------------------------------
// Star collectives. Each message is a Header then the payload; the header lets the receiver check
// that both sides are in the same collective with the same size.

constexpr uint32_t kFrameMagic = 0x4c4f4f4d;  // "LOOM"

enum class Op : uint32_t { barrier = 1, broadcast = 2, allreduce_f32 = 3, allreduce_f64 = 4 };

struct Header {
  uint32_t magic;
  uint32_t op;
  uint64_t bytes;
};

const char* op_name(uint32_t op) {
  switch (Op(op)) {
    case Op::barrier: return "barrier";
    case Op::broadcast: return "broadcast";
    case Op::allreduce_f32: return "allreduce_sum(float*)";
    case Op::allreduce_f64: return "allreduce_sum(double*)";
  }
  return "an unknown message";
}

void send_frame(Link& link, int peer, Op op, const void* data, size_t bytes) {
  const Header h{kFrameMagic, uint32_t(op), bytes};
  link.send(peer, &h, sizeof h);
  if (bytes) link.send(peer, data, bytes);
}

void recv_frame(Link& link, int peer, Op op, void* data, size_t bytes) {
  Header h{};
  link.recv(peer, &h, sizeof h);
  if (h.magic != kFrameMagic || h.op != uint32_t(op) || h.bytes != bytes)
    fatal_once(cat("collective mismatch: rank ", peer, " sent ", h.magic == kFrameMagic ? op_name(h.op) : "garbage",
                   " (", h.bytes, " bytes) while rank ", runtime().ctx.rank, " is in ", op_name(uint32_t(op)), " (",
                   bytes, " bytes); every rank must call the same collectives with the same sizes in the same order"));
  if (bytes) link.recv(peer, data, bytes);
}

// The link collectives run on, or null when there is nobody to talk to.
Link* link_for(const char* collective) {
  Runtime& r = runtime();
  if (r.ctx.world == 1) return nullptr;
  if (r.finalized) fatal_once(cat(collective, " called after dist_finalize"));
  return r.link.get();
}

template <class T>
void star_sum(Link& link, Op op, T* buf, size_t n) {
  const DistContext& c = runtime().ctx;
  const size_t bytes = n * sizeof(T);
  if (c.rank != 0) {
    send_frame(link, 0, op, buf, bytes);
    recv_frame(link, 0, op, buf, bytes);
    return;
  }
  std::vector<T> part(n);
  for (int r = 1; r < c.world; ++r) {
    recv_frame(link, r, op, part.data(), bytes);
    for (size_t i = 0; i < n; ++i) buf[i] += part[i];
  }
  for (int r = 1; r < c.world; ++r) send_frame(link, r, op, buf, bytes);
}

thread_local bool t_reporting = false;  // this thread is inside fatal_once

// The hook die() calls before printing. Over tcp/file, a rank killed mid-step frees GPU memory that
// this rank's NCCL kernels still read, so the first error here can be a CUDA error ("illegal memory
// access") a moment before the watcher thread sees the dead rank's sockets close (they close late
// in its teardown). Wait up to kPeerLossLag for the watcher to report the cause; if it does, this
// thread stays quiet while the watcher ends the run. Under mpirun, mpirun names the dead rank.
constexpr auto kPeerLossLag = std::chrono::seconds(2);

void defer_to_peer_loss() {
  Runtime& r = runtime();
  if (t_reporting || r.ctx.mpi || r.ctx.world <= 1 || !r.link || r.finalized) return;
  const auto deadline = std::chrono::steady_clock::now() + kPeerLossLag;
  while (std::chrono::steady_clock::now() < deadline) {
    if (r.reporting) park();
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
}

// CPUs this process may run on (its affinity mask), or 0 when the mask cannot be read.
int usable_cpus() {
  cpu_set_t allowed;
  return sched_getaffinity(0, sizeof(allowed), &allowed) == 0 ? CPU_COUNT(&allowed) : 0;
}

void share_host_cpus(int local_world) {
  const int usable = usable_cpus();
  if (local_world <= 1 || std::getenv("OMP_NUM_THREADS") || usable == 0) return;
  omp_set_num_threads(host_threads_per_rank(usable, get_nprocs(), local_world));
}

}  // namespace

void fatal_once(const std::string& msg) {
  if (runtime().reporting.exchange(true)) park();
  t_reporting = true;
  die(msg);
}

int host_threads_per_rank(int usable, int online, int local_world) {
  return std::max(1, std::min(usable, online / std::max(local_world, 1)));
}

DistContext& dist_init(int* argc, char*** argv) {
  Runtime& r = runtime();
  if (r.ctx.initialized) return r.ctx;
  const LaunchPlan plan = plan_launch([](const char* name) -> const char* { return std::getenv(name); });
  DistContext ctx;
  ctx.bootstrap = plan.bootstrap;
  if (plan.bootstrap == Bootstrap::mpi) {
    r.link = make_mpi_link(argc, argv, ctx);
  } else {
    ctx.rank = plan.rank;
    ctx.world = plan.world;
    ctx.local_rank = plan.local_rank;
    ctx.local_world = plan.local_world;
    if (plan.world > 1) r.link = make_socket_link(plan);
  }
  ctx.initialized = true;
  r.ctx = ctx;
  share_host_cpus(ctx.local_world);
  if (ctx.world > 1) {
    set_log_rank(ctx.rank);
    set_abort_hook(end_all_ranks);
    set_before_die_hook(defer_to_peer_loss);
  }
  return r.ctx;
}

const DistContext& dist_context() { return runtime().ctx; }

void dist_finalize() {
  Runtime& r = runtime();
  if (!r.ctx.initialized || r.finalized) return;
  if (r.link) r.link->close();
  r.finalized = true;
  set_abort_hook(nullptr);
}

bool is_main() { return runtime().ctx.rank == 0; }

std::string cpu_binding_warning() {
  const int usable = usable_cpus(), online = get_nprocs();
  if (usable != 1 || online <= 1) return "";
  return cat("warning: this rank may use 1 of the ", online, " CPUs (mpirun binds each rank to a core when np <= 2), ",
             "so loading runs on one thread; launch with `mpirun --bind-to none ...`");
}

void dist_abort_with(const std::string& msg) {
  Runtime& r = runtime();
  if (r.reporting.exchange(true)) park();
  if (r.ctx.world > 1)
    std::fprintf(stderr, "[rank %d] error: %s\n", r.ctx.rank, msg.c_str());
  else
    std::fprintf(stderr, "error: %s\n", msg.c_str());
  std::fflush(stderr);
  if (r.ctx.world > 1) end_all_ranks(1);
  std::exit(1);
}

void allreduce_sum(float* buf, size_t n) {
  if (Link* link = link_for("allreduce_sum")) star_sum(*link, Op::allreduce_f32, buf, n);
}

void allreduce_sum(double* buf, size_t n) {
  if (Link* link = link_for("allreduce_sum")) star_sum(*link, Op::allreduce_f64, buf, n);
}

double allreduce_sum(double x) {
  allreduce_sum(&x, 1);
  return x;
}

void barrier() {
  Link* link = link_for("barrier");
  if (!link) return;
  const DistContext& c = runtime().ctx;
  if (c.rank != 0) {
    send_frame(*link, 0, Op::barrier, nullptr, 0);
    recv_frame(*link, 0, Op::barrier, nullptr, 0);
    return;
  }
  for (int r = 1; r < c.world; ++r) recv_frame(*link, r, Op::barrier, nullptr, 0);
  for (int r = 1; r < c.world; ++r) send_frame(*link, r, Op::barrier, nullptr, 0);
}

void broadcast(void* data, size_t bytes, int root) {
  const DistContext& c = runtime().ctx;
  if (root < 0 || root >= c.world) fatal_once(cat("broadcast from root ", root, " in a world of ", c.world));
  Link* link = link_for("broadcast");
  if (!link) return;
  // A root other than 0 hands its bytes to rank 0, the hub of the star, which sends them on.
  if (root != 0 && c.rank == root) send_frame(*link, 0, Op::broadcast, data, bytes);
  if (root != 0 && c.rank == 0) recv_frame(*link, root, Op::broadcast, data, bytes);
  if (c.rank == 0) {
    for (int r = 1; r < c.world; ++r)
      if (r != root) send_frame(*link, r, Op::broadcast, data, bytes);
  } else if (c.rank != root) {
    recv_frame(*link, 0, Op::broadcast, data, bytes);
  }
}

int add_abort_cleanup(std::function<void()> fn) {
  Runtime& r = runtime();
  std::lock_guard<std::mutex> lock(r.cleanup_mu);
  r.cleanups.emplace_back(r.next_cleanup_id, std::move(fn));
  return r.next_cleanup_id++;
}

void remove_abort_cleanup(int id) {
  Runtime& r = runtime();
  std::lock_guard<std::mutex> lock(r.cleanup_mu);
  for (auto it = r.cleanups.begin(); it != r.cleanups.end(); ++it)
    if (it->first == id) {
      r.cleanups.erase(it);
      return;
    }
}

}  // namespace loom
