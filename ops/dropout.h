// Dropout with a counter-based mask (PEFT's nn.Dropout on the LoRA input, in train mode):
//   keep(i) = random_unit(seed, stream, i) >= p        (ops/random.h: a pure function of its inputs)
//   f(i)    = keep(i) ? 1 / (1 - p) : 0
//   forward:  y[i]   = x[i] · f(i)
//   backward: dx[i] += dy[i] · f(i)                     (the mask is regenerated, never stored)
// The CPU reference and the GPU draw the same mask, so the two paths drop the same elements.
// torch draws its masks from its own generator: loom's runs are reproducible, not bit-equal to PEFT's.
#pragma once
#include <cstdint>

#include "ops/random.h"

namespace loom {

LOOM_HD inline float dropout_factor(uint64_t seed, uint64_t stream, uint64_t i, float p) {
  return random_unit(seed, stream, i) >= p ? 1.f / (1.f - p) : 0.f;
}

// y (n) written; p in [0, 1).
void dropout_forward_ref(float* y, const float* x, int64_t n, uint64_t seed, uint64_t stream, float p);
// dx (n) accumulated (+=).
void dropout_backward_ref(float* dx, const float* dy, int64_t n, uint64_t seed, uint64_t stream, float p);
}  // namespace loom

// CUDA path (ops/dropout.cu): bf16 in and out, fp32 math, one rounding per output. Element i of the
// arrays is element first + i of the mask: a piece of a longer array (the MLP's sequence tiles) draws
// the mask the whole array would.
#include "ops/cuda_common.h"

namespace loom {
// y (n) written; may alias x.
void dropout_forward(bf16* y, const bf16* x, int64_t n, uint64_t seed, uint64_t stream, float p, cudaStream_t cs,
                     uint64_t first = 0);
// dx (n) accumulated: bf16(dx + dy · f), fp32 sum, one rounding.
void dropout_backward(bf16* dx, const bf16* dy, int64_t n, uint64_t seed, uint64_t stream, float p,
                      cudaStream_t cs, uint64_t first = 0);
}  // namespace loom
