// Times the CUDA flash attention (ops/attention.cu) forward and backward on packed documents.
//   build/attention_bench [N]        the first N cases (all by default); tools/gpu_attention_check.sh
//                                    builds and runs it
//   build/attention_bench --case I   case I alone (0-based; for ncu)
//   build/attention_bench --decode   the decode kernel (ops/attention_decode.cu): one query per
//                                    sequence against a cache of L keys, B sequences, at several
//                                    splits of the cache; it reads the cache once, so its figure is
//                                    bandwidth: 2·B·L·KVH·D·2 bytes / time
// Target workloads: T = 16384 tokens of documents averaging 240 tokens, H = 32, KVH = 8, D = 128
// (sft-alpaca), and one 16,384-token document at the same heads (issue 14's Hopper targets).
// Each case runs every kernel family of this build (ops/attention.h AttentionKernels: short, long and,
// in GPU_ARCH=90 builds, hopper; build/train picks by the mean document length; cases 6-8 bracket
// the crossing between the short and long families). FLOPs count only the unmasked causal pairs:
// forward 4 D H sum_doc L(L+1)/2 (two matmuls of 2 D FLOPs per visible pair), backward 2.5 times that
// (five matmuls). Each time is the median of 20 runs after 3 warm-ups, measured with CUDA events;
// q, k, v are one fused qkv buffer.
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <iterator>
#include <random>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "ops/device.h"
#include "ops/attention.h"
#include "ops/attention_decode.h"
#include "ops/cuda_common.h"
#include "tools/bench_common.h"

namespace loom {
namespace {

struct BenchCase {
  std::string name;
  int T, mean_doc, H, KVH, D, window;  // mean_doc 0: one document of T tokens
};

// Lengths uniform in [mean/16, 2 mean - mean/16] (so their mean is `mean`), the last cut to fill T.
std::vector<int32_t> make_cu_seqlens(int T, int mean, std::mt19937_64& rng) {
  if (mean == 0) return {0, T};
  std::uniform_int_distribution<int> len(std::max(1, mean / 16), std::max(1, 2 * mean - mean / 16));
  std::vector<int32_t> cu = {0};
  while (cu.back() < T) cu.push_back(std::min(T, cu.back() + len(rng)));
  return cu;
}

double causal_pairs(const std::vector<int32_t>& cu, int window) {
  double pairs = 0;
  for (size_t d = 0; d + 1 < cu.size(); ++d)
    for (int64_t i = 0; i < cu[d + 1] - cu[d]; ++i) pairs += window > 0 ? std::min<int64_t>(i + 1, window) : i + 1;
  return pairs;
}

// "short", "long" or "hopper" (the long family with the sm_90a forward; same backward as "long").
const char* family_label(AttentionKernels kernels) {
  return kernels == AttentionKernels::kShortDocs ? "short" : kernels == AttentionKernels::kLongDocs ? "long" : "hopper";
}

void run(const BenchCase& c) {
  std::mt19937_64 rng(1234);
  const std::vector<int32_t> cu_host = make_cu_seqlens(c.T, c.mean_doc, rng);
  const int64_t T = c.T, W = int64_t{c.H + 2 * c.KVH} * c.D, HD = int64_t{c.H} * c.D;
  bf16* qkv = device_random_bf16(T * W, rng, 1.f);
  bf16* dout = device_random_bf16(T * HD, rng, 1.f);
  bf16 *out, *dqkv;
  float *lse, *scratch;
  int32_t* cu;
  CUDA_CHECK(cudaMalloc(&out, T * HD * sizeof(bf16)));
  CUDA_CHECK(cudaMalloc(&dqkv, T * W * sizeof(bf16)));
  CUDA_CHECK(cudaMalloc(&lse, T * c.H * sizeof(float)));
  CUDA_CHECK(cudaMalloc(&scratch, attention_backward_scratch_floats(T, c.H, c.D) * sizeof(float)));
  cu = device_copy(cu_host);

  const AttentionShape s{cu, static_cast<int>(cu_host.size()) - 1, c.H, c.KVH, c.D, c.window,
                         1.f / std::sqrt(static_cast<float>(c.D))};
  const AttentionStrides st = AttentionStrides::fused_qkv(c.H, c.KVH, c.D);
  const bf16 *q = qkv, *k = qkv + HD, *v = qkv + HD + int64_t{c.KVH} * c.D;
  bf16 *dq = dqkv, *dk = dqkv + HD, *dv = dqkv + HD + int64_t{c.KVH} * c.D;
  const double fwd_flops = 4.0 * c.D * c.H * causal_pairs(cu_host, c.window);
  std::vector<AttentionKernels> families{AttentionKernels::kShortDocs, AttentionKernels::kLongDocs};
  if (attention_hopper_kernels_built()) families.push_back(AttentionKernels::kLongDocsHopper);
  for (AttentionKernels kernels : families) {
    const double fwd_ms = median_ms([&] { attention_forward(out, lse, q, k, v, st, s, T, nullptr, kernels); });
    const double bwd_ms = median_ms(
        [&] { attention_backward(dq, dk, dv, scratch, dout, q, k, v, out, lse, st, s, T, nullptr, kernels); });
    std::printf("%-28s %5zu docs  %-6s fwd %7.3f ms %6.1f TFLOP/s   bwd %7.3f ms %6.1f TFLOP/s\n", c.name.c_str(),
                cu_host.size() - 1, family_label(kernels), fwd_ms,
                fwd_flops / fwd_ms * 1e-9, bwd_ms, 2.5 * fwd_flops / bwd_ms * 1e-9);
  }
  for (void* p : {static_cast<void*>(qkv), static_cast<void*>(dout), static_cast<void*>(out),
                  static_cast<void*>(dqkv), static_cast<void*>(lse), static_cast<void*>(scratch),
                  static_cast<void*>(cu)})
    CUDA_CHECK(cudaFree(p));
}

// The decode kernel for B sequences of L cached keys each (llama-3.1-8b's heads), the cache split
// for about blocks_per_sm blocks per multiprocessor.
void run_decode(int B, int L, int blocks_per_sm) {
  const int H = 32, KVH = 8, D = 128;
  std::mt19937_64 rng(99);
  const int64_t cache = int64_t(B) * L * KVH * D;
  bf16* k = static_cast<bf16*>(device_random_bf16(size_t(cache), rng, 1.f));
  bf16* v = static_cast<bf16*>(device_random_bf16(size_t(cache), rng, 1.f));
  bf16* q = static_cast<bf16*>(device_random_bf16(size_t(B) * H * D, rng, 1.f));
  const std::vector<int32_t> lengths_host(size_t(B), L);
  int32_t* lengths;
  bf16* out;
  float* scratch;
  const int splits = attention_decode_splits(B, KVH, L, cuda_multiprocessors(), blocks_per_sm);
  lengths = device_copy(lengths_host);
  CUDA_CHECK(cudaMalloc(&out, size_t(B) * H * D * sizeof(bf16)));
  CUDA_CHECK(cudaMalloc(&scratch, size_t(attention_decode_scratch_floats(B, H, D, splits)) * sizeof(float)));
  const AttentionShape s{nullptr, 0, H, KVH, D, 0, 1.f / std::sqrt(float(D))};
  const double ms = median_ms([&] {
    attention_decode(out, q, DecodeCache{k, v, L}, lengths, B, L, s, splits, scratch, nullptr);
  });
  const double bytes = 2.0 * double(cache) * sizeof(bf16);
  std::printf("decode B=%-3d L=%-6d H32 KVH8 D128  blocks/SM %2d  splits %3d  %8.4f ms  %7.1f GB/s\n", B, L,
              blocks_per_sm, splits, ms, bytes / ms * 1e-6);
  for (void* p : {static_cast<void*>(k), static_cast<void*>(v), static_cast<void*>(q), static_cast<void*>(lengths),
                  static_cast<void*>(out), static_cast<void*>(scratch)})
    CUDA_CHECK(cudaFree(p));
}

}  // namespace
}  // namespace loom

int main(int argc, char** argv) {
  try {
    if (!loom::cuda_available()) {
      std::fprintf(stderr, "error: attention_bench needs a GPU (%s)\n", loom::cuda_device_summary().c_str());
      return 1;
    }
    std::printf("%s\n", loom::cuda_device_summary().c_str());
    if (argc > 1 && std::string(argv[1]) == "--decode") {
      for (const auto& [B, L] : {std::pair{1, 2048}, std::pair{1, 32768}, std::pair{64, 2048}, std::pair{64, 8192}})
        for (int blocks_per_sm : {2, 8, 16, 32}) loom::run_decode(B, L, blocks_per_sm);
      return 0;
    }
    const loom::BenchCase cases[] = {
        {"docs~240 H32 KVH8 D128", 16384, 240, 32, 8, 128, 0},
        {"docs~240 H32 KVH8 D64", 16384, 240, 32, 8, 64, 0},
        {"docs~2048 H32 KVH8 D128", 16384, 2048, 32, 8, 128, 0},
        {"docs~2048 win512 D128", 16384, 2048, 32, 8, 128, 512},
        {"one doc 16K H32 KVH8 D128", 16384, 0, 32, 8, 128, 0},
        {"one doc 16K H32 KVH8 D64", 16384, 0, 32, 8, 64, 0},
        {"docs~512 H32 KVH8 D128", 16384, 512, 32, 8, 128, 0},
        {"docs~1024 H32 KVH8 D128", 16384, 1024, 32, 8, 128, 0},
        {"docs~512 H32 KVH8 D64", 16384, 512, 32, 8, 64, 0},
    };
    const int ncases = static_cast<int>(std::size(cases));
    if (argc > 2 && std::string(argv[1]) == "--case") {
      const int i = std::atoi(argv[2]);
      if (i < 0 || i >= ncases) throw std::runtime_error("--case takes 0.." + std::to_string(ncases - 1));
      loom::run(cases[i]);
      return 0;
    }
    const int n = argc > 1 ? std::atoi(argv[1]) : ncases;
    for (int i = 0; i < n && i < ncases; ++i) loom::run(cases[i]);
  } catch (...) {
    std::fprintf(stderr, "error: %s\n", loom::describe_current_exception().c_str());
    return 1;
  }
  return 0;
}
