// The two ceilings of the device that MFU and bandwidth figures are quoted against (definitions
// in engine/flops.h). Operands are filled with random values on the device first: a matmul on
// zeros draws less power, so runs at higher clocks, and would overstate the peak (BENCHMARK.md:
// "never time on zeros").
#include <cuda_runtime.h>

#include <algorithm>
#include <vector>

#include "ops/device.h"
#include "engine/flops.h"
#include "ops/cuda_common.h"
#include "ops/gemm.h"

namespace loom {
namespace {

constexpr int64_t kMatmulSize = 8192;                   // BENCHMARK.md: 8192×8192×8192
constexpr int kMatmulWarmup = 3, kMatmulRuns = 20;      // BENCHMARK.md: median of >= 10 after warm-up
constexpr size_t kCopyBytes = size_t(2) << 30;          // BENCHMARK.md: >= 2 GiB, far beyond any L2
constexpr int kCopyWarmup = 2, kCopyRuns = 10;
constexpr size_t kGemmWorkspace = size_t(32) << 20;     // as the model's GemmContext (cuBLASLt on Hopper)

// ----------------------------------------------------------------------------------------------
// CUDA kernels

// SplitMix64's finaliser (data/rng.h) of (seed, index): independent uniform bits per element.
__device__ __forceinline__ uint64_t hash64(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

// out[i] = bf16(U[-1, 1)) from the top 24 bits of hash64(seed·2⁶⁴/φ + i).
__global__ void fill_uniform_kernel(bf16* out, int64_t n, uint64_t seed) {
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
    const uint64_t bits = hash64(seed * 0x9E3779B97F4A7C15ull + uint64_t(i));
    out[i] = __float2bfloat16_rn(float(bits >> 40) * 0x1.0p-23f - 1.f);
  }
}

// ----------------------------------------------------------------------------------------------
// host side

void fill_uniform(bf16* out, int64_t n, uint64_t seed, cudaStream_t stream) {
  constexpr int kThreads = 256;
  const int blocks = int(std::min<int64_t>(ceil_div(n, kThreads), 65536));
  fill_uniform_kernel<<<blocks, kThreads, 0, stream>>>(out, n, seed);
  CUDA_CHECK(cudaGetLastError());
}

void require_free_memory(size_t bytes, const char* what) {
  LOOM_CHECK(cuda_available(), what, " needs a CUDA device: ", cuda_device_summary());
  size_t free_b = 0, total_b = 0;
  CUDA_CHECK(cudaMemGetInfo(&free_b, &total_b));
  LOOM_CHECK(free_b >= bytes, what, " needs ", double(bytes) / double(1 << 30), " GiB of free device memory, ",
             double(free_b) / double(1 << 30), " GiB are free; measure it before anything else claims the device");
}

// Device buffers freed on every exit path (a failed LOOM_CHECK throws).
struct DeviceBuffers {
  std::vector<void*> ptrs;
  void* alloc(size_t bytes) {
    void* p = nullptr;
    CUDA_CHECK(cudaMalloc(&p, bytes));
    ptrs.push_back(p);
    return p;
  }
  ~DeviceBuffers() {
    for (void* p : ptrs) cudaFree(p);
  }
};

}  // namespace

double measure_matmul_tflops() {
  const int64_t n = kMatmulSize;
  const size_t matrix_bytes = size_t(n * n) * sizeof(bf16);
  require_free_memory(3 * matrix_bytes + kGemmWorkspace, "the matmul ceiling (8192³ bf16)");
  DeviceBuffers buf;
  auto* a = static_cast<bf16*>(buf.alloc(matrix_bytes));  // (n, n) activations
  auto* b = static_cast<bf16*>(buf.alloc(matrix_bytes));  // (n, n) weight, used transposed as x·Wᵀ
  void* d = buf.alloc(matrix_bytes);                      // (n, n) bf16 output
  void* workspace = buf.alloc(kGemmWorkspace);
  cudaStream_t stream;
  CUDA_CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  fill_uniform(a, n * n, 1, stream);
  fill_uniform(b, n * n, 2, stream);
  double ms = 0;
  {
    GemmContext ctx(workspace, kGemmWorkspace);
    ms = median_event_ms(kMatmulWarmup, kMatmulRuns, stream, [&] {
      gemm(ctx, d, a, b, n, n, n, false, true, 1.f, 0.f, GemmOut::kBf16, stream);
    });
  }
  CUDA_CHECK(cudaStreamDestroy(stream));
  return 2.0 * double(n) * double(n) * double(n) / (ms * 1e-3) / 1e12;
}

double measure_copy_tbps() {
  require_free_memory(2 * kCopyBytes, "the copy ceiling (2 GiB device-to-device)");
  DeviceBuffers buf;
  auto* src = static_cast<bf16*>(buf.alloc(kCopyBytes));
  void* dst = buf.alloc(kCopyBytes);
  cudaStream_t stream;
  CUDA_CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  fill_uniform(src, int64_t(kCopyBytes / sizeof(bf16)), 3, stream);
  const double ms = median_event_ms(kCopyWarmup, kCopyRuns, stream, [&] {
    CUDA_CHECK(cudaMemcpyAsync(dst, src, kCopyBytes, cudaMemcpyDeviceToDevice, stream));
  });
  CUDA_CHECK(cudaStreamDestroy(stream));
  return 2.0 * double(kCopyBytes) / (ms * 1e-3) / 1e12;
}

}  // namespace loom
