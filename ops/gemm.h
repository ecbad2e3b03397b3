// Row-major GEMM on cuBLASLt, the CUDA counterpart of matmul_ref (ops/matmul.h):
//   D (M, N) = alpha * op(A)·op(B) + beta * D
//   op(A) (M, K): A stored (M, K), or (K, M) with trans_a
//   op(B) (K, N): B stored (K, N), or (N, K) with trans_b     (torch Linear, x·Wᵀ)
// A and B bf16, accumulation fp32 (CUBLAS_COMPUTE_32F), D bf16 or fp32. beta = 0 never reads D;
// beta = 1 accumulates into it. The step's products, for a linear with W (out, in) and LoRA A (R, in), B (out, R):
//   y = x·Wᵀ           gemm(ctx, y, x, W, N, out, in, false, true, 1, 0, GemmOut::kBf16, stream)
//   y += s·u·Bᵀ        gemm(ctx, y, u, B, N, out, R, false, true, s, 1, GemmOut::kBf16, stream)
//   dx = dy·W          gemm(ctx, dx, dy, W, N, in, out, false, false, 1, 0, GemmOut::kBf16, stream)
//   dB += s·dyᵀ·u      gemm(ctx, dB, dy, u, out, R, N, true, false, s, 1, GemmOut::kFp32, stream)
//   dA += duᵀ·x        gemm(ctx, dA, du, x, R, in, N, true, false, 1, 1, GemmOut::kFp32, stream)
// GemmContext owns the cuBLASLt handle and caches, per shape, the matmul descriptor, the matrix
// layouts and the algorithm the heuristic chose, so a call in the step does no setup and no allocation.
//
// Row invariance (a context made with row_chunk > 0): for products over token rows that a caller
// splits into pieces (the MLP's sequence tiles), so that the bits do not depend on the split:
// - A untransposed (D's rows are A's rows: y = x·Wᵀ, dx = dy·W, u, du): every shape of one (N, K)
//   runs the algorithm the heuristic picks for M = row_chunk, without split-K, for 16-byte aligned
//   operands, so a row of D is the same whatever M and wherever the rows start;
// - A transposed with K the rows (dB += s·dyᵀ·u, dA += duᵀ·x): the sum over rows is taken in pieces of
//   row_chunk rows from the call's first, in order, each accumulated into D, so calls whose
//   boundaries are multiples of row_chunk sum the same pieces in the same order as one call.
// Its plans assume 16-byte alignment, whatever the pointers' (checked), so where a piece starts does
// not change its algorithm.
// The default context (row_chunk 0) lets the heuristic pick the fastest algorithm for each M.
#pragma once
#include <array>
#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>

#include "ops/cuda_common.h"

namespace loom {

enum class GemmOut { kBf16, kFp32 };

// Elements between consecutive rows of A, B and D as stored; 0 = packed (the stored row length).
// A larger value addresses a column slice of a wider buffer (the k part of a fused qkv output).
struct GemmLd {
  int64_t a = 0, b = 0, d = 0;
};

class GemmContext {
 public:
  // workspace: a device buffer from the memory plan, kept for the context's life. cuBLASLt's
  // fastest Hopper kernels want 32 MiB (cuBLAS docs, cublasSetWorkspace); 0 bytes also works.
  GemmContext(void* workspace, size_t workspace_bytes, int64_t row_chunk = 0);
  ~GemmContext();
  GemmContext(const GemmContext&) = delete;
  GemmContext& operator=(const GemmContext&) = delete;

  struct Plan;
  // M, N, K, lda, ldb, ldd, trans_a, trans_b, out type, alignment of A, B, D in bytes.
  using Key = std::array<int64_t, 12>;
  // The cached plan for key, made (descriptor, layouts, heuristic) on first use.
  const Plan& plan(const Key& key);
  cublasLtHandle_t handle() const { return handle_; }
  void* workspace() const { return workspace_; }
  size_t workspace_bytes() const { return workspace_bytes_; }
  int64_t row_chunk() const { return row_chunk_; }

 private:
  cublasLtHandle_t handle_ = nullptr;
  void* workspace_ = nullptr;
  size_t workspace_bytes_ = 0;
  int64_t row_chunk_ = 0;
  std::map<Key, std::unique_ptr<Plan>> plans_;
};

// D (M, N) written (beta = 0) or accumulated into (beta != 0). Every pointer on the device; the
// call is asynchronous on stream. M, N or K of 0: nothing to do (K = 0 with beta != 1 is refused).
void gemm(GemmContext& ctx, void* D, const bf16* A, const bf16* B, int64_t M, int64_t N, int64_t K, bool trans_a,
          bool trans_b, float alpha, float beta, GemmOut d_type, cudaStream_t stream, const GemmLd& ld = {});

}  // namespace loom
