// Grouped GEMMs over the experts of a mixture-of-experts layer: the rows of a sorted buffer
// (ops/moe_permute.h) are cut into E groups by device offsets (group e: rows offsets[e] ..
// offsets[e + 1]), and each group is multiplied by its expert's matrix. Three products cover the
// expert MLP and its LoRA adapters (ops/lora_linear.h's list, per expert):
//   nt  Y_e (M_e, N)  = alpha · X_e (M_e, K) · W_eᵀ  (+ Y_e)    W_e (N, K)   y = x·Wᵀ, u = x·Aᵀ, y += s·u·Bᵀ
//   nn  Y_e (M_e, N)  = alpha · X_e (M_e, K) · W_e   (+ Y_e)    W_e (K, N)   dx = dy·W, du = s·dy·B, dx += du·A
//   tn  D_e (N, K)   += alpha · Y_eᵀ (N, M_e) · X_e (M_e, K)                 dB += s·dyᵀ·u, dA += duᵀ·x
// X, Y bf16 row-major with packed rows; W_e bf16 at W + e·w_stride (elements; the experts' matrices,
// or their adapters inside a flat per-expert layout); D_e fp32 at D + e·d_stride. Products and sums
// in fp32 (bf16 tensor-core MMA), alpha applied in fp32 to the sum, then (+ the old Y_e in fp32)
// rounded once to bf16; D accumulated in fp32. Each output element is owned by one block: the result
// is deterministic (no atomics), and the groups' results do not depend on each other's sizes.
//
// CUDA (ops/grouped_gemm.cu): mma.sync m16n8k16 bf16 → fp32 over k steps of 32 through shared-memory
// stages that cp.async fills ahead, fragments by ldmatrix (.trans for operands stored along the
// output's columns). nt / nn: 64×64 tiles, 4 warps, four stages by default (any N); for the experts'
// own matrices (N >= 128) two faster kernels, chosen by GroupedGemmKernels: 128×128 tiles, 8 warps,
// two stages; and in GPU_ARCH=90 builds 128×256 tiles of Hopper warpgroup MMAs (wgmma) from four
// swizzled stages. tn: 64×64 tiles of D, four stages of 32 rows, both operands read by
// ldmatrix.trans as they lie (row by row). The mma.sync kernels run the MMAs over k in the same
// order, so their bits agree; wgmma may round a k16 chunk's sum differently. nt / nn: the grid is
// sized for the worst case on the host, ceil(rows / tile) + E row tiles × ceil(N / tile) column
// tiles (group e needs ceil(M_e / tile) row tiles); each block finds its group and first row from
// the device offsets (a warp scan of the groups' tile counts) and exits when the tile index is past
// the last group's. tn: one z-slice of blocks per expert, each block looping over its group's rows;
// an empty group does nothing.
#pragma once
#include <cstdint>

#include "ops/cuda_common.h"

namespace loom {

constexpr int kGroupedGemmTile = 64;  // the narrow kernel's output tile (both dimensions)

// ---- references (host fp32 values; sums in double): the same layouts and semantics
void grouped_gemm_nt_ref(float* Y, const float* X, const float* W, int64_t w_stride, const int32_t* offsets, int E,
                         int N, int K, float alpha, bool accumulate);
void grouped_gemm_nn_ref(float* Y, const float* X, const float* W, int64_t w_stride, const int32_t* offsets, int E,
                         int N, int K, float alpha, bool accumulate);
void grouped_gemm_tn_ref(float* D, int64_t d_stride, const float* Y, const float* X, const int32_t* offsets, int E,
                         int N, int K, float alpha);

// Which kernel computes nt / nn: the 64×64 kernel (any N, and the only one below N = 128), the
// 128×128 mma.sync kernel or the Hopper kernel (N >= 128; GPU_ARCH=90 builds only, see
// grouped_gemm_hopper_built()). kAuto takes the 64×64 kernel below N = 128 and the fastest of the build
// above (Hopper, else 128×128: measured in grouped_gemm.cu); the tests and build/grouped_gemm_bench run
// every kernel of the build.
enum class GroupedGemmKernels { kAuto, kNarrow, kWide, kHopper };
bool grouped_gemm_hopper_built();

// ---- device. offsets (E + 1) on the device, offsets[0] = 0, non-decreasing, offsets[E] <= rows;
// rows: the row capacity the grid is sized for (T·K of the layer: every sorted row belongs to a
// group). N, K, w_stride, d_stride multiples of 8; every pointer 16-byte aligned (checked).
void grouped_gemm_nt(bf16* Y, const bf16* X, const bf16* W, int64_t w_stride, const int32_t* offsets, int E,
                     int64_t rows, int N, int K, float alpha, bool accumulate, cudaStream_t stream,
                     GroupedGemmKernels kernels = GroupedGemmKernels::kAuto);
void grouped_gemm_nn(bf16* Y, const bf16* X, const bf16* W, int64_t w_stride, const int32_t* offsets, int E,
                     int64_t rows, int N, int K, float alpha, bool accumulate, cudaStream_t stream,
                     GroupedGemmKernels kernels = GroupedGemmKernels::kAuto);

// The sum of two nt (nn) products into one output, Y_e = a.alpha·a.X_e·a.W_eᵀ + b.alpha·b.X_e·b.W_eᵀ
// (+ Y_e), each term as the plain call's X, W, w_stride, K, alpha: an expert's product and its LoRA
// term (b = s·u·Bᵀ with K = r; backward b = du·A). The Hopper kernel runs b's k steps after a's
// into the same fp32 accumulators (scaled by a.alpha / b.alpha in between) and rounds Y once: one
// launch, and the output read and written once instead of twice (tools/perf_notes.md). The mma.sync
// kernels, and Hopper where |a.alpha / b.alpha| is outside 2^±32, run b as a second launch
// accumulating onto a's rounded result: the bits of two plain calls.
struct GroupedTerm {
  const bf16* X = nullptr;
  const bf16* W = nullptr;
  int64_t w_stride = 0;
  int K = 0;
  float alpha = 1.f;
};
void grouped_gemm_nt_sum(bf16* Y, const GroupedTerm& a, const GroupedTerm& b, const int32_t* offsets, int E,
                         int64_t rows, int N, bool accumulate, cudaStream_t stream,
                         GroupedGemmKernels kernels = GroupedGemmKernels::kAuto);
void grouped_gemm_nn_sum(bf16* Y, const GroupedTerm& a, const GroupedTerm& b, const int32_t* offsets, int E,
                         int64_t rows, int N, bool accumulate, cudaStream_t stream,
                         GroupedGemmKernels kernels = GroupedGemmKernels::kAuto);
void grouped_gemm_tn(float* D, int64_t d_stride, const bf16* Y, const bf16* X, const int32_t* offsets, int E, int N,
                     int K, float alpha, cudaStream_t stream);

}  // namespace loom
