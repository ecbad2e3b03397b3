// dist/: launch detection, bucket scheduling, the single-process runtime in this process, and
// multi-process runs of build/dist_check (tools/dist_check_main.cpp) under mpirun and under the
// tcp/file bootstrap. Multi-process tests skip when build/dist_check or mpirun is missing; each
// waits for its processes with a limit, so a hang fails the test instead of stalling the suite.
#include <fcntl.h>
#include <sched.h>
#include <netinet/in.h>
#include <signal.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>
#include <thread>

#include "dist/buckets.h"
#include "dist/dist.h"
#include "dist/launch.h"
#include "ops/error.h"
#include "tests/test_util.h"

extern char** environ;
namespace fs = std::filesystem;

namespace loom {
namespace {

// ---------------------------------------------------------------------------------------------
// Launch detection

LaunchPlan plan_of(const std::map<std::string, std::string>& vars) {
  return plan_launch([&](const char* name) -> const char* {
    auto it = vars.find(name);
    return it == vars.end() ? nullptr : it->second.c_str();
  });
}

std::string launch_error(const std::map<std::string, std::string>& vars) {
  try {
    plan_of(vars);
  } catch (const Error& e) {
    return e.what();
  }
  return "no error";
}

TEST(Launch, NoVariablesMeansOneProcess) {
  LaunchPlan p = plan_of({});
  EXPECT_EQ(p.bootstrap, Bootstrap::single);
  EXPECT_EQ(p.rank, 0);
  EXPECT_EQ(p.world, 1);
}

TEST(Launch, AnyMpiLauncherVariableMeansMpi) {
  for (const char* name : {"OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_LOCAL_RANK", "PMI_SIZE",
                           "PMI_RANK", "PMIX_RANK"})
    EXPECT_EQ(plan_of({{name, "0"}}).bootstrap, Bootstrap::mpi) << name;
}

TEST(Launch, MpiWinsOverTorchrunVariables) {
  EXPECT_EQ(plan_of({{"OMPI_COMM_WORLD_RANK", "1"}, {"RANK", "1"}, {"WORLD_SIZE", "2"}}).bootstrap, Bootstrap::mpi);
}

TEST(Launch, TorchrunVariablesGiveTcp) {
  LaunchPlan p = plan_of({{"RANK", "3"}, {"WORLD_SIZE", "4"}, {"LOCAL_RANK", "1"}, {"MASTER_ADDR", "node7"},
                          {"MASTER_PORT", "29500"}, {"LOOM_DIST_TIMEOUT_S", "12.5"}});
  EXPECT_EQ(p.bootstrap, Bootstrap::tcp);
  EXPECT_EQ(p.rank, 3);
  EXPECT_EQ(p.world, 4);
  EXPECT_EQ(p.local_rank, 1);
  EXPECT_EQ(p.master_addr, "node7");
  EXPECT_EQ(p.master_port, 29500);
  EXPECT_EQ(p.timeout_s, 12.5);
}

TEST(Launch, LocalRankDefaultsToRank) {
  LaunchPlan p = plan_of({{"RANK", "2"}, {"WORLD_SIZE", "3"}, {"MASTER_ADDR", "h"}, {"MASTER_PORT", "1"}});
  EXPECT_EQ(p.local_rank, 2);
}

TEST(Launch, LocalWorldSizeDefaultsToWorldAndBoundsLocalRank) {
  const std::map<std::string, std::string> two_nodes = {{"RANK", "5"},           {"WORLD_SIZE", "8"},
                                                        {"LOCAL_RANK", "1"},     {"LOCAL_WORLD_SIZE", "4"},
                                                        {"MASTER_ADDR", "h"},    {"MASTER_PORT", "1"}};
  EXPECT_EQ(plan_of(two_nodes).local_world, 4);
  EXPECT_EQ(plan_of({{"RANK", "2"}, {"WORLD_SIZE", "3"}, {"MASTER_ADDR", "h"}, {"MASTER_PORT", "1"}}).local_world, 3);
  auto bad = two_nodes;
  bad["LOCAL_WORLD_SIZE"] = "1";
  EXPECT_NE(launch_error(bad).find("LOCAL_RANK=1 is out of range for LOCAL_WORLD_SIZE=1"), std::string::npos);
}

TEST(Launch, RendezvousFileNeedsNoMasterAddress) {
  LaunchPlan p = plan_of({{"RANK", "0"}, {"WORLD_SIZE", "2"}, {"LOOM_RENDEZVOUS_FILE", "/shared/rdv"}});
  EXPECT_EQ(p.bootstrap, Bootstrap::file);
  EXPECT_EQ(p.rendezvous_file, "/shared/rdv");
  EXPECT_EQ(p.master_port, 0);
}

TEST(Launch, WorldSizeOneNeedsNoRendezvous) {
  LaunchPlan p = plan_of({{"RANK", "0"}, {"WORLD_SIZE", "1"}, {"LOCAL_RANK", "0"}});
  EXPECT_EQ(p.bootstrap, Bootstrap::single);
  EXPECT_EQ(p.world, 1);
}

TEST(Launch, InconsistentVariablesNameTheVariableAndTheFix) {
  EXPECT_NE(launch_error({{"RANK", "1"}}).find("WORLD_SIZE is not"), std::string::npos);
  EXPECT_NE(launch_error({{"WORLD_SIZE", "2"}}).find("RANK is not"), std::string::npos);
  EXPECT_NE(launch_error({{"RANK", "2"}, {"WORLD_SIZE", "2"}}).find("RANK=2 is out of range for WORLD_SIZE=2"),
            std::string::npos);
  EXPECT_NE(launch_error({{"RANK", "0"}, {"WORLD_SIZE", "two"}}).find("WORLD_SIZE='two' is not"), std::string::npos);
  EXPECT_NE(launch_error({{"RANK", "0"}, {"WORLD_SIZE", "2"}, {"MASTER_ADDR", "h"}}).find("MASTER_PORT is not set"),
            std::string::npos);
  EXPECT_NE(launch_error({{"RANK", "0"}, {"WORLD_SIZE", "2"}, {"MASTER_ADDR", "h"}, {"MASTER_PORT", "70000"}})
                .find("MASTER_PORT=70000 is not a TCP port"),
            std::string::npos);
  EXPECT_NE(launch_error({{"RANK", "0"}, {"WORLD_SIZE", "1"}, {"LOOM_DIST_TIMEOUT_S", "-3"}})
                .find("LOOM_DIST_TIMEOUT_S='-3' is not a number of seconds > 0"),
            std::string::npos);
}

// ---------------------------------------------------------------------------------------------
// Buckets

TEST(Buckets, MergeReachesTheMinimumFromTheLastLayerDown) {
  // Layers of 10, 10, 10, 50, 10, 10 values.
  const std::vector<size_t> layers = {0, 10, 20, 30, 80, 90, 100};
  EXPECT_EQ(merge_layer_buckets(layers, 20), (std::vector<size_t>{0, 10, 30, 80, 100}));
  EXPECT_EQ(merge_layer_buckets(layers, 0), layers);
  EXPECT_EQ(merge_layer_buckets(layers, 1000), (std::vector<size_t>{0, 100}));
}

TEST(Buckets, BackwardOrderStartsEachBucketAtOnce) {
  BucketTracker t({0, 4, 10, 12});
  EXPECT_EQ(t.mark(10, 12), (std::vector<size_t>{2}));
  EXPECT_EQ(t.mark(4, 10), (std::vector<size_t>{1}));
  EXPECT_EQ(t.mark(0, 4), (std::vector<size_t>{0}));
  EXPECT_TRUE(t.flush().empty());
}

TEST(Buckets, OtherOrdersDelayStartsButNeverReorderThem) {
  BucketTracker t({0, 4, 10, 12});
  EXPECT_TRUE(t.mark(0, 4).empty());
  EXPECT_TRUE(t.mark(4, 10).empty());
  EXPECT_EQ(t.mark(10, 12), (std::vector<size_t>{2, 1, 0}));
}

TEST(Buckets, PartialMarksAndMarksSpanningBuckets) {
  BucketTracker t({0, 4, 10, 12});
  EXPECT_TRUE(t.mark(11, 12).empty());
  EXPECT_EQ(t.mark(7, 11), (std::vector<size_t>{2}));  // finishes bucket 2, half of bucket 1
  EXPECT_EQ(t.mark(2, 7), (std::vector<size_t>{1}));
  EXPECT_EQ(t.mark(0, 2), (std::vector<size_t>{0}));
}

TEST(Buckets, FlushStartsTheRestInOrderAndStartsTheNextStepFresh) {
  BucketTracker t({0, 4, 10, 12});
  EXPECT_EQ(t.mark(10, 12), (std::vector<size_t>{2}));
  EXPECT_EQ(t.flush(), (std::vector<size_t>{1, 0}));
  EXPECT_EQ(t.flush(), (std::vector<size_t>{2, 1, 0}));  // a step without marks: everything at finish
  EXPECT_EQ(t.mark(10, 12), (std::vector<size_t>{2}));
}

TEST(Buckets, MisuseIsAnErrorThatSaysWhat) {
  BucketTracker t({0, 4, 10});
  t.mark(4, 8);
  try {
    t.mark(6, 10);
    FAIL() << "no error for a value marked twice";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("marked ready twice"), std::string::npos) << e.what();
  }
  EXPECT_THROW(t.mark(8, 11), Error);
  EXPECT_THROW(t.mark(3, 3), Error);
  EXPECT_THROW(BucketTracker({0, 5, 5}), Error);
  EXPECT_THROW(BucketTracker({1, 5}), Error);
}

// ---------------------------------------------------------------------------------------------
// This process: no launcher variables, so one process without MPI.

const char* const kLaunchVariables[] = {"RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT",
                                        "LOOM_RENDEZVOUS_FILE", "LOOM_DIST_TIMEOUT_S", "LOOM_NCCL_TIMEOUT_S"};

// OMPI_MCA_* is the user's Open MPI configuration (e.g. plm_rsh_agent on machines without ssh),
// not a sign of a launch: it stays, for this process and for the mpirun the tests start.
bool is_launch_variable(const std::string& entry) {
  if (entry.rfind("OMPI_MCA_", 0) == 0) return false;
  for (const char* prefix : {"OMPI_", "PMI_", "PMIX_"})
    if (entry.rfind(prefix, 0) == 0) return true;
  for (const char* name : kLaunchVariables)
    if (entry.rfind(std::string(name) + "=", 0) == 0) return true;
  return false;
}

DistContext& init_single_process() {
  for (char** e = environ; *e;)
    if (is_launch_variable(*e))
      unsetenv(std::string(*e, std::strchr(*e, '=')).c_str());  // environ shifts down: look at *e again
    else
      ++e;
  return dist_init(nullptr, nullptr);
}

TEST(Dist, SingleProcessIsRankZeroOfOneWithoutMpi) {
  const DistContext& ctx = init_single_process();
  EXPECT_TRUE(ctx.initialized);
  EXPECT_EQ(ctx.rank, 0);
  EXPECT_EQ(ctx.world, 1);
  EXPECT_EQ(ctx.local_rank, 0);
  EXPECT_FALSE(ctx.mpi);
  EXPECT_EQ(ctx.bootstrap, Bootstrap::single);
  EXPECT_TRUE(is_main());
  EXPECT_EQ(&dist_init(nullptr, nullptr), &ctx);  // idempotent
  EXPECT_EQ(&dist_context(), &ctx);
}

TEST(Dist, CollectivesAreIdentitiesAtWorldOne) {
  init_single_process();
  const std::vector<float> values = test::random_floats(257, 7);
  std::vector<float> v = values;
  allreduce_sum(v.data(), v.size());
  EXPECT_EQ(v, values);
  EXPECT_EQ(allreduce_sum(0.1), 0.1);
  broadcast(v.data(), v.size() * sizeof(float), 0);
  EXPECT_EQ(v, values);
  barrier();
}

TEST(Dist, AbortWithAtWorldOnePrintsTheErrorAndExitsWithOne) {
  init_single_process();
  // The full test binary has OpenMP threads by now; a fresh re-executed child avoids forking them.
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_EXIT(dist_abort_with("lora.r must be > 0"), testing::ExitedWithCode(1), "^error: lora.r must be > 0\n");
}

TEST(Dist, RanksOfANodeShareItsCpusWithinTheirBinding) {
  EXPECT_EQ(host_threads_per_rank(64, 64, 4), 16);  // --bind-to none: a quarter of the node each
  EXPECT_EQ(host_threads_per_rank(32, 64, 4), 16);  // bound to a socket shared by 2 ranks
  EXPECT_EQ(host_threads_per_rank(1, 64, 2), 1);    // bound to a core (mpirun's default for np <= 2)
  EXPECT_EQ(host_threads_per_rank(2, 2, 3), 1);     // more ranks than CPUs: one thread each
  EXPECT_EQ(host_threads_per_rank(16, 16, 1), 16);
}

// A thread pinned to one CPU sees what a rank that mpirun bound to a core sees.
TEST(Dist, OneUsableCpuOfSeveralWarnsWithTheFix) {
  cpu_set_t all;
  ASSERT_EQ(sched_getaffinity(0, sizeof(all), &all), 0);
  if (CPU_COUNT(&all) < 2) GTEST_SKIP() << "this process may use a single CPU";
  EXPECT_EQ(cpu_binding_warning(), "");
  std::string pinned;
  std::thread([&] {
    cpu_set_t one;
    CPU_ZERO(&one);
    for (int c = 0; c < CPU_SETSIZE; ++c)
      if (CPU_ISSET(c, &all)) {
        CPU_SET(c, &one);
        break;
      }
    if (sched_setaffinity(0, sizeof(one), &one) == 0) pinned = cpu_binding_warning();
  }).join();
  EXPECT_NE(pinned.find("may use 1 of the"), std::string::npos) << pinned;
  EXPECT_NE(pinned.find("--bind-to none"), std::string::npos) << pinned;
}

// ---------------------------------------------------------------------------------------------
// Several processes

const char* const kDistCheck = "build/dist_check";

struct Launch {
  std::vector<std::string> argv;
  std::vector<std::string> env;  // NAME=value, added to this process's environment minus launch variables
};

struct Outcome {
  int exit_code = -1;  // 128 + signal when killed by one
  bool hung = false;   // still running at the limit (then killed)
  std::string output;  // stdout and stderr
};

std::vector<std::string> child_environment(const std::vector<std::string>& extra) {
  std::vector<std::string> env;
  for (char** e = environ; *e; ++e)
    if (!is_launch_variable(*e)) env.push_back(*e);
  env.insert(env.end(), extra.begin(), extra.end());
  return env;
}

std::vector<char*> c_strings(std::vector<std::string>& v) {
  std::vector<char*> out;
  for (auto& s : v) out.push_back(s.data());
  out.push_back(nullptr);
  return out;
}

// Each in its own process group (so that mpirun and its ranks can be killed together), output to a file.
pid_t spawn(Launch l, const std::string& log) {
  posix_spawn_file_actions_t files;
  posix_spawn_file_actions_init(&files);
  posix_spawn_file_actions_addopen(&files, 1, log.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  posix_spawn_file_actions_adddup2(&files, 1, 2);
  posix_spawnattr_t attr;
  posix_spawnattr_init(&attr);
  posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETPGROUP);
  posix_spawnattr_setpgroup(&attr, 0);
  std::vector<std::string> env = child_environment(l.env);
  std::vector<char*> argv = c_strings(l.argv), envp = c_strings(env);
  pid_t pid = -1;
  const int rc = posix_spawnp(&pid, argv[0], &files, &attr, argv.data(), envp.data());
  posix_spawn_file_actions_destroy(&files);
  posix_spawnattr_destroy(&attr);
  return rc == 0 ? pid : -1;
}

int exit_code_of(int status) { return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status); }

// Starts every launch, waits up to limit_s for all of them, kills what is left.
std::vector<Outcome> run_together(const std::vector<Launch>& launches, double limit_s) {
  static int serial = 0;
  std::vector<std::string> logs;
  std::vector<pid_t> pids;
  for (const Launch& l : launches) {
    logs.push_back((fs::temp_directory_path() / cat("loom_dist_test_", getpid(), "_", serial++, ".log")).string());
    pids.push_back(spawn(l, logs.back()));
  }
  std::vector<Outcome> out(launches.size());
  std::vector<bool> done(launches.size(), false);
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::duration<double>(limit_s);
  for (size_t left = launches.size(); left > 0 && std::chrono::steady_clock::now() < deadline;) {
    for (size_t i = 0; i < pids.size(); ++i) {
      int status = 0;
      if (done[i] || (pids[i] > 0 && waitpid(pids[i], &status, WNOHANG) == 0)) continue;
      out[i].exit_code = pids[i] > 0 ? exit_code_of(status) : -1;
      done[i] = true;
      --left;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  for (size_t i = 0; i < pids.size(); ++i) {
    if (!done[i]) {
      out[i].hung = true;
      kill(-pids[i], SIGTERM);  // mpirun passes it to its ranks
      std::this_thread::sleep_for(std::chrono::seconds(1));
      kill(-pids[i], SIGKILL);
      int status = 0;
      waitpid(pids[i], &status, 0);
    }
    std::ifstream f(logs[i]);
    std::stringstream s;
    s << f.rdbuf();
    out[i].output = s.str();
    fs::remove(logs[i]);
  }
  return out;
}

bool on_path(const std::string& program) {
  const char* path = std::getenv("PATH");
  std::stringstream dirs(path ? path : "");
  for (std::string dir; std::getline(dirs, dir, ':');)
    if (access((dir + "/" + program).c_str(), X_OK) == 0) return true;
  return false;
}

#define REQUIRE_DIST_CHECK()                                                                               \
  do {                                                                                                     \
    if (access(kDistCheck, X_OK) != 0)                                                                     \
      GTEST_SKIP() << kDistCheck << " is missing: build it with `make` (tools/dist_check_main.cpp)";       \
  } while (0)

#define REQUIRE_MPIRUN()                                                                \
  do {                                                                                  \
    REQUIRE_DIST_CHECK();                                                               \
    if (!on_path("mpirun")) GTEST_SKIP() << "mpirun is not on PATH (install Open MPI)"; \
  } while (0)

Outcome mpirun(int np, std::vector<std::string> args, double limit_s, std::vector<std::string> env = {}) {
  std::vector<std::string> argv = {"mpirun", "--allow-run-as-root", "--oversubscribe", "-np", std::to_string(np),
                                   kDistCheck};
  argv.insert(argv.end(), args.begin(), args.end());
  return run_together({{argv, env}}, limit_s)[0];
}

// A port nobody listens on right now.
int free_port() {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof addr;
  bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr);
  getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len);
  close(fd);
  return ntohs(addr.sin_port);
}

std::vector<std::string> tcp_env(int port) { return {"MASTER_ADDR=127.0.0.1", cat("MASTER_PORT=", port)}; }

// world plain processes with RANK/WORLD_SIZE/LOCAL_RANK and the given rendezvous variables.
std::vector<Outcome> env_bootstrap(int world, std::vector<std::string> args, const std::vector<std::string>& rendezvous,
                                   double limit_s) {
  std::vector<Launch> launches;
  for (int r = 0; r < world; ++r) {
    Launch l{{kDistCheck}, rendezvous};
    l.argv.insert(l.argv.end(), args.begin(), args.end());
    l.env.insert(l.env.end(), {cat("RANK=", r), cat("WORLD_SIZE=", world), cat("LOCAL_RANK=", r)});
    launches.push_back(l);
  }
  return run_together(launches, limit_s);
}

bool has(const std::string& text, const std::string& part) { return text.find(part) != std::string::npos; }

void expect_collectives_ok(const std::string& output, int rank, int world) {
  for (const char* check : {"allreduce_sum(float*) ok", "allreduce_sum(double) ok", "broadcast ok", "barrier ok"})
    EXPECT_TRUE(has(output, cat("rank ", rank, " of ", world, ": ", check))) << output;
}

// Every process ended by itself, none cleanly, and no rank got past the failure.
void expect_all_ended_with_failure(const std::vector<Outcome>& outs) {
  for (size_t i = 0; i < outs.size(); ++i) {
    EXPECT_FALSE(outs[i].hung) << "process " << i << " was still running at the limit:\n" << outs[i].output;
    EXPECT_NE(outs[i].exit_code, 0) << "process " << i << ":\n" << outs[i].output;
    EXPECT_FALSE(has(outs[i].output, "passed the barrier")) << outs[i].output;
  }
}

constexpr double kRunLimit = 60;      // a healthy run takes well under a second
constexpr double kFailureLimit = 30;  // an abort takes well under a second; ranks left behind sleep 120 s

TEST(DistMulti, MpirunGivesEachRankItsRankWorldAndLocalRank) {
  REQUIRE_MPIRUN();
  Outcome o = mpirun(2, {"info"}, kRunLimit);
  ASSERT_FALSE(o.hung) << o.output;
  EXPECT_EQ(o.exit_code, 0) << o.output;
  EXPECT_TRUE(has(o.output, "rank 0 of 2: local 0, bootstrap mpirun, mpi yes")) << o.output;
  EXPECT_TRUE(has(o.output, "rank 1 of 2: local 1, bootstrap mpirun, mpi yes")) << o.output;
}

TEST(DistMulti, MpirunCollectivesGiveEveryRankTheRankOrderSumBitForBit) {
  REQUIRE_MPIRUN();
  Outcome o = mpirun(3, {"collectives"}, kRunLimit);
  ASSERT_FALSE(o.hung) << o.output;
  EXPECT_EQ(o.exit_code, 0) << o.output;
  for (int r = 0; r < 3; ++r) expect_collectives_ok(o.output, r, 3);
}

TEST(DistMulti, MpirunErrorOnOneRankEndsBothWithItsMessage) {
  REQUIRE_MPIRUN();
  Outcome o = mpirun(2, {"fail-on", "1"}, kFailureLimit);
  expect_all_ended_with_failure({o});
  EXPECT_TRUE(has(o.output, "[rank 1] error: deliberate failure on rank 1")) << o.output;
}

TEST(DistMulti, TcpBootstrapCollectivesMatchTheRankOrderSum) {
  REQUIRE_DIST_CHECK();
  std::vector<Outcome> outs = env_bootstrap(3, {"collectives"}, tcp_env(free_port()), kRunLimit);
  for (int r = 0; r < 3; ++r) {
    ASSERT_FALSE(outs[r].hung) << outs[r].output;
    EXPECT_EQ(outs[r].exit_code, 0) << outs[r].output;
    expect_collectives_ok(outs[r].output, r, 3);
  }
}

TEST(DistMulti, FileBootstrapMeetsAndRemovesTheFile) {
  REQUIRE_DIST_CHECK();
  const std::string file = (fs::temp_directory_path() / cat("loom_dist_rdv_", getpid())).string();
  std::vector<Outcome> outs = env_bootstrap(2, {"info"}, {"LOOM_RENDEZVOUS_FILE=" + file}, kRunLimit);
  for (int r = 0; r < 2; ++r) {
    ASSERT_FALSE(outs[r].hung) << outs[r].output;
    EXPECT_EQ(outs[r].exit_code, 0) << outs[r].output;
    EXPECT_TRUE(has(outs[r].output, cat("rank ", r, " of 2: local ", r, ", bootstrap file, mpi no"))) << outs[r].output;
  }
  EXPECT_FALSE(fs::exists(file));
}

TEST(DistMulti, TcpErrorOnOneRankEndsEveryRank) {
  REQUIRE_DIST_CHECK();
  std::vector<Outcome> outs = env_bootstrap(3, {"fail-on", "1"}, tcp_env(free_port()), kFailureLimit);
  expect_all_ended_with_failure(outs);
  EXPECT_TRUE(has(outs[1].output, "[rank 1] error: deliberate failure on rank 1")) << outs[1].output;
  EXPECT_TRUE(has(outs[0].output, "[rank 0] fatal: rank 1 ended")) << outs[0].output;
  EXPECT_TRUE(has(outs[2].output, "[rank 2] fatal: lost the connection to rank 0")) << outs[2].output;
}

TEST(DistMulti, TcpInternalFailureEndsEveryRank) {
  REQUIRE_DIST_CHECK();
  std::vector<Outcome> outs = env_bootstrap(2, {"die-on", "0"}, tcp_env(free_port()), kFailureLimit);
  expect_all_ended_with_failure(outs);
  EXPECT_TRUE(has(outs[0].output, "[rank 0] fatal: deliberate internal failure on rank 0")) << outs[0].output;
  EXPECT_TRUE(has(outs[1].output, "[rank 1] fatal: lost the connection to rank 0")) << outs[1].output;
}

// An abort cleanup that never returns (ncclCommAbort stuck on a dead peer) delays the end by its
// grace period, not forever.
TEST(DistMulti, StuckAbortCleanupDoesNotHoldTheRun) {
  REQUIRE_DIST_CHECK();
  std::vector<Outcome> outs = env_bootstrap(2, {"stuck-cleanup-on", "1"}, tcp_env(free_port()), kFailureLimit);
  expect_all_ended_with_failure(outs);
  EXPECT_TRUE(has(outs[1].output, "[rank 1] fatal: deliberate internal failure on rank 1")) << outs[1].output;
  EXPECT_TRUE(has(outs[0].output, "[rank 0] fatal: rank 1 ended")) << outs[0].output;
}

// Rank 1 vanishes while rank 0 computes outside any collective: only the watcher can notice.
TEST(DistMulti, TcpCrashWhileOthersComputeEndsEveryRank) {
  REQUIRE_DIST_CHECK();
  std::vector<Outcome> outs = env_bootstrap(2, {"crash-on", "1"}, tcp_env(free_port()), kFailureLimit);
  expect_all_ended_with_failure(outs);
  EXPECT_TRUE(has(outs[0].output, "[rank 0] fatal: rank 1 ended")) << outs[0].output;
}

TEST(DistMulti, RendezvousTimeoutSaysWhatToCheck) {
  REQUIRE_DIST_CHECK();
  Launch alone{{kDistCheck, "info"}, tcp_env(free_port())};
  alone.env.insert(alone.env.end(), {"RANK=1", "WORLD_SIZE=2", "LOOM_DIST_TIMEOUT_S=1"});
  Outcome o = run_together({alone}, kFailureLimit)[0];
  ASSERT_FALSE(o.hung) << o.output;
  EXPECT_EQ(o.exit_code, 1) << o.output;
  EXPECT_TRUE(has(o.output, "error: rendezvous: rank 1 could not reach rank 0 at 127.0.0.1:")) << o.output;
  EXPECT_TRUE(has(o.output, "LOOM_DIST_TIMEOUT_S")) << o.output;
}

// ---------------------------------------------------------------------------------------------
// NCCL (one GPU per rank)

#define REQUIRE_TWO_GPUS()                                                                             \
  do {                                                                                                 \
    REQUIRE_GPU();                                                                                     \
    if (cuda_device_count() < 2) GTEST_SKIP() << "needs 2 GPUs, found " << cuda_device_count();        \
  } while (0)

TEST(DistGpu, NcclBucketedAllReduceEqualsTheSumUnderMpirun) {
  REQUIRE_TWO_GPUS();
  REQUIRE_MPIRUN();
  Outcome o = mpirun(2, {"nccl"}, kRunLimit);
  ASSERT_FALSE(o.hung) << o.output;
  EXPECT_EQ(o.exit_code, 0) << o.output;
  for (int r = 0; r < 2; ++r) {
    EXPECT_TRUE(has(o.output, cat("rank ", r, " of 2: GradAllReducer ok"))) << o.output;
    EXPECT_TRUE(has(o.output, cat("rank ", r, " of 2: device scalar allreduce ok"))) << o.output;
  }
}

TEST(DistGpu, NcclBucketedAllReduceEqualsTheSumUnderTcpBootstrap) {
  REQUIRE_TWO_GPUS();
  REQUIRE_DIST_CHECK();
  std::vector<Outcome> outs = env_bootstrap(2, {"nccl"}, tcp_env(free_port()), kRunLimit);
  for (int r = 0; r < 2; ++r) {
    ASSERT_FALSE(outs[r].hung) << outs[r].output;
    EXPECT_EQ(outs[r].exit_code, 0) << outs[r].output;
    EXPECT_TRUE(has(outs[r].output, cat("rank ", r, " of 2: GradAllReducer ok"))) << outs[r].output;
  }
}

TEST(DistGpu, NcclWatchdogEndsEveryRankWhenOneSkipsACollective) {
  REQUIRE_TWO_GPUS();
  REQUIRE_DIST_CHECK();
  std::vector<std::string> env = tcp_env(free_port());
  env.push_back("LOOM_NCCL_TIMEOUT_S=3");
  std::vector<Outcome> outs = env_bootstrap(2, {"nccl-hang", "1"}, env, kFailureLimit);
  for (const Outcome& o : outs) {
    EXPECT_FALSE(o.hung) << o.output;
    EXPECT_NE(o.exit_code, 0) << o.output;
  }
  EXPECT_TRUE(has(outs[0].output, "[rank 0] fatal: NCCL on GPU 0: ")) << outs[0].output;
  EXPECT_TRUE(has(outs[0].output, "(LOOM_NCCL_TIMEOUT_S)")) << outs[0].output;
}

}  // namespace
}  // namespace loom
