// Flash attention (ops/attention.cu) on 64K-token documents (issue 14), checked on a sample of
// rows against an fp32 reference computed on the GPU: the CPU reference (ops/attention_ref.cpp)
// is too slow at this length (its backward alone is ~3e13 flops here).
//
// Reference. Deliberately plain CUDA: one warp per (token, head) or per (key, kv head), lane l
// holding elements l, l + 32, ... of a head, a shuffle sum per dot product, fp32 scores, and a
// loop over the visible keys (or the queries that see a key) under the masking rule of
// ops/attention.h, written out from per-token document bounds computed on the host:
//   key j is visible from query i  iff  doc_start(i) <= j <= i  and (window == 0 or i - j < window).
// No tensor cores, no tiling, no shared memory. It reads the very bf16 buffers the flash kernels
// read (q, k, v, dout), converted to fp32, so both sides see one input.
//   every row    : out_i, lse_i (online softmax, sum and numerator in double), delta_i = dout_i . out_i
//   sampled rows : dq_i = scale sum_j P_ij (dP_ij - delta_i) k_j, P_ij = exp(s_ij - lse_i), dP_ij = dout_i . v_j
//   sampled keys : dk_j = scale sum_{h of j's group, i} P_ij (dP_ij - delta_i) q_i,  dv_j = sum P_ij dout_i
//
// Tolerance: flash-attention's rule, as in tests/attention_gpu_test.cu. The kernel's largest error
// against the fp32 reference must be at most twice that of a plain bf16 implementation (PyTorch's
// eager attention in bf16, emulated as that test's host code does: scores, probabilities, dP, dS and
// every output rounded to bf16, fp32 inside each op) on the same elements. It is affordable here:
// plain bf16 needs, for every row, only three numbers (its softmax max and sum, and sum_j p_ij dp_ij
// for the backward), computed beside the reference, and its outputs only on the sampled tokens.
// Two adaptations:
//  * At 64K the outputs span orders of magnitude, and their errors with them: with unit-variance
//    scores, |out_i| and |dq_i| ~ n^-1/2 for n visible keys (out ~0.5 at a document's second token,
//    ~0.004 at its 65,536th). One max over the whole sample would be the first rows' and say
//    nothing of the long ones, which are what this test is for. So the rule is applied per
//    magnitude class of sampled tokens, 16^c <= nu < 16^(c+1) (expected magnitudes within 4x):
//    a row's nu is its count n of visible keys; a key's nu is 1 / sum over the queries i that see it
//    of n_i^-2 (|dk_j|, |dv_j| ~ (sum_i P_ij^2)^1/2 with P_ij ~ 1/n_i).
//  * The allowance gets 2^-16 of the class's largest |reference| on top: room for fp32-level
//    differences where plain bf16 has exactly zero error, e.g. dq of a document's first token
//    (one visible key: P = 1 and dP = delta bit for bit in plain bf16 and the reference, while
//    flash sums dP on the tensor cores and delta in its prep kernel, two orders, ~1e-7 apart).
//    2^-16 is 256 times finer than bf16's unit roundoff 2^-8, so it never hides a bf16-level error;
//    in practice every class has rows whose plain error dwarfs it.
// lse (no bf16 rounding on either side) is compared on every row with tests/attention_gpu_test.cu's
// bound, 2e-4 of max(|lse|, 1): at 64K keys flash adds up l in fp32 over at most 2048 steps (32 keys
// in the short-document kernels; the long-document ones this test runs take 64), at worst
// ~2 * 2048 * 2^-24 = 2.4e-4 relative in l (a rounding in each rescale and each add), so
// 2.4e-4 absolute in lse (typically ~100 times less), against a 2.3e-3 allowance at |lse| ~ 11.6.
// Every output element of the flash kernels (all rows, not only the sampled ones) must be finite:
// they are poisoned with NaN first, so an element never written fails. The reference's outputs are
// poisoned too, and a comparison fails on a non-finite reference or plain bf16 value.
//
// Cost. Measured on an H100 (2026-12-06): 7.8 s and 3.1 s (the all-rows reference 4.6 s and 0.8 s,
// inputs ~2 s each). Estimated before, for the record: the all-rows pass is
// the bulk: ~190 warp instructions per visible (query, key, head) triple (the reference forward with
// plain bf16's softmax statistics beside it, then a second pass for sum_j p dp; counted from the
// PTX of the D = 128 loops), 1.7e10 triples in the 64K case, at ~9e11 warp instructions/s (132
// SMs x 4 schedulers x ~1.75 GHz): ~3.5 s at full issue, say 4-8 s. The windowed case has 3.8e9
// triples, ~1-2 s. The sampled rows and keys are latency-bound loops of at most 65,536 (rows) or
// 4 x 65,536 (keys) steps, ~0.05 and ~0.2 s. With the host's input generation (160M bf16 values,
// ~2 s) and checks, ~10-15 s for both tests.
#include <cuda_runtime.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <map>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "ops/attention.h"
#include "ops/cuda_common.h"
#include "tests/attention_families.h"
#include "tests/device_array.h"
#include "tests/test_util.h"

namespace loom {
namespace {

using test::DeviceArray;

// ---------------------------------------------------------------------------------------------
// Reference kernels (device)

struct RefInputs {
  const bf16 *q, *k, *v, *dout;  // (T, H, D), (T, KVH, D), (T, KVH, D), (T, H, D)
  int64_t q_stride, k_stride, v_stride, dout_stride;  // elements between consecutive tokens
  const int32_t* doc_start;  // (T): first token of token t's document
  const int32_t* doc_end;    // (T): one past its last token
  int T, H, KVH, window;
  float scale;
};

// The all-rows pass's results, (T, H) each; out (T, H, D).
struct RowResults {
  float* out;           // reference out (fp32)
  float* lse;           // reference lse
  float* delta;         // dout_i . out_i with the reference out
  float* plain_max;     // plain bf16 softmax: max of the bf16 scores,
  float* plain_sum;     //   sum of exp(x - max),
  float* plain_rowdot;  //   sum_j p_ij dp_ij (bf16 p and dp), its softmax backward's row sum
};

__device__ __forceinline__ int lane_id() { return threadIdx.x & 31; }
__device__ __forceinline__ int64_t warp_index() {
  return (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) >> 5;
}

// Lowest key query i sees, and last query that sees key j (ops/attention.h's rule).
__device__ __forceinline__ int first_key(const RefInputs& p, int i) {
  return p.window > 0 ? max(p.doc_start[i], i - p.window + 1) : p.doc_start[i];
}
__device__ __forceinline__ int last_query(const RefInputs& p, int j) {
  return p.window > 0 ? min(p.doc_end[j] - 1, j + p.window - 1) : p.doc_end[j] - 1;
}

// Head `head` of token t in a (T, heads, D) view with row stride `stride`.
__device__ __forceinline__ const bf16* head_row(const bf16* base, int64_t stride, int t, int head, int D) {
  return base + t * stride + static_cast<int64_t>(head) * D;
}

// This lane's elements (lane, lane + 32, ...) of a head row, as fp32.
template <int N>
__device__ __forceinline__ void load(float (&x)[N], const bf16* row) {
#pragma unroll
  for (int c = 0; c < N; ++c) x[c] = __bfloat162float(row[lane_id() + 32 * c]);
}

// Butterfly sum: every lane ends with the same value (each step adds the same two numbers in
// either order).
__device__ __forceinline__ float warp_sum(float x) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) x += __shfl_xor_sync(0xffffffffu, x, o);
  return x;
}

template <int N>
__device__ __forceinline__ float dot(const float (&a)[N], const float (&b)[N]) {
  float s = 0.f;
#pragma unroll
  for (int c = 0; c < N; ++c) s += a[c] * b[c];
  return warp_sum(s);
}

// Plain bf16 (tests/attention_gpu_test.cu's emulation of PyTorch's eager path).
__device__ __forceinline__ float bf(float x) { return __bfloat162float(__float2bfloat16(x)); }  // nearest even
__device__ __forceinline__ float plain_score(float qk, float scale) { return bf(bf(qk) * scale); }
__device__ __forceinline__ float plain_prob(float x, float max, float sum) { return bf(expf(x - max) / sum); }
__device__ __forceinline__ float plain_dscore(float p, float dp, float rowdot, float scale) {
  return bf(bf(p * (dp - rowdot)) * scale);
}

// Every row: one warp per (token, head), tokens from the last down so the longest rows start first.
template <int D>
__global__ void __launch_bounds__(256) reference_rows_kernel(const RefInputs p, const RowResults r) {
  constexpr int N = D / 32;
  const int64_t w = warp_index();
  if (w >= static_cast<int64_t>(p.T) * p.H) return;  // whole warps only
  const int i = p.T - 1 - static_cast<int>(w / p.H);
  const int h = static_cast<int>(w % p.H);
  const int kvh = h / (p.H / p.KVH);
  const int j0 = first_key(p, i);
  float qi[N], doi[N], kj[N], vj[N];
  load(qi, head_row(p.q, p.q_stride, i, h, D));
  load(doi, head_row(p.dout, p.dout_stride, i, h, D));

  // Pass 1: reference online softmax (m = running max of s, l = sum exp(s - m), acc = sum exp(s - m) v)
  // and plain bf16's max and sum.
  float m = -INFINITY;
  double l = 0, acc[N] = {};
  float pmax = -INFINITY, psum = 0.f;
  for (int j = j0; j <= i; ++j) {
    load(kj, head_row(p.k, p.k_stride, j, kvh, D));
    load(vj, head_row(p.v, p.v_stride, j, kvh, D));
    const float qk = dot(qi, kj);
    const float s = qk * p.scale;
    if (s > m) {
      const double rescale = expf(m - s);  // 0 at the first key (m = -inf)
      l *= rescale;
#pragma unroll
      for (int c = 0; c < N; ++c) acc[c] *= rescale;
      m = s;
    }
    const float e = expf(s - m);
    l += e;
#pragma unroll
    for (int c = 0; c < N; ++c) acc[c] += static_cast<double>(e) * vj[c];
    const float x = plain_score(qk, p.scale);
    if (x > pmax) {
      psum *= expf(pmax - x);
      pmax = x;
    }
    psum += expf(x - pmax);
  }
  float oi[N];
#pragma unroll
  for (int c = 0; c < N; ++c) oi[c] = static_cast<float>(acc[c] / l);
  const float delta = dot(doi, oi);
  const int64_t row = static_cast<int64_t>(i) * p.H + h;
#pragma unroll
  for (int c = 0; c < N; ++c) r.out[row * D + lane_id() + 32 * c] = oi[c];

  // Pass 2: plain bf16's sum_j p_ij dp_ij, which needs the final max and sum.
  float rowdot = 0.f;
  for (int j = j0; j <= i; ++j) {
    load(kj, head_row(p.k, p.k_stride, j, kvh, D));
    load(vj, head_row(p.v, p.v_stride, j, kvh, D));
    const float pp = plain_prob(plain_score(dot(qi, kj), p.scale), pmax, psum);
    rowdot += pp * bf(dot(doi, vj));
  }
  if (lane_id() == 0) {
    r.lse[row] = static_cast<float>(static_cast<double>(m) + log(l));
    r.delta[row] = delta;
    r.plain_max[row] = pmax;
    r.plain_sum[row] = psum;
    r.plain_rowdot[row] = rowdot;
  }
}

// Sampled rows: one warp per (sample s, head h); outputs (n, H, D), row s * H + h.
template <int D>
__global__ void __launch_bounds__(256)
    sampled_rows_kernel(const RefInputs p, const RowResults r, const int32_t* rows, int n, float* ref_dq,
                        float* plain_out, float* plain_dq) {
  constexpr int N = D / 32;
  const int64_t w = warp_index();
  if (w >= static_cast<int64_t>(n) * p.H) return;
  const int i = rows[w / p.H];
  const int h = static_cast<int>(w % p.H);
  const int kvh = h / (p.H / p.KVH);
  const int64_t row = static_cast<int64_t>(i) * p.H + h;
  const float lse = r.lse[row], delta = r.delta[row];
  const float pmax = r.plain_max[row], psum = r.plain_sum[row], rowdot = r.plain_rowdot[row];
  float qi[N], doi[N], kj[N], vj[N];
  load(qi, head_row(p.q, p.q_stride, i, h, D));
  load(doi, head_row(p.dout, p.dout_stride, i, h, D));
  double dq[N] = {};
  float pout[N] = {}, pdq[N] = {};
  for (int j = first_key(p, i); j <= i; ++j) {
    load(kj, head_row(p.k, p.k_stride, j, kvh, D));
    load(vj, head_row(p.v, p.v_stride, j, kvh, D));
    const float qk = dot(qi, kj), dp = dot(doi, vj);
    // Reference.
    const float P = expf(qk * p.scale - lse);
    const float dS = P * (dp - delta);
#pragma unroll
    for (int c = 0; c < N; ++c) dq[c] += static_cast<double>(dS) * kj[c];
    // Plain bf16.
    const float pp = plain_prob(plain_score(qk, p.scale), pmax, psum);
    const float ds = plain_dscore(pp, bf(dp), rowdot, p.scale);
#pragma unroll
    for (int c = 0; c < N; ++c) {
      pout[c] += pp * vj[c];
      pdq[c] += ds * kj[c];
    }
  }
#pragma unroll
  for (int c = 0; c < N; ++c) {
    const int64_t e = w * D + lane_id() + 32 * c;
    ref_dq[e] = static_cast<float>(p.scale * dq[c]);
    plain_out[e] = bf(pout[c]);
    plain_dq[e] = bf(pdq[c]);
  }
}

// Sampled keys: one warp per (sample s, kv head), looping over the query heads of its group and
// the queries that see the key; outputs (n, KVH, D), row s * KVH + kvh.
template <int D>
__global__ void __launch_bounds__(256)
    sampled_keys_kernel(const RefInputs p, const RowResults r, const int32_t* keys, int n, float* ref_dk,
                        float* ref_dv, float* plain_dk, float* plain_dv) {
  constexpr int N = D / 32;
  const int64_t w = warp_index();
  if (w >= static_cast<int64_t>(n) * p.KVH) return;
  const int j = keys[w / p.KVH];
  const int kvh = static_cast<int>(w % p.KVH);
  const int group = p.H / p.KVH;
  const int i_last = last_query(p, j);
  float kj[N], vj[N], qi[N], doi[N];
  load(kj, head_row(p.k, p.k_stride, j, kvh, D));
  load(vj, head_row(p.v, p.v_stride, j, kvh, D));
  double dk[N] = {}, dv[N] = {};
  float pdk[N] = {}, pdv[N] = {};
  for (int h = kvh * group; h < (kvh + 1) * group; ++h) {
    for (int i = j; i <= i_last; ++i) {
      load(qi, head_row(p.q, p.q_stride, i, h, D));
      load(doi, head_row(p.dout, p.dout_stride, i, h, D));
      const float qk = dot(qi, kj), dp = dot(doi, vj);  // operand order as in the row kernels
      const int64_t row = static_cast<int64_t>(i) * p.H + h;
      // Reference.
      const float P = expf(qk * p.scale - r.lse[row]);
      const float dS = P * (dp - r.delta[row]);
#pragma unroll
      for (int c = 0; c < N; ++c) {
        dk[c] += static_cast<double>(dS) * qi[c];
        dv[c] += static_cast<double>(P) * doi[c];
      }
      // Plain bf16.
      const float pp = plain_prob(plain_score(qk, p.scale), r.plain_max[row], r.plain_sum[row]);
      const float ds = plain_dscore(pp, bf(dp), r.plain_rowdot[row], p.scale);
#pragma unroll
      for (int c = 0; c < N; ++c) {
        pdk[c] += ds * qi[c];
        pdv[c] += pp * doi[c];
      }
    }
  }
#pragma unroll
  for (int c = 0; c < N; ++c) {
    const int64_t e = w * D + lane_id() + 32 * c;
    ref_dk[e] = static_cast<float>(p.scale * dk[c]);
    ref_dv[e] = static_cast<float>(dv[c]);
    plain_dk[e] = bf(pdk[c]);
    plain_dv[e] = bf(pdv[c]);
  }
}

constexpr int kWarpsPerBlock = 8;

unsigned blocks_for_warps(int64_t warps) { return static_cast<unsigned>(ceil_div(warps, kWarpsPerBlock)); }

// ---------------------------------------------------------------------------------------------
// Host side

using Clock = std::chrono::steady_clock;
double seconds_since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

// Packed documents: per-token document bounds and ops/attention.h's masking rule.
struct Geometry {
  std::vector<int32_t> cu_seqlens, doc_start, doc_end;
  int64_t T = 0;
  int window = 0;
  int first_key(int i) const { return window > 0 ? std::max(doc_start[i], i - window + 1) : doc_start[i]; }
  int last_query(int j) const { return window > 0 ? std::min(doc_end[j] - 1, j + window - 1) : doc_end[j] - 1; }
  int64_t visible_keys(int i) const { return i - first_key(i) + 1; }
};

Geometry make_geometry(const std::vector<int>& doc_lens, int window) {
  Geometry g;
  g.window = window;
  g.cu_seqlens = {0};
  for (int len : doc_lens) g.cu_seqlens.push_back(g.cu_seqlens.back() + len);
  g.T = g.cu_seqlens.back();
  for (size_t d = 0; d + 1 < g.cu_seqlens.size(); ++d)
    for (int32_t t = g.cu_seqlens[d]; t < g.cu_seqlens[d + 1]; ++t) {
      g.doc_start.push_back(g.cu_seqlens[d]);
      g.doc_end.push_back(g.cu_seqlens[d + 1]);
    }
  return g;
}

// ~count distinct tokens, sorted: each document's first and last three, the tokens around the
// window's edge (a + window - 1 is the first whose window is full), then, alternately, uniform
// over the buffer (mostly long rows) and log-uniform over the longest document's positions (every
// magnitude class).
std::vector<int32_t> sample_tokens(const Geometry& g, size_t count, uint64_t seed) {
  std::set<int32_t> s;
  size_t longest = 0;
  for (size_t d = 0; d + 1 < g.cu_seqlens.size(); ++d) {
    const int32_t a = g.cu_seqlens[d], b = g.cu_seqlens[d + 1];
    if (b - a > g.cu_seqlens[longest + 1] - g.cu_seqlens[longest]) longest = d;
    for (int32_t t : {a, a + 1, a + 2, b - 3, b - 2, b - 1})
      if (t >= a && t < b) s.insert(t);
    if (g.window > 0)
      for (int32_t t : {a + g.window - 1, a + g.window, a + g.window + 1})
        if (t < b) s.insert(t);
  }
  const int32_t start = g.cu_seqlens[longest], len = g.cu_seqlens[longest + 1] - start;
  std::mt19937_64 rng(seed);
  std::uniform_int_distribution<int32_t> anywhere(0, static_cast<int32_t>(g.T - 1));
  std::uniform_real_distribution<double> log_pos(0.0, std::log2(static_cast<double>(len)));
  for (size_t n = 0; s.size() < std::min<size_t>(count, g.T); ++n) {
    if (n % 2 == 0)
      s.insert(anywhere(rng));
    else
      s.insert(start + std::min<int32_t>(len - 1, static_cast<int32_t>(std::exp2(log_pos(rng))) - 1));
  }
  return {s.begin(), s.end()};
}

// Magnitude class of a token with effective count nu (see the header): 16^c <= nu < 16^(c+1).
int magnitude_class(double nu) { return static_cast<int>(std::floor(std::log2(nu) / 4)); }

std::vector<int> row_classes(const Geometry& g, const std::vector<int32_t>& rows) {
  std::vector<int> c;
  for (int32_t i : rows) c.push_back(magnitude_class(static_cast<double>(g.visible_keys(i))));
  return c;
}

std::vector<int> key_classes(const Geometry& g, const std::vector<int32_t>& keys) {
  std::vector<int> c;
  for (int32_t j : keys) {
    double inv = 0;
    for (int i = j; i <= g.last_query(j); ++i) inv += 1.0 / (double(g.visible_keys(i)) * double(g.visible_keys(i)));
    c.push_back(magnitude_class(1.0 / inv));
  }
  return c;
}

// Copies contiguous (T, width) values into a strided view of a bf16 buffer (as raw bits).
void scatter_rows(std::vector<uint16_t>& buf, size_t offset, int64_t stride, const std::vector<float>& src, int64_t T,
                  int64_t width) {
  for (int64_t t = 0; t < T; ++t)
    for (int64_t e = 0; e < width; ++e) buf[offset + t * stride + e] = float_to_bf16_bits(src[t * width + e]);
}

// The sampled tokens' rows (width elements each) of a strided bf16 view / a contiguous fp32 buffer.
std::vector<float> pick_rows(const std::vector<uint16_t>& buf, size_t offset, int64_t stride,
                             const std::vector<int32_t>& tokens, int64_t width) {
  std::vector<float> out(tokens.size() * width);
  for (size_t s = 0; s < tokens.size(); ++s)
    for (int64_t e = 0; e < width; ++e) out[s * width + e] = bf16_bits_to_float(buf[offset + tokens[s] * stride + e]);
  return out;
}
std::vector<float> pick_rows(const std::vector<float>& buf, const std::vector<int32_t>& tokens, int64_t width) {
  std::vector<float> out(tokens.size() * width);
  for (size_t s = 0; s < tokens.size(); ++s)
    std::copy_n(buf.begin() + tokens[s] * width, width, out.begin() + s * width);
  return out;
}

// Index of the first NaN or Inf among bf16 bits (exponent all ones), -1 when none.
int64_t first_non_finite(const std::vector<uint16_t>& bits) {
  for (size_t i = 0; i < bits.size(); ++i)
    if ((bits[i] & 0x7f80u) == 0x7f80u) return static_cast<int64_t>(i);
  return -1;
}

// The flash rule per magnitude class (see the header). got, plain, ref: (tokens, heads, D) for the
// sampled tokens; cls: each sampled token's class.
void expect_flash_rule_by_class(const std::string& what, const std::vector<float>& got,
                                const std::vector<float>& plain, const std::vector<float>& ref,
                                const std::vector<int32_t>& tokens, const std::vector<int>& cls, int heads, int D) {
  const size_t width = static_cast<size_t>(heads) * D;
  ASSERT_EQ(cls.size(), tokens.size()) << what;
  ASSERT_EQ(got.size(), tokens.size() * width) << what << ": kernel values";
  ASSERT_EQ(plain.size(), tokens.size() * width) << what << ": plain bf16 values";
  ASSERT_EQ(ref.size(), tokens.size() * width) << what << ": reference values";
  auto where = [&](size_t e) {
    return cat("token ", tokens[e / width], ", head ", (e % width) / D, ", dim ", e % D);
  };
  struct Class {
    double kernel = 0, plain = 0, scale = 0;  // max abs errors, max |ref|
    size_t worst = 0, tokens = 0;
  };
  std::map<int, Class> classes;
  for (size_t s = 0; s < tokens.size(); ++s) {
    Class& c = classes[cls[s]];
    ++c.tokens;
    for (size_t e = s * width; e < (s + 1) * width; ++e) {
      ASSERT_TRUE(std::isfinite(ref[e]) && std::isfinite(plain[e]))
          << what << ": the reference (" << ref[e] << ") or plain bf16 (" << plain[e] << ") is not finite at "
          << where(e);
      const double err = test::absolute_error(got[e], ref[e]);  // +inf when got is NaN or Inf
      if (c.tokens == 1 && e == s * width) c.worst = e;  // the class's first element until one errs more
      if (err > c.kernel) {
        c.kernel = err;
        c.worst = e;
      }
      c.plain = std::max(c.plain, std::fabs(double(plain[e]) - double(ref[e])));
      c.scale = std::max(c.scale, std::fabs(double(ref[e])));
    }
  }
  for (const auto& [id, c] : classes) {
    const double allowed = 2 * c.plain + std::ldexp(c.scale, -16);
    const size_t w = c.worst;
    EXPECT_LE(c.kernel, allowed) << what << ", magnitude class " << id << " (" << c.tokens
                                 << " sampled tokens): max abs err " << c.kernel << " at " << where(w) << ": got "
                                 << got[w] << ", want " << ref[w] << "; plain bf16 max abs err " << c.plain
                                 << ", max |ref| " << c.scale << ", allowed " << allowed;
    std::printf("  %-3s class %2d (%2zu tokens, max |ref| %9.3g): max abs err %9.3g, plain bf16 %9.3g, ratio %.2f\n",
                what.c_str(), id, c.tokens, c.scale, c.kernel, c.plain, c.plain > 0 ? c.kernel / c.plain : 0.0);
  }
}

struct LongCase {
  std::vector<int> doc_lens;
  int H, KVH, D, window;
  bool fused_qkv;  // q, k, v (and dq, dk, dv) as views into one (T, (H + 2 KVH) D) buffer
  uint64_t seed;
};

// The fp32 reference (and plain bf16) on the device, D fixed.
template <int D>
void run_reference(const RefInputs& in, const RowResults& rr, const DeviceArray<int32_t>& rows, int n_rows,
                   DeviceArray<float>& ref_dq, DeviceArray<float>& plain_out, DeviceArray<float>& plain_dq,
                   const DeviceArray<int32_t>& keys, int n_keys, DeviceArray<float>& ref_dk,
                   DeviceArray<float>& ref_dv, DeviceArray<float>& plain_dk, DeviceArray<float>& plain_dv) {
  const int threads = kWarpsPerBlock * 32;
  Clock::time_point t = Clock::now();
  reference_rows_kernel<D><<<blocks_for_warps(int64_t{in.T} * in.H), threads>>>(in, rr);
  CUDA_CHECK(cudaGetLastError());
  CUDA_CHECK(cudaDeviceSynchronize());
  const double rows_s = seconds_since(t);
  t = Clock::now();
  sampled_rows_kernel<D><<<blocks_for_warps(int64_t{n_rows} * in.H), threads>>>(
      in, rr, rows.get(), n_rows, ref_dq.get(), plain_out.get(), plain_dq.get());
  CUDA_CHECK(cudaGetLastError());
  CUDA_CHECK(cudaDeviceSynchronize());
  const double sampled_rows_s = seconds_since(t);
  t = Clock::now();
  sampled_keys_kernel<D><<<blocks_for_warps(int64_t{n_keys} * in.KVH), threads>>>(
      in, rr, keys.get(), n_keys, ref_dk.get(), ref_dv.get(), plain_dk.get(), plain_dv.get());
  CUDA_CHECK(cudaGetLastError());
  CUDA_CHECK(cudaDeviceSynchronize());
  std::printf("  reference: every row %.2f s, %d sampled rows %.2f s, %d sampled keys %.2f s\n", rows_s, n_rows,
              sampled_rows_s, n_keys, seconds_since(t));
}

void run_long_case(const LongCase& c) {
  const Clock::time_point start = Clock::now();
  const Geometry g = make_geometry(c.doc_lens, c.window);
  const int64_t T = g.T;
  SCOPED_TRACE(cat("T=", T, " ndoc=", c.doc_lens.size(), " H=", c.H, " KVH=", c.KVH, " D=", c.D,
                   " window=", c.window, c.fused_qkv ? " fused qkv" : " contiguous"));
  ASSERT_TRUE(c.D == 64 || c.D == 128);
  ASSERT_EQ(c.H % c.KVH, 0);
  const int64_t hd = int64_t{c.H} * c.D, kvd = int64_t{c.KVH} * c.D;
  const float scale = 1.f / std::sqrt(static_cast<float>(c.D));

  // Layout of q, k, v in one buffer (as tests/attention_gpu_test.cu): interleaved per token or one
  // after another. The gradients share it.
  const AttentionStrides st =
      c.fused_qkv ? AttentionStrides::fused_qkv(c.H, c.KVH, c.D) : AttentionStrides::contiguous(c.H, c.KVH, c.D);
  const size_t off[3] = {0, size_t(c.fused_qkv ? hd : T * hd), size_t(c.fused_qkv ? hd + kvd : T * (hd + kvd))};
  const size_t total = size_t(T * (hd + 2 * kvd));

  // Inputs as tests/attention_gpu_test.cu draws them (q three times wider: unit-variance scores).
  std::vector<uint16_t> qkv_bits(total), dout_bits(T * hd);
  scatter_rows(qkv_bits, off[0], st.q, test::random_bf16_values(T * hd, c.seed, 3.f), T, hd);
  scatter_rows(qkv_bits, off[1], st.k, test::random_bf16_values(T * kvd, c.seed + 1, 1.f), T, kvd);
  scatter_rows(qkv_bits, off[2], st.v, test::random_bf16_values(T * kvd, c.seed + 2, 1.f), T, kvd);
  scatter_rows(dout_bits, 0, hd, test::random_bf16_values(T * hd, c.seed + 3, 1.f), T, hd);
  const std::vector<int32_t> rows = sample_tokens(g, 64, c.seed + 4), keys = sample_tokens(g, 64, c.seed + 5);
  const int n_rows = static_cast<int>(rows.size()), n_keys = static_cast<int>(keys.size());

  DeviceArray<int32_t> cu(g.cu_seqlens.size()), doc_start(T), doc_end(T), rows_dev(n_rows), keys_dev(n_keys);
  DeviceArray<bf16> qkv(total), dqkv(total), out(T * hd), dout(T * hd);
  DeviceArray<float> lse(T * c.H), scratch(attention_backward_scratch_floats(T, c.H, c.D));
  cu.upload(g.cu_seqlens);
  doc_start.upload(g.doc_start);
  doc_end.upload(g.doc_end);
  rows_dev.upload(rows);
  keys_dev.upload(keys);
  qkv.upload(qkv_bits);
  dout.upload(dout_bits);
  const bf16* q = qkv.get() + off[0];
  const bf16* k = qkv.get() + off[1];
  const bf16* v = qkv.get() + off[2];
  const AttentionShape shape{cu.get(), static_cast<int>(c.doc_lens.size()), c.H, c.KVH, c.D, c.window, scale};

  Clock::time_point t = Clock::now();
  // Reference and plain bf16; every output poisoned too, so one left unwritten fails the checks.
  DeviceArray<float> ref_out(T * hd), ref_lse(T * c.H), delta(T * c.H), plain_max(T * c.H), plain_sum(T * c.H),
      plain_rowdot(T * c.H);
  DeviceArray<float> ref_dq(n_rows * hd), plain_out(n_rows * hd), plain_dq(n_rows * hd);
  DeviceArray<float> ref_dk(n_keys * kvd), ref_dv(n_keys * kvd), plain_dk(n_keys * kvd), plain_dv(n_keys * kvd);
  for (DeviceArray<float>* a : {&ref_out, &ref_lse, &delta, &plain_max, &plain_sum, &plain_rowdot, &ref_dq,
                                &plain_out, &plain_dq, &ref_dk, &ref_dv, &plain_dk, &plain_dv})
    a->poison();
  const RefInputs in{q,       k,     v,   dout.get(), st.q,  st.k,  st.v, st.dout, doc_start.get(), doc_end.get(),
                     int(T), c.H, c.KVH, c.window,  scale};
  const RowResults rr{ref_out.get(), ref_lse.get(), delta.get(), plain_max.get(), plain_sum.get(), plain_rowdot.get()};
  if (c.D == 64)
    run_reference<64>(in, rr, rows_dev, n_rows, ref_dq, plain_out, plain_dq, keys_dev, n_keys, ref_dk, ref_dv,
                      plain_dk, plain_dv);
  else
    run_reference<128>(in, rr, rows_dev, n_rows, ref_dq, plain_out, plain_dq, keys_dev, n_keys, ref_dk, ref_dv,
                       plain_dk, plain_dv);

  std::printf("  T %lld: inputs %.2f s, reference %.2f s\n", static_cast<long long>(T),
              std::chrono::duration<double>(t - start).count(), seconds_since(t));

  // Each long-document family, forward then backward from its own forward.
  for (AttentionKernels kernels : test::long_attention_families()) {
    SCOPED_TRACE(test::attention_family_name(kernels));
    t = Clock::now();
    // Flash, forward then backward from its own forward; every output poisoned with NaN first.
    out.poison();
    lse.poison();
    dqkv.poison();
    scratch.poison();
    attention_forward(out.get(), lse.get(), q, k, v, st, shape, T, nullptr, kernels);
    attention_backward(dqkv.get() + off[0], dqkv.get() + off[1], dqkv.get() + off[2], scratch.get(), dout.get(), q, k,
                       v, out.get(), lse.get(), st, shape, T, nullptr, kernels);
    CUDA_CHECK(cudaDeviceSynchronize());
    std::printf("  %s: flash forward + backward %.3f s\n", test::attention_family_name(kernels), seconds_since(t));

    // Every element of the kernel's outputs written and finite.
    const std::vector<uint16_t> out_bits = out.download<uint16_t>(), grad_bits = dqkv.download<uint16_t>();
    const int64_t bad_out = first_non_finite(out_bits), bad_grad = first_non_finite(grad_bits);
    EXPECT_EQ(bad_out, -1) << "out: non-finite (never written?) at element " << bad_out << " (token "
                           << bad_out / hd << ")";
    EXPECT_EQ(bad_grad, -1) << "dq/dk/dv buffer: non-finite (never written?) at element " << bad_grad;
    test::expect_close(lse.download<float>(), ref_lse.download<float>(), 2e-4, "lse (every row)", 1.0);

    const std::vector<int> rc = row_classes(g, rows), kc = key_classes(g, keys);
    expect_flash_rule_by_class("out", pick_rows(out_bits, 0, st.out, rows, hd), plain_out.download<float>(),
                               pick_rows(ref_out.download<float>(), rows, hd), rows, rc, c.H, c.D);
    expect_flash_rule_by_class("dq", pick_rows(grad_bits, off[0], st.dq, rows, hd), plain_dq.download<float>(),
                               ref_dq.download<float>(), rows, rc, c.H, c.D);
    expect_flash_rule_by_class("dk", pick_rows(grad_bits, off[1], st.dk, keys, kvd), plain_dk.download<float>(),
                               ref_dk.download<float>(), keys, kc, c.KVH, c.D);
    expect_flash_rule_by_class("dv", pick_rows(grad_bits, off[2], st.dv, keys, kvd), plain_dv.download<float>(),
                               ref_dv.download<float>(), keys, kc, c.KVH, c.D);
  }
  std::printf("  total %.2f s\n", seconds_since(start));
}

}  // namespace

// One 65,536-token document, GQA 4, head dim 128, no window; q, k, v as separate tensors.
TEST(AttentionLongGpu, Document64kGqa4D128) {
  REQUIRE_GPU();
  run_long_case({{65536}, 8, 2, 128, 0, false, 101});
}

// A 64K document among short ones (one just past the window, one of two tokens), a 4,096-token
// window, 14 query heads over 2 kv heads (GQA 7, as Qwen2.5-0.5B), head dim 64, fused qkv.
TEST(AttentionLongGpu, Document64kAmongShortWindow4096Gqa7D64) {
  REQUIRE_GPU();
  run_long_case({{777, 65536, 4100, 129, 2}, 14, 2, 64, 4096, true, 201});
}

}  // namespace loom
