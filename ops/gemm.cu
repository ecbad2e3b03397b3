// Row-major GEMM on cuBLASLt (math and uses in ops/gemm.h).
// cuBLASLt is column-major, and a row-major (r, c) matrix is the column-major (c, r) one with the
// same ld. So row-major D = op(A)·op(B) is column-major Dᵀ = op(B)ᵀ·op(A)ᵀ: cuBLASLt gets B as its
// first operand and A as its second, each with its own transpose flag, and m = N, n = M.
#include "ops/gemm.h"

#include <algorithm>

namespace loom {

struct GemmContext::Plan {
  cublasLtMatmulDesc_t desc = nullptr;
  cublasLtMatrixLayout_t first = nullptr;   // cuBLASLt's A = our B
  cublasLtMatrixLayout_t second = nullptr;  // cuBLASLt's B = our A
  cublasLtMatrixLayout_t out = nullptr;     // C = D
  cublasLtMatmulAlgo_t algo{};
  ~Plan() {
    if (out) cublasLtMatrixLayoutDestroy(out);
    if (second) cublasLtMatrixLayoutDestroy(second);
    if (first) cublasLtMatrixLayoutDestroy(first);
    if (desc) cublasLtMatmulDescDestroy(desc);
  }
};

namespace {

enum KeyField { kM, kN, kK, kLda, kLdb, kLdd, kTransA, kTransB, kOutType, kAlignA, kAlignB, kAlignD };

// The largest power of two (up to 256, cuBLASLt's default assumption) that divides the address.
int64_t alignment_of(const void* p) {
  const auto address = reinterpret_cast<uintptr_t>(p);
  int64_t align = 256;
  while (align > 1 && address % align != 0) align /= 2;
  return align;
}

// Column-major layout of a row-major matrix stored (rows, cols) with leading dimension ld.
cublasLtMatrixLayout_t row_major_layout(cudaDataType_t type, int64_t rows, int64_t cols, int64_t ld) {
  cublasLtMatrixLayout_t layout = nullptr;
  CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&layout, type, cols, rows, ld));
  return layout;
}

void set_min_alignment(cublasLtMatmulPreference_t pref, cublasLtMatmulPreferenceAttributes_t attr, int64_t bytes) {
  const uint32_t value = static_cast<uint32_t>(bytes);
  CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, attr, &value, sizeof(value)));
}

// Row invariance (ops/gemm.h): one split-K-free algorithm for every M of an (N, K), the heuristic's
// for M = row_chunk.
bool row_invariant(const GemmContext& ctx, const GemmContext::Key& key) {
  return ctx.row_chunk() > 0 && key[kTransA] == 0;
}

void set_algo_config(cublasLtMatmulAlgo_t& algo, cublasLtMatmulAlgoConfigAttributes_t attr, uint32_t value) {
  CUBLAS_CHECK(cublasLtMatmulAlgoConfigSetAttribute(&algo, attr, &value, sizeof(value)));
}

void choose_algorithm(GemmContext& ctx, GemmContext::Plan& plan, const GemmContext::Key& key) {
  const bool invariant = row_invariant(ctx, key);
  // The heuristic sees the layouts of M = row_chunk rows; the plan keeps its own M's.
  cublasLtMatrixLayout_t second = plan.second, out = plan.out;
  if (invariant) {
    const cudaDataType_t out_type = key[kOutType] == int64_t(GemmOut::kFp32) ? CUDA_R_32F : CUDA_R_16BF;
    second = row_major_layout(CUDA_R_16BF, ctx.row_chunk(), key[kK], key[kLda]);
    out = row_major_layout(out_type, ctx.row_chunk(), key[kN], key[kLdd]);
  }
  cublasLtMatmulPreference_t pref = nullptr;
  CUBLAS_CHECK(cublasLtMatmulPreferenceCreate(&pref));
  const uint64_t workspace = ctx.workspace_bytes();
  CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &workspace,
                                                    sizeof(workspace)));
  set_min_alignment(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, key[kAlignB]);
  set_min_alignment(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, key[kAlignA]);
  set_min_alignment(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, key[kAlignD]);
  set_min_alignment(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, key[kAlignD]);
  cublasLtMatmulHeuristicResult_t result{};
  int found = 0;
  CUBLAS_CHECK(cublasLtMatmulAlgoGetHeuristic(ctx.handle(), plan.desc, plan.first, second, out, out, pref, 1,
                                              &result, &found));
  cublasLtMatmulPreferenceDestroy(pref);
  if (invariant) cublasLtMatrixLayoutDestroy(second), cublasLtMatrixLayoutDestroy(out);
  const auto shape = [&] {
    return cat("M ", key[kM], ", N ", key[kN], ", K ", key[kK], ", ld ", key[kLda], "/", key[kLdb], "/", key[kLdd],
               ", alignment ", key[kAlignA], "/", key[kAlignB], "/", key[kAlignD], " bytes, workspace ", workspace,
               " bytes");
  };
  if (found == 0) die(cat("gemm: cuBLASLt has no algorithm for ", shape()));
  plan.algo = result.algo;
  if (!invariant) return;
  // Each output element summed by one CTA over all of K, in its own order: no split-K.
  set_algo_config(plan.algo, CUBLASLT_ALGO_CONFIG_SPLITK_NUM, 1);
  set_algo_config(plan.algo, CUBLASLT_ALGO_CONFIG_REDUCTION_SCHEME, CUBLASLT_REDUCTION_SCHEME_NONE);
  cublasLtMatmulHeuristicResult_t checked{};
  if (cublasLtMatmulAlgoCheck(ctx.handle(), plan.desc, plan.first, plan.second, plan.out, plan.out, &plan.algo,
                              &checked) != CUBLAS_STATUS_SUCCESS ||
      checked.workspaceSize > workspace)
    die(cat("gemm: the row-invariant algorithm (chosen for ", ctx.row_chunk(), " rows, without split-K) does not run ",
            shape()));
}

std::unique_ptr<GemmContext::Plan> make_plan(GemmContext& ctx, const GemmContext::Key& key) {
  const int64_t M = key[kM], N = key[kN], K = key[kK];
  const bool trans_a = key[kTransA] != 0, trans_b = key[kTransB] != 0;
  auto plan = std::make_unique<GemmContext::Plan>();
  CUBLAS_CHECK(cublasLtMatmulDescCreate(&plan->desc, CUBLAS_COMPUTE_32F, CUDA_R_32F));
  // Swapped operands (see the top of this file): cuBLASLt's transa is our trans_b, and vice versa.
  const cublasOperation_t first_op = trans_b ? CUBLAS_OP_T : CUBLAS_OP_N;
  const cublasOperation_t second_op = trans_a ? CUBLAS_OP_T : CUBLAS_OP_N;
  CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(plan->desc, CUBLASLT_MATMUL_DESC_TRANSA, &first_op, sizeof(first_op)));
  CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(plan->desc, CUBLASLT_MATMUL_DESC_TRANSB, &second_op, sizeof(second_op)));
  // Each operand as stored: B (N, K) or (K, N), A (K, M) or (M, K).
  plan->first = trans_b ? row_major_layout(CUDA_R_16BF, N, K, key[kLdb])  //
                        : row_major_layout(CUDA_R_16BF, K, N, key[kLdb]);
  plan->second = trans_a ? row_major_layout(CUDA_R_16BF, K, M, key[kLda])  //
                         : row_major_layout(CUDA_R_16BF, M, K, key[kLda]);
  const cudaDataType_t out_type = key[kOutType] == int64_t(GemmOut::kFp32) ? CUDA_R_32F : CUDA_R_16BF;
  plan->out = row_major_layout(out_type, M, N, key[kLdd]);
  choose_algorithm(ctx, *plan, key);
  return plan;
}

}  // namespace

GemmContext::GemmContext(void* workspace, size_t workspace_bytes, int64_t row_chunk)
    : workspace_(workspace), workspace_bytes_(workspace_bytes), row_chunk_(row_chunk) {
  LOOM_CHECK(row_chunk >= 0, "GemmContext: row_chunk must be >= 0 (found ", row_chunk, ")");
  CUBLAS_CHECK(cublasLtCreate(&handle_));
}

GemmContext::~GemmContext() {
  plans_.clear();
  if (handle_) cublasLtDestroy(handle_);
}

const GemmContext::Plan& GemmContext::plan(const Key& key) {
  auto it = plans_.find(key);
  if (it == plans_.end()) it = plans_.emplace(key, make_plan(*this, key)).first;
  return *it->second;
}

void gemm(GemmContext& ctx, void* D, const bf16* A, const bf16* B, int64_t M, int64_t N, int64_t K, bool trans_a,
          bool trans_b, float alpha, float beta, GemmOut d_type, cudaStream_t stream, const GemmLd& ld) {
  LOOM_CHECK(M >= 0 && N >= 0 && K >= 0, "gemm: sizes must be >= 0 (found M ", M, ", N ", N, ", K ", K, ")");
  if (M == 0 || N == 0) return;
  LOOM_CHECK(K > 0 || beta == 1.f, "gemm: K = 0 would scale D by beta = ", beta, "; skip the call or pass beta = 1");
  if (K == 0) return;
  const int64_t lda = ld.a ? ld.a : (trans_a ? M : K), ldb = ld.b ? ld.b : (trans_b ? K : N), ldd = ld.d ? ld.d : N;
  LOOM_CHECK(lda >= (trans_a ? M : K) && ldb >= (trans_b ? K : N) && ldd >= N, "gemm: leading dimensions ", lda, "/",
             ldb, "/", ldd, " are shorter than the rows of A/B/D (", (trans_a ? M : K), "/", (trans_b ? K : N), "/", N,
             ")");
  const int64_t chunk = ctx.row_chunk();
  if (chunk > 0 && trans_a && K > chunk) {  // a sum over rows, in row_chunk pieces (ops/gemm.h)
    LOOM_CHECK(d_type == GemmOut::kFp32, "gemm: a row-invariant sum over ", K, " rows in pieces of ", chunk,
               " needs an fp32 D (a bf16 D would round each piece)");
    for (int64_t k0 = 0; k0 < K; k0 += chunk)
      gemm(ctx, D, A + k0 * lda, B + (trans_b ? k0 : k0 * ldb), M, N, std::min(chunk, K - k0), trans_a, trans_b, alpha,
           k0 == 0 ? beta : 1.f, d_type, stream, {lda, ldb, ldd});
    return;
  }
  GemmContext::Key key = {M, N, K, lda, ldb, ldd, trans_a, trans_b, int64_t(d_type),
                          alignment_of(A), alignment_of(B), alignment_of(D)};
  if (chunk > 0) {  // one algorithm wherever the rows (and the pieces of a sum over rows) start
    LOOM_CHECK(key[kAlignA] >= 16 && key[kAlignB] >= 16 && key[kAlignD] >= 16,
               "gemm: a row-invariant product needs 16-byte aligned A, B and D (found ", key[kAlignA], "/",
               key[kAlignB], "/", key[kAlignD], " bytes)");
    key[kAlignA] = key[kAlignB] = key[kAlignD] = 16;
  }
  const GemmContext::Plan& plan = ctx.plan(key);
  CUBLAS_CHECK(cublasLtMatmul(ctx.handle(), plan.desc, &alpha, B, plan.first, A, plan.second, &beta, D, plan.out, D,
                              plan.out, &plan.algo, ctx.workspace(), ctx.workspace_bytes(), stream));
}

}  // namespace loom
