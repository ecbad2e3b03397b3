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
// dq (T, H, D), dk, dv (T, KVH, D) written (=).
void attention_backward_ref(float* dq, float* dk, float* dv, const float* dout, const float* q, const float* k,
                            const float* v, const float* out, const float* lse, const AttentionShape& s);

}  // namespace loom
