// The warpgroup MMA wrappers and shared-memory descriptors of ops/wgmma.cuh, each against a plain
// C++ product on random bf16 inputs: the Hopper attention kernels and the Hopper grouped GEMM rest on
// exactly these forms, so a wrong fragment order, swizzle or descriptor stride fails here with the
// element named instead of somewhere inside a kernel's output. Runs in GPU_ARCH=90 builds on an sm_90 GPU.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <vector>

#include "ops/cuda_common.h"
#include "ops/wgmma.cuh"
#include "tests/device_array.h"
#include "tests/test_util.h"

namespace loom {
namespace {

constexpr int kM = 64;  // one warpgroup's rows
constexpr int kThreads = 128;

// Writes a rows x cols row-major bf16 matrix into a swizzled tile (ops/wgmma.cuh's layout: cols / 64
// column blocks of rows x 128 bytes).
__device__ void store_swizzled(unsigned char* tile, const bf16* src, int rows, int cols) {
  for (int chunk = threadIdx.x; chunk < rows * cols / 8; chunk += kThreads) {
    const int r = chunk / (cols / 8), c = chunk % (cols / 8);
    *reinterpret_cast<uint4*>(tile + wgmma::swizzled_offset(rows, r, c)) =
        *reinterpret_cast<const uint4*>(src + r * cols + c * 8);
  }
}

// Where operand A comes from: registers (as P in P V), shared memory K-major (Q in Q K^T, K in
// K Q^T) or shared memory M-major (dS in dS K, stored as dS^T).
enum AFrom { kRegisters, kSharedKMajor, kSharedMMajor };

// c (64 x N) = a (64 x K) b (K x N), one warpgroup. The device buffers hold the operands as the
// kernels store them:
//   a_buf: kRegisters: a row-major; kSharedKMajor: A_ROWS x K row-major with a in its last 64 rows
//          (A_ROWS 128 puts them 8,192 bytes into each column block, where the second warpgroup's
//          rows are); kSharedMMajor: a^T, K x 64 row-major.
//   b_buf: kBMnMajor false: b^T, N x K row-major (K-major); true: K x B_WIDTH row-major with b in
//          columns B_COL0.. (MN-major; B_COL0 64 is the second column block, 32 half a block in).
template <int N, int K, AFrom A_FROM, int A_ROWS, bool B_MN, int B_WIDTH, int B_COL0>
__global__ void product_kernel(const bf16* a_buf, const bf16* b_buf, float* c) {
#ifdef LOOM_WGMMA
  extern __shared__ unsigned char smem[];
  unsigned char* base = smem + ((1024u - (smem_addr(smem) & 1023u)) & 1023u);
  unsigned char* tile_a = base;
  unsigned char* tile_b = base + 128 * 128 * 2;
  if (A_FROM == kSharedKMajor) store_swizzled(tile_a, a_buf, A_ROWS, K);
  if (A_FROM == kSharedMMajor) store_swizzled(tile_a, a_buf, K, kM);
  if (B_MN)
    store_swizzled(tile_b, b_buf, K, B_WIDTH);
  else
    store_swizzled(tile_b, b_buf, N, K);
  wgmma::fence_async_shared();
  __syncthreads();

  const uint32_t a_tile = smem_addr(tile_a), b_tile = smem_addr(tile_b);
  const uint32_t b_start = B_MN ? b_tile + (B_COL0 / 64) * K * 128 + (B_COL0 % 64) * 2 : b_tile;
  auto b_slice = [&](int kk) {
    return B_MN ? wgmma::mnmajor_slice(b_start, K, kk) : wgmma::kmajor_slice(b_start, N, kk);
  };
  float d[N / 8][4] = {};
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, q = lane % 4;
  if constexpr (A_FROM == kRegisters) {
    static_assert(B_MN && (N == 128 || N == 64), "register A is wrapped with an MN-major B of 64 or 128 columns");
    auto pair = [&](int row, int col) {
      __nv_bfloat162 v{a_buf[row * K + col], a_buf[row * K + col + 1]};
      return *reinterpret_cast<uint32_t*>(&v);
    };
    const int row = 16 * warp + g;
    uint32_t frag[K / 16][4];
#pragma unroll
    for (int kk = 0; kk < K / 16; ++kk) {
      frag[kk][0] = pair(row, 16 * kk + 2 * q);
      frag[kk][1] = pair(row + 8, 16 * kk + 2 * q);
      frag[kk][2] = pair(row, 16 * kk + 2 * q + 8);
      frag[kk][3] = pair(row + 8, 16 * kk + 2 * q + 8);
    }
    wgmma::fence_registers(d);
    wgmma::fence_registers(frag);
    wgmma::fence();
#pragma unroll
    for (int kk = 0; kk < K / 16; ++kk) {
      if constexpr (N == 128)
        wgmma::wgmma_m64n128k16_rs(d, frag[kk], b_slice(kk));
      else
        wgmma::wgmma_m64n64k16_rs(d, frag[kk], b_slice(kk));
    }
  } else {
    constexpr int kTa = A_FROM == kSharedMMajor, kTb = B_MN;
    auto a_slice = [&](int kk) {
      return A_FROM == kSharedMMajor ? wgmma::mnmajor_slice(a_tile, K, kk)
                                     : wgmma::kmajor_slice(a_tile + (A_ROWS - kM) * 128, A_ROWS, kk);
    };
    wgmma::fence_registers(d);
    wgmma::fence();
#pragma unroll
    for (int kk = 0; kk < K / 16; ++kk) {
      if constexpr (N == 128)
        wgmma::wgmma_m64n128k16_ss<kTa, kTb>(d, a_slice(kk), b_slice(kk), kk > 0);
      else if constexpr (N == 64)
        wgmma::wgmma_m64n64k16_ss<kTa, kTb>(d, a_slice(kk), b_slice(kk), kk > 0);
      else
        wgmma::wgmma_m64n32k16_ss<kTa, kTb>(d, a_slice(kk), b_slice(kk), kk > 0);
    }
  }
  wgmma::commit();
  wgmma::wait<0>();
  wgmma::fence_registers(d);
#pragma unroll
  for (int n = 0; n < N / 8; ++n)
#pragma unroll
    for (int e = 0; e < 4; ++e) c[(16 * warp + g + 8 * (e / 2)) * N + 8 * n + 2 * q + e % 2] = d[n][e];
#endif
}

std::vector<uint16_t> to_bits(const std::vector<float>& v) {
  std::vector<uint16_t> bits;
  for (float x : v) bits.push_back(float_to_bf16_bits(x));
  return bits;
}

// Runs one form on seeded inputs and compares every element with a double-precision product of the
// same bf16 values. The wgmma sums exact products of bf16 inputs in fp32: K <= 128 terms err by at
// most ~K * 2^-24 * sum|a b| < 1e-5 * sum|a b|; 1e-4 of sum|a b| leaves margin, while a misplaced
// element is off by O(1).
template <int N, int K, AFrom A_FROM, int A_ROWS, bool B_MN, int B_WIDTH, int B_COL0>
void check_form(uint64_t seed) {
  const std::vector<float> a = test::random_bf16_values(kM * K, seed, 1.f);  // 64 x K
  const std::vector<float> b = test::random_bf16_values(K * N, seed + 1, 1.f);  // K x N
  std::vector<float> a_buf, b_buf;
  if (A_FROM == kRegisters) a_buf = a;
  if (A_FROM == kSharedKMajor) {
    a_buf = test::random_bf16_values((A_ROWS - kM) * K, seed + 2, 1.f);  // rows the product skips
    a_buf.insert(a_buf.end(), a.begin(), a.end());
  }
  if (A_FROM == kSharedMMajor) {
    a_buf.resize(K * kM);
    for (int i = 0; i < kM; ++i)
      for (int k = 0; k < K; ++k) a_buf[k * kM + i] = a[i * K + k];
  }
  if (B_MN) {
    b_buf = test::random_bf16_values(K * B_WIDTH, seed + 3, 1.f);  // columns the product skips
    for (int k = 0; k < K; ++k)
      for (int j = 0; j < N; ++j) b_buf[k * B_WIDTH + B_COL0 + j] = b[k * N + j];
  } else {
    b_buf.resize(N * K);
    for (int k = 0; k < K; ++k)
      for (int j = 0; j < N; ++j) b_buf[j * K + k] = b[k * N + j];
  }
  test::DeviceArray<bf16> a_dev(a_buf.size()), b_dev(b_buf.size());
  test::DeviceArray<float> c(kM * N);
  a_dev.upload(to_bits(a_buf));
  b_dev.upload(to_bits(b_buf));
  c.poison();
  const size_t smem = 1024 + 2 * 128 * 128 * 2;
  auto kernel = product_kernel<N, K, A_FROM, A_ROWS, B_MN, B_WIDTH, B_COL0>;
  CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem)));
  kernel<<<1, kThreads, smem>>>(a_dev.get(), b_dev.get(), c.get());
  CUDA_CHECK(cudaDeviceSynchronize());
  const std::vector<float> got = c.download<float>();
  ASSERT_EQ(got.size(), size_t(kM * N));
  int bad = 0;
  for (int i = 0; i < kM; ++i)
    for (int j = 0; j < N; ++j) {
      double want = 0, mag = 0;
      for (int k = 0; k < K; ++k) {
        want += double(a[i * K + k]) * b[k * N + j];
        mag += std::fabs(double(a[i * K + k]) * b[k * N + j]);
      }
      const float v = got[i * N + j];
      if (!(std::fabs(v - want) <= 1e-4 * mag) && bad++ < 5)
        ADD_FAILURE() << "c[" << i << "][" << j << "] = " << v << ", want " << want;
    }
  EXPECT_EQ(bad, 0) << bad << " of " << kM * N << " elements wrong";
}

bool hopper_gpu() {
  int device = 0, major = 0, minor = 0;
  CUDA_CHECK(cudaGetDevice(&device));
  CUDA_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device));
  CUDA_CHECK(cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device));
  return LOOM_GPU_ARCH == 90 && major == 9 && minor == 0;
}

#define REQUIRE_HOPPER()                                                         \
  do {                                                                           \
    REQUIRE_GPU();                                                               \
    if (!hopper_gpu()) GTEST_SKIP() << "needs a GPU_ARCH=90 build on an sm_90 GPU"; \
  } while (0)

}  // namespace

// Forward (ops/attention_hopper_kernels.cuh). Q K^T, head dim 128, the second warpgroup's rows.
TEST(WgmmaGpu, QKtD128SecondWarpgroup) {
  REQUIRE_HOPPER();
  check_form<128, 128, kSharedKMajor, 128, false, 0, 0>(5);
}

TEST(WgmmaGpu, QKtD64) {
  REQUIRE_HOPPER();
  check_form<128, 64, kSharedKMajor, 64, false, 0, 0>(6);
}

// P V, head dim 128: V's two 64-column blocks (the leading byte offset).
TEST(WgmmaGpu, PVD128) {
  REQUIRE_HOPPER();
  check_form<128, 128, kRegisters, 64, true, 128, 0>(7);
}

TEST(WgmmaGpu, PVD64) {
  REQUIRE_HOPPER();
  check_form<64, 128, kRegisters, 64, true, 64, 0>(9);
}

// Backward. S^T = K Q^T for the second warpgroup's 64 keys (head dim 128).
TEST(WgmmaGpu, KQtSecondWarpgroup) {
  REQUIRE_HOPPER();
  check_form<64, 128, kSharedKMajor, 128, false, 0, 0>(11);
}

// dQ = dS K, head dim 128: dS^T M-major, the second warpgroup's head dims (K's second column block).
TEST(WgmmaGpu, DsKD128SecondHalf) {
  REQUIRE_HOPPER();
  check_form<64, 128, kSharedMMajor, 64, true, 128, 64>(13);
}

// dQ = dS K, head dim 64: the second warpgroup's 32 head dims start half a swizzle row in.
TEST(WgmmaGpu, DsKD64SecondHalf) {
  REQUIRE_HOPPER();
  check_form<32, 128, kSharedMMajor, 64, true, 64, 32>(15);
}

// Grouped GEMM nn (ops/grouped_gemm.cu, Hopper kernel): W_e stored (K, N) is an MN-major B, 64 k rows
// by 256 columns; the second n128 half starts two column blocks in.
TEST(WgmmaGpu, GroupedNnSecondHalf) {
  REQUIRE_HOPPER();
  check_form<128, 64, kSharedKMajor, 128, true, 256, 128>(17);
}

}  // namespace loom
