// NF4 dequantization to bf16 (format in ops/nf4.h and FORMATS.md section 3):
//   A[b] = absmax[b]                                                   (plain)
//   A[b] = nested_map[absmax_q[b]] * nested_absmax[b / 256] + offset    (double quantization)
//   w[n] = bf16_rn(quant_map[code(n)] * A[n / blocksize])              (out written, =)
//   code(n) = high nibble of byte n/2 for even n, low nibble for odd n.
// Every product and sum is rounded to fp32 on its own (__fmul_rn, __fadd_rn: no FMA contraction),
// in the order bitsandbytes evaluates them (dequantize_blockwise, then += offset), so the result is
// bit-exact with the fp32 reference rounded to bf16.
// A warp owns 1024 consecutive elements, in 4 steps of 256: at each step lane l decodes 4 code bytes
// into the 8 outputs at 8l, so the warp's 16-byte stores are contiguous (on an H200 this ran 1.6x
// faster than one thread storing 32 consecutive outputs: 3.0 vs 1.9 TB/s). Every load is issued
// before the first store. blocksize % 8 == 0 keeps each 8-element vector inside one block; a ragged
// tail (numel % 8) is done element by element. The pieces variant runs one such grid per piece
// (blockIdx.y), each block reading its piece's descriptor from device memory.
#include <algorithm>

#include "ops/kernel_util.cuh"
#include "ops/nf4.h"

namespace loom {
namespace {

constexpr int kThreads = 256;
constexpr int kElemsPerVec = 8;  // 4 code bytes -> one 16-byte store
constexpr int kSteps = 4;
constexpr int kStepSpan = 32 * kElemsPerVec;    // 256 elements per warp and step
constexpr int kWarpSpan = kSteps * kStepSpan;  // 1024

// ---------------------------------------------------------------------------------------------
// CUDA kernels

// The 1024 elements of warp `warp` of the weight w into out (table: w's code table in shared memory).
__device__ __forceinline__ void dequantize_warp_span(bf16* out, const Nf4Device& w, const float* table,
                                                     int64_t warp) {
  const int64_t first = warp * kWarpSpan + (threadIdx.x % 32) * kElemsPerVec;
  uint32_t codes[kSteps];
  float scale[kSteps];
#pragma unroll
  for (int s = 0; s < kSteps; ++s) {
    const int64_t e = first + s * kStepSpan;
    codes[s] = e + kElemsPerVec <= w.numel ? *reinterpret_cast<const uint32_t*>(w.codes + e / 2) : 0u;
    scale[s] = e < w.numel ? nf4_block_scale(w, e / w.blocksize) : 0.f;
  }
#pragma unroll
  for (int s = 0; s < kSteps; ++s) {
    const int64_t e = first + s * kStepSpan;
    if (e + kElemsPerVec <= w.numel) {
      const uint8_t* bytes = reinterpret_cast<const uint8_t*>(&codes[s]);
      float x[8];
#pragma unroll
      for (int k = 0; k < 4; ++k) {
        x[2 * k] = __fmul_rn(table[bytes[k] >> 4], scale[s]);
        x[2 * k + 1] = __fmul_rn(table[bytes[k] & 0xF], scale[s]);
      }
      store_bf16x8(out + e, x);
      continue;
    }
    for (int64_t n = e; n < w.numel; ++n) {
      const uint8_t byte = w.codes[n / 2];
      out[n] = __float2bfloat16_rn(__fmul_rn(table[n % 2 == 0 ? byte >> 4 : byte & 0xF], scale[s]));
    }
  }
}

__global__ void nf4_dequantize_kernel(bf16* out, const Nf4Device w) {
  __shared__ float table[16];
  if (threadIdx.x < 16) table[threadIdx.x] = w.quant_map[threadIdx.x];
  __syncthreads();
  dequantize_warp_span(out, w, table, (blockIdx.x * int64_t(blockDim.x) + threadIdx.x) / 32);
}

// Piece blockIdx.y of `pieces` into out + blockIdx.y · stride.
__global__ void nf4_dequantize_pieces_kernel(bf16* out, int64_t stride, const Nf4Device* pieces) {
  __shared__ float table[16];
  const Nf4Device w = pieces[blockIdx.y];
  if (threadIdx.x < 16) table[threadIdx.x] = w.quant_map[threadIdx.x];
  __syncthreads();
  dequantize_warp_span(out + blockIdx.y * stride, w, table, (blockIdx.x * int64_t(blockDim.x) + threadIdx.x) / 32);
}

void check_weight(const Nf4Device& w) {
  LOOM_CHECK(w.numel >= 0 && w.blocksize > 0 && w.blocksize % kElemsPerVec == 0,
             "nf4_dequantize: blocksize must be a positive multiple of 8 (found ", w.blocksize, ", numel ", w.numel,
             "); check quant_state blocksize in the checkpoint");
  const bool have_scales = w.nested() ? w.nested_absmax != nullptr && w.nested_map != nullptr : w.absmax != nullptr;
  LOOM_CHECK(w.codes != nullptr && w.quant_map != nullptr && have_scales,
             "nf4_dequantize: missing buffer (codes, quant_map, and absmax or absmax_q + nested_absmax + nested_map)");
  LOOM_CHECK(!w.nested() || w.nested_blocksize > 0, "nf4_dequantize: nested_blocksize must be > 0 (found ",
             w.nested_blocksize, ")");
  LOOM_CHECK(is_aligned_16(w.codes), "nf4_dequantize: codes must be 16-byte aligned");
}

unsigned blocks_for(int64_t numel) { return unsigned(ceil_div(ceil_div(numel, kWarpSpan) * 32, int64_t(kThreads))); }

}  // namespace

// ---------------------------------------------------------------------------------------------
// kernel launchers

void nf4_dequantize(bf16* out, const Nf4Device& w, cudaStream_t stream) {
  check_weight(w);
  LOOM_CHECK(is_aligned_16(out), "nf4_dequantize: out must be 16-byte aligned");
  if (w.numel == 0) return;
  nf4_dequantize_kernel<<<blocks_for(w.numel), kThreads, 0, stream>>>(out, w);
  CUDA_CHECK(cudaGetLastError());
}

void nf4_dequantize_pieces(bf16* out, int64_t stride, const Nf4Device* pieces, const Nf4Device* device_pieces,
                           int count, cudaStream_t stream) {
  LOOM_CHECK(count >= 0 && count <= 65535 && stride % kElemsPerVec == 0 && is_aligned_16(out) && device_pieces,
             "nf4_dequantize_pieces: ", count, " pieces (at most 65535) every ", stride,
             " elements (a multiple of 8) into a 16-byte aligned out, with their descriptors on the device");
  int64_t longest = 0;
  for (int i = 0; i < count; ++i) {
    check_weight(pieces[i]);
    LOOM_CHECK(pieces[i].numel <= stride, "nf4_dequantize_pieces: piece ", i, " has ", pieces[i].numel,
               " elements, more than the stride ", stride);
    longest = std::max(longest, pieces[i].numel);
  }
  if (longest == 0) return;
  nf4_dequantize_pieces_kernel<<<dim3(blocks_for(longest), unsigned(count)), kThreads, 0, stream>>>(out, stride,
                                                                                                   device_pieces);
  CUDA_CHECK(cudaGetLastError());
}

}  // namespace loom
