// Times the experts' own products of a mixture-of-experts layer (ops/grouped_gemm.h nt / nn with N >=
// 128) with each kernel of the build (narrow: the 64×64 default; wide: mma.sync 128×128; hopper: wgmma
// 128×256, GPU_ARCH=90 builds) beside one cuBLASLt GEMM of the same FLOPs (all rows against one
// matrix: the dense ceiling the grouped kernels aim at), issue 16's grouped-GEMM measurement.
//   build/grouped_gemm_bench [--json FILE]
// Shapes: qwen3-30b-a3b (128 experts, top 8, C 2048, I 768) at 8,192 tokens and mixtral-8x7b (8
// experts, top 2, C 4096, I 14,336) at 4,096 tokens; rows routed uniformly (each token to top_k
// distinct experts) and skewed (expert e drawn with probability ∝ 1 / (e + 1)). Products: the forward
// gate_up (nt, N 2I, K C) and down (nt, N C, K I), the backward's input gradients (nn: N C, K 2I and
// N I, K C); then the expert LoRA's products that add onto those outputs (models/moe_layer.cpp, rank
// 16: u·Bᵀ onto gate_up and down, du·A onto their input gradients), K 16 and accumulating, whose time
// is reading and writing the output (GB/s: rows·N·4 bytes over the time) — six of the twelve Hopper
// launches of a qwen3-30b-a3b layer's step. FLOPs 2·rows·N·K. Last, each of the four own products with
// its LoRA term summed in by one _sum call (ops/grouped_gemm.h), beside the two plain calls it
// replaces; the LoRA's rank-wide products (u = x·Aᵀ, du = s·dy·B: GB/s of X read) and its weight
// gradients (tn, GB/s of the two inputs read). Each time is the median
// of 20 runs after 3 warm-ups (CUDA events).
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "ops/cuda_common.h"
#include "ops/device.h"
#include "ops/error.h"
#include "ops/gemm.h"
#include "ops/grouped_gemm.h"
#include "tools/bench_common.h"

namespace loom {
namespace {

constexpr size_t kWorkspace = size_t(32) << 20;

struct MoeShape {
  const char* preset;
  int E, top_k, C, I;
  int64_t T;
};

struct Product {
  const char* name;
  bool nt;  // nt: W_e (N, K); nn: W_e (K, N)
  int N, K;
  bool accumulate = false;  // Y += (a LoRA product onto the expert's own)
};

constexpr int kLoraRank = 16;

// Rows per expert for T tokens each routed to top_k distinct experts, uniformly or skewed.
std::vector<int32_t> route_counts(const MoeShape& s, bool skewed) {
  std::vector<double> weight(size_t(s.E), 1.0);
  if (skewed)
    for (int e = 0; e < s.E; ++e) weight[size_t(e)] = 1.0 / (e + 1);
  std::mt19937_64 rng(7);
  std::vector<int32_t> counts(size_t(s.E), 0);
  for (int64_t t = 0; t < s.T; ++t) {
    std::vector<double> w = weight;
    for (int k = 0; k < s.top_k; ++k) {  // without replacement: a picked expert's weight drops to 0
      std::discrete_distribution<int> pick(w.begin(), w.end());
      const int e = pick(rng);
      ++counts[size_t(e)];
      w[size_t(e)] = 0;
    }
  }
  return counts;
}

// n bf16 values on the device: 2^24 random ones repeated (the experts' weights run to 10^9 values;
// drawing each on the host would cost more device time than the products timed).
bf16* device_repeated_random_bf16(size_t n, std::mt19937_64& rng, float amplitude) {
  const size_t block = std::min(n, size_t(1) << 24);
  bf16* src = device_random_bf16(block, rng, amplitude);
  bf16* dev = device_alloc<bf16>(n);
  for (size_t at = 0; at < n; at += block)
    CUDA_CHECK(cudaMemcpy(dev + at, src, std::min(block, n - at) * sizeof(bf16), cudaMemcpyDeviceToDevice));
  CUDA_CHECK(cudaFree(src));
  return dev;
}

// max |a − b| over max |b|, n bf16 values each on the device (NaN if either holds a NaN).
double max_relative_gap(const bf16* a, const bf16* b, size_t n) {
  std::vector<uint16_t> ha(n), hb(n);
  CUDA_CHECK(cudaMemcpy(ha.data(), a, n * sizeof(bf16), cudaMemcpyDeviceToHost));
  CUDA_CHECK(cudaMemcpy(hb.data(), b, n * sizeof(bf16), cudaMemcpyDeviceToHost));
  double gap = 0, scale = 0;
  for (size_t i = 0; i < n; ++i) {
    const double x = bf16_bits_to_float(ha[i]), y = bf16_bits_to_float(hb[i]);
    if (std::isnan(x) || std::isnan(y)) return NAN;
    gap = std::max(gap, std::fabs(x - y));
    scale = std::max(scale, std::fabs(y));
  }
  return gap / scale;
}

const char* kernels_name(GroupedGemmKernels k) {
  return k == GroupedGemmKernels::kHopper ? "hopper" : k == GroupedGemmKernels::kWide ? "wide" : "narrow";
}

nlohmann::ordered_json run(const MoeShape& s, bool skewed, GemmContext& ctx) {
  const std::vector<int32_t> counts = route_counts(s, skewed);
  std::vector<int32_t> offsets(counts.size() + 1, 0);
  std::partial_sum(counts.begin(), counts.end(), offsets.begin() + 1);
  const int64_t rows = offsets.back();
  int32_t* d_offsets = device_copy(offsets);
  const int max_side = std::max(2 * s.I, s.C);
  std::mt19937_64 rng(1);
  bf16* X = device_repeated_random_bf16(size_t(rows) * size_t(max_side), rng, 1.f);
  bf16* W = device_repeated_random_bf16(size_t(s.E) * size_t(2 * s.I) * size_t(s.C), rng, 0.05f);
  bf16* Y = device_alloc<bf16>(size_t(rows) * size_t(max_side));
  std::vector<GroupedGemmKernels> families = {GroupedGemmKernels::kNarrow, GroupedGemmKernels::kWide};
  if (grouped_gemm_hopper_built()) families.push_back(GroupedGemmKernels::kHopper);
  const Product products[] = {{"gate_up x·Wᵀ", true, 2 * s.I, s.C},
                              {"down h·Wᵀ", true, s.C, s.I},
                              {"gate_up dy·W", false, s.C, 2 * s.I},
                              {"down dy·W", false, s.I, s.C},
                              {"gate_up +u·Bᵀ", true, 2 * s.I, kLoraRank, true},
                              {"down +u·Bᵀ", true, s.C, kLoraRank, true},
                              {"gate_up +du·A", false, s.C, kLoraRank, true},
                              {"down +du·A", false, s.I, kLoraRank, true}};
  const int max_rows = *std::max_element(counts.begin(), counts.end());
  const int min_rows = *std::min_element(counts.begin(), counts.end());
  nlohmann::ordered_json j = {{"preset", s.preset}, {"routing", skewed ? "skewed" : "uniform"},
                              {"experts", s.E},      {"rows", rows},
                              {"rows_per_expert_min", min_rows}, {"rows_per_expert_max", max_rows},
                              {"products", nlohmann::ordered_json::array()}};
  std::fprintf(stderr, "%s, %s routing: %lld rows over %d experts (%d..%d each)\n", s.preset,
               skewed ? "skewed" : "uniform", static_cast<long long>(rows), s.E, min_rows, max_rows);
  for (const Product& p : products) {
    const double flops = 2.0 * double(rows) * p.N * p.K;
    const int64_t w_stride = int64_t(p.N) * p.K;
    nlohmann::ordered_json pj = {{"product", p.name}, {"N", p.N}, {"K", p.K}};
    std::string line;
    for (GroupedGemmKernels k : families) {
      const double ms = median_ms([&] {
        (p.nt ? grouped_gemm_nt : grouped_gemm_nn)(Y, X, W, w_stride, d_offsets, s.E, rows, p.N, p.K, 1.f,
                                                   p.accumulate, nullptr, k);
      });
      const double tflops = flops / ms / 1e9;
      pj[std::string(kernels_name(k)) + "_ms"] = ms;
      pj[std::string(kernels_name(k)) + "_tflops"] = tflops;
      char part[96];
      if (p.accumulate) {  // bound by the output's bytes, read and written
        const double gbps = double(rows) * p.N * 4 / ms / 1e6;
        pj[std::string(kernels_name(k)) + "_gbps"] = gbps;
        std::snprintf(part, sizeof part, " | %s %.3f ms %.0f GB/s", kernels_name(k), ms, gbps);
      } else {
        std::snprintf(part, sizeof part, " | %s %.3f ms %.1f TFLOP/s", kernels_name(k), ms, tflops);
      }
      line += part;
    }
    const double dense_ms = median_ms([&] {  // one matrix for every row: W_0 in the same layout
      gemm(ctx, Y, X, W, rows, p.N, p.K, false, p.nt, 1.f, p.accumulate ? 1.f : 0.f, GemmOut::kBf16, nullptr);
    });
    pj["cublaslt_dense_ms"] = dense_ms;
    pj["cublaslt_dense_tflops"] = flops / dense_ms / 1e9;
    std::fprintf(stderr, "  %-14s N %5d K %5d%s | cuBLASLt dense %.3f ms %.1f TFLOP/s\n", p.name, p.N, p.K,
                 line.c_str(), dense_ms, flops / dense_ms / 1e9);
    j["products"].push_back(pj);
  }
  // The expert LoRA's rank-wide products (N = r: the 64×64 kernel only), bound by reading X, rows·K·2 bytes.
  const Product rank_wide[] = {{"gate_up u=x·Aᵀ", true, 2 * kLoraRank, s.C},  // gate_up's adapter has rank 2r
                               {"down u=h·Aᵀ", true, kLoraRank, s.I},
                               {"gate_up du=dy·B", false, 2 * kLoraRank, 2 * s.I},
                               {"down du=dy·B", false, kLoraRank, s.C}};
  for (const Product& p : rank_wide) {
    const double ms = median_ms([&] {
      (p.nt ? grouped_gemm_nt : grouped_gemm_nn)(Y, X, W, int64_t(p.N) * p.K, d_offsets, s.E, rows, p.N, p.K, 1.f,
                                                 false, nullptr, GroupedGemmKernels::kNarrow);
    });
    const double gbps = double(rows) * p.K * 2 / ms / 1e6;
    j["rank_wide"].push_back({{"product", p.name}, {"N", p.N}, {"K", p.K}, {"ms", ms}, {"gbps", gbps}});
    std::fprintf(stderr, "  %-14s N %5d K %5d | narrow %.3f ms %.0f GB/s\n", p.name, p.N, p.K, ms, gbps);
  }
  // The expert LoRA's weight gradients (tn, fp32 D += alpha·Yᵀ·X over each expert's rows): bound by
  // reading Y and X, rows·(N + K)·2 bytes.
  const size_t d_size = size_t(s.E) * size_t(max_side) * 2 * kLoraRank;
  float* D = device_alloc<float>(d_size);
  CUDA_CHECK(cudaMemset(D, 0, d_size * sizeof(float)));  // the sums of the timed runs stay finite
  const Product gradients[] = {{"gate_up dB", false, 2 * s.I, 2 * kLoraRank},  // dB += s·dyᵀ·u (u of rank 2r)
                               {"gate_up dA", false, 2 * kLoraRank, s.C},  // dA += duᵀ·x
                               {"down dB", false, s.C, kLoraRank},
                               {"down dA", false, kLoraRank, s.I}};
  for (const Product& p : gradients) {
    const int64_t d_stride = int64_t(p.N) * p.K;
    const double ms = median_ms([&] {
      grouped_gemm_tn(D, d_stride, X, Y, d_offsets, s.E, p.N, p.K, 1.f, nullptr);
    });
    const double gbps = double(rows) * (p.N + p.K) * 2 / ms / 1e6;
    j["weight_gradients"].push_back({{"product", p.name}, {"N", p.N}, {"K", p.K}, {"ms", ms}, {"gbps", gbps}});
    std::fprintf(stderr, "  %-14s N %5d K %5d | tn %.3f ms %.0f GB/s\n", p.name, p.N, p.K, ms, gbps);
  }
  CUDA_CHECK(cudaFree(D));
  // Each own product with its LoRA term summed in: one _sum call against the two plain calls it replaces.
  bf16* Y2 = device_alloc<bf16>(size_t(rows) * size_t(max_side));  // the two plain calls' output
  bf16* U = X;  // the term's rows: the first 16 columns' worth of X's values (their values do not matter)
  for (const Product& p : {products[0], products[1], products[2], products[3]}) {
    const int64_t w_stride = int64_t(p.N) * p.K;
    const GroupedTerm own{X, W, w_stride, p.K, 1.f}, lora{U, W, int64_t(p.N) * kLoraRank, kLoraRank, 0.5f};
    nlohmann::ordered_json pj = {{"product", std::string(p.name) + " + LoRA"}, {"N", p.N}, {"K", p.K},
                                 {"rank", kLoraRank}};
    std::string line;
    for (GroupedGemmKernels k : families) {
      const double sum_ms = median_ms([&] {
        (p.nt ? grouped_gemm_nt_sum : grouped_gemm_nn_sum)(Y, own, lora, d_offsets, s.E, rows, p.N, false, nullptr,
                                                           k);
      });
      const double two_ms = median_ms([&] {
        auto plain = p.nt ? grouped_gemm_nt : grouped_gemm_nn;
        plain(Y2, X, W, w_stride, d_offsets, s.E, rows, p.N, p.K, 1.f, false, nullptr, k);
        plain(Y2, U, W, lora.w_stride, d_offsets, s.E, rows, p.N, kLoraRank, 0.5f, true, nullptr, k);
      });
      // The two forms' outputs apart (the last run of each above): the fused one rounds once, so by
      // about one bf16 rounding of the output at most.
      const double apart = max_relative_gap(Y, Y2, size_t(rows) * size_t(p.N));
      pj[std::string(kernels_name(k)) + "_sum_vs_two_calls"] = apart;
      pj[std::string(kernels_name(k)) + "_sum_ms"] = sum_ms;
      pj[std::string(kernels_name(k)) + "_two_calls_ms"] = two_ms;
      char part[96];
      std::snprintf(part, sizeof part, " | %s %.3f ms (two calls %.3f, apart %.1e)", kernels_name(k), sum_ms, two_ms,
                    apart);
      line += part;
    }
    std::fprintf(stderr, "  %-14s + LoRA r%d%s\n", p.name, kLoraRank, line.c_str());
    j["sums"].push_back(pj);
  }
  for (void* ptr : {static_cast<void*>(d_offsets), static_cast<void*>(X), static_cast<void*>(W), static_cast<void*>(Y),
                    static_cast<void*>(Y2)})
    CUDA_CHECK(cudaFree(ptr));
  return j;
}

int bench(int argc, char** argv) {
  const std::string json_path = json_flag_only(argc, argv, "build/grouped_gemm_bench");
  nlohmann::ordered_json j = kernel_bench_head("build/grouped_gemm_bench");
  void* workspace = device_alloc<uint8_t>(kWorkspace);
  {
    GemmContext ctx(workspace, kWorkspace);
    for (const MoeShape& s : {MoeShape{"qwen3-30b-a3b", 128, 8, 2048, 768, 8192},
                              MoeShape{"mixtral-8x7b", 8, 2, 4096, 14336, 4096}})
      for (bool skewed : {false, true}) j["shapes"].push_back(run(s, skewed, ctx));
  }
  CUDA_CHECK(cudaFree(workspace));
  emit_json(j, json_path);
  return 0;
}

}  // namespace
}  // namespace loom

int main(int argc, char** argv) { return loom::kernel_bench_main(argc, argv, loom::bench); }
