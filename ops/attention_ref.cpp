// Varlen causal attention with GQA and a sliding window, fp32 CPU reference (math in attention.h).
//
// Query i of a document sees keys j in [first_key(i), i] of the same document, where
// first_key(i) = max(0, i - window + 1) with a window, 0 without. Scores, softmax and the
// weighted sum are fp32 like HF's eager attention in fp32; the softmax denominator is summed in
// double. P is never stored: backward rebuilds P_ij = exp(s_ij - lse_i) from the saved lse.
// Backward runs in two passes so that every output element has a single writer (no atomics,
// deterministic under OpenMP): queries own dq_i, keys own dk_j and dv_j.
#include <algorithm>
#include <cmath>
#include <vector>

#include "ops/error.h"
#include "ops/attention.h"
#include "ops/parallel.h"

namespace loom {
namespace {

float dot(const float* a, const float* b, int D) {
  float sum = 0.f;
  for (int d = 0; d < D; ++d) sum += a[d] * b[d];
  return sum;
}

// Views of the packed (T, heads, D) buffers for one document.
struct DocView {
  const AttentionShape& s;
  int64_t start;  // first token of the document in the packed buffer
  int len;
  int64_t q_at(int i, int h) const { return ((start + i) * s.H + h) * s.D; }
  int64_t kv_at(int j, int kvh) const { return ((start + j) * s.KVH + kvh) * s.D; }
  int first_key(int i) const { return s.window > 0 ? std::max(0, i - s.window + 1) : 0; }
  // Last query that sees key j.
  int last_query(int j) const { return s.window > 0 ? std::min(len - 1, j + s.window - 1) : len - 1; }
};

void check_shape(const AttentionShape& s) {
  LOOM_CHECK(s.ndoc >= 0 && s.cu_seqlens != nullptr && s.cu_seqlens[0] == 0,
             "attention: cu_seqlens must start at 0 (found ", s.cu_seqlens ? s.cu_seqlens[0] : -1, ")");
  for (int d = 0; d < s.ndoc; ++d)
    LOOM_CHECK(s.cu_seqlens[d + 1] >= s.cu_seqlens[d], "attention: cu_seqlens must not decrease (document ", d,
               ": ", s.cu_seqlens[d], " -> ", s.cu_seqlens[d + 1], ")");
  LOOM_CHECK(s.H > 0 && s.KVH > 0 && s.H % s.KVH == 0, "attention: num_attention_heads (", s.H,
             ") must be a positive multiple of num_key_value_heads (", s.KVH, "); check config.json");
  LOOM_CHECK(s.D > 0, "attention: head_dim must be > 0 (found ", s.D, ")");
  LOOM_CHECK(s.window >= 0, "attention: sliding window must be >= 0 (found ", s.window, "; 0 = no window)");
}

// One query row qi (D) against the keys j0..j_last of k, v (row j of kv head kvh at (j·KVH + kvh)·D):
// out (D) = softmax(s) v; returns lse. p is scratch of at least j_last + 1 floats. The one place the
// forward's arithmetic lives, so the packed forward and the cached one (generation) agree bit for bit.
float attend_query(float* out, const float* qi, const float* k, const float* v, int KVH, int kvh, int D, float scale,
                   int64_t j0, int64_t j_last, float* p) {
  float m = -INFINITY;
  for (int64_t j = j0; j <= j_last; ++j) {
    p[j] = scale * dot(qi, k + (j * KVH + kvh) * D, D);
    m = std::max(m, p[j]);
  }
  double sum = 0;
  for (int64_t j = j0; j <= j_last; ++j) {
    p[j] = std::exp(p[j] - m);
    sum += p[j];
  }
  const float inv_sum = static_cast<float>(1.0 / sum);
  std::fill(out, out + D, 0.f);
  for (int64_t j = j0; j <= j_last; ++j) {
    const float pij = p[j] * inv_sum;
    const float* vj = v + (j * KVH + kvh) * D;
    for (int d = 0; d < D; ++d) out[d] += pij * vj[d];
  }
  return m + static_cast<float>(std::log(sum));
}

// One query row of a packed document: out_i = softmax(s_i·) v, lse_i.
void forward_query(float* out, float* lse, const float* q, const float* k, const float* v, const DocView& doc, int i,
                   int h, float* p) {
  const AttentionShape& s = doc.s;
  const int64_t first_row = doc.start * s.KVH * s.D;
  lse[(doc.start + i) * s.H + h] = attend_query(out + doc.q_at(i, h), q + doc.q_at(i, h), k + first_row, v + first_row,
                                                s.KVH, h / (s.H / s.KVH), s.D, s.scale, doc.first_key(i), i, p);
}

// Everything backward needs, bundled so that the two passes read the same names.
struct BackwardInputs {
  const float *dout, *q, *k, *v, *lse;
  const float* delta;  // (T, H): D_i = dout_i · out_i
};

float prob(const BackwardInputs& in, const DocView& doc, int i, int h, int j, int kvh) {
  const AttentionShape& s = doc.s;
  const float score = s.scale * dot(in.q + doc.q_at(i, h), in.k + doc.kv_at(j, kvh), s.D);
  return std::exp(score - in.lse[(doc.start + i) * s.H + h]);
}

// dS_ij = P_ij (dout_i · v_j - D_i).
float dscore(const BackwardInputs& in, const DocView& doc, int i, int h, int j, int kvh, float pij) {
  const AttentionShape& s = doc.s;
  const float dp = dot(in.dout + doc.q_at(i, h), in.v + doc.kv_at(j, kvh), s.D);
  return pij * (dp - in.delta[(doc.start + i) * s.H + h]);
}

// dq_i = scale * sum_j dS_ij k_j.
void backward_query(float* dq, const BackwardInputs& in, const DocView& doc, int i, int h) {
  const AttentionShape& s = doc.s;
  const int kvh = h / (s.H / s.KVH);
  float* dqi = dq + doc.q_at(i, h);
  std::fill(dqi, dqi + s.D, 0.f);
  for (int j = doc.first_key(i); j <= i; ++j) {
    const float ds = dscore(in, doc, i, h, j, kvh, prob(in, doc, i, h, j, kvh));
    const float* kj = in.k + doc.kv_at(j, kvh);
    for (int d = 0; d < s.D; ++d) dqi[d] += s.scale * ds * kj[d];
  }
}

// dv_j = sum_{h in group, i} P_ij dout_i ; dk_j = scale * sum_{h in group, i} dS_ij q_i.
void backward_key(float* dk, float* dv, const BackwardInputs& in, const DocView& doc, int j, int kvh) {
  const AttentionShape& s = doc.s;
  const int group = s.H / s.KVH;
  float* dkj = dk + doc.kv_at(j, kvh);
  float* dvj = dv + doc.kv_at(j, kvh);
  std::fill(dkj, dkj + s.D, 0.f);
  std::fill(dvj, dvj + s.D, 0.f);
  for (int h = kvh * group; h < (kvh + 1) * group; ++h) {
    for (int i = j; i <= doc.last_query(j); ++i) {
      const float pij = prob(in, doc, i, h, j, kvh);
      const float ds = dscore(in, doc, i, h, j, kvh, pij);
      const float* qi = in.q + doc.q_at(i, h);
      const float* douti = in.dout + doc.q_at(i, h);
      for (int d = 0; d < s.D; ++d) {
        dvj[d] += pij * douti[d];
        dkj[d] += s.scale * ds * qi[d];
      }
    }
  }
}

// The document holding packed token t, and t's index within it.
DocView doc_of(const AttentionShape& s, int64_t t, int* index) {
  const int32_t* end = s.cu_seqlens + s.ndoc + 1;
  const int d = int(std::upper_bound(s.cu_seqlens, end, t) - s.cu_seqlens) - 1;
  *index = int(t - s.cu_seqlens[d]);
  return DocView{s, s.cu_seqlens[d], s.cu_seqlens[d + 1] - s.cu_seqlens[d]};
}

int longest_doc(const AttentionShape& s) {
  int longest = 0;
  for (int d = 0; d < s.ndoc; ++d) longest = std::max(longest, s.cu_seqlens[d + 1] - s.cu_seqlens[d]);
  return longest;
}

}  // namespace

// One parallel loop over all (token, head) pairs of the packed buffer, not one per document:
// many short documents would otherwise pay a thread barrier each.
void attention_forward_ref(float* out, float* lse, const float* q, const float* k, const float* v,
                           const AttentionShape& s) {
  check_shape(s);
  const int64_t T = s.cu_seqlens[s.ndoc];
#pragma omp parallel
  {
    std::vector<float> p(longest_doc(s));  // scores, then unnormalised probabilities of one query
#pragma omp for schedule(dynamic, 16)
    for (int64_t th = 0; th < T * s.H; ++th) {
      int i;
      const DocView doc = doc_of(s, th / s.H, &i);
      forward_query(out, lse, q, k, v, doc, i, int(th % s.H), p.data());
    }
  }
}

void attention_cached_ref(float* out, const float* q, const float* k_cache, const float* v_cache, int64_t n,
                          int64_t past, const AttentionShape& s) {
  LOOM_CHECK(n >= 0 && past >= 0, "attention_cached_ref: n (", n, ") and past (", past, ") must be >= 0");
  LOOM_CHECK(s.H > 0 && s.KVH > 0 && s.H % s.KVH == 0 && s.D > 0 && s.window >= 0,
             "attention: bad shape H ", s.H, " KVH ", s.KVH, " D ", s.D, " window ", s.window);
#pragma omp parallel if (worth_threads(n * s.H * (past + n) * s.D))
  {
    std::vector<float> p(size_t(past + n));
#pragma omp for schedule(dynamic, 16)
    for (int64_t ih = 0; ih < n * s.H; ++ih) {
      const int64_t i = ih / s.H, pos = past + i;
      const int h = int(ih % s.H);
      const int64_t j0 = s.window > 0 ? std::max<int64_t>(0, pos - s.window + 1) : 0;
      attend_query(out + ih * s.D, q + ih * s.D, k_cache, v_cache, s.KVH, h / (s.H / s.KVH), s.D, s.scale, j0, pos,
                   p.data());
    }
  }
}

void attention_backward_ref(float* dq, float* dk, float* dv, const float* dout, const float* q, const float* k,
                            const float* v, const float* out, const float* lse, const AttentionShape& s) {
  check_shape(s);
  const int64_t T = s.cu_seqlens[s.ndoc];
  std::vector<float> delta(T * s.H);  // (T, H)
  const BackwardInputs in{dout, q, k, v, lse, delta.data()};
#pragma omp parallel
  {
#pragma omp for
    for (int64_t th = 0; th < T * s.H; ++th) delta[th] = dot(dout + th * s.D, out + th * s.D, s.D);
#pragma omp for schedule(dynamic, 16)
    for (int64_t th = 0; th < T * s.H; ++th) {
      int i;
      const DocView doc = doc_of(s, th / s.H, &i);
      backward_query(dq, in, doc, i, int(th % s.H));
    }
#pragma omp for schedule(dynamic, 16)
    for (int64_t tk = 0; tk < T * s.KVH; ++tk) {
      int j;
      const DocView doc = doc_of(s, tk / s.KVH, &j);
      backward_key(dk, dv, in, doc, j, int(tk % s.KVH));
    }
  }
}

}  // namespace loom
