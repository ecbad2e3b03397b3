// Times the decode step's projections as ops/lora_gemv.h runs them (issue 12): each layer's four
// calls — q/k/v, o, gate/up, down — of llama-3.1-8b and qwen3-0.6b, NF4 (nested scales, as
// bitsandbytes stores them) and bf16, with a LoRA r16 on every projection (adapters unmerged), at 1
// and 8 rows of x, beside the device's copy bandwidth measured in the same run.
//   build/gemv_bench [--json FILE] [--call NAME]
// --call times that call alone (q/k/v, o, gate/up or down) in every row: one kernel family for ncu,
// whose first launch of lora_gemv_mma_kernel is then llama-3.1-8b's one-row NF4 call.
// Each call reads a distinct copy of its weights, as consecutive layers do, with enough copies that
// a timed sequence reads ≥ 128 MB (2.5× an H100's L2), so the weights come from DRAM; the sequence is
// one CUDA graph (no host launch time) replayed 20 times after 3 warm-ups (median, CUDA events).
// Figures per call: µs, and TB/s of the weight bytes it reads (NF4 codes, absmax_q, nested absmax;
// bf16 weights; the adapters' A and B); per token: a layer's four calls times the preset's layers,
// the "decode GEMV" and "decode GEMV, adapters' u" families of `build/decode_bench --profile` without
// its model around it. Weights are random bytes and values: the kernels' time does not depend on them.
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <random>
#include <string>
#include <vector>

#include "engine/flops.h"
#include "ops/cuda_common.h"
#include "ops/error.h"
#include "ops/lora_gemv.h"
#include "ops/nf4.h"
#include "tools/bench_common.h"

namespace loom {
namespace {

constexpr int kRank = 16;
constexpr int kNf4Blocksize = 64, kNestedBlocksize = 256;
constexpr size_t kBytesPerSequence = size_t(128) << 20;

struct Call {
  const char* name;  // q/k/v, o, gate/up, down
  int K;
  std::vector<int> N;  // the projections sharing x
};

struct Preset {
  const char* name;
  int layers;
  std::vector<Call> calls;
};

std::vector<Preset> presets() {
  return {{"llama-3.1-8b", 32, {{"q/k/v", 4096, {4096, 1024, 1024}}, {"o", 4096, {4096}},
                                {"gate/up", 4096, {14336, 14336}}, {"down", 14336, {4096}}}},
          {"qwen3-0.6b", 28, {{"q/k/v", 1024, {2048, 1024, 1024}}, {"o", 2048, {1024}},
                              {"gate/up", 1024, {3072, 3072}}, {"down", 3072, {1024}}}}};
}

std::vector<uint8_t> random_bytes(size_t n, std::mt19937_64& rng) {
  std::vector<uint8_t> v(n);
  for (auto& b : v) b = uint8_t(rng());
  return v;
}

std::vector<float> random_floats(size_t n, std::mt19937_64& rng, float lo, float hi) {
  std::uniform_real_distribution<float> u(lo, hi);
  std::vector<float> v(n);
  for (auto& x : v) x = u(rng);
  return v;
}

// The device buffers of one run; freed at its end.
struct Buffers {
  std::vector<void*> all;
  template <class T>
  T* keep(T* p) {
    all.push_back(p);
    return p;
  }
  ~Buffers() {
    for (void* p : all) cudaFree(p);
  }
};

// An (N, K) NF4 weight with double-quantized scales, random codes and scales; bytes += what a GEMV reads.
Nf4Device random_nf4(int N, int K, const float* quant_map, const float* nested_map, std::mt19937_64& rng,
                     Buffers& b, size_t& bytes) {
  Nf4Device w;
  w.numel = int64_t(N) * K;
  w.blocksize = kNf4Blocksize;
  w.nested_blocksize = kNestedBlocksize;
  const size_t blocks = size_t(ceil_div(w.numel, kNf4Blocksize)), nested = size_t(ceil_div(blocks, kNestedBlocksize));
  w.codes = b.keep(device_copy(random_bytes(size_t(w.numel / 2), rng)));
  w.absmax_q = b.keep(device_copy(random_bytes(blocks, rng)));
  w.nested_absmax = b.keep(device_copy(random_floats(nested, rng, 0.01f, 0.1f)));
  w.nested_map = nested_map;
  w.nested_offset = 0.05f;
  w.quant_map = quant_map;
  bytes += size_t(w.numel / 2) + blocks + 4 * nested;
  return w;
}

struct Timed {
  double us = 0, tbps = 0;
};

// One call's µs and TB/s: `copies` calls of distinct weights captured in one graph.
Timed time_call(const Call& c, bool nf4, int rows, const float* quant_map, const float* nested_map,
                cudaStream_t stream) {
  std::mt19937_64 rng(7);
  Buffers b;
  size_t bytes = 0;  // one copy's
  std::vector<std::vector<GemvProjection>> copies;
  const bf16* x = b.keep(device_random_bf16(size_t(rows) * c.K, rng, 1.f));
  do {
    std::vector<GemvProjection> call;
    for (int N : c.N) {
      GemvProjection p;
      p.N = N;
      if (nf4) {
        p.nf4 = random_nf4(N, c.K, quant_map, nested_map, rng, b, bytes);
      } else {
        p.W = b.keep(device_random_bf16(size_t(N) * c.K, rng, 0.05f));
        bytes += size_t(N) * c.K * 2;
      }
      p.A = b.keep(device_random_bf16(size_t(kRank) * c.K, rng, 0.05f));
      p.B = b.keep(device_random_bf16(size_t(N) * kRank, rng, 0.05f));
      p.R = kRank;
      p.scale = 1.f;
      p.u = b.keep(device_alloc<bf16>(size_t(rows) * kRank));
      p.y = b.keep(device_alloc<bf16>(size_t(rows) * N));
      bytes += size_t(kRank) * c.K * 2 + size_t(N) * kRank * 2;
      call.push_back(p);
    }
    copies.push_back(call);
  } while (bytes < kBytesPerSequence);
  const size_t call_bytes = bytes / copies.size();
  cudaGraph_t graph;
  CUDA_CHECK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal));
  for (const auto& call : copies) lora_gemv(call.data(), int(call.size()), x, rows, c.K, stream);
  CUDA_CHECK(cudaStreamEndCapture(stream, &graph));
  cudaGraphExec_t exec;
  CUDA_CHECK(cudaGraphInstantiate(&exec, graph, 0));
  Timed t;
  t.us = 1e3 * median_ms([&] { CUDA_CHECK(cudaGraphLaunch(exec, stream)); }, stream) / double(copies.size());
  t.tbps = double(call_bytes) / t.us / 1e6;
  CUDA_CHECK(cudaGraphExecDestroy(exec));
  CUDA_CHECK(cudaGraphDestroy(graph));
  return t;
}

// The row's calls (only `only`'s when it is set) and, when all four ran, a token's time.
nlohmann::ordered_json run(const Preset& preset, bool nf4, int rows, const float* quant_map, const float* nested_map,
                           const std::string& only, cudaStream_t stream) {
  nlohmann::ordered_json j = {{"preset", preset.name}, {"quant", nf4 ? "nf4" : "bf16"}, {"rows", rows}};
  double layer_us = 0;
  std::string line;
  for (const Call& c : preset.calls) {
    if (!only.empty() && only != c.name) continue;
    const Timed t = time_call(c, nf4, rows, quant_map, nested_map, stream);
    layer_us += t.us;
    j["calls"].push_back({{"call", c.name}, {"K", c.K}, {"N", c.N}, {"us", t.us}, {"tbps", t.tbps}});
    char part[96];
    std::snprintf(part, sizeof part, " | %s %.1f us %.2f TB/s", c.name, t.us, t.tbps);
    line += part;
  }
  if (only.empty()) {
    j["ms_per_token"] = layer_us * preset.layers / 1e3;
    char part[48];
    std::snprintf(part, sizeof part, " | per token %.3f ms", j["ms_per_token"].get<double>());
    line += part;
  }
  std::fprintf(stderr, "%-13s %-4s rows %d%s\n", preset.name, nf4 ? "nf4" : "bf16", rows, line.c_str());
  return j;
}

// --json FILE and --call NAME.
void parse_flags(int argc, char** argv, std::string& json_path, std::string& only) {
  const char* usage = "usage: build/gemv_bench [--json FILE] [--call q/k/v|o|gate/up|down]";
  for (int i = 1; i < argc; ++i) {
    const std::string flag = argv[i];
    LOOM_CHECK((flag == "--json" || flag == "--call") && i + 1 < argc, usage, " (found ", flag, ")");
    (flag == "--json" ? json_path : only) = argv[++i];
  }
  const std::vector<Call> calls = presets().front().calls;  // every preset's calls have these names
  LOOM_CHECK(only.empty() || std::any_of(calls.begin(), calls.end(), [&](const Call& c) { return only == c.name; }),
             usage, " (found --call ", only, ")");
}

int bench(int argc, char** argv) {
  std::string json_path, only;
  parse_flags(argc, argv, json_path, only);
  nlohmann::ordered_json j = kernel_bench_head("build/gemv_bench");
  j["copy_tbps"] = measure_copy_tbps();
  std::fprintf(stderr, "gemv_bench: %s, copy %.2f TB/s (bytes read + written)\n", j["device"].get<std::string>().c_str(),
               j["copy_tbps"].get<double>());
  Buffers tables;
  const float* quant_map = tables.keep(device_copy(std::vector<float>(kNf4Table, kNf4Table + 16)));
  std::mt19937_64 rng(3);
  std::vector<float> nested(256);
  for (float& v : nested) v = std::uniform_real_distribution<float>(-1.f, 1.f)(rng);
  std::sort(nested.begin(), nested.end());
  const float* nested_map = tables.keep(device_copy(nested));
  cudaStream_t stream;
  CUDA_CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  for (const Preset& p : presets()) {
    j["shapes"].push_back(run(p, true, 1, quant_map, nested_map, only, stream));
    j["shapes"].push_back(run(p, true, 8, quant_map, nested_map, only, stream));
    j["shapes"].push_back(run(p, false, 1, quant_map, nested_map, only, stream));
  }
  CUDA_CHECK(cudaStreamDestroy(stream));
  emit_json(j, json_path);
  return 0;
}

}  // namespace
}  // namespace loom

int main(int argc, char** argv) { return loom::kernel_bench_main(argc, argv, loom::bench); }
