// y[t, j] += b[j] on bf16 rows (ops/bias.h).
#include "ops/bias.h"

namespace loom {
namespace {

__global__ void bias_add_kernel(bf16* y, const bf16* b, int64_t n, int out) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    y[i] = __float2bfloat16_rn(__bfloat162float(y[i]) + __bfloat162float(b[i % out]));
}

}  // namespace

void bias_add(bf16* y, const bf16* b, int64_t N, int out, cudaStream_t stream) {
  const int64_t n = N * out;
  if (n == 0) return;
  const int threads = 256;
  const int blocks = int(std::min<int64_t>(ceil_div(n, threads), 4096));
  bias_add_kernel<<<blocks, threads, 0, stream>>>(y, b, n, out);
  CUDA_CHECK(cudaGetLastError());
}

}  // namespace loom
