// The references of the mixture-of-experts GPU path (ops/moe_permute.h, ops/grouped_gemm.h) against
// a direct per-token loop over moe_route_ref's experts: the permutation is a stable sort of the
// slots by expert, and gather → grouped GEMM per expert → combine (and their backward) compute the
// sparse layer of a one-linear expert, token by token. The GPU kernels are tested against these
// references in tests/moe_gpu_test.cu.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <vector>

#include "ops/cuda_common.h"
#include "ops/grouped_gemm.h"
#include "ops/moe_permute.h"
#include "ops/moe_router.h"
#include "tests/test_util.h"

namespace loom {
namespace {

constexpr int64_t T = 40;
constexpr int E = 16, K = 4, Cin = 24, N = 16;
constexpr double kBf16Eps = 1.0 / 256;  // bf16 unit roundoff: one rounding moves a value by <= 2^-8 of it

struct Routed {
  std::vector<int32_t> experts;
  std::vector<float> weights;
};

// moe_route_ref's choice for random logits; expert 0 is never chosen (its logit far below the rest),
// so an empty group is part of every check.
Routed routed(uint64_t seed) {
  std::vector<float> logits = test::random_floats(size_t(T * E), seed, -2.f, 2.f), probs(size_t(T * E));
  for (int64_t t = 0; t < T; ++t) logits[size_t(t * E)] = -30.f;
  Routed r{std::vector<int32_t>(size_t(T * K)), std::vector<float>(size_t(T * K))};
  moe_route_ref(r.experts.data(), r.weights.data(), probs.data(), logits.data(), T, E, K, true);
  return r;
}

struct PlanRef {
  std::vector<int32_t> counts = std::vector<int32_t>(E), offsets = std::vector<int32_t>(E + 1),
                       row_of = std::vector<int32_t>(T * K), slot_of = std::vector<int32_t>(T * K);
};

PlanRef plan_of(const std::vector<int32_t>& experts) {
  PlanRef p;
  moe_permute_plan_ref(p.counts.data(), p.offsets.data(), p.row_of.data(), p.slot_of.data(), experts.data(), T, E, K);
  return p;
}

TEST(MoePermuteRef, PlanIsAStableSortOfTheSlotsByExpert) {
  const Routed r = routed(1);
  const PlanRef p = plan_of(r.experts);
  std::vector<int32_t> sorted(size_t(T * K));
  std::iota(sorted.begin(), sorted.end(), 0);
  std::stable_sort(sorted.begin(), sorted.end(),
                   [&](int32_t a, int32_t b) { return r.experts[size_t(a)] < r.experts[size_t(b)]; });
  EXPECT_EQ(p.slot_of, sorted);
  for (int64_t s = 0; s < T * K; ++s) EXPECT_EQ(p.slot_of[size_t(p.row_of[size_t(s)])], s) << "row_of inverts slot_of";
  EXPECT_EQ(p.counts[0], 0);
  for (int e = 0; e < E; ++e) {
    EXPECT_EQ(p.counts[size_t(e)], std::count(r.experts.begin(), r.experts.end(), e)) << "expert " << e;
    EXPECT_EQ(p.offsets[size_t(e + 1)] - p.offsets[size_t(e)], p.counts[size_t(e)]);
    for (int32_t row = p.offsets[size_t(e)]; row < p.offsets[size_t(e + 1)]; ++row)
      EXPECT_EQ(r.experts[size_t(p.slot_of[size_t(row)])], e) << "row " << row;
  }
  EXPECT_EQ(p.offsets[0], 0);
  EXPECT_EQ(p.offsets[E], T * K);
}

TEST(MoePermuteRef, RefusesAnExpertOutsideTheLayer) {
  std::vector<int32_t> experts(size_t(T * K), 1);
  experts[9] = E;
  PlanRef p;
  test::expect_error(
      [&] {
        moe_permute_plan_ref(p.counts.data(), p.offsets.data(), p.row_of.data(), p.slot_of.data(), experts.data(), T,
                             E, K);
      },
      {"slot 9", "token 2", "pick 1", "expert 16 of 16"});
}

// The expert "MLP" here is one linear map per expert, W_e (N, Cin) at W + e·N·Cin.
std::vector<float> expert_weights(uint64_t seed) { return test::random_floats(size_t(E * N * Cin), seed); }

// y_t = Σ_k w_tk · W_{e_tk}·x_t, token by token in double (abs: of |w|, |W|, |x|).
std::vector<double> direct_forward(const Routed& r, const std::vector<float>& x, const std::vector<float>& W,
                                   bool abs) {
  std::vector<double> y(size_t(T * N), 0.0);
  auto v = [abs](double a) { return abs ? std::fabs(a) : a; };
  for (int64_t t = 0; t < T; ++t)
    for (int k = 0; k < K; ++k) {
      const float* w = W.data() + int64_t(r.experts[size_t(t * K + k)]) * N * Cin;
      for (int n = 0; n < N; ++n) {
        double dot = 0;
        for (int c = 0; c < Cin; ++c) dot += v(w[n * Cin + c]) * v(x[size_t(t * Cin + c)]);
        y[size_t(t * N + n)] += v(r.weights[size_t(t * K + k)]) * dot;
      }
    }
  return y;
}

TEST(MoePermuteRef, GatherGroupedGemmCombineIsTheSparseLayer) {
  const Routed r = routed(2);
  const PlanRef p = plan_of(r.experts);
  const std::vector<float> x = test::random_floats(size_t(T * Cin), 3), W = expert_weights(4);
  std::vector<float> xs(size_t(T * K * Cin)), ys(size_t(T * K * N)), y(size_t(T * N));
  moe_gather_ref(xs.data(), x.data(), p.slot_of.data(), T, K, Cin);
  grouped_gemm_nt_ref(ys.data(), xs.data(), W.data(), int64_t(N) * Cin, p.offsets.data(), E, N, Cin, 1.f, false);
  moe_combine_ref(y.data(), ys.data(), r.weights.data(), p.row_of.data(), T, K, N);
  const std::vector<double> want = direct_forward(r, x, W, false), scale = direct_forward(r, x, W, true);
  // The chain rounds each expert output to fp32 and the sum over k (K fp32 roundings) to bf16 once.
  for (size_t i = 0; i < y.size(); ++i)
    EXPECT_LE(std::fabs(y[i] - want[i]), kBf16Eps * std::fabs(want[i]) + 1e-6 * scale[i]) << "y[" << i << "]";
}

TEST(MoePermuteRef, BackwardChainIsTheSparseLayersGradient) {
  const Routed r = routed(5);
  const PlanRef p = plan_of(r.experts);
  const std::vector<float> x = test::random_floats(size_t(T * Cin), 6), W = expert_weights(7);
  const std::vector<float> dy = test::random_floats(size_t(T * N), 8);
  // Forward outputs per sorted row, then the backward chain: dys = w·dy, dw = dy·ys; dxs = dys·W_e;
  // dx = Σ_k dxs; dW_e = Σ over the expert's rows of dysᵀ·xs.
  std::vector<float> xs(size_t(T * K * Cin)), ys(size_t(T * K * N)), dys(ys.size()), dw(size_t(T * K)),
      dxs(xs.size()), dx(x.size()), dW(W.size(), 0.f);
  moe_gather_ref(xs.data(), x.data(), p.slot_of.data(), T, K, Cin);
  grouped_gemm_nt_ref(ys.data(), xs.data(), W.data(), int64_t(N) * Cin, p.offsets.data(), E, N, Cin, 1.f, false);
  moe_combine_backward_ref(dys.data(), dw.data(), dy.data(), ys.data(), r.weights.data(), p.slot_of.data(), T, K, N);
  grouped_gemm_nn_ref(dxs.data(), dys.data(), W.data(), int64_t(N) * Cin, p.offsets.data(), E, Cin, N, 1.f, false);
  moe_gather_backward_ref(dx.data(), dxs.data(), p.row_of.data(), T, K, Cin);
  grouped_gemm_tn_ref(dW.data(), int64_t(N) * Cin, dys.data(), xs.data(), p.offsets.data(), E, N, Cin, 1.f);

  // Token by token, in double: dw_tk = dy_t · W_e x_t; dx_t = Σ_k w_tk W_eᵀ dy_t; dW_e = Σ w_tk dy_t ⊗ x_t.
  std::vector<double> want_dx(x.size(), 0.0), abs_dx(x.size(), 0.0), want_dW(W.size(), 0.0), abs_dW(W.size(), 0.0);
  for (int64_t t = 0; t < T; ++t)
    for (int k = 0; k < K; ++k) {
      const int64_t s = t * K + k, e = r.experts[size_t(s)];
      const double wk = r.weights[size_t(s)];
      const float* w = W.data() + e * N * Cin;
      double dwk = 0, abs_dwk = 0;
      for (int n = 0; n < N; ++n) {
        double out = 0, abs_out = 0;
        for (int c = 0; c < Cin; ++c) {
          out += double(w[n * Cin + c]) * x[size_t(t * Cin + c)];
          abs_out += std::fabs(double(w[n * Cin + c]) * x[size_t(t * Cin + c)]);
        }
        const double g = dy[size_t(t * N + n)];
        dwk += g * out;
        abs_dwk += std::fabs(g) * abs_out;
        for (int c = 0; c < Cin; ++c) {
          want_dx[size_t(t * Cin + c)] += wk * g * w[n * Cin + c];
          abs_dx[size_t(t * Cin + c)] += std::fabs(wk * g * w[n * Cin + c]);
          want_dW[size_t(e * N * Cin + n * Cin + c)] += wk * g * x[size_t(t * Cin + c)];
          abs_dW[size_t(e * N * Cin + n * Cin + c)] += std::fabs(wk * g * x[size_t(t * Cin + c)]);
        }
      }
      // ys rounded to fp32 once per element: dw within 2^-24 of each |product| (and the final rounding).
      EXPECT_LE(std::fabs(dw[size_t(s)] - dwk), 2e-7 * abs_dwk + 1e-7 * std::fabs(dwk)) << "dw[" << s << "]";
    }
  // dys is rounded to bf16 (2^-8 of each term), dx's sum over k to bf16 once more (2^-8 of dx, which
  // itself is within 2^-8·Σ|terms| of want: the 2^-16 in the slack), and fp32 roundings (~1e-7).
  for (size_t i = 0; i < dx.size(); ++i)
    EXPECT_LE(std::fabs(dx[i] - want_dx[i]), kBf16Eps * (abs_dx[i] + std::fabs(want_dx[i])) + 2e-5 * abs_dx[i])
        << "dx[" << i << "]";
  // dW sums the bf16-rounded dys (2^-8 of each term) in double.
  for (size_t i = 0; i < dW.size(); ++i)
    EXPECT_LE(std::fabs(dW[i] - want_dW[i]), kBf16Eps * abs_dW[i] + 1e-7 * std::fabs(want_dW[i]))
        << "dW[" << i << "]";
  for (int i = 0; i < N * Cin; ++i) EXPECT_EQ(dW[size_t(i)], 0.f) << "expert 0 has no token";
}

// The references' three layouts agree: nn with W_e transposed is nt, and tn accumulates into D.
TEST(GroupedGemmRef, LayoutsAgree) {
  const std::vector<int32_t> offsets = {0, 0, 5, 5, 12};  // groups of 0, 5, 0, 7 rows
  const int G = 4, rows = 12;
  const std::vector<float> X = test::random_floats(size_t(rows * Cin), 9);
  const std::vector<float> W = test::random_floats(size_t(G * N * Cin), 10);
  std::vector<float> Wt(W.size());
  for (int g = 0; g < G; ++g)
    for (int n = 0; n < N; ++n)
      for (int c = 0; c < Cin; ++c) Wt[size_t(g * N * Cin + c * N + n)] = W[size_t(g * N * Cin + n * Cin + c)];
  std::vector<float> nt(size_t(rows * N)), nn(size_t(rows * N));
  grouped_gemm_nt_ref(nt.data(), X.data(), W.data(), int64_t(N) * Cin, offsets.data(), G, N, Cin, 0.5f, false);
  grouped_gemm_nn_ref(nn.data(), X.data(), Wt.data(), int64_t(N) * Cin, offsets.data(), G, N, Cin, 0.5f, false);
  EXPECT_EQ(nt, nn);  // the same double sums in the same order
  std::vector<float> acc = nt;
  grouped_gemm_nt_ref(acc.data(), X.data(), W.data(), int64_t(N) * Cin, offsets.data(), G, N, Cin, 1.f, true);
  for (size_t i = 0; i < acc.size(); ++i) EXPECT_FLOAT_EQ(acc[i], 3 * nt[i]) << "accumulate adds 2·(0.5·XWᵀ)";
  // tn: D_e += Yᵀ·X over the group's rows; group 0 and 2 are empty and keep their values.
  const std::vector<float> Y = test::random_floats(size_t(rows * N), 11);
  std::vector<float> D(size_t(G * N * Cin), 1.f);
  grouped_gemm_tn_ref(D.data(), int64_t(N) * Cin, Y.data(), X.data(), offsets.data(), G, N, Cin, 2.f);
  for (int g = 0; g < G; ++g)
    for (int n = 0; n < N; ++n)
      for (int c = 0; c < Cin; ++c) {
        double want = 1;
        for (int row = offsets[size_t(g)]; row < offsets[size_t(g + 1)]; ++row)
          want += 2.0 * Y[size_t(row * N + n)] * X[size_t(row * Cin + c)];
        EXPECT_NEAR(D[size_t(g * N * Cin + n * Cin + c)], want, 1e-6 * (1 + std::fabs(want)));
      }
}

}  // namespace
}  // namespace loom
