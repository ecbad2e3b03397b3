// The fp32 CPU reference ops (ops/*_ref.cpp): each forward against a direct formula or against
// values from torch / transformers, each backward against central finite differences.
//
// Finite differences. A backward is checked as the gradient of the random scalar objective
// f(inputs) = sum(out * r), evaluated in double from the fp32 forward, by the five-point stencil
//   df/dx_i ≈ [8 (f(x + h e_i) - f(x - h e_i)) - (f(x + 2h e_i) - f(x - 2h e_i))] / 12h
// with h = 2^-4 (a power of two, so x ± h and x ± 2h are exact in fp32 for inputs in [-4, 4]).
// Its error has two parts:
//   truncation  h⁴/30 · f⁽⁵⁾ ≈ 5e-7 · f⁽⁵⁾, small for these smooth ops on O(1) inputs;
//   rounding    only outputs that depend on x_i change (the others are bit-identical and cancel
//               in double), by ~6e-8 relative each, at worst coherently (RMSNorm: one rounded
//               rstd scales a whole row): ~1.5 · 6e-8 · sum|out·r| / h ≈ 3e-5 for a row of 24.
// The plain central difference needs a small h for its h²/6 · f⁽³⁾ term, and its rounding part
// then reached 1e-4 on RMSNorm; with this stencil the worst measured error is 1.5e-5 absolute,
// 1.7e-4 relative, while a wrong gradient is off by O(1) relative. Where the objective is linear
// in the input (LoRA linear: y is linear in x, in A and in B separately) there is no truncation
// error at all and h = 0.5 shrinks the rounding part further: there one weight of A moves all
// N·out outputs. The checks use expect_close with a floor,
// |analytic - numeric| <= tol · max(|numeric|, floor), with tol = 1e-3 and floor = 0.05 unless a
// test says otherwise: 5e-5 absolute near zero.
#include <nlohmann/json.hpp>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <fstream>
#include <functional>
#include <limits>
#include <vector>

#include "ops/adamw.h"
#include "ops/attention.h"
#include "ops/attention_decode.h"
#include "ops/cross_entropy.h"
#include "ops/dropout.h"
#include "ops/embedding.h"
#include "ops/grad_norm.h"
#include "ops/lora_linear.h"
#include "ops/matmul.h"
#include "ops/rmsnorm.h"
#include "ops/rope.h"
#include "ops/swiglu.h"
#include "tests/test_util.h"

namespace loom {
namespace {

using test::expect_close;
using test::random_floats;
using Vec = std::vector<float>;

constexpr float kStep = 0x1p-4f;      // finite-difference step (see the header comment)
constexpr float kLinearStep = 0.5f;   // step for an objective linear in the perturbed input
constexpr double kGradTol = 1e-3;     // relative tolerance of a finite-difference check
constexpr double kGradFloor = 0.05;   // below this |gradient| the tolerance is absolute

double weighted_sum(const Vec& out, const Vec& r) {
  double sum = 0;
  for (size_t i = 0; i < out.size(); ++i) sum += double(out[i]) * double(r[i]);
  return sum;
}

// Five-point central differences of objective() with respect to every element of x (x is restored).
Vec numeric_grad(Vec& x, const std::function<double()>& objective, float step = kStep) {
  auto f_at = [&](size_t i, float x_i) {
    x[i] = x_i;
    return objective();
  };
  Vec grad(x.size());
  for (size_t i = 0; i < x.size(); ++i) {
    const float x0 = x[i];
    const double near = f_at(i, x0 + step) - f_at(i, x0 - step);
    const double far = f_at(i, x0 + 2 * step) - f_at(i, x0 - 2 * step);
    x[i] = x0;
    grad[i] = static_cast<float>((8 * near - far) / (12 * double(step)));
  }
  return grad;
}

void expect_gradient(const Vec& analytic, const Vec& numeric, const std::string& what) {
  expect_close(analytic, numeric, kGradTol, what, kGradFloor);
}

void expect_bitwise_equal(const Vec& a, const Vec& b, const std::string& what) {
  ASSERT_EQ(a.size(), b.size()) << what;
  for (size_t i = 0; i < a.size(); ++i)
    if (std::memcmp(&a[i], &b[i], sizeof(float)) != 0) {
      ADD_FAILURE() << what << ": differs at index " << i << ": " << a[i] << " vs " << b[i];
      return;
    }
}

// Distance in units in the last place between two finite floats of any sign.
int64_t ulp_distance(float a, float b) {
  auto ordered = [](float f) {
    int32_t i;
    std::memcpy(&i, &f, sizeof i);
    return i < 0 ? int64_t(INT32_MIN) - i : int64_t(i);
  };
  return std::llabs(ordered(a) - ordered(b));
}

float float_from_bits(uint32_t bits) {
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
}

Vec floats_from_bits(const nlohmann::json& bits) {
  Vec out;
  for (const auto& b : bits) out.push_back(float_from_bits(b.get<uint32_t>()));
  return out;
}

// ---------------------------------------------------------------------------------------------
// Embedding

TEST(Embedding, CopiesTheRowOfEachId) {
  const int V = 7, C = 5;
  const Vec table = random_floats(V * C, 1);
  const std::vector<int32_t> ids = {3, 0, 6, 3};
  Vec out(ids.size() * C);
  embedding_forward_ref(out.data(), ids.data(), table.data(), ids.size(), C);
  for (size_t t = 0; t < ids.size(); ++t)
    for (int c = 0; c < C; ++c) EXPECT_EQ(out[t * C + c], table[ids[t] * C + c]) << "token " << t;
}

// ---------------------------------------------------------------------------------------------
// RMSNorm

TEST(RmsNorm, ConstantRowNormalisesToTheWeight) {
  const int C = 24;
  const float c = -3.f, eps = 1e-5f;
  const Vec x(C, c), w = random_floats(C, 2);
  Vec y(C);
  float rstd;
  rmsnorm_forward_ref(y.data(), &rstd, x.data(), w.data(), 1, C, eps);
  // mean(x^2) = c^2 exactly, so the only roundings are those of HF's formula.
  EXPECT_EQ(rstd, 1.0f / std::sqrt(c * c + eps));
  for (int i = 0; i < C; ++i) {
    EXPECT_EQ(y[i], w[i] * (c * rstd));
    EXPECT_NEAR(y[i], -w[i], 1e-6);  // x / rms(x) = sign(c) up to eps
  }
}

TEST(RmsNorm, ForwardMatchesDirectFormula) {
  const int N = 37, C = 24;
  const float eps = 1e-6f;
  const Vec x = random_floats(N * C, 3), w = random_floats(C, 4, 0.5f, 1.5f);
  Vec y(N * C), rstd(N), want(N * C), want_rstd(N);
  rmsnorm_forward_ref(y.data(), rstd.data(), x.data(), w.data(), N, C, eps);
  for (int n = 0; n < N; ++n) {
    double ms = 0;
    for (int c = 0; c < C; ++c) ms += double(x[n * C + c]) * x[n * C + c] / C;
    want_rstd[n] = float(1 / std::sqrt(ms + eps));
    for (int c = 0; c < C; ++c) want[n * C + c] = float(x[n * C + c] * want_rstd[n] * double(w[c]));
  }
  expect_close(rstd, want_rstd, 1e-6, "rstd");
  expect_close(y, want, 1e-6, "y");
}

TEST(RmsNorm, BackwardMatchesFiniteDifferences) {
  const int N = 37, C = 24;
  const float eps = 1e-5f;
  Vec x = random_floats(N * C, 5);
  const Vec w = random_floats(C, 6, 0.5f, 1.5f), r = random_floats(N * C, 7);
  Vec y(N * C), rstd(N), dx(N * C);
  auto objective = [&] {
    rmsnorm_forward_ref(y.data(), rstd.data(), x.data(), w.data(), N, C, eps);
    return weighted_sum(y, r);
  };
  objective();
  rmsnorm_backward_ref(dx.data(), r.data(), x.data(), w.data(), rstd.data(), N, C);
  expect_gradient(dx, numeric_grad(x, objective), "dx");
}

// ---------------------------------------------------------------------------------------------
// RoPE

nlohmann::json load_rope_fixture() {
  const std::string path = test::fixtures_dir() + "/rope/rope.json";
  std::ifstream f(path);
  if (!f) ADD_FAILURE() << "missing " << path << "; regenerate it with: python3 tools/make_rope_fixture.py";
  return f ? nlohmann::json::parse(f) : nlohmann::json::object({{"cases", nlohmann::json::array()}});
}

RopeParams rope_params_from(const nlohmann::json& rope) {
  RopeParams p;
  p.type = rope.at("rope_type").get<std::string>();
  p.theta = rope.at("rope_theta").get<double>();
  p.factor = rope.value("factor", 1.0);
  p.low_freq_factor = rope.value("low_freq_factor", 1.0);
  p.high_freq_factor = rope.value("high_freq_factor", 4.0);
  p.original_max_position = rope.value("original_max_position_embeddings", 8192);
  return p;
}

// transformers' scalar CPU path uses powf; its SLEEF vector path can be 1-2 ulp away (see
// ops/rope_ref.cpp). For the four configurations of the fixture every value is exact today.
TEST(Rope, InvFreqMatchesTransformers) {
  const nlohmann::json fixture = load_rope_fixture();
  ASSERT_EQ(fixture["cases"].size(), 4u);
  for (const auto& c : fixture["cases"]) {
    SCOPED_TRACE(c["name"].get<std::string>());
    const Vec want = floats_from_bits(c["inv_freq_bits"]);
    const Vec got = rope_inv_freq(c["head_dim"].get<int>(), rope_params_from(c["rope"]));
    ASSERT_EQ(got.size(), want.size());
    for (size_t i = 0; i < got.size(); ++i)
      EXPECT_LE(ulp_distance(got[i], want[i]), 1) << "inv_freq[" << i << "]: " << got[i] << " vs " << want[i];
  }
}

// HF: q * cos + rotate_half(q) * sin, with cos/sin of the fp32 angle at positions up to 131071.
// cosf/sinf and torch's vectorised cos/sin each round within 1 ulp, so an output element may
// differ by about ulp(1) · (|x1| + |x2|) ≤ 2.4e-7 absolute for inputs in [-1, 1].
TEST(Rope, ForwardMatchesTransformers) {
  const nlohmann::json fixture = load_rope_fixture();
  for (const auto& c : fixture["cases"]) {
    SCOPED_TRACE(c["name"].get<std::string>());
    const int D = c["head_dim"], NH = c["heads"];
    const std::vector<int32_t> pos = c["positions"].get<std::vector<int32_t>>();
    Vec x = floats_from_bits(c["x_bits"]);
    const Vec want = floats_from_bits(c["rotated_bits"]);
    const Vec inv_freq = rope_inv_freq(D, rope_params_from(c["rope"]));
    rope_forward_ref(x.data(), pos.data(), inv_freq.data(), pos.size(), NH, D);
    ASSERT_EQ(x.size(), want.size());
    double max_abs = 0;
    for (size_t i = 0; i < x.size(); ++i) max_abs = test::max_keeping_nan(max_abs, test::absolute_error(x[i], want[i]));
    EXPECT_LE(max_abs, 3e-7);
  }
}

struct RopeCase {
  int64_t T = 37;
  int NH = 3, D = 16;
  std::vector<int32_t> pos;  // restarts at 0 for each document: lengths 1, 5, 17, 14
  Vec inv_freq;
  RopeCase() {
    for (int len : {1, 5, 17, 14})
      for (int p = 0; p < len; ++p) pos.push_back(p);
    RopeParams params;
    params.type = "llama3";
    params.theta = 500000.0;
    params.factor = 8.0;
    params.original_max_position = 64;  // wavelengths 6.3, 32, 167, ...: kept, smoothed, scaled
    inv_freq = rope_inv_freq(D, params);
  }
};

TEST(Rope, BackwardUndoesForward) {
  const RopeCase rc;
  const Vec x0 = random_floats(rc.T * rc.NH * rc.D, 8);
  Vec x = x0;
  rope_forward_ref(x.data(), rc.pos.data(), rc.inv_freq.data(), rc.T, rc.NH, rc.D);
  rope_backward_ref(x.data(), rc.pos.data(), rc.inv_freq.data(), rc.T, rc.NH, rc.D);
  // cos² + sin² is 1 only to ~1 ulp in fp32, plus two rounded rotations: a few 1e-7 absolute.
  expect_close(x, x0, 1e-6, "backward(forward(x))", 1.0);
}

TEST(Rope, PositionZeroIsIdentity) {
  const int D = 8, NH = 2;
  const Vec x0 = random_floats(NH * D, 9);
  Vec x = x0;
  const int32_t pos = 0;
  const Vec inv_freq = rope_inv_freq(D, RopeParams{});
  rope_forward_ref(x.data(), &pos, inv_freq.data(), 1, NH, D);
  expect_bitwise_equal(x, x0, "rope at position 0");
}

TEST(Rope, BackwardMatchesFiniteDifferences) {
  const RopeCase rc;
  Vec x = random_floats(rc.T * rc.NH * rc.D, 10);
  const Vec r = random_floats(x.size(), 11);
  auto objective = [&] {
    Vec y = x;
    rope_forward_ref(y.data(), rc.pos.data(), rc.inv_freq.data(), rc.T, rc.NH, rc.D);
    return weighted_sum(y, r);
  };
  Vec dx = r;
  rope_backward_ref(dx.data(), rc.pos.data(), rc.inv_freq.data(), rc.T, rc.NH, rc.D);
  expect_gradient(dx, numeric_grad(x, objective), "dx");
}

TEST(Rope, RejectsUnknownTypeAndOddHeadDim) {
  RopeParams yarn;
  yarn.type = "yarn";
  EXPECT_THROW(rope_inv_freq(64, yarn), Error);
  EXPECT_THROW(rope_inv_freq(63, RopeParams{}), Error);
}

// ---------------------------------------------------------------------------------------------
// Attention

struct AttnCase {
  std::vector<int32_t> cu_seqlens = {0, 1, 6, 23, 37};  // documents of 1, 5, 17, 14 tokens
  int H, KVH, D, window;
  int64_t T() const { return cu_seqlens.back(); }
  AttentionShape shape() const {
    return {cu_seqlens.data(), int(cu_seqlens.size()) - 1, H, KVH, D, window, 1.0f / std::sqrt(float(D))};
  }
};

const AttnCase kAttnCases[] = {
    {{0, 1, 6, 23, 37}, 4, 2, 8, 0},   // GQA
    {{0, 1, 6, 23, 37}, 4, 2, 8, 5},   // GQA + sliding window shorter than two documents
    {{0, 1, 6, 23, 37}, 2, 2, 16, 0},  // MHA, D = 16
};

struct AttnData {
  Vec q, k, v, out, lse;
  AttnData(const AttnCase& c, uint64_t seed)
      : q(random_floats(c.T() * c.H * c.D, seed)),
        k(random_floats(c.T() * c.KVH * c.D, seed + 1)),
        v(random_floats(c.T() * c.KVH * c.D, seed + 2)),
        out(c.T() * c.H * c.D),
        lse(c.T() * c.H) {}
  void forward(const AttnCase& c) { attention_forward_ref(out.data(), lse.data(), q.data(), k.data(), v.data(), c.shape()); }
};

struct AttnGrads {
  Vec dq, dk, dv;
  AttnGrads(const AttnCase& c, const AttnData& a, const Vec& dout)
      : dq(a.q.size()), dk(a.k.size()), dv(a.v.size()) {
    attention_backward_ref(dq.data(), dk.data(), dv.data(), dout.data(), a.q.data(), a.k.data(), a.v.data(),
                           a.out.data(), a.lse.data(), c.shape());
  }
};

// Dense T x T attention in double with an explicit mask: same document, j <= i, inside the window.
void dense_attention(Vec& out, Vec& lse, const AttnCase& c, const AttnData& a) {
  const int64_t T = c.T();
  std::vector<int> doc(T), at(T);  // document and position within it of each token
  for (size_t d = 0; d + 1 < c.cu_seqlens.size(); ++d)
    for (int t = c.cu_seqlens[d]; t < c.cu_seqlens[d + 1]; ++t) doc[t] = d, at[t] = t - c.cu_seqlens[d];
  const double scale = 1.0 / std::sqrt(double(c.D));
  out.assign(T * c.H * c.D, 0.f);
  lse.assign(T * c.H, 0.f);
  for (int64_t i = 0; i < T; ++i)
    for (int h = 0; h < c.H; ++h) {
      const int kvh = h / (c.H / c.KVH);
      std::vector<double> s(T, -INFINITY);
      double m = -INFINITY;
      for (int64_t j = 0; j < T; ++j) {
        const bool visible = doc[j] == doc[i] && at[j] <= at[i] && (c.window == 0 || at[j] > at[i] - c.window);
        if (!visible) continue;
        double dot = 0;
        for (int d = 0; d < c.D; ++d) dot += double(a.q[(i * c.H + h) * c.D + d]) * a.k[(j * c.KVH + kvh) * c.D + d];
        s[j] = dot * scale;
        m = std::max(m, s[j]);
      }
      double sum = 0;
      for (int64_t j = 0; j < T; ++j) sum += std::exp(s[j] - m);
      lse[i * c.H + h] = float(m + std::log(sum));
      for (int d = 0; d < c.D; ++d) {
        double o = 0;
        for (int64_t j = 0; j < T; ++j) o += std::exp(s[j] - m) / sum * a.v[(j * c.KVH + kvh) * c.D + d];
        out[(i * c.H + h) * c.D + d] = float(o);
      }
    }
}

TEST(Attention, ForwardMatchesDenseMaskedSoftmax) {
  for (const AttnCase& c : kAttnCases) {
    SCOPED_TRACE(testing::Message() << "H " << c.H << " KVH " << c.KVH << " D " << c.D << " window " << c.window);
    AttnData a(c, 20);
    a.forward(c);
    Vec want_out, want_lse;
    dense_attention(want_out, want_lse, c, a);
    // fp32 dot products and softmax over at most 17 keys: a few ulp, 1e-5 with margin.
    expect_close(a.out, want_out, 1e-5, "out", 1e-2);
    expect_close(a.lse, want_lse, 1e-5, "lse", 1e-2);
  }
}

TEST(Attention, BackwardMatchesFiniteDifferences) {
  for (const AttnCase& c : kAttnCases) {
    SCOPED_TRACE(testing::Message() << "H " << c.H << " KVH " << c.KVH << " D " << c.D << " window " << c.window);
    AttnData a(c, 30);
    const Vec r = random_floats(a.out.size(), 33);
    auto objective = [&] {
      a.forward(c);
      return weighted_sum(a.out, r);
    };
    objective();
    const AttnGrads g(c, a, r);
    expect_gradient(g.dq, numeric_grad(a.q, objective), "dq");
    expect_gradient(g.dk, numeric_grad(a.k, objective), "dk");
    expect_gradient(g.dv, numeric_grad(a.v, objective), "dv");
  }
}

// Copies tokens [begin, end) of a packed (T, heads, D) buffer.
Vec slice_tokens(const Vec& x, int begin, int end, int heads, int D) {
  return Vec(x.begin() + int64_t(begin) * heads * D, x.begin() + int64_t(end) * heads * D);
}

TEST(Attention, PackedEqualsEachDocumentAlone) {
  for (const AttnCase& c : kAttnCases) {
    SCOPED_TRACE(testing::Message() << "window " << c.window << " H " << c.H << " KVH " << c.KVH);
    AttnData packed(c, 40);
    packed.forward(c);
    const Vec dout = random_floats(packed.out.size(), 43);
    const AttnGrads packed_grads(c, packed, dout);
    for (size_t d = 0; d + 1 < c.cu_seqlens.size(); ++d) {
      const int b = c.cu_seqlens[d], e = c.cu_seqlens[d + 1];
      AttnCase alone = c;
      alone.cu_seqlens = {0, e - b};
      AttnData a(alone, 0);
      a.q = slice_tokens(packed.q, b, e, c.H, c.D);
      a.k = slice_tokens(packed.k, b, e, c.KVH, c.D);
      a.v = slice_tokens(packed.v, b, e, c.KVH, c.D);
      a.forward(alone);
      expect_bitwise_equal(a.out, slice_tokens(packed.out, b, e, c.H, c.D), "out");
      expect_bitwise_equal(a.lse, slice_tokens(packed.lse, b, e, c.H, 1), "lse");
      const AttnGrads g(alone, a, slice_tokens(dout, b, e, c.H, c.D));
      expect_bitwise_equal(g.dq, slice_tokens(packed_grads.dq, b, e, c.H, c.D), "dq");
      expect_bitwise_equal(g.dk, slice_tokens(packed_grads.dk, b, e, c.KVH, c.D), "dk");
      expect_bitwise_equal(g.dv, slice_tokens(packed_grads.dv, b, e, c.KVH, c.D), "dv");
    }
  }
}

TEST(Attention, WindowOfTheLongestDocumentEqualsNoWindow) {
  AttnCase unwindowed = kAttnCases[0], windowed = kAttnCases[0];
  windowed.window = 17;  // the longest document: every causal key stays visible
  AttnData a(unwindowed, 50), b(windowed, 50);
  a.forward(unwindowed);
  b.forward(windowed);
  expect_bitwise_equal(b.out, a.out, "out");
  expect_bitwise_equal(b.lse, a.lse, "lse");
  const Vec dout = random_floats(a.out.size(), 53);
  const AttnGrads ga(unwindowed, a, dout), gb(windowed, b, dout);
  expect_bitwise_equal(gb.dq, ga.dq, "dq");
  expect_bitwise_equal(gb.dk, ga.dk, "dk");
  expect_bitwise_equal(gb.dv, ga.dv, "dv");
}

TEST(Attention, GqaEqualsMhaWithRepeatedKvHeads) {
  const AttnCase gqa = kAttnCases[1];  // with the window, so that masking is covered too
  AttnCase mha = gqa;
  mha.KVH = gqa.H;
  const int group = gqa.H / gqa.KVH, D = gqa.D;
  AttnData g(gqa, 60), m(mha, 0);
  m.q = g.q;
  for (int64_t t = 0; t < gqa.T(); ++t)
    for (int h = 0; h < gqa.H; ++h)
      for (int d = 0; d < D; ++d) {
        m.k[(t * gqa.H + h) * D + d] = g.k[(t * gqa.KVH + h / group) * D + d];
        m.v[(t * gqa.H + h) * D + d] = g.v[(t * gqa.KVH + h / group) * D + d];
      }
  g.forward(gqa);
  m.forward(mha);
  expect_bitwise_equal(g.out, m.out, "out");
  expect_bitwise_equal(g.lse, m.lse, "lse");
  const Vec dout = random_floats(g.out.size(), 63);
  const AttnGrads gg(gqa, g, dout), mg(mha, m, dout);
  expect_bitwise_equal(gg.dq, mg.dq, "dq");
  // A shared kv head's gradient is the sum over its query heads (summed in another order here).
  Vec dk_sum(gg.dk.size(), 0.f), dv_sum(gg.dv.size(), 0.f);
  for (int64_t t = 0; t < gqa.T(); ++t)
    for (int h = 0; h < gqa.H; ++h)
      for (int d = 0; d < D; ++d) {
        dk_sum[(t * gqa.KVH + h / group) * D + d] += mg.dk[(t * gqa.H + h) * D + d];
        dv_sum[(t * gqa.KVH + h / group) * D + d] += mg.dv[(t * gqa.H + h) * D + d];
      }
  expect_close(gg.dk, dk_sum, 1e-5, "dk", 1e-2);
  expect_close(gg.dv, dv_sum, 1e-5, "dv", 1e-2);
}

TEST(Attention, RejectsHeadsNotAMultipleOfKvHeads) {
  AttnCase c = kAttnCases[0];
  c.H = 3;
  AttnData a(c, 70);
  EXPECT_THROW(a.forward(c), Error);
}

// ---------------------------------------------------------------------------------------------
// SwiGLU

TEST(SwiGlu, ForwardMatchesDefinition) {
  const int n = 37 * 24;
  const Vec g = random_floats(n, 80, -6.f, 6.f), u = random_floats(n, 81);
  Vec h(n), want(n);
  swiglu_forward_ref(h.data(), g.data(), u.data(), n);
  for (int i = 0; i < n; ++i) want[i] = float(g[i] / (1 + std::exp(-double(g[i]))) * u[i]);
  expect_close(h, want, 1e-6, "h");
}

TEST(SwiGlu, BackwardMatchesFiniteDifferences) {
  const int n = 37 * 24;
  Vec g = random_floats(n, 82, -4.f, 4.f), u = random_floats(n, 83);
  const Vec r = random_floats(n, 84);
  Vec h(n), dg(n), du(n);
  auto objective = [&] {
    swiglu_forward_ref(h.data(), g.data(), u.data(), n);
    return weighted_sum(h, r);
  };
  swiglu_backward_ref(dg.data(), du.data(), r.data(), g.data(), u.data(), n);
  expect_gradient(dg, numeric_grad(g, objective), "dgate");
  expect_gradient(du, numeric_grad(u, objective), "dup");
}

// ---------------------------------------------------------------------------------------------
// Matmul

// C = alpha * op(A) op(B) + beta * C in double, straight from the definition.
Vec naive_matmul(const Vec& C0, const Vec& A, const Vec& B, int M, int N, int K, bool ta, bool tb, float alpha,
                 float beta) {
  Vec C(M * N);
  for (int i = 0; i < M; ++i)
    for (int j = 0; j < N; ++j) {
      double sum = 0;
      for (int k = 0; k < K; ++k) sum += double(ta ? A[k * M + i] : A[i * K + k]) * (tb ? B[j * K + k] : B[k * N + j]);
      C[i * N + j] = float(alpha * sum + (beta == 0 ? 0.0 : double(beta) * C0[i * N + j]));
    }
  return C;
}

TEST(Matmul, AllTransposeCombinationsMatchNaive) {
  const int M = 37, N = 24, K = 19;
  const Vec A = random_floats(M * K, 90), B = random_floats(K * N, 91), C0 = random_floats(M * N, 92);
  for (bool ta : {false, true})
    for (bool tb : {false, true})
      for (auto [alpha, beta] : {std::pair{1.f, 0.f}, std::pair{0.5f, 1.f}, std::pair{-2.f, 0.25f}}) {
        SCOPED_TRACE(testing::Message() << "trans_a " << ta << " trans_b " << tb << " alpha " << alpha << " beta " << beta);
        Vec C = C0;
        matmul_ref(C.data(), A.data(), B.data(), M, N, K, ta, tb, alpha, beta);
        // fp32 sums of 19 products of O(1) terms: ~1e-6 absolute.
        expect_close(C, naive_matmul(C0, A, B, M, N, K, ta, tb, alpha, beta), 1e-5, "C", 0.1);
      }
}

TEST(Matmul, BetaZeroNeverReadsC) {
  const int M = 5, N = 3, K = 4;
  const Vec A = random_floats(M * K, 93), B = random_floats(K * N, 94);
  Vec C(M * N, std::numeric_limits<float>::quiet_NaN());
  matmul_ref(C.data(), A.data(), B.data(), M, N, K, false, false);
  expect_close(C, naive_matmul(Vec(M * N), A, B, M, N, K, false, false, 1.f, 0.f), 1e-5, "C", 0.1);
}

// ---------------------------------------------------------------------------------------------
// Linear + LoRA

struct LoraCase {
  static constexpr int N = 37, in = 24, out = 20, R = 4;
  Vec x = random_floats(N * in, 100), xl = random_floats(N * in, 101);
  Vec W = random_floats(out * in, 102), bias = random_floats(out, 103);
  Vec A = random_floats(R * in, 104), B = random_floats(out * R, 105);
  LoraRef lora() const { return {A.data(), B.data(), R, 0.75f}; }
};

TEST(LoraLinear, ForwardMatchesExplicitFormula) {
  const LoraCase c;
  const float s = c.lora().scale;
  Vec y(c.N * c.out), u(c.N * c.R), want_y(c.N * c.out), want_u(c.N * c.R);
  lora_linear_forward_ref(y.data(), u.data(), c.x.data(), c.xl.data(), c.W.data(), c.bias.data(), c.lora(), c.N,
                          c.in, c.out);
  for (int n = 0; n < c.N; ++n) {
    std::vector<double> un(c.R, 0.0);  // x_l·Aᵀ
    for (int r = 0; r < c.R; ++r)
      for (int i = 0; i < c.in; ++i) un[r] += double(c.xl[n * c.in + i]) * c.A[r * c.in + i];
    for (int r = 0; r < c.R; ++r) want_u[n * c.R + r] = float(un[r]);
    for (int o = 0; o < c.out; ++o) {
      double acc = c.bias[o];
      for (int i = 0; i < c.in; ++i) acc += double(c.x[n * c.in + i]) * c.W[o * c.in + i];
      for (int r = 0; r < c.R; ++r) acc += s * un[r] * c.B[o * c.R + r];
      want_y[n * c.out + o] = float(acc);
    }
  }
  expect_close(u, want_u, 1e-5, "u", 0.1);
  expect_close(y, want_y, 1e-5, "y", 0.1);
}

TEST(LoraLinear, BackwardMatchesFiniteDifferences) {
  // No dropout: xl is x, and dx carries both paths (dxl = nullptr).
  LoraCase c;
  const Vec r = random_floats(c.N * c.out, 106);
  Vec y(c.N * c.out), u(c.N * c.R);
  auto objective = [&] {
    lora_linear_forward_ref(y.data(), u.data(), c.x.data(), c.x.data(), c.W.data(), c.bias.data(), c.lora(), c.N,
                            c.in, c.out);
    return weighted_sum(y, r);
  };
  objective();
  const Vec dA0 = random_floats(c.R * c.in, 107), dB0 = random_floats(c.out * c.R, 108);
  Vec dx(c.N * c.in), dA = dA0, dB = dB0, du(c.N * c.R);
  lora_linear_backward_ref(dx.data(), nullptr, dA.data(), dB.data(), du.data(), r.data(), c.x.data(), u.data(),
                           c.W.data(), c.lora(), c.N, c.in, c.out);
  for (size_t i = 0; i < dA.size(); ++i) dA[i] -= dA0[i];  // accumulated (+=): keep what was added
  for (size_t i = 0; i < dB.size(); ++i) dB[i] -= dB0[i];
  expect_gradient(dx, numeric_grad(c.x, objective, kLinearStep), "dx");
  expect_gradient(dA, numeric_grad(c.A, objective, kLinearStep), "dA");
  expect_gradient(dB, numeric_grad(c.B, objective, kLinearStep), "dB");
}

TEST(LoraLinear, DropoutInputGetsItsOwnGradient) {
  LoraCase c;
  const Vec r = random_floats(c.N * c.out, 109);
  Vec y(c.N * c.out), u(c.N * c.R);
  auto objective = [&] {
    lora_linear_forward_ref(y.data(), u.data(), c.x.data(), c.xl.data(), c.W.data(), nullptr, c.lora(), c.N, c.in,
                            c.out);
    return weighted_sum(y, r);
  };
  objective();
  Vec dx(c.N * c.in), dxl(c.N * c.in), dA(c.R * c.in, 0.f), dB(c.out * c.R, 0.f), du(c.N * c.R);
  lora_linear_backward_ref(dx.data(), dxl.data(), dA.data(), dB.data(), du.data(), r.data(), c.xl.data(), u.data(),
                           c.W.data(), c.lora(), c.N, c.in, c.out);
  expect_gradient(dx, numeric_grad(c.x, objective, kLinearStep), "dx (base path only)");
  expect_gradient(dxl, numeric_grad(c.xl, objective, kLinearStep), "dxl (LoRA path)");
}

TEST(LoraLinear, WithoutAdapterIsPlainLinear) {
  const LoraCase c;
  Vec y(c.N * c.out), want(c.N * c.out), dx(c.N * c.in), want_dx(c.N * c.in);
  const Vec dy = random_floats(c.N * c.out, 110);
  lora_linear_forward_ref(y.data(), nullptr, c.x.data(), c.x.data(), c.W.data(), nullptr, LoraRef{}, c.N, c.in, c.out);
  lora_linear_backward_ref(dx.data(), nullptr, nullptr, nullptr, nullptr, dy.data(), c.x.data(), nullptr, c.W.data(),
                           LoraRef{}, c.N, c.in, c.out);
  expect_close(y, naive_matmul(want, c.x, c.W, c.N, c.out, c.in, false, true, 1.f, 0.f), 1e-5, "y", 0.1);
  expect_close(dx, naive_matmul(want_dx, dy, c.W, c.N, c.in, c.out, false, false, 1.f, 0.f), 1e-5, "dx", 0.1);
}

// ---------------------------------------------------------------------------------------------
// LM head + cross-entropy

struct CeCase {
  static constexpr int T = 37, C = 24, V = 50;
  Vec x = random_floats(T * C, 120), W = random_floats(V * C, 121);
  std::vector<int32_t> targets;
  float grad_scale;  // SFT's weight of every token: 1 / target tokens
  Vec weight;        // token_weight: grad_scale for every token
  CeCase() {
    std::mt19937 rng(122);
    for (int t = 0; t < T; ++t) targets.push_back(t % 4 == 3 ? kIgnoreIndex : int32_t(rng() % V));
    grad_scale = 1.0f / std::count_if(targets.begin(), targets.end(), [](int32_t y) { return y != kIgnoreIndex; });
    weight.assign(T, grad_scale);
  }
};

// Per-token weights as a preference objective gives them: random signs and sizes, some exactly 0,
// and weights on ignored tokens too (they must still give dx = 0).
Vec mixed_weights(int T, uint64_t seed) {
  Vec w = random_floats(T, seed, -2.f, 2.f);
  for (int t = 2; t < T; t += 5) w[t] = 0.f;  // w[0] != 0: a bug applying w[0] to every token must fail
  return w;
}

TEST(CrossEntropy, MatchesFullLogitsComputation) {
  const CeCase c;
  Vec dx(c.T * c.C), token_loss(c.T), want_loss(c.T, 0.f);
  std::vector<double> want_dx(c.T * c.C, 0.0);
  const CrossEntropyOut got = lm_head_cross_entropy_ref(dx.data(), token_loss.data(), c.x.data(), c.W.data(),
                                                        c.targets.data(), c.weight.data(), c.T, c.C, c.V, 8);
  double want_sum = 0;
  int64_t want_n = 0;
  for (int t = 0; t < c.T; ++t) {
    if (c.targets[t] == kIgnoreIndex) continue;
    std::vector<double> z(c.V, 0.0);  // all T x V logits of this token, in double
    for (int v = 0; v < c.V; ++v)
      for (int i = 0; i < c.C; ++i) z[v] += double(c.x[t * c.C + i]) * c.W[v * c.C + i];
    double sum = 0;
    for (double zv : z) sum += std::exp(zv);
    const double lse = std::log(sum);
    want_loss[t] = float(lse - z[c.targets[t]]);
    want_sum += lse - z[c.targets[t]];
    ++want_n;
    for (int v = 0; v < c.V; ++v) {
      const double dz = (std::exp(z[v] - lse) - (v == c.targets[t])) * c.weight[t];
      for (int i = 0; i < c.C; ++i) want_dx[t * c.C + i] += dz * c.W[v * c.C + i];
    }
  }
  EXPECT_EQ(got.n_targets, want_n);
  EXPECT_NEAR(got.loss_sum, want_sum, 1e-5 * want_sum);
  expect_close(token_loss, want_loss, 1e-5, "token_loss");
  // Ignored tokens have dx = 0 on both sides, and the tolerance lets nothing else through there.
  expect_close(dx, Vec(want_dx.begin(), want_dx.end()), 1e-4, "dx", 1e-3);
}

TEST(CrossEntropy, ChunkSizeDoesNotChangeResults) {
  const CeCase c;
  Vec dx_whole(c.T * c.C), loss_whole(c.T);
  const CrossEntropyOut whole = lm_head_cross_entropy_ref(dx_whole.data(), loss_whole.data(), c.x.data(), c.W.data(),
                                                          c.targets.data(), c.weight.data(), c.T, c.C, c.V, 256);
  for (int chunk : {1, 5, 36}) {
    SCOPED_TRACE(testing::Message() << "chunk " << chunk);
    Vec dx(c.T * c.C), loss(c.T);
    const CrossEntropyOut got = lm_head_cross_entropy_ref(dx.data(), loss.data(), c.x.data(), c.W.data(),
                                                          c.targets.data(), c.weight.data(), c.T, c.C, c.V, chunk);
    EXPECT_EQ(got.loss_sum, whole.loss_sum);
    EXPECT_EQ(got.n_targets, whole.n_targets);
    expect_bitwise_equal(loss, loss_whole, "token_loss");
    expect_bitwise_equal(dx, dx_whole, "dx");
  }
}

TEST(CrossEntropy, BackwardMatchesFiniteDifferences) {
  CeCase c;
  auto objective = [&] {
    const CrossEntropyOut o = lm_head_cross_entropy_ref(nullptr, nullptr, c.x.data(), c.W.data(), c.targets.data(),
                                                        nullptr, c.T, c.C, c.V, 16);
    return o.loss_sum * c.grad_scale;
  };
  Vec dx(c.T * c.C);
  lm_head_cross_entropy_ref(dx.data(), nullptr, c.x.data(), c.W.data(), c.targets.data(), c.weight.data(), c.T, c.C,
                            c.V, 16);
  // The objective is a mean over 28 targets, so gradients are ~0.03: the floor is lowered to match.
  expect_close(dx, numeric_grad(c.x, objective), kGradTol, "dx", 1e-3);
}

// dx is the gradient of sum_t w_t · loss_t for any weights: negative, zero, differing per token.
TEST(CrossEntropy, WeightedBackwardMatchesFiniteDifferences) {
  CeCase c;
  const Vec w = mixed_weights(c.T, 123);
  Vec loss(c.T);
  auto objective = [&] {
    lm_head_cross_entropy_ref(nullptr, loss.data(), c.x.data(), c.W.data(), c.targets.data(), nullptr, c.T, c.C, c.V,
                              16);
    return weighted_sum(loss, w);
  };
  Vec dx(c.T * c.C);
  lm_head_cross_entropy_ref(dx.data(), nullptr, c.x.data(), c.W.data(), c.targets.data(), w.data(), c.T, c.C, c.V, 16);
  // Weights of O(1) give gradients of O(0.1..1), so the default floor applies (see the header).
  expect_gradient(dx, numeric_grad(c.x, objective), "dx");
}

// Token t's gradient depends on w_t alone: with only w_t set (every other weight 0) the other rows of
// dx are exactly 0 and row t is the weighted run's row t, so the single-token gradients add up to
// the weighted gradient bit for bit (rows of the reference matmul are computed independently).
TEST(CrossEntropy, WeightIsAppliedPerToken) {
  const CeCase c;
  const Vec w = mixed_weights(c.T, 124);
  Vec dx(c.T * c.C), sum(c.T * c.C, 0.f);
  lm_head_cross_entropy_ref(dx.data(), nullptr, c.x.data(), c.W.data(), c.targets.data(), w.data(), c.T, c.C, c.V, 8);
  for (int t = 0; t < c.T; ++t) {
    Vec single_w(c.T, 0.f), single(c.T * c.C);
    single_w[t] = w[t];
    lm_head_cross_entropy_ref(single.data(), nullptr, c.x.data(), c.W.data(), c.targets.data(), single_w.data(), c.T,
                              c.C, c.V, 8);
    for (int i = 0; i < c.T * c.C; ++i) {
      ASSERT_TRUE(i / c.C == t || single[i] == 0.f) << "weight of token " << t << " reached dx of token " << i / c.C;
      sum[i] += single[i];
    }
  }
  expect_bitwise_equal(sum, dx, "sum of single-token gradients");
}

TEST(CrossEntropy, AllIgnoredGivesNoLossAndNoGradient) {
  CeCase c;
  c.targets.assign(c.T, kIgnoreIndex);
  Vec dx(c.T * c.C, 1.f), loss(c.T, 1.f);
  const CrossEntropyOut got = lm_head_cross_entropy_ref(dx.data(), loss.data(), c.x.data(), c.W.data(),
                                                        c.targets.data(), c.weight.data(), c.T, c.C, c.V, 8);
  EXPECT_EQ(got.loss_sum, 0.0);
  EXPECT_EQ(got.n_targets, 0);
  EXPECT_EQ(*std::max_element(dx.begin(), dx.end()), 0.f);
  EXPECT_EQ(*std::min_element(dx.begin(), dx.end()), 0.f);
  EXPECT_EQ(*std::max_element(loss.begin(), loss.end()), 0.f);
}

TEST(CrossEntropy, RejectsTargetOutsideTheVocabulary) {
  CeCase c;
  c.targets[5] = c.V;
  EXPECT_THROW(lm_head_cross_entropy_ref(nullptr, nullptr, c.x.data(), c.W.data(), c.targets.data(), nullptr, c.T, c.C,
                                         c.V, 8),
               Error);
}

TEST(CrossEntropy, GradientWithoutWeightsIsRefused) {
  const CeCase c;
  Vec dx(c.T * c.C);
  test::expect_error([&] {
    lm_head_cross_entropy_ref(dx.data(), nullptr, c.x.data(), c.W.data(), c.targets.data(), nullptr, c.T, c.C, c.V, 8);
  }, {"token_weight"});
}

// ---------------------------------------------------------------------------------------------
// AdamW

struct AdamWExpect {
  AdamWParams params;
  Vec p, m, v;
};

// Values from torch 2.15 (CPU), three steps of
//   f = lambda x: float(np.float32(x))  # the fp32 hyperparameters loom holds
//   p = torch.tensor([0.5, -1.25, 3.0, 0.0, -0.0625], requires_grad=True)
//   opt = torch.optim.AdamW([p], lr=f(lr), betas=(f(b1), f(b2)), eps=f(eps), weight_decay=f(wd), foreach=False)
//   for g in kAdamGrads: p.grad = torch.tensor(g); opt.step()
// printed with float.hex() from p, state["exp_avg"], state["exp_avg_sq"].
const float kAdamP0[5] = {0.5f, -1.25f, 3.0f, 0.0f, -0.0625f};
// These gradients make the fused v update (fma) differ from the unfused one in three places.
const float kAdamGrads[3][5] = {{-0.49f, 0.68f, 0.35f, -0.83f, -0.97f},
                                {-0.97f, 0.51f, -0.5f, -0.78f, 0.25f},
                                {-0.31f, -0.86f, -0.68f, 0.05f, -0.66f}};
const AdamWExpect kAdamExpect[] = {
    {{1e-2f, 0.9f, 0.999f, 1e-8f, 0.01f, 3},
     {0x1.0e9068p-1f, -0x1.452e68p+0f, 0x1.7fa6ccp+1f, 0x1.c0f444p-6f, -0x1.52b9fcp-5f},
     {-0x1.439048p-3f, 0x1.eadd5ep-7f, -0x1.5ab9fcp-4f, -0x1.0f377ap-3f, -0x1.f3ffb4p-4f},
     {0x1.4e6848p-10f, 0x1.7ef720p-10f, 0x1.b57686p-11f, 0x1.5435bcp-10f, 0x1.78b602p-10f}},
    {{3e-4f, 0.8f, 0.95f, 1e-6f, 0.0f, 3},
     {0x1.00706ep-1f, -0x1.4026b2p+0f, 0x1.7fff6ap+1f, 0x1.a7d192p-11f, -0x1.faee5ap-5f},
     {-0x1.1ea358p-2f, -0x1.b8672cp-9f, -0x1.5e9e1ap-3f, -0x1.c4b09cp-3f, -0x1.bab218p-3f},
     {0x1.ee3df6p-5f, 0x1.1f8aa2p-4f, 0x1.4bf686p-5f, 0x1.ec6d1cp-5f, 0x1.134786p-4f}},
};

TEST(AdamW, MatchesTorchOverThreeSteps) {
  for (const AdamWExpect& e : kAdamExpect) {
    SCOPED_TRACE(testing::Message() << "lr " << e.params.lr << " weight_decay " << e.params.weight_decay);
    Vec p(kAdamP0, kAdamP0 + 5), m(5, 0.f), v(5, 0.f);
    for (int step = 1; step <= e.params.step; ++step) {
      AdamWParams a = e.params;
      a.step = step;
      adamw_ref(p.data(), m.data(), v.data(), kAdamGrads[step - 1], 5, a);
    }
    expect_bitwise_equal(m, e.m, "exp_avg");
    expect_bitwise_equal(v, e.v, "exp_avg_sq");
    // torch's MKL sqrt is 1 ulp off on ~20% of inputs (sqrtf is exact); one ulp in the
    // denominator moves an update by 6e-8 of itself, a few ulp of p after three steps.
    expect_close(p, e.p, 1e-6, "p");
  }
}

// ---------------------------------------------------------------------------------------------
// Gradient-norm clipping

TEST(GradNorm, SumOfSquaresIsExactForSmallIntegers) {
  Vec g(1001);
  for (size_t i = 0; i < g.size(); ++i) g[i] = float(int(i % 7) - 3);
  double want = 0;
  for (float x : g) want += double(x) * x;
  EXPECT_EQ(sum_squares_ref(g.data(), g.size()), want);
}

// The sum is the same bits on any number of threads (16 threads of an OpenMP reduction moved a
// run's grad norm in its last bit from run to run: DistTrain.PrecomputedReference... failed on the
// 16-core GPU machine). Values spread over 16 orders of magnitude make every order of addition
// round differently.
TEST(GradNorm, SumOfSquaresIsTheSameOnAnyNumberOfThreads) {
  std::vector<float> g = test::random_floats(1000003, 7, -1.f, 1.f);
  for (size_t i = 0; i < g.size(); ++i) g[i] *= std::ldexp(1.f, int(i % 53) - 26);
  const int threads = omp_get_max_threads();
  omp_set_num_threads(1);
  const double one = sum_squares_ref(g.data(), g.size());
  for (int n : {2, 3, 7, 16}) {
    omp_set_num_threads(n);
    EXPECT_EQ(sum_squares_ref(g.data(), g.size()), one) << n << " threads";
  }
  omp_set_num_threads(threads);
}

// torch 2.15: clip_grad_norm_'s own lines, total_norm = torch.tensor(norm, dtype=torch.float32);
// torch.clamp(max_norm / (total_norm + 1e-6), max=1.0), printed with float.hex().
TEST(GradNorm, ClipCoefficientMatchesTorch) {
  EXPECT_EQ(clip_coefficient(5.0, 1.0f), 0x1.999994p-3f);
  EXPECT_EQ(clip_coefficient(1234.5678, 0.5f), 0x1.a8ac60p-12f);
  EXPECT_EQ(clip_coefficient(1.0, 1.0f), 0x1.ffffe0p-1f);
  EXPECT_EQ(clip_coefficient(0.3, 1.0f), 1.0f);
  EXPECT_EQ(clip_coefficient(0.999999, 1.0f), 1.0f);
}

TEST(GradNorm, ClippingOffWhenMaxNormIsNotPositive) {
  EXPECT_EQ(clip_coefficient(100.0, 0.f), 1.0f);
  EXPECT_EQ(clip_coefficient(100.0, -1.f), 1.0f);
}

TEST(GradNorm, ScaleMultipliesEveryElement) {
  Vec g = {1.f, -2.f, 0.5f};
  scale_ref(g.data(), g.size(), 0.25f);
  EXPECT_EQ(g, (Vec{0.25f, -0.5f, 0.125f}));
}

// ---------------------------------------------------------------------------------------------
// Dropout

TEST(Dropout, KeepsOneMinusPScaledAndBackwardUsesTheSameMask) {
  const int64_t n = 100003;
  const float p = 0.1f;
  Vec x(n, 1.f), y(n), dx(n, 0.5f);
  dropout_forward_ref(y.data(), x.data(), n, 7, 3, p);
  int64_t kept = 0;
  for (float v : y) {
    ASSERT_TRUE(v == 0.f || v == 1.f / (1.f - p)) << v;
    kept += v != 0.f;
  }
  // Binomial(n, 0.9): standard deviation ≈ 95; 5 sigma.
  EXPECT_NEAR(double(kept) / n, 1.0 - p, 5 * std::sqrt(p * (1 - p) / n));
  dropout_backward_ref(dx.data(), x.data(), n, 7, 3, p);  // dx = 0.5 + f: the forward's mask
  for (int64_t i = 0; i < n; ++i) ASSERT_EQ(dx[i], 0.5f + y[i]) << i;
  Vec other(n);
  dropout_forward_ref(other.data(), x.data(), n, 7, 4, p);  // another stream: another mask
  EXPECT_NE(other, y);
  dropout_forward_ref(other.data(), x.data(), n, 7, 3, 0.f);
  EXPECT_EQ(other, x);  // p = 0 keeps everything, unscaled
}

// The decode scratch is planned before any device is touched (a CPU machine plans generation too), so
// its split count must bound what the launch picks on every device up to kPlanMultiprocessors SMs.
TEST(AttentionDecodeSplits, ThePlannedCountBoundsEveryDeviceUpToItsMultiprocessors) {
  for (int B : {1, 3, 64})
    for (int64_t len : {1, 15, 16, 17, 500, 4096, 32768})
      for (int sms : {1, 80, 132, 148, kPlanMultiprocessors})
        EXPECT_LE(attention_decode_splits(B, 8, len, sms), attention_decode_max_splits(B, 8, len))
            << "B " << B << ", " << len << " keys, " << sms << " SMs";
  // Chunks of at least 16 keys: 512 keys at batch 1 on 132 SMs are 32 splits, 17 keys 2.
  EXPECT_EQ(attention_decode_splits(1, 8, 512, 132), 32);
  EXPECT_EQ(attention_decode_splits(1, 8, 17, 132), 2);
}

}  // namespace
}  // namespace loom
