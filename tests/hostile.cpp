#include "tests/hostile.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <stdexcept>
#include <thread>

#include "ops/error.h"

namespace fs = std::filesystem;

namespace loom::test {
namespace {

std::string make_temp_dir() {
  std::string tmpl = (fs::path(testing::TempDir()) / "loom_hostile_XXXXXX").string();
  if (!mkdtemp(tmpl.data())) throw std::runtime_error("mkdtemp failed");
  return tmpl;
}

std::string shorten(const std::string& s, size_t n = 600) { return s.size() <= n ? s : s.substr(0, n) + "..."; }

}  // namespace

std::string write_file(const std::string& dir, const std::string& name, const std::string& text) {
  const fs::path p = fs::path(dir) / name;
  fs::create_directories(p.parent_path());
  std::ofstream(p, std::ios::binary) << text;
  return p.string();
}

std::string read_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

std::string make_fifo(const std::string& path) {
  fs::create_directories(fs::path(path).parent_path());
  fs::remove_all(path);
  if (mkfifo(path.c_str(), 0600) != 0) throw std::runtime_error("mkfifo " + path + " failed");
  return path;
}

std::string hostile_case_name(const testing::TestParamInfo<HostileCase>& info) { return info.param.name; }

void check_hostile_case(const HostileCase& c) {
  // The expected outcome, in --gtest_output=xml, so the suite's counts by outcome come from a run.
  testing::Test::RecordProperty("expected_outcome", c.expect.empty() ? "accepted" : "clean error");
  const std::string dir = make_temp_dir();
  std::string error;
  bool threw = false;
  try {
    c.run(dir);
  } catch (const Error& e) {
    threw = true;
    error = e.what();
  } catch (const std::exception& e) {
    fs::remove_all(dir);
    FAIL() << c.name << ": not a clean loom::Error: " << e.what();
  }
  fs::remove_all(dir);
  if (c.expect.empty()) {
    EXPECT_FALSE(threw) << c.name << ": valid input refused: " << shorten(error);
    return;
  }
  ASSERT_TRUE(threw) << c.name << ": accepted; expected an error containing '" << c.expect.front() << "'";
  for (const std::string& part : c.expect)
    EXPECT_NE(error.find(part), std::string::npos) << c.name << ": message lacks '" << part << "':\n" << shorten(error);
}

ProgramResult run_program(const std::vector<std::string>& argv, const std::string& stdin_text, double timeout_s) {
  const std::string dir = make_temp_dir();
  const std::string in_path = write_file(dir, "stdin", stdin_text);
  const std::string out_path = dir + "/stdout", err_path = dir + "/stderr";
  // Everything the child needs is made before fork: the test process runs OpenMP threads, and a
  // child forked while one of them holds the malloc lock would deadlock on its first allocation.
  // The child makes only async-signal-safe calls (open, dup2, execv, _exit).
  std::vector<char*> args;
  for (const std::string& a : argv) args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);
  const pid_t pid = fork();
  if (pid < 0) throw std::runtime_error("fork failed");
  if (pid == 0) {
    const int in = open(in_path.c_str(), O_RDONLY);
    const int out = open(out_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    const int err = open(err_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (in < 0 || out < 0 || err < 0 || dup2(in, 0) < 0 || dup2(out, 1) < 0 || dup2(err, 2) < 0) _exit(126);
    execv(args[0], args.data());
    _exit(127);
  }
  ProgramResult r;
  int status = 0;
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::duration<double>(timeout_s);
  while (waitpid(pid, &status, WNOHANG) == 0) {
    if (std::chrono::steady_clock::now() > deadline) {
      r.timed_out = true;
      kill(pid, SIGKILL);
      waitpid(pid, &status, 0);
      break;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  if (WIFEXITED(status)) r.exit_code = WEXITSTATUS(status);
  if (WIFSIGNALED(status)) r.signal = WTERMSIG(status);
  r.out = read_bytes(out_path);
  r.err = read_bytes(err_path);
  fs::remove_all(dir);
  return r;
}

ProgramResult run_cli(const std::vector<std::string>& argv, const std::string& stdin_text, double timeout_s) {
  if (!fs::exists(argv.at(0))) throw std::logic_error(argv[0] + " is not built (make all)");
  ProgramResult r = run_program(argv, stdin_text, timeout_s);
  std::string what = argv[0];
  if (r.timed_out) throw std::logic_error(what + " hung (killed after the timeout); stderr: " + shorten(r.err));
  if (r.signal) throw std::logic_error(what + " died of signal " + std::to_string(r.signal) + "; stderr: " + shorten(r.err));
  if (r.exit_code == 0) return r;
  const bool one_message = r.err.find("error: ") != std::string::npos || r.err.find("fatal: ") != std::string::npos;
  if (r.exit_code != 1 || !one_message)
    throw std::logic_error(what + " exited " + std::to_string(r.exit_code) + " without one clear error; stderr: " +
                           shorten(r.err));
  if (r.err.find("terminate called") != std::string::npos)
    throw std::logic_error(what + " called terminate: " + shorten(r.err));
  throw Error(r.err);
}

}  // namespace loom::test
