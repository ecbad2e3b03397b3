// NF4 GEMV on the GPU (math in ops/nf4_gemv.h).
#include "ops/error.h"
#include "ops/nf4_gemv.h"

namespace loom {
namespace {

constexpr int kWarpsPerBlock = 8;
constexpr int kWeightsPerLane = 8;                   // one 32-bit word of codes
constexpr int kWarpStep = 32 * kWeightsPerLane;     // 256 weights of a row per warp step

__device__ __forceinline__ float dequantized_bf16(float code_value, float scale) {
  return __bfloat162float(__float2bfloat16_rn(__fmul_rn(code_value, scale)));
}

// Warp n % kWarpsPerBlock of block n / kWarpsPerBlock computes y[t][n] for every t < kRows.
template <int kRows>
__global__ void __launch_bounds__(kWarpsPerBlock * 32)
    nf4_gemv_kernel(bf16* y, const bf16* x, const Nf4Device w, int N, int K) {
  __shared__ float table[16];
  if (threadIdx.x < 16) table[threadIdx.x] = w.quant_map[threadIdx.x];
  __syncthreads();
  const int n = blockIdx.x * kWarpsPerBlock + threadIdx.x / 32;
  if (n >= N) return;
  const int lane = threadIdx.x % 32;
  const int64_t row = int64_t(n) * K;
  float acc[kRows] = {};
#pragma unroll 4
  for (int k = lane * kWeightsPerLane; k < K; k += kWarpStep) {
    const int64_t e = row + k;
    const uint32_t word = *reinterpret_cast<const uint32_t*>(w.codes + e / 2);
    const float scale = nf4_block_scale(w, e / w.blocksize);  // blocksize % 8 == 0: one block
    float wv[kWeightsPerLane];
#pragma unroll
    for (int j = 0; j < 4; ++j) {  // byte j holds weights 2j (high nibble) and 2j + 1
      const uint32_t byte = (word >> (8 * j)) & 0xFFu;
      wv[2 * j] = dequantized_bf16(table[byte >> 4], scale);
      wv[2 * j + 1] = dequantized_bf16(table[byte & 0xFu], scale);
    }
#pragma unroll
    for (int t = 0; t < kRows; ++t) {
      const uint4 packed = *reinterpret_cast<const uint4*>(x + int64_t(t) * K + k);
      const bf16* xv = reinterpret_cast<const bf16*>(&packed);
#pragma unroll
      for (int i = 0; i < kWeightsPerLane; ++i) acc[t] = fmaf(wv[i], __bfloat162float(xv[i]), acc[t]);
    }
  }
#pragma unroll
  for (int t = 0; t < kRows; ++t) {
    for (int offset = 16; offset > 0; offset /= 2) acc[t] += __shfl_xor_sync(0xffffffffu, acc[t], offset);
    if (lane == 0) y[int64_t(t) * N + n] = __float2bfloat16_rn(acc[t]);
  }
}

template <int kRows>
void launch(bf16* y, const bf16* x, const Nf4Device& w, int N, int K, cudaStream_t stream) {
  const unsigned blocks = unsigned((N + kWarpsPerBlock - 1) / kWarpsPerBlock);
  nf4_gemv_kernel<kRows><<<blocks, kWarpsPerBlock * 32, 0, stream>>>(y, x, w, N, K);
}

}  // namespace

void nf4_gemv(bf16* y, const bf16* x, const Nf4Device& w, int64_t T, int N, int K, cudaStream_t stream) {
  LOOM_CHECK(T >= 1 && T <= kNf4GemvMaxRows, "nf4_gemv: T = ", T, " rows (1 to ", kNf4GemvMaxRows, ")");
  LOOM_CHECK(N >= 1 && K >= 8 && K % 8 == 0 && w.blocksize % 8 == 0 && w.numel == int64_t(N) * K,
             "nf4_gemv: a (", N, ", ", K, ") weight of ", w.numel, " elements, blocksize ", w.blocksize,
             " (K and the blocksize must be multiples of 8)");
  LOOM_CHECK(reinterpret_cast<uintptr_t>(x) % 16 == 0, "nf4_gemv: x must be 16-byte aligned");
  switch (T) {
    case 1: launch<1>(y, x, w, N, K, stream); break;
    case 2: launch<2>(y, x, w, N, K, stream); break;
    case 3: launch<3>(y, x, w, N, K, stream); break;
    case 4: launch<4>(y, x, w, N, K, stream); break;
    case 5: launch<5>(y, x, w, N, K, stream); break;
    case 6: launch<6>(y, x, w, N, K, stream); break;
    case 7: launch<7>(y, x, w, N, K, stream); break;
    default: launch<8>(y, x, w, N, K, stream); break;
  }
  CUDA_CHECK(cudaGetLastError());
}

}  // namespace loom
