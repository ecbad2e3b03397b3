// What the benchmark programs (build/bench, build/decode_bench) share: who measured a figure — the
// commit of the checkout and the device (GPU 0, its driver, the CUDA versions), written into every
// benchmark's JSON so that a figure names its own origin — and their count flags.
#pragma once
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdio>
#include <exception>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>
#include <string>
#include <vector>

#include "ops/cuda_common.h"
#include "ops/device.h"
#include "ops/error.h"

namespace loom {

// n values of T on the device, uninitialised (cudaMalloc; the caller frees them).
template <class T>
T* device_alloc(size_t n) {
  T* p = nullptr;
  CUDA_CHECK(cudaMalloc(&p, std::max<size_t>(n, 1) * sizeof(T)));
  return p;
}

// A device copy of host (device_alloc; the caller frees it).
template <class T>
T* device_copy(const std::vector<T>& host) {
  T* dev = device_alloc<T>(host.size());
  CUDA_CHECK(cudaMemcpy(dev, host.data(), host.size() * sizeof(T), cudaMemcpyHostToDevice));
  return dev;
}

// n bf16 values uniform in [-amplitude, amplitude) from rng, on the device (cudaMalloc; kept for the
// program's life).
inline bf16* device_random_bf16(size_t n, std::mt19937_64& rng, float amplitude) {
  std::uniform_real_distribution<float> u(-amplitude, amplitude);
  std::vector<uint16_t> host(n);
  for (auto& x : host) x = float_to_bf16_bits(u(rng));
  return reinterpret_cast<bf16*>(device_copy(host));
}

// The median of 20 timed calls of `run` on `stream` (the default one unless given), after 3 untimed
// ones, in ms (CUDA events).
template <class F>
double median_ms(F&& run, cudaStream_t stream = nullptr) {
  return median_event_ms(3, 20, stream, run);
}

// First line of a shell command's output ("" when it fails).
inline std::string command_output(const char* command) {
  std::FILE* p = popen(command, "r");
  if (!p) return "";
  char buf[256] = {0};
  const bool got = std::fgets(buf, sizeof buf, p) != nullptr;
  const int status = pclose(p);
  if (!got || status != 0) return "";
  std::string s = buf;
  while (!s.empty() && (s.back() == '\n' || s.back() == '\r')) s.pop_back();
  return s;
}

// The checkout's commit, "-dirty" when tracked files differ from it (the figure is then not that
// commit's); "unknown" outside a git checkout.
inline std::string git_commit() {
  const std::string head = command_output("git rev-parse --short HEAD 2>/dev/null");
  if (head.empty()) return "unknown";
  const bool dirty = !command_output("git status --porcelain --untracked-files=no 2>/dev/null").empty();
  return dirty ? head + "-dirty" : head;
}

inline std::string version_string(int v) { return cat(v / 1000, ".", (v % 1000) / 10); }

// GPU 0's name, the driver's version and the CUDA versions of the driver and of the runtime.
inline nlohmann::ordered_json device_json() {
  cudaDeviceProp p{};
  CUDA_CHECK(cudaGetDeviceProperties(&p, 0));
  int driver = 0, runtime = 0;
  CUDA_CHECK(cudaDriverGetVersion(&driver));
  CUDA_CHECK(cudaRuntimeGetVersion(&runtime));
  const char* driver_query = "nvidia-smi --query-gpu=driver_version --format=csv,noheader -i 0 2>/dev/null";
  return nlohmann::ordered_json{{"device", p.name},
                                {"driver", command_output(driver_query)},
                                {"driver_cuda", version_string(driver)},
                                {"runtime_cuda", version_string(runtime)}};
}

// A count flag's value: an integer in [min, 2^30], else an error naming the flag.
inline int parse_count(const std::string& flag, const std::string& value, int min) {
  size_t used = 0;
  long long v = 0;
  try {
    v = std::stoll(value, &used);
  } catch (const std::exception&) {
    used = 0;
  }
  LOOM_CHECK(used == value.size() && v >= min && v <= (1 << 30), flag, " expects an integer >= ", min, ", got '",
             value, "'");
  return int(v);
}

inline double gib(size_t bytes) { return double(bytes) / double(size_t(1) << 30); }

// Device memory in use on GPU 0 (by every process), GiB.
inline double device_memory_in_use_gib() {
  size_t free_b = 0, total_b = 0;
  CUDA_CHECK(cudaMemGetInfo(&free_b, &total_b));
  return gib(total_b - free_b);
}

// The kernel benchmarks' command line: `--json FILE` or nothing; returns FILE ("" without it).
inline std::string json_flag_only(int argc, char** argv, const char* program) {
  std::string json_path;
  for (int i = 1; i < argc; ++i) {
    const std::string flag = argv[i];
    LOOM_CHECK(flag == "--json" && i + 1 < argc, "usage: ", program, " [--json FILE] (found ", flag, ")");
    json_path = argv[++i];
  }
  return json_path;
}

// A kernel benchmark's JSON before its figures: the device, the commit and an empty "shapes" list.
// Fails, naming the program, without a GPU.
inline nlohmann::ordered_json kernel_bench_head(const char* program) {
  LOOM_CHECK(cuda_available(), program, " needs a GPU: ", cuda_device_summary());
  nlohmann::ordered_json j = device_json();
  j["commit"] = git_commit();
  j["shapes"] = nlohmann::ordered_json::array();
  return j;
}

// A benchmark's result: one JSON line on stdout, and in json_path too unless it is empty.
inline void emit_json(const nlohmann::ordered_json& j, const std::string& json_path) {
  const std::string line = j.dump();
  std::printf("%s\n", line.c_str());
  std::fflush(stdout);
  if (json_path.empty()) return;
  std::ofstream f(json_path);
  f << line << "\n";
  LOOM_CHECK(f.flush(), "cannot write --json ", json_path, " (is the folder writable?)");
}

// main() of a kernel benchmark: bench(argc, argv), or the error on stderr and exit status 1.
inline int kernel_bench_main(int argc, char** argv, int (*bench)(int, char**)) {
  try {
    return bench(argc, argv);
  } catch (...) {
    std::fprintf(stderr, "error: %s\n", describe_current_exception().c_str());
    return 1;
  }
}

}  // namespace loom
