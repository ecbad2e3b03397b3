// Causal multi-head attention over a packed buffer of documents (varlen), with GQA and an
// optional sliding window. Query head h reads kv head h / (H / KVH).
//   For a query at index i of document d (positions within the document), key j is visible iff
//   j <= i and (window == 0 or j > i - window). No key from another document is ever visible.
//   s_ij = scale * q_i . k_j ;  P = softmax_j(s) ;  out_i = sum_j P_ij v_j
//   lse_i = log sum_j exp(s_ij)   (saved for backward; natural log)
// Backward (with D_i = dout_i . out_i):
//   dv_j += sum_i P_ij dout_i ; dP_ij = dout_i . v_j ; dS_ij = P_ij (dP_ij - D_i)
//   dq_i = scale * sum_j dS_ij k_j ; dk_j += scale * sum_i dS_ij q_i
#pragma once
#include <cstdint>

namespace loom {

struct AttentionShape {
  const int32_t* cu_seqlens;  // (ndoc + 1), cu_seqlens[0] = 0, cu_seqlens[ndoc] = T
  int ndoc;
  int H, KVH, D;
  int window;   // 0 = no sliding window
  float scale;  // usually 1/sqrt(D)
};

// out (T, H, D), lse (T, H) written; q (T, H, D); k, v (T, KVH, D).
void attention_forward_ref(float* out, float* lse, const float* q, const float* k, const float* v,
                           const AttentionShape& s);
// Generation with a KV cache (one sequence): n new queries at positions past .. past + n - 1 against
// the cache's keys and values, which already hold the new tokens (rows 0 .. past + n - 1). Query i
// sees keys j <= past + i (and j > past + i - window), as the packed forward would; the same
// arithmetic, so a token's output is bit for bit the packed forward's. s.cu_seqlens and s.ndoc are
// unused. out (n, H, D) written; q (n, H, D); k_cache, v_cache (past + n, KVH, D).
void attention_cached_ref(float* out, const float* q, const float* k_cache, const float* v_cache, int64_t n,
                          int64_t past, const AttentionShape& s);
// dq (T, H, D), dk, dv (T, KVH, D) written (=).
void attention_backward_ref(float* dq, float* dk, float* dv, const float* dout, const float* q, const float* k,
                            const float* v, const float* out, const float* lse, const AttentionShape& s);

}  // namespace loom

// CUDA path (ops/attention.cu, kernels in ops/attention_kernels.cuh): flash attention, bf16 in and
// out, fp32 softmax and accumulation, never a T x T matrix in memory. Head dims 64 and 128.
// Each bf16 tensor is (T, heads, D) with its heads contiguous and `row_stride` elements between
// consecutive tokens, so q, k and v (and dq, dk, dv) may be views into one fused buffer of row
// width (H + 2 KVH) D. Row strides must be multiples of 8 and pointers 16-byte aligned.
// s.cu_seqlens is a device pointer here; T (= cu_seqlens[ndoc]) is passed so that no launch has to
// read it back.
#include "ops/cuda_common.h"

namespace loom {

// Row strides, in elements, between consecutive tokens of each tensor.
struct AttentionStrides {
  int64_t q = 0, k = 0, v = 0, out = 0;      // forward
  int64_t dq = 0, dk = 0, dv = 0, dout = 0;  // backward
  // Separate contiguous tensors: H D for q, out, dq, dout; KVH D for k, v, dk, dv.
  static AttentionStrides contiguous(int H, int KVH, int D);
  // q, k, v (and dq, dk, dv) inside fused (T, (H + 2 KVH) D) buffers; out and dout contiguous.
  static AttentionStrides fused_qkv(int H, int KVH, int D);
};

// Which kernel family runs (ops/attention_kernels.cuh): by default, for the forward and the backward
// each, the one measured faster for the micro-batch's mean document length T / ndoc and head dim
// (known on the host, no sync; rules in attention.cu); tests pin each. kLongDocsHopper is the
// long-document family written with Hopper's warpgroup MMAs (ops/attention_hopper_kernels.cuh); it
// exists in GPU_ARCH=90 builds only (attention_hopper_kernels_built()), where kAuto's backward is
// always its own.
enum class AttentionKernels { kAuto, kShortDocs, kLongDocs, kLongDocsHopper };

// Whether this build has the sm_90a kernels (GPU_ARCH=90).
bool attention_hopper_kernels_built();

// out (T, H, D) bf16 and lse (T, H) fp32 written; q (T, H, D), k, v (T, KVH, D).
void attention_forward(bf16* out, float* lse, const bf16* q, const bf16* k, const bf16* v,
                       const AttentionStrides& strides, const AttentionShape& s, int64_t T, cudaStream_t stream,
                       AttentionKernels kernels = AttentionKernels::kAuto);

// fp32 scratch that attention_backward needs: a dq accumulator (T, H, D), delta (T, H) and each
// query's lowest visible key (T).
int64_t attention_backward_scratch_floats(int64_t T, int H, int D);

// dq (T, H, D), dk, dv (T, KVH, D) written (=); dout, out (T, H, D) and lse (T, H) from the
// forward. scratch: attention_backward_scratch_floats(T, H, D) floats, contents ignored.
void attention_backward(bf16* dq, bf16* dk, bf16* dv, float* scratch, const bf16* dout, const bf16* q,
                        const bf16* k, const bf16* v, const bf16* out, const float* lse,
                        const AttentionStrides& strides, const AttentionShape& s, int64_t T, cudaStream_t stream,
                        AttentionKernels kernels = AttentionKernels::kAuto);

}  // namespace loom
