// NF4 GEMV on the GPU (math in ops/nf4_gemv.h).
#include "ops/error.h"
#include "ops/nf4_gemv.h"

namespace loom {
namespace {

constexpr int kWarpsPerBlock = 8;  // 256 threads: one builds each entry of the byte table

// kWords 32-bit words of codes a lane reads at a time: 8·kWords weights of one quantization block.
template <int kWords>
struct Codes;
template <>
struct Codes<1> {
  uint32_t word[1];
  __device__ __forceinline__ void load(const uint8_t* p) { word[0] = __ldg(reinterpret_cast<const uint32_t*>(p)); }
};
template <>
struct Codes<4> {
  uint32_t word[4];
  __device__ __forceinline__ void load(const uint8_t* p) {
    const uint4 v = __ldg(reinterpret_cast<const uint4*>(p));
    word[0] = v.x, word[1] = v.y, word[2] = v.z, word[3] = v.w;
  }
};

// Warp n % kWarpsPerBlock of block n / kWarpsPerBlock computes y[t][n] for every t < kRows. Each lane
// walks its row in chunks of 8·kWords weights, reading the next chunk's codes and scale before
// multiplying the current one (two loads in flight per lane).
template <int kRows, int kWords>
__global__ void __launch_bounds__(kWarpsPerBlock * 32)
    nf4_gemv_kernel(bf16* y, const bf16* x, const Nf4Device w, int N, int K) {
  constexpr int kChunk = 8 * kWords, kWarpStep = 32 * kChunk;
  __shared__ float2 byte_values[256];  // a byte's two code values: (high nibble, low nibble)
  byte_values[threadIdx.x] = make_float2(w.quant_map[threadIdx.x >> 4], w.quant_map[threadIdx.x & 15]);
  __syncthreads();
  const int n = blockIdx.x * kWarpsPerBlock + threadIdx.x / 32;
  if (n >= N) return;
  const int lane = threadIdx.x % 32;
  const int64_t row = int64_t(n) * K;
  float acc[kRows] = {};
  int k = lane * kChunk;
  Codes<kWords> codes;
  float scale = 0.f;
  if (k < K) codes.load(w.codes + (row + k) / 2), scale = nf4_block_scale(w, (row + k) / w.blocksize);
  for (; k < K; k += kWarpStep) {
    Codes<kWords> next = codes;
    float next_scale = scale;
    if (k + kWarpStep < K) {
      next.load(w.codes + (row + k + kWarpStep) / 2);
      next_scale = nf4_block_scale(w, (row + k + kWarpStep) / w.blocksize);
    }
    float part[kRows] = {};
#pragma unroll
    for (int j = 0; j < kWords; ++j) {  // word j: weights k + 8j .. k + 8j + 7, byte i holding 2i and 2i + 1
      float2 v[4];
#pragma unroll
      for (int i = 0; i < 4; ++i) v[i] = byte_values[(codes.word[j] >> (8 * i)) & 0xFFu];
#pragma unroll
      for (int t = 0; t < kRows; ++t) {
        const uint4 packed = __ldg(reinterpret_cast<const uint4*>(x + int64_t(t) * K + k + 8 * j));
        const __nv_bfloat162* xv = reinterpret_cast<const __nv_bfloat162*>(&packed);
#pragma unroll
        for (int i = 0; i < 4; ++i) {
          const float2 xf = __bfloat1622float2(xv[i]);
          part[t] = fmaf(v[i].x, xf.x, part[t]);
          part[t] = fmaf(v[i].y, xf.y, part[t]);
        }
      }
    }
#pragma unroll
    for (int t = 0; t < kRows; ++t) acc[t] = fmaf(scale, part[t], acc[t]);
    codes = next;
    scale = next_scale;
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
  if (K % 32 == 0 && w.blocksize % 32 == 0)  // 16 bytes of codes a lane, within one block
    nf4_gemv_kernel<kRows, 4><<<blocks, kWarpsPerBlock * 32, 0, stream>>>(y, x, w, N, K);
  else
    nf4_gemv_kernel<kRows, 1><<<blocks, kWarpsPerBlock * 32, 0, stream>>>(y, x, w, N, K);
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
