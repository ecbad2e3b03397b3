// Bias of a frozen linear layer (Qwen2 q/k/v, Llama attention_bias / mlp_bias): y[t, j] += b[j].
// The bias is frozen, so its backward is the identity on dy (nothing to compute). The reference
// path adds it inside lora_linear_forward_ref; the CUDA path after the GEMM.
#pragma once
#include <cstdint>

#include "ops/cuda_common.h"

namespace loom {
// y (N, out) bf16 updated in place: bf16(y + b), fp32 add, one rounding; b (out) bf16.
void bias_add(bf16* y, const bf16* b, int64_t N, int out, cudaStream_t stream);
}  // namespace loom
