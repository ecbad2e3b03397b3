// Flash attention on the GPU (ops/attention.cu) against the fp32 reference (ops/attention_ref.cpp).
// Inputs are drawn fresh per case and rounded to bf16 first, so both sides see the same values.
// Tolerance, flash-attention's rule (tests/test_flash_attn.py): the kernel's largest error against
// the fp32 reference must be at most twice that of a plain bf16 implementation on the same inputs
// (eager attention as PyTorch runs it in bf16, emulated here on the host). Every output is poisoned
// with NaN before its kernel runs, so an element left unwritten fails the finiteness check.
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
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
using test::random_bf16_values;
using test::round_bf16;

struct Case {
  std::vector<int> doc_lens;
  int H, KVH, D, window;
  bool fused_qkv;  // q, k, v (and dq, dk, dv) as views into one (T, (H + 2 KVH) D) buffer
  uint64_t seed;
  // Rerun the backward and expect the same bits where T allows it: dq gathers one fp32 atomic add per
  // key tile into a zeroed accumulator, and 0 + a + b is exact in either order, so up to two key tiles
  // the result cannot depend on the blocks' order (README: GPU runs repeat bit for bit up to 128
  // tokens, two tiles of the short-document kernels).
  bool repeats_bitwise = false;
};

std::string describe(const Case& c, int64_t T) {
  return cat("T=", T, " ndoc=", c.doc_lens.size(), " H=", c.H, " KVH=", c.KVH, " D=", c.D, " window=", c.window,
             c.fused_qkv ? " fused qkv" : " contiguous");
}

// The packed problem on the host: fp32 copies of bf16 values, contiguous (T, heads, D).
struct Problem {
  std::vector<int32_t> cu_seqlens;
  int64_t T;
  int H, KVH, D, window;
  float scale;
  std::vector<float> q, k, v, dout;
  AttentionShape shape(const int32_t* cu) const {
    return {cu, static_cast<int>(cu_seqlens.size()) - 1, H, KVH, D, window, scale};
  }
  int64_t doc_start(int64_t i) const {
    return *(std::upper_bound(cu_seqlens.begin(), cu_seqlens.end(), static_cast<int32_t>(i)) - 1);
  }
  int64_t first_key(int64_t i) const { return window > 0 ? std::max(doc_start(i), i - window + 1) : doc_start(i); }
};

Problem make_problem(const Case& c) {
  Problem p;
  p.cu_seqlens = {0};
  for (int len : c.doc_lens) p.cu_seqlens.push_back(p.cu_seqlens.back() + len);
  p.T = p.cu_seqlens.back();
  p.H = c.H;
  p.KVH = c.KVH;
  p.D = c.D;
  p.window = c.window;
  p.scale = 1.f / std::sqrt(static_cast<float>(c.D));
  // q three times wider than k: scores of standard deviation ~1, so softmax rows are peaked enough
  // for the running max to move between key blocks.
  p.q = random_bf16_values(p.T * c.H * c.D, c.seed, 3.f);
  p.k = random_bf16_values(p.T * c.KVH * c.D, c.seed + 1, 1.f);
  p.v = random_bf16_values(p.T * c.KVH * c.D, c.seed + 2, 1.f);
  p.dout = random_bf16_values(p.T * c.H * c.D, c.seed + 3, 1.f);
  return p;
}

// ---------------------------------------------------------------------------------------------
// The plain bf16 implementation: q kᵀ * scale, softmax, P v as PyTorch's eager path runs them in
// bf16 (fp32 inside each op, every op's output rounded to bf16), and its autograd backward.

float dot(const float* a, const float* b, int D) {
  float s = 0.f;
  for (int d = 0; d < D; ++d) s += a[d] * b[d];
  return s;
}

float plain_score(const Problem& pr, int64_t i, int h, int64_t j) {
  const int kvh = h / (pr.H / pr.KVH);
  return round_bf16(round_bf16(dot(&pr.q[(i * pr.H + h) * pr.D], &pr.k[(j * pr.KVH + kvh) * pr.D], pr.D)) * pr.scale);
}

// Softmax statistics of one row, so that a probability can be rebuilt alone.
struct RowStats {
  float max, sum;
  float prob(float score) const { return round_bf16(std::exp(score - max) / sum); }
};

// Softmax row of query i, head h over keys [first_key(i), i]: bf16 probabilities in p.
RowStats plain_probabilities(std::vector<float>& p, const Problem& pr, int64_t i, int h) {
  const int64_t j0 = pr.first_key(i);
  p.resize(i - j0 + 1);
  RowStats st{-INFINITY, 0.f};
  for (int64_t j = j0; j <= i; ++j) st.max = std::max(st.max, p[j - j0] = plain_score(pr, i, h, j));
  for (float x : p) st.sum += std::exp(x - st.max);
  for (float& x : p) x = st.prob(x);
  return st;
}

std::vector<float> plain_bf16_forward(const Problem& pr) {
  std::vector<float> out(pr.T * pr.H * pr.D);
#pragma omp parallel
  {
    std::vector<float> p;
#pragma omp for collapse(2) schedule(dynamic, 8)
    for (int64_t i = 0; i < pr.T; ++i)
      for (int h = 0; h < pr.H; ++h) {
        plain_probabilities(p, pr, i, h);
        const int kvh = h / (pr.H / pr.KVH);
        const int64_t j0 = pr.first_key(i);
        std::vector<float> acc(pr.D, 0.f);
        for (int64_t j = j0; j <= i; ++j)
          for (int d = 0; d < pr.D; ++d) acc[d] += p[j - j0] * pr.v[(j * pr.KVH + kvh) * pr.D + d];
        for (int d = 0; d < pr.D; ++d) out[(i * pr.H + h) * pr.D + d] = round_bf16(acc[d]);
      }
  }
  return out;
}

struct Grads {
  std::vector<float> dq, dk, dv;
};

// dp = bf16(dout vᵀ); ds = bf16(p (dp - rowsum(p dp))) (softmax backward); da = bf16(ds * scale);
// dq = bf16(da k); dk = bf16(daᵀ q); dv = bf16(pᵀ dout). Two passes so every output has one writer:
// queries (dq, and the row statistics), then keys (dk, dv).
Grads plain_bf16_backward(const Problem& pr) {
  const int group = pr.H / pr.KVH;
  Grads g{std::vector<float>(pr.T * pr.H * pr.D), std::vector<float>(pr.T * pr.KVH * pr.D),
          std::vector<float>(pr.T * pr.KVH * pr.D)};
  std::vector<RowStats> stats(pr.T * pr.H);
  std::vector<float> rowdot(pr.T * pr.H);  // sum_j p_ij dp_ij
  auto dprob = [&](int64_t i, int h, int64_t j) {
    return round_bf16(dot(&pr.dout[(i * pr.H + h) * pr.D], &pr.v[(j * pr.KVH + h / group) * pr.D], pr.D));
  };
  auto dscore = [&](float p, float dp, int64_t i, int h) {
    return round_bf16(round_bf16(p * (dp - rowdot[i * pr.H + h])) * pr.scale);
  };
#pragma omp parallel
  {
    std::vector<float> p, dp;
#pragma omp for collapse(2) schedule(dynamic, 8)
    for (int64_t i = 0; i < pr.T; ++i)
      for (int h = 0; h < pr.H; ++h) {
        stats[i * pr.H + h] = plain_probabilities(p, pr, i, h);
        const int64_t j0 = pr.first_key(i);
        dp.resize(p.size());
        float rd = 0.f;
        for (int64_t j = j0; j <= i; ++j) rd += p[j - j0] * (dp[j - j0] = dprob(i, h, j));
        rowdot[i * pr.H + h] = rd;
        std::vector<float> acc(pr.D, 0.f);
        for (int64_t j = j0; j <= i; ++j) {
          const float da = dscore(p[j - j0], dp[j - j0], i, h);
          for (int d = 0; d < pr.D; ++d) acc[d] += da * pr.k[(j * pr.KVH + h / group) * pr.D + d];
        }
        for (int d = 0; d < pr.D; ++d) g.dq[(i * pr.H + h) * pr.D + d] = round_bf16(acc[d]);
      }
#pragma omp for collapse(2) schedule(dynamic, 8)
    for (int64_t j = 0; j < pr.T; ++j)
      for (int kvh = 0; kvh < pr.KVH; ++kvh) {
        std::vector<float> dk(pr.D, 0.f), dv(pr.D, 0.f);
        for (int h = kvh * group; h < (kvh + 1) * group; ++h)
          for (int64_t i = j; i < pr.T && pr.first_key(i) <= j; ++i) {
            const float pij = stats[i * pr.H + h].prob(plain_score(pr, i, h, j));
            const float da = dscore(pij, dprob(i, h, j), i, h);
            for (int d = 0; d < pr.D; ++d) {
              dk[d] += da * pr.q[(i * pr.H + h) * pr.D + d];
              dv[d] += pij * pr.dout[(i * pr.H + h) * pr.D + d];
            }
          }
        for (int d = 0; d < pr.D; ++d) {
          g.dk[(j * pr.KVH + kvh) * pr.D + d] = round_bf16(dk[d]);
          g.dv[(j * pr.KVH + kvh) * pr.D + d] = round_bf16(dv[d]);
        }
      }
  }
  return g;
}

// ---------------------------------------------------------------------------------------------
// Device layout: q, k, v share one allocation, either interleaved per token (fused qkv, row width
// (H + 2 KVH) D) or one after another (contiguous). The gradients use the same layout.

struct QkvLayout {
  AttentionStrides strides;
  size_t offset[3];  // element of token 0 of q, k, v
  size_t total;
};

QkvLayout make_layout(const Case& c, int64_t T) {
  const int64_t hd = int64_t{c.H} * c.D, kvd = int64_t{c.KVH} * c.D;
  if (c.fused_qkv)
    return {AttentionStrides::fused_qkv(c.H, c.KVH, c.D), {0, size_t(hd), size_t(hd + kvd)}, size_t(T * (hd + 2 * kvd))};
  return {AttentionStrides::contiguous(c.H, c.KVH, c.D), {0, size_t(T * hd), size_t(T * (hd + kvd))},
          size_t(T * (hd + 2 * kvd))};
}

// Copies (T, width) rows into / out of a strided view of a bf16 buffer (as raw bits).
void scatter_rows(std::vector<uint16_t>& buf, size_t offset, int64_t stride, const std::vector<float>& src,
                  int64_t T, int64_t width) {
  for (int64_t t = 0; t < T; ++t)
    for (int64_t e = 0; e < width; ++e) buf[offset + t * stride + e] = float_to_bf16_bits(src[t * width + e]);
}
std::vector<float> gather_rows(const std::vector<uint16_t>& buf, size_t offset, int64_t stride, int64_t T,
                               int64_t width) {
  std::vector<float> out(T * width);
  for (int64_t t = 0; t < T; ++t)
    for (int64_t e = 0; e < width; ++e) out[t * width + e] = bf16_bits_to_float(buf[offset + t * stride + e]);
  return out;
}
std::vector<float> to_float(const std::vector<uint16_t>& bits) {
  std::vector<float> out(bits.size());
  for (size_t i = 0; i < bits.size(); ++i) out[i] = bf16_bits_to_float(bits[i]);
  return out;
}

// ---------------------------------------------------------------------------------------------
// Checks

struct MaxError {
  double max_abs = 0;
  size_t worst = 0;
  bool finite = true;
};

// A non-finite value on either side marks the result non-finite (and names its first index).
MaxError max_abs_error(const std::vector<float>& got, const std::vector<float>& want) {
  MaxError e;
  for (size_t i = 0; i < got.size(); ++i) {
    if (!std::isfinite(got[i]) || !std::isfinite(want[i])) {
      if (e.finite) e.worst = i;
      e.finite = false;
      continue;
    }
    double abs = std::fabs(double(got[i]) - double(want[i]));
    if (e.finite && abs > e.max_abs) {
      e.max_abs = abs;
      e.worst = i;
    }
  }
  return e;
}

// got, plain, ref: (T, heads, D). Fails unless got is finite everywhere and its max error against ref
// is at most twice plain's.
void expect_flash_rule(const std::vector<float>& got, const std::vector<float>& plain, const std::vector<float>& ref,
                       const std::string& what, int heads, int D) {
  ASSERT_EQ(got.size(), ref.size()) << what;
  ASSERT_EQ(plain.size(), ref.size()) << what;
  const MaxError kernel = max_abs_error(got, ref), baseline = max_abs_error(plain, ref);
  ASSERT_TRUE(baseline.finite) << what << ": the plain bf16 or the fp32 reference is not finite at index "
                               << baseline.worst;
  const size_t w = kernel.worst;
  const std::string where = cat("token ", w / (size_t(heads) * D), ", head ", (w / D) % heads, ", dim ", w % D);
  EXPECT_TRUE(kernel.finite) << what << ": non-finite value (never written?) at " << where << ": got " << got[w]
                             << ", want " << ref[w];
  const test::Diff rel = test::compare(got.data(), ref.data(), got.size());
  EXPECT_LE(kernel.max_abs, 2 * baseline.max_abs)
      << what << ": max abs err " << kernel.max_abs << " (max rel " << rel.max_rel << ") at " << where << ": got "
      << got[w] << ", want " << ref[w] << "; plain bf16 max abs err " << baseline.max_abs;
  std::printf("  %-4s max abs err %.3g, plain bf16 %.3g\n", what.c_str(), kernel.max_abs, baseline.max_abs);
}

// The largest T whose dq is one or two fp32 atomic adds per element (key tiles of 64 or 128 tokens;
// kAuto's backward may be the short family's).
int64_t bitwise_tokens(AttentionKernels kernels) {
  return kernels == AttentionKernels::kShortDocs || kernels == AttentionKernels::kAuto ? 128 : 256;
}

// Every kernel family (tests/attention_families.h) on the same problem, each against the reference,
// and kAuto, whose backward in GPU_ARCH=90 builds is the Hopper family's after another family's forward.
void run_case(const Case& c) {
  const Problem pr = make_problem(c);
  const int64_t T = pr.T;
  SCOPED_TRACE(describe(c, T));
  const int64_t nq = T * c.H * c.D, nkv = T * c.KVH * c.D;
  const QkvLayout layout = make_layout(c, T);
  const AttentionStrides& st = layout.strides;

  std::vector<uint16_t> qkv_bits(layout.total);
  scatter_rows(qkv_bits, layout.offset[0], st.q, pr.q, T, int64_t{c.H} * c.D);
  scatter_rows(qkv_bits, layout.offset[1], st.k, pr.k, T, int64_t{c.KVH} * c.D);
  scatter_rows(qkv_bits, layout.offset[2], st.v, pr.v, T, int64_t{c.KVH} * c.D);
  std::vector<uint16_t> dout_bits(nq);
  for (int64_t i = 0; i < nq; ++i) dout_bits[i] = float_to_bf16_bits(pr.dout[i]);

  DeviceArray<int32_t> cu(pr.cu_seqlens.size());
  DeviceArray<bf16> qkv(layout.total), dqkv(layout.total), out(nq), dout(nq);
  DeviceArray<float> lse(T * c.H), scratch(attention_backward_scratch_floats(T, c.H, c.D));
  cu.upload(pr.cu_seqlens);
  qkv.upload(qkv_bits);
  dout.upload(dout_bits);
  const AttentionShape shape = pr.shape(cu.get());
  const bf16* q = qkv.get() + layout.offset[0];
  const bf16* k = qkv.get() + layout.offset[1];
  const bf16* v = qkv.get() + layout.offset[2];
  bf16* dq = dqkv.get() + layout.offset[0];
  bf16* dk = dqkv.get() + layout.offset[1];
  bf16* dv = dqkv.get() + layout.offset[2];

  std::vector<float> ref_out(nq), ref_lse(T * c.H);
  attention_forward_ref(ref_out.data(), ref_lse.data(), pr.q.data(), pr.k.data(), pr.v.data(),
                        pr.shape(pr.cu_seqlens.data()));
  Grads ref{std::vector<float>(nq), std::vector<float>(nkv), std::vector<float>(nkv)};
  attention_backward_ref(ref.dq.data(), ref.dk.data(), ref.dv.data(), pr.dout.data(), pr.q.data(), pr.k.data(),
                         pr.v.data(), ref_out.data(), ref_lse.data(), pr.shape(pr.cu_seqlens.data()));
  const std::vector<float> plain_out = plain_bf16_forward(pr);
  const Grads plain = plain_bf16_backward(pr);

  std::vector<AttentionKernels> families = test::attention_families();
  families.push_back(AttentionKernels::kAuto);
  for (AttentionKernels kernels : families) {
    SCOPED_TRACE(test::attention_family_name(kernels));
    std::printf(" %s\n", test::attention_family_name(kernels));
    out.poison();
    lse.poison();
    attention_forward(out.get(), lse.get(), q, k, v, st, shape, T, nullptr, kernels);
    CUDA_CHECK(cudaDeviceSynchronize());
    expect_flash_rule(to_float(out.download<uint16_t>()), plain_out, ref_out, "out", c.H, c.D);
    // lse has no bf16 rounding on either side: both compute fp32 scores from the same bf16 inputs,
    // differing in summation order (~D * 2^-24 * sum|q_d k_d| * scale, under 1e-5 here) and in the
    // hardware exp2/log2 (2^-22 relative); 2e-4 of max(|lse|, 1) leaves a wide margin over both.
    test::expect_close(lse.download<float>(), ref_lse, 2e-4, "lse", 1.0);

    // Backward, from each side's own forward.
    dqkv.poison();
    scratch.poison();
    attention_backward(dq, dk, dv, scratch.get(), dout.get(), q, k, v, out.get(), lse.get(), st, shape, T, nullptr,
                       kernels);
    CUDA_CHECK(cudaDeviceSynchronize());
    const std::vector<uint16_t> grad_bits = dqkv.download<uint16_t>();
    for (int rerun = 0; c.repeats_bitwise && T <= bitwise_tokens(kernels) && rerun < 3; ++rerun) {
      scratch.poison();
      attention_backward(dq, dk, dv, scratch.get(), dout.get(), q, k, v, out.get(), lse.get(), st, shape, T,
                         nullptr, kernels);
      CUDA_CHECK(cudaDeviceSynchronize());
      EXPECT_TRUE(dqkv.download<uint16_t>() == grad_bits) << "backward rerun " << rerun << " gave other bits";
    }
    expect_flash_rule(gather_rows(grad_bits, layout.offset[0], st.dq, T, int64_t{c.H} * c.D), plain.dq, ref.dq,
                      "dq", c.H, c.D);
    expect_flash_rule(gather_rows(grad_bits, layout.offset[1], st.dk, T, int64_t{c.KVH} * c.D), plain.dk, ref.dk,
                      "dk", c.KVH, c.D);
    expect_flash_rule(gather_rows(grad_bits, layout.offset[2], st.dv, T, int64_t{c.KVH} * c.D), plain.dv, ref.dv,
                      "dv", c.KVH, c.D);
  }
}

// Lengths at and around both families' steps and tiles (short: 64-token tiles, 32-key forward
// steps; long: 128-token tiles, 64-token steps): 1, 2, 31, 33, 63, 64, 65, 127, 129; 1058 tokens in
// all, so the last tile is partial and most tiles straddle a document boundary.
const std::vector<int> kEdgeDocs = {1, 2, 63, 64, 65, 127, 129, 1, 31, 200, 37, 300, 33, 5};
// One long document between short ones: 2241 tokens.
const std::vector<int> kLongDocs = {3, 2048, 190};

std::vector<int> random_docs(int n, int max_len, uint64_t seed) {
  std::vector<float> u = test::random_floats(n, seed, 0.f, 1.f);
  std::vector<int> lens;
  for (float x : u) lens.push_back(1 + static_cast<int>(x * (max_len - 1)));
  return lens;
}

}  // namespace

TEST(AttentionGpu, MatchesReferenceMhaD128) {
  REQUIRE_GPU();
  run_case({kEdgeDocs, 4, 4, 128, 0, true, 11});
}

TEST(AttentionGpu, MatchesReferenceGqa4WindowD128) {
  REQUIRE_GPU();
  std::vector<int> docs = kEdgeDocs;
  for (int len : random_docs(8, 400, 7)) docs.push_back(len);
  run_case({docs, 8, 2, 128, 48, true, 21});
}

TEST(AttentionGpu, MatchesReferenceGqa8D64) {
  REQUIRE_GPU();
  run_case({kEdgeDocs, 8, 1, 64, 0, true, 31});
}

TEST(AttentionGpu, MatchesReferenceWindowBelowKeyStepGqa2D64) {
  REQUIRE_GPU();
  run_case({kEdgeDocs, 4, 2, 64, 20, true, 91});
}

TEST(AttentionGpu, MatchesReferenceGqa4WindowD64ContiguousLayout) {
  REQUIRE_GPU();
  run_case({kEdgeDocs, 4, 1, 64, 100, false, 41});
}

TEST(AttentionGpu, MatchesReferenceLongDocumentGqa4D128) {
  REQUIRE_GPU();
  run_case({kLongDocs, 4, 1, 128, 0, true, 51});
}

TEST(AttentionGpu, MatchesReferenceLongDocumentWindowD64) {
  REQUIRE_GPU();
  run_case({kLongDocs, 2, 2, 64, 700, true, 61});
}

TEST(AttentionGpu, MatchesReferenceRandomDocumentsGqa8D128) {
  REQUIRE_GPU();
  run_case({random_docs(16, 300, 71), 8, 1, 128, 0, false, 81});
}

TEST(AttentionGpu, BackwardRepeatsBitForBitUpToTwoKeyTiles) {
  REQUIRE_GPU();
  run_case({{128}, 8, 2, 128, 0, true, 101, true});         // both families
  run_case({{3, 120, 133}, 4, 1, 64, 50, false, 111, true});  // 256 tokens: the long-document kernels
}

TEST(AttentionGpu, RejectsUnsupportedHeadDim) {
  REQUIRE_GPU();
  const int32_t* cu = nullptr;
  const AttentionShape shape{cu, 1, 4, 4, 96, 0, 0.1f};
  try {
    attention_forward(nullptr, nullptr, nullptr, nullptr, nullptr, AttentionStrides::contiguous(4, 4, 96), shape, 64,
                      nullptr);
    FAIL() << "head_dim 96 was accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("head_dim 96"), std::string::npos) << e.what();
  }
}

}  // namespace loom
