// RMSNorm with the residual add fused in, forward and backward (math in ops/rmsnorm.h).
//   forward:  residual = a + b (=, bf16) ; rstd = 1/sqrt(mean(residual^2) + eps) (=, fp32, saved)
//             out = bf16(bf16(residual * rstd) * w) (=)           as HF: weight * hidden.to(bf16)
//   backward: xhat = inp * rstd, dxhat = dout * w (fp32, rebuilt from inp: nothing else is saved)
//             dinp = rstd * (dxhat - xhat * mean(dxhat * xhat)) + dresidual (=)
// One group of `kLanes` threads per row (4..32 lanes, so that a D = 128 head row does not leave half
// a warp idle), each lane striding over the row in 16-byte vectors. Two passes over the row: a
// reduction, then the elementwise pass, whose re-read of the row mostly hits L1/L2; each pass loads
// kVecsInFlight vectors a lane before it uses them (forward). A forward of at most kRowKernelMaxRows
// rows (a decode step) takes a block per row instead (rmsnorm_row_forward_kernel).
#include <initializer_list>
#include <type_traits>

#include "ops/kernel_util.cuh"
#include "ops/rmsnorm.h"

namespace loom {
namespace {

constexpr int kThreads = 128;
// 16-byte vectors a lane loads before it uses the first. One at a time, a decode step's single row
// (4096 wide: 16 vectors a lane) waited 16 memory latencies in each pass, ≈ 14 µs a call on an H100
// (tools/perf_notes.md); the vectors are still summed in the same order, so the bits do not change.
constexpr int kVecsInFlight = 4;

// ---------------------------------------------------------------------------------------------
// CUDA kernels

template <int kLanes>
__global__ void rmsnorm_forward_kernel(bf16* residual, bf16* out, float* rstd, const bf16* a, const bf16* b,
                                       const bf16* w, int64_t N, int C, float eps) {
  const int64_t row = blockIdx.x * int64_t(kThreads / kLanes) + threadIdx.x / kLanes;
  const int lane = threadIdx.x % kLanes;
  // Rows past N stay alive until the shuffle: the lanes of a warp all take part in it.
  const bool valid = row < N;
  const int64_t base = row * C;
  constexpr int kStride = kLanes * kBf16PerVec;  // elements between a lane's vectors
  float sum_sq = 0.f;
  for (int c0 = lane * kBf16PerVec; valid && c0 < C; c0 += kVecsInFlight * kStride) {
    float x[kVecsInFlight][8], y[kVecsInFlight][8];
#pragma unroll
    for (int v = 0; v < kVecsInFlight; ++v)
      if (c0 + v * kStride < C) {
        load_bf16x8(x[v], a + base + c0 + v * kStride);
        if (b != nullptr) load_bf16x8(y[v], b + base + c0 + v * kStride);
      }
#pragma unroll
    for (int v = 0; v < kVecsInFlight; ++v) {
      if (c0 + v * kStride >= C) break;
      if (b != nullptr) {
#pragma unroll
        for (int k = 0; k < 8; ++k) x[v][k] = round_to_bf16(x[v][k] + y[v][k]);
        store_bf16x8(residual + base + c0 + v * kStride, x[v]);
      }
#pragma unroll
      for (int k = 0; k < 8; ++k) sum_sq += x[v][k] * x[v][k];
    }
  }
  sum_sq = group_sum<kLanes>(sum_sq);
  if (!valid) return;
  const float r = rsqrtf(sum_sq / C + eps);
  if (lane == 0) rstd[row] = r;
  // The residual this lane just wrote (its own elements, so visible to it) is the bf16 value HF normalises.
  const bf16* normed = b != nullptr ? residual : a;
  for (int c0 = lane * kBf16PerVec; c0 < C; c0 += kVecsInFlight * kStride) {
    float x[kVecsInFlight][8], wc[kVecsInFlight][8];
#pragma unroll
    for (int v = 0; v < kVecsInFlight; ++v)
      if (c0 + v * kStride < C) {
        load_bf16x8(x[v], normed + base + c0 + v * kStride);
        load_bf16x8(wc[v], w + c0 + v * kStride);
      }
#pragma unroll
    for (int v = 0; v < kVecsInFlight; ++v) {
      if (c0 + v * kStride >= C) break;
#pragma unroll
      for (int k = 0; k < 8; ++k) x[v][k] = round_to_bf16(x[v][k] * r) * wc[v][k];
      store_bf16x8(out + base + c0 + v * kStride, x[v]);
    }
  }
}

// The forward for a few rows (a decode step's): one block of kRowThreads per row, each thread with at
// most kVecs vectors of it, all loaded at once (a, b and w), so a call waits one memory latency where a
// warp per row (16 vectors a lane at C = 4096, kVecsInFlight at a time) waited eight: ≈ 12 µs a call on
// an H100, 65 calls a llama-3.1-8b decode step (tools/perf_notes.md). Same roundings as the warp
// kernel; the sum of squares is added in another order (thread, warp, block).
constexpr int kRowThreads = 256;
constexpr int kRowKernelMaxVecs = 4;       // C ≤ 8192 (llama-3.1-70b's hidden size)
constexpr int64_t kRowKernelMaxRows = 8;  // a decode step's rows (ops/lora_gemv.h)

template <int kVecs>
__global__ void __launch_bounds__(kRowThreads)
    rmsnorm_row_forward_kernel(bf16* residual, bf16* out, float* rstd, const bf16* a, const bf16* b, const bf16* w,
                               int C, float eps) {
  const int64_t base = blockIdx.x * int64_t(C);
  float x[kVecs][8], y[kVecs][8], wc[kVecs][8];
#pragma unroll
  for (int v = 0; v < kVecs; ++v) {
    const int c = (v * kRowThreads + threadIdx.x) * kBf16PerVec;
    if (c >= C) break;
    load_bf16x8(x[v], a + base + c);
    if (b != nullptr) load_bf16x8(y[v], b + base + c);
    load_bf16x8(wc[v], w + c);
  }
  float sum_sq = 0.f;
#pragma unroll
  for (int v = 0; v < kVecs; ++v) {
    const int c = (v * kRowThreads + threadIdx.x) * kBf16PerVec;
    if (c >= C) break;
    if (b != nullptr) {
#pragma unroll
      for (int k = 0; k < 8; ++k) x[v][k] = round_to_bf16(x[v][k] + y[v][k]);
      store_bf16x8(residual + base + c, x[v]);
    }
#pragma unroll
    for (int k = 0; k < 8; ++k) sum_sq += x[v][k] * x[v][k];
  }
  const float r = rsqrtf(block_sum(sum_sq) / C + eps);
  if (threadIdx.x == 0) rstd[blockIdx.x] = r;
#pragma unroll
  for (int v = 0; v < kVecs; ++v) {
    const int c = (v * kRowThreads + threadIdx.x) * kBf16PerVec;
    if (c >= C) break;
#pragma unroll
    for (int k = 0; k < 8; ++k) x[v][k] = round_to_bf16(x[v][k] * r) * wc[v][k];
    store_bf16x8(out + base + c, x[v]);
  }
}

template <int kLanes>
__global__ void rmsnorm_backward_kernel(bf16* dinp, const bf16* dout, const bf16* dresidual, const bf16* inp,
                                        const bf16* w, const float* rstd, int64_t N, int C) {
  const int64_t row = blockIdx.x * int64_t(kThreads / kLanes) + threadIdx.x / kLanes;
  const int lane = threadIdx.x % kLanes;
  const bool valid = row < N;
  const int64_t base = row * C;
  const float r = valid ? rstd[row] : 0.f;
  float dot = 0.f;  // sum(dxhat * xhat) over the row
  for (int c = lane * kBf16PerVec; valid && c < C; c += kLanes * kBf16PerVec) {
    float dy[8], x[8], wc[8];
    load_bf16x8(dy, dout + base + c);
    load_bf16x8(x, inp + base + c);
    load_bf16x8(wc, w + c);
#pragma unroll
    for (int k = 0; k < 8; ++k) dot += (dy[k] * wc[k]) * (x[k] * r);
  }
  dot = group_sum<kLanes>(dot);
  if (!valid) return;
  const float mean_dot = dot / C;
  for (int c = lane * kBf16PerVec; c < C; c += kLanes * kBf16PerVec) {
    float dy[8], x[8], wc[8], dx[8];
    load_bf16x8(dy, dout + base + c);
    load_bf16x8(x, inp + base + c);
    load_bf16x8(wc, w + c);
#pragma unroll
    for (int k = 0; k < 8; ++k) dx[k] = r * (dy[k] * wc[k] - (x[k] * r) * mean_dot);
    if (dresidual != nullptr) {
      float dres[8];
      load_bf16x8(dres, dresidual + base + c);
#pragma unroll
      for (int k = 0; k < 8; ++k) dx[k] += dres[k];
    }
    store_bf16x8(dinp + base + c, dx);
  }
}

// Calls launch(std::integral_constant<int, lanes>) with the fewest lanes (4, 8, 16 or 32) that give
// each lane at most one vector of a short row; rows of 256+ elements get a full warp.
template <class Launch>
void with_lanes_for(int C, Launch launch) {
  const int vecs = C / kBf16PerVec;
  if (vecs <= 4) return launch(std::integral_constant<int, 4>{});
  if (vecs <= 8) return launch(std::integral_constant<int, 8>{});
  if (vecs <= 16) return launch(std::integral_constant<int, 16>{});
  launch(std::integral_constant<int, 32>{});
}

// Calls launch(std::integral_constant<int, n>) for the run-time n in [kLow, kHigh].
template <int kLow, int kHigh, class Launch>
void with_count(int n, Launch launch) {
  if constexpr (kLow < kHigh)
    if (n > kLow) return with_count<kLow + 1, kHigh>(n, launch);
  launch(std::integral_constant<int, kLow>{});
}

int64_t blocks_for(int64_t N, int lanes) { return ceil_div(N, kThreads / lanes); }

void check_rows(const char* op, int64_t N, int C, std::initializer_list<const void*> pointers) {
  LOOM_CHECK(N >= 0 && C > 0 && C % kBf16PerVec == 0, op,
             ": needs N >= 0 rows and C a positive multiple of 8 (16-byte vectors); found N ", N, ", C ", C);
  for (const void* p : pointers)
    LOOM_CHECK(p == nullptr || is_aligned_16(p), op,
               ": every buffer must be 16-byte aligned (carve buffers at 16-byte offsets)");
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// kernel launchers

void residual_rmsnorm_forward(bf16* residual, bf16* out, float* rstd, const bf16* a, const bf16* b, const bf16* w,
                              int64_t N, int C, float eps, cudaStream_t stream) {
  check_rows("residual_rmsnorm_forward", N, C, {residual, out, a, b, w});
  LOOM_CHECK((b == nullptr) == (residual == nullptr),
             "residual_rmsnorm_forward: residual (the output a + b) and b must be both set or both null");
  if (N == 0) return;
  const int row_vecs = int(ceil_div(C / kBf16PerVec, kRowThreads));
  if (N <= kRowKernelMaxRows && row_vecs <= kRowKernelMaxVecs) {
    with_count<1, kRowKernelMaxVecs>(row_vecs, [&](auto vecs) {
      rmsnorm_row_forward_kernel<decltype(vecs)::value>
          <<<unsigned(N), kRowThreads, 0, stream>>>(residual, out, rstd, a, b, w, C, eps);
    });
  } else {
    with_lanes_for(C, [&](auto lanes) {
      constexpr int kLanes = decltype(lanes)::value;
      rmsnorm_forward_kernel<kLanes>
          <<<blocks_for(N, kLanes), kThreads, 0, stream>>>(residual, out, rstd, a, b, w, N, C, eps);
    });
  }
  CUDA_CHECK(cudaGetLastError());
}

void rmsnorm_forward(bf16* out, float* rstd, const bf16* inp, const bf16* w, int64_t N, int C, float eps,
                     cudaStream_t stream) {
  residual_rmsnorm_forward(nullptr, out, rstd, inp, nullptr, w, N, C, eps, stream);
}

void rmsnorm_backward(bf16* dinp, const bf16* dout, const bf16* dresidual, const bf16* inp, const bf16* w,
                      const float* rstd, int64_t N, int C, cudaStream_t stream) {
  check_rows("rmsnorm_backward", N, C, {dinp, dout, dresidual, inp, w});
  if (N == 0) return;
  with_lanes_for(C, [&](auto lanes) {
    constexpr int kLanes = decltype(lanes)::value;
    rmsnorm_backward_kernel<kLanes>
        <<<blocks_for(N, kLanes), kThreads, 0, stream>>>(dinp, dout, dresidual, inp, w, rstd, N, C);
  });
  CUDA_CHECK(cudaGetLastError());
}

}  // namespace loom
