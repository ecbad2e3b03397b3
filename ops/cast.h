// Conversions between fp32 and bf16, and fills, on the device (ops/cast.cu).
//   cast_fp32_to_bf16: out[i] = bf16_rn(in[i])  (round to nearest even, as torch's .to(torch.bfloat16))
//   cast_bf16_to_fp32: out[i] = float(in[i])    (exact)
//   fill:              out[i] = value           (value rounded to bf16 for a bf16 buffer)
// Used for the bf16 copies of the fp32 master LoRA weights, and by tests to poison outputs (NaN)
// before a kernel runs, so that an element the kernel forgot to write fails the comparison.
#pragma once
#include <cstdint>

#include "ops/cuda_common.h"

namespace loom {
// out (n) written; in (n). Any alignment works; 16-byte aligned pointers take the vector path.
void cast_fp32_to_bf16(bf16* out, const float* in, int64_t n, cudaStream_t stream);
void cast_bf16_to_fp32(float* out, const bf16* in, int64_t n, cudaStream_t stream);
void fill(bf16* out, float value, int64_t n, cudaStream_t stream);
void fill(float* out, float value, int64_t n, cudaStream_t stream);
}  // namespace loom
