// Times the LM head + cross-entropy of a training step (ops/cross_entropy.h lm_head_cross_entropy
// with dx: logits chunk by chunk, the loss, dlogits, dx = dlogits·W; the head is frozen, so no dW)
// beside cuBLASLt alone doing its two GEMMs at the same shape (logits = x·Wᵀ into a whole (T, V)
// bf16 buffer, dx = logits·W), issue 15's "LM head + cross-entropy" target (≥ 600 TFLOP/s on an H100).
//   build/lm_head_bench [--json FILE]
// Shapes: T = 16384 tokens (the sft-alpaca token budget) with qwen3-0.6b's head (C 1024, V 151,936)
// and llama-3.1-8b's (C 4096, V 128,256), the chunk the training plan uses (models/cuda_model.h
// lm_head_chunk_rows: a 512 MiB fp32 logits budget), and the same 512 MiB as bf16 logits (twice the
// rows a chunk, the rounding HF's bf16 lm_head has; not what training uses: a measurement of what the
// logits' bytes cost). FLOPs: 4·T·C·V for both (two GEMMs of 2·T·C·V); the cross-entropy's
// elementwise work is not counted. Each time is the median of 20 runs after 3 warm-ups (CUDA events).
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <random>
#include <string>
#include <vector>

#include "models/cuda_model.h"
#include "ops/cross_entropy.h"
#include "ops/cuda_common.h"
#include "ops/device.h"
#include "ops/error.h"
#include "ops/gemm.h"
#include "tools/bench_common.h"

namespace loom {
namespace {

constexpr size_t kWorkspace = size_t(32) << 20;

struct HeadShape {
  const char* preset;
  int64_t T;
  int C, V;
};

nlohmann::ordered_json run(const HeadShape& s, GemmContext& ctx) {
  const size_t T = size_t(s.T), C = size_t(s.C), V = size_t(s.V);
  std::mt19937_64 x_rng(1), w_rng(2);
  bf16* x = device_random_bf16(T * C, x_rng, 1.f);
  bf16* W = device_random_bf16(V * C, w_rng, 0.05f);
  std::vector<int32_t> targets_host(T);
  std::mt19937_64 rng(3);
  for (auto& t : targets_host) t = int32_t(rng() % V);
  int32_t* targets = device_copy(targets_host);
  const std::vector<float> weights_host(T, 1.f / float(T));
  float* token_weight = device_copy(weights_host);
  float *token_loss = device_alloc<float>(T), *loss_sum = device_alloc<float>(1);
  bf16* dx = device_alloc<bf16>(T * C);
  // The chunked head with logits of `type`, `chunk` rows at a time.
  const auto time_head = [&](GemmOut type, int chunk) {
    void* logits = device_alloc<uint8_t>(lm_head_logits_bytes(chunk, s.V, type));
    const double ms = median_ms([&] {
      lm_head_cross_entropy(ctx, dx, token_loss, loss_sum, logits, type, x, W, targets, token_weight, s.T, s.C, s.V,
                            chunk, nullptr);
    });
    CUDA_CHECK(cudaFree(logits));
    return ms;
  };
  const int chunk = lm_head_chunk_rows(s.V, s.T, true);
  const int chunk_bf16 = int(std::min<int64_t>(2 * int64_t(chunk), s.T));  // the same bytes
  const double fused_ms = time_head(GemmOut::kFp32, chunk);
  const double bf16_ms = time_head(GemmOut::kBf16, chunk_bf16);
  bf16* all_logits = device_alloc<bf16>(T * V);  // cuBLASLt alone: both GEMMs over the whole (T, V)
  const double gemm_ms = median_ms([&] {
    gemm(ctx, all_logits, x, W, s.T, s.V, s.C, false, true, 1.f, 0.f, GemmOut::kBf16, nullptr);
    gemm(ctx, dx, all_logits, W, s.T, s.C, s.V, false, false, 1.f, 0.f, GemmOut::kBf16, nullptr);
  });
  for (void* p : {static_cast<void*>(x), static_cast<void*>(W), static_cast<void*>(targets),
                  static_cast<void*>(token_weight), static_cast<void*>(token_loss), static_cast<void*>(loss_sum),
                  static_cast<void*>(dx), static_cast<void*>(all_logits)})
    CUDA_CHECK(cudaFree(p));
  const double flops = 4.0 * double(T) * double(C) * double(V);
  nlohmann::ordered_json j = {{"preset", s.preset},
                              {"T", s.T},
                              {"C", s.C},
                              {"V", s.V},
                              {"chunk", chunk},
                              {"lm_head_ce_ms", fused_ms},
                              {"lm_head_ce_tflops", flops / fused_ms / 1e9},
                              {"bf16_logits_chunk", chunk_bf16},
                              {"bf16_logits_ms", bf16_ms},
                              {"bf16_logits_tflops", flops / bf16_ms / 1e9},
                              {"cublaslt_two_gemms_ms", gemm_ms},
                              {"cublaslt_two_gemms_tflops", flops / gemm_ms / 1e9}};
  std::fprintf(stderr, "%-13s T %lld C %5d V %6d chunk %5d | LM head + CE %7.2f ms %6.1f TFLOP/s | bf16 logits, "
               "chunk %5d %7.2f ms %6.1f TFLOP/s | cuBLASLt alone %7.2f ms %6.1f TFLOP/s\n",
               s.preset, static_cast<long long>(s.T), s.C, s.V, chunk, fused_ms, flops / fused_ms / 1e9, chunk_bf16,
               bf16_ms, flops / bf16_ms / 1e9, gemm_ms, flops / gemm_ms / 1e9);
  return j;
}

int bench(int argc, char** argv) {
  const std::string json_path = json_flag_only(argc, argv, "build/lm_head_bench");
  nlohmann::ordered_json j = kernel_bench_head("build/lm_head_bench");
  void* workspace = device_alloc<uint8_t>(kWorkspace);
  {
    GemmContext ctx(workspace, kWorkspace);
    for (const HeadShape& s :
         {HeadShape{"qwen3-0.6b", 16384, 1024, 151936}, HeadShape{"llama-3.1-8b", 16384, 4096, 128256}})
      j["shapes"].push_back(run(s, ctx));
  }
  CUDA_CHECK(cudaFree(workspace));
  emit_json(j, json_path);
  return 0;
}

}  // namespace
}  // namespace loom

int main(int argc, char** argv) { return loom::kernel_bench_main(argc, argv, loom::bench); }
