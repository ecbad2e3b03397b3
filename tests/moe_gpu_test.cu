// GPU tests of the mixture-of-experts building blocks against their references: routing
// (ops/moe_route.h vs ops/moe_router.h's _ref), the token permutation (ops/moe_permute.h) and the
// grouped GEMMs (ops/grouped_gemm.h). Expert loads are awkward on purpose: an expert with no token,
// one with every token, one with a single token, groups of 1, 63, 64, 65 and hundreds of rows, and
// matrix sides that are no multiple of the 64-wide tile. Copies and sums the kernels do in the
// reference's order are compared bit for bit; every other comparison states its bound where it is used.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <numeric>
#include <random>
#include <vector>

#include "ops/grouped_gemm.h"
#include "ops/moe_permute.h"
#include "ops/moe_route.h"
#include "tests/device_array.h"
#include "tests/test_util.h"

namespace loom {
namespace {

using test::DeviceArray;

constexpr double kF32Eps = 1.0 / (1 << 24);  // fp32 unit roundoff: one rounding moves a value by <= 2^-24 of it
constexpr double kBf16Eps = 1.0 / 256;        // bf16 unit roundoff, 2^-8

std::vector<uint16_t> to_bits(const std::vector<float>& x) {
  std::vector<uint16_t> b(x.size());
  for (size_t i = 0; i < x.size(); ++i) b[i] = float_to_bf16_bits(x[i]);
  return b;
}
std::vector<float> from_bits(const std::vector<uint16_t>& b) {
  std::vector<float> x(b.size());
  for (size_t i = 0; i < b.size(); ++i) x[i] = bf16_bits_to_float(b[i]);
  return x;
}
std::vector<float> bf16_of(const DeviceArray<bf16>& d) { return from_bits(d.download<uint16_t>()); }
std::vector<float> abs_of(std::vector<float> v) {
  for (float& x : v) x = std::fabs(x);
  return v;
}
std::vector<int32_t> offsets_of(const std::vector<int32_t>& counts) {
  std::vector<int32_t> offsets(counts.size() + 1, 0);
  std::partial_sum(counts.begin(), counts.end(), offsets.begin() + 1);
  return offsets;
}

// ---------------------------------------------------------------------------------------------
// Routing

// Logits on a grid of 0.01 in [-2, 2]: distinct logits differ by >= 0.01, so their probabilities
// differ by >= 1%, far beyond the two sides' rounding differences, and the chosen experts must match
// exactly. Equal logits give bit-equal probabilities on both sides, so ties are tested too: row 0 is
// all equal, and row 1 has three equal maxima at experts 3, E - 2 and E - 1.
std::vector<float> grid_logits(int64_t T, int E, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::uniform_int_distribution<int> step(-200, 200);
  std::vector<float> z(size_t(T * E));
  for (float& v : z) v = 0.01f * float(step(rng));
  std::fill_n(z.begin(), E, 0.5f);
  for (int e : {3, E - 2, E - 1}) z[size_t(E + e)] = 3.f;
  return z;
}

struct Route {
  std::vector<int32_t> experts;
  std::vector<float> weights, probs;
};

Route route_ref(const std::vector<float>& logits, int64_t T, int E, int K, bool normalize) {
  Route r{std::vector<int32_t>(size_t(T * K)), std::vector<float>(size_t(T * K)), std::vector<float>(size_t(T * E))};
  moe_route_ref(r.experts.data(), r.weights.data(), r.probs.data(), logits.data(), T, E, K, normalize);
  return r;
}

void check_route(int64_t T, int E, int K, bool normalize, uint64_t seed) {
  SCOPED_TRACE(testing::Message() << "T " << T << " E " << E << " K " << K << " normalize " << normalize);
  const std::vector<float> logits = grid_logits(T, E, seed);
  const Route want = route_ref(logits, T, E, K, normalize);
  DeviceArray<float> dlogits(logits.size()), dweights(size_t(T * K)), dprobs(size_t(T * E));
  DeviceArray<int32_t> dexperts(size_t(T * K));
  dlogits.upload(logits);
  dweights.poison();
  dprobs.poison();
  dexperts.poison();
  moe_route(dexperts.get(), dweights.get(), dprobs.get(), dlogits.get(), T, E, K, normalize, nullptr);
  CUDA_CHECK(cudaDeviceSynchronize());
  EXPECT_EQ(dexperts.download<int32_t>(), want.experts);
  // p = exp(z - max) / Σ exp: expf is within 2 ulp (CUDA guide) and std::exp within 1, so each term
  // differs by <= 3 ulp <= 6·2^-24; the two sums of E terms in different orders by <= 2E·2^-24 more;
  // the division by 2^-24 on each side.
  const double tol_p = (2.0 * E + 8) * kF32Eps;
  // w = p / S with S the sum of K such probabilities (K more roundings on each side, and the division).
  const double tol_w = normalize ? 2 * tol_p + (2.0 * K + 4) * kF32Eps : tol_p;
  const std::vector<float> probs = dprobs.download<float>(), weights = dweights.download<float>();
  double worst_p = 0, worst_w = 0;
  for (size_t i = 0; i < probs.size(); ++i)
    worst_p = test::max_keeping_nan(worst_p, test::relative_error(probs[i], want.probs[i]));
  for (size_t i = 0; i < weights.size(); ++i)
    worst_w = test::max_keeping_nan(worst_w, test::relative_error(weights[i], want.weights[i]));
  EXPECT_LE(worst_p, tol_p) << "probabilities";
  EXPECT_LE(worst_w, tol_w) << "weights";
}

TEST(MoeRouteGpu, MatchesTheReferenceIncludingTies) {
  REQUIRE_GPU();
  check_route(37, 8, 2, true, 1);      // Mixtral
  check_route(300, 128, 8, true, 2);   // Qwen3-MoE
  check_route(300, 128, 8, false, 3);  // norm_topk_prob false
  check_route(5, 60, 4, true, 4);      // E no multiple of 32
  check_route(3, 1000, 32, false, 5);  // the largest top-K, many experts per lane
}

void check_route_backward(int64_t T, int E, int K, bool normalize, bool with_aux, uint64_t seed) {
  SCOPED_TRACE(testing::Message() << "T " << T << " E " << E << " K " << K << " normalize " << normalize
                                  << " aux " << with_aux);
  const Route r = route_ref(grid_logits(T, E, seed), T, E, K, normalize);
  const std::vector<float> dw = test::random_floats(size_t(T * K), seed + 1);
  const std::vector<float> dprob_row = test::random_floats(size_t(E), seed + 2, 0.f, 0.01f);
  std::vector<float> dprobs(size_t(T * E));
  for (int64_t t = 0; t < T; ++t) std::copy(dprob_row.begin(), dprob_row.end(), dprobs.begin() + t * E);
  std::vector<float> want(size_t(T * E));
  moe_route_backward_ref(want.data(), dw.data(), with_aux ? dprobs.data() : nullptr, r.probs.data(), r.experts.data(),
                         r.weights.data(), T, E, K, normalize);
  DeviceArray<float> ddl(want.size()), ddw(dw.size()), ddprob(dprob_row.size()), dp(r.probs.size()),
      dwts(r.weights.size());
  DeviceArray<int32_t> dex(r.experts.size());
  ddw.upload(dw);
  ddprob.upload(dprob_row);
  dp.upload(r.probs);
  dwts.upload(r.weights);
  dex.upload(r.experts);
  ddl.poison();
  moe_route_backward(ddl.get(), ddw.get(), with_aux ? ddprob.get() : nullptr, dp.get(), dex.get(), dwts.get(), T, E,
                     K, normalize, nullptr);
  CUDA_CHECK(cudaDeviceSynchronize());
  const std::vector<float> got = ddl.download<float>();
  // dz_e = p_e·(dp_e − Σ_j p_j dp_j): dp is formed in the same order on both sides (bit-equal); the
  // sum over j differs in order, by <= 2E·2^-24·Σ p|dp| <= 2E·2^-24·max|dp| (Σ p = 1), and the
  // subtraction and product add 4 roundings on each side: |Δ dz_e| <= p_e·max|dp|·(2E + 8)·2^-24.
  // max|dp| of each row is recomputed here from the router's formula (ops/moe_router.h).
  for (int64_t t = 0; t < T; ++t) {
    std::vector<double> dpr(size_t(E), 0.0);
    double chosen = 0, wdw = 0, max_dp = 0;
    for (int k = 0; k < K; ++k) chosen += r.probs[size_t(t * E + r.experts[size_t(t * K + k)])];
    for (int k = 0; k < K; ++k) wdw += double(r.weights[size_t(t * K + k)]) * dw[size_t(t * K + k)];
    for (int e = 0; e < E; ++e) dpr[size_t(e)] = with_aux ? dprob_row[size_t(e)] : 0.0;
    for (int k = 0; k < K; ++k) {
      const double g = dw[size_t(t * K + k)];
      dpr[size_t(r.experts[size_t(t * K + k)])] += normalize ? (g - wdw) / chosen : g;
    }
    for (double v : dpr) max_dp = std::max(max_dp, std::fabs(v));
    for (int e = 0; e < E; ++e) {
      const size_t i = size_t(t * E + e);
      const double bound = r.probs[i] * max_dp * (2.0 * E + 16) * kF32Eps;  // 8 more roundings of slack
      ASSERT_LE(test::absolute_error(got[i], want[i]), bound) << "dlogits[" << t << ", " << e << "]";
    }
  }
}

TEST(MoeRouteGpu, BackwardMatchesTheReference) {
  REQUIRE_GPU();
  check_route_backward(37, 8, 2, true, true, 11);
  check_route_backward(300, 128, 8, true, false, 12);
  check_route_backward(300, 128, 8, false, true, 13);
  check_route_backward(9, 60, 4, true, true, 14);
}

// Two sparse layers' sums into the same accumulators (one with fewer rows than kMoeAuxSlices, so
// some slices are empty), then the loss and its gradient.
TEST(MoeRouteGpu, LoadBalancingSumsAreTheReferences) {
  REQUIRE_GPU();
  const int E = 60, K = 4;
  MoeAuxSums want(E);
  DeviceArray<double> counts{size_t(E)}, prob_sum{size_t(E)}, loss(1);
  DeviceArray<float> dprob{size_t(E)};
  DeviceArray<char> workspace(moe_aux_workspace_bytes(E));
  CUDA_CHECK(cudaMemset(counts.get(), 0, E * sizeof(double)));
  CUDA_CHECK(cudaMemset(prob_sum.get(), 0, E * sizeof(double)));
  int64_t rows = 0;
  for (const int64_t T : {int64_t(700), int64_t(20)}) {
    const Route r = route_ref(grid_logits(T, E, uint64_t(T)), T, E, K, true);
    moe_aux_accumulate_ref(want, r.experts.data(), r.probs.data(), T, K);
    DeviceArray<int32_t> dex(r.experts.size());
    DeviceArray<float> dp(r.probs.size());
    dex.upload(r.experts);
    dp.upload(r.probs);
    moe_aux_accumulate(counts.get(), prob_sum.get(), workspace.get(), dex.get(), dp.get(), T, E, K, nullptr);
    CUDA_CHECK(cudaDeviceSynchronize());
    rows += T;
  }
  const float coef = 0.001f;
  moe_aux_loss(loss.get(), dprob.get(), counts.get(), prob_sum.get(), E, rows, coef, nullptr);
  CUDA_CHECK(cudaDeviceSynchronize());
  EXPECT_EQ(counts.download<double>(), want.counts);  // integers in double: exact
  // The same fp32 probabilities summed in double in another order: <= 720·2^-53 relative apart.
  const std::vector<double> got_sum = prob_sum.download<double>();
  for (int e = 0; e < E; ++e) EXPECT_LE(test::relative_error(got_sum[size_t(e)], want.prob_sum[size_t(e)]), 1e-12);
  EXPECT_LE(test::relative_error(loss.download<double>()[0], moe_aux_loss_ref(want)), 1e-12);
  // d aux / d p from the exact counts with the reference's double arithmetic and float rounding, then
  // times the coefficient in float as the reference model scales it: bit for bit.
  std::vector<float> want_dprob(static_cast<size_t>(E));
  moe_aux_dprob_ref(want_dprob.data(), want);
  for (float& d : want_dprob) d *= coef;
  EXPECT_EQ(dprob.download<float>(), want_dprob);
}

// ---------------------------------------------------------------------------------------------
// Permutation

// K = 2 of E = 8 with the loads the model must survive: every token picks expert 3, token 17 also
// picks expert 5 (its only token), expert 0 none, and the others share the rest; which pick holds
// expert 3 alternates. T·K spans several kMoePermuteChunk chunks.
std::vector<int32_t> awkward_experts(int64_t T, uint64_t seed) {
  std::mt19937_64 rng(seed);
  const int32_t others[] = {1, 2, 4, 6, 7};
  std::vector<int32_t> ex(size_t(T * 2));
  for (int64_t t = 0; t < T; ++t) {
    const int32_t other = t == 17 ? 5 : others[rng() % 5];
    ex[size_t(2 * t + t % 2)] = 3;
    ex[size_t(2 * t + 1 - t % 2)] = other;
  }
  return ex;
}

struct Plan {
  std::vector<int32_t> counts, offsets, row_of, slot_of;
};

Plan plan_ref(const std::vector<int32_t>& experts, int64_t T, int E, int K) {
  Plan p;
  p.counts.resize(size_t(E));
  p.offsets.resize(size_t(E + 1));
  p.row_of.resize(size_t(T * K));
  p.slot_of.resize(size_t(T * K));
  moe_permute_plan_ref(p.counts.data(), p.offsets.data(), p.row_of.data(), p.slot_of.data(), experts.data(), T, E, K);
  return p;
}

// The plan on the device, and every data movement of ops/moe_permute.h, against the references.
void check_permute(const std::vector<int32_t>& experts, int64_t T, int E, int K, int C, uint64_t seed) {
  SCOPED_TRACE(testing::Message() << "T " << T << " E " << E << " K " << K << " C " << C);
  const size_t slots = size_t(T * K);
  const Plan want = plan_ref(experts, T, E, K);
  DeviceArray<int32_t> dex(slots), counts{size_t(E)}, offsets(size_t(E + 1)), row_of(slots), slot_of(slots);
  DeviceArray<char> workspace(moe_permute_workspace_bytes(T, E, K));
  dex.upload(experts);
  for (auto* a : {&counts, &offsets, &row_of, &slot_of}) a->poison();
  moe_permute_plan(counts.get(), offsets.get(), row_of.get(), slot_of.get(), workspace.get(), dex.get(), T, E, K,
                   nullptr);
  CUDA_CHECK(cudaDeviceSynchronize());
  EXPECT_EQ(counts.download<int32_t>(), want.counts);
  EXPECT_EQ(offsets.download<int32_t>(), want.offsets);
  EXPECT_EQ(row_of.download<int32_t>(), want.row_of);
  EXPECT_EQ(slot_of.download<int32_t>(), want.slot_of);

  const std::vector<float> x = test::random_bf16_values(size_t(T * C), seed, 1.f);
  const std::vector<float> ys = test::random_bf16_values(slots * C, seed + 1, 1.f);
  const std::vector<float> dy = test::random_bf16_values(size_t(T * C), seed + 2, 1.f);
  const std::vector<float> dxs = test::random_bf16_values(slots * C, seed + 3, 1.f);
  const std::vector<float> weights = test::random_floats(slots, seed + 4, 0.f, 1.f);
  DeviceArray<bf16> dx_in(x.size()), dys_in(ys.size()), ddy(dy.size()), ddxs(dxs.size());
  DeviceArray<bf16> xs(slots * C), y(size_t(T * C)), dys(slots * C), dx(size_t(T * C));
  DeviceArray<float> dweights(slots), ddw(slots);
  dx_in.upload(to_bits(x));
  dys_in.upload(to_bits(ys));
  ddy.upload(to_bits(dy));
  ddxs.upload(to_bits(dxs));
  dweights.upload(weights);
  for (auto* a : {&xs, &y, &dys, &dx}) a->poison();
  ddw.poison();
  moe_gather(xs.get(), dx_in.get(), slot_of.get(), T, K, C, nullptr);
  moe_combine(y.get(), dys_in.get(), dweights.get(), row_of.get(), T, K, C, nullptr);
  moe_combine_backward(dys.get(), ddw.get(), ddy.get(), dys_in.get(), dweights.get(), slot_of.get(), T, K, C, nullptr);
  moe_gather_backward(dx.get(), ddxs.get(), row_of.get(), T, K, C, nullptr);
  CUDA_CHECK(cudaDeviceSynchronize());

  std::vector<float> want_xs(slots * C), want_y(size_t(T * C)), want_dys(slots * C), want_dw(slots),
      want_dx(size_t(T * C)), abs_dw(slots), scratch(slots * C);
  moe_gather_ref(want_xs.data(), x.data(), want.slot_of.data(), T, K, C);
  moe_combine_ref(want_y.data(), ys.data(), weights.data(), want.row_of.data(), T, K, C);
  moe_combine_backward_ref(want_dys.data(), want_dw.data(), dy.data(), ys.data(), weights.data(), want.slot_of.data(),
                           T, K, C);
  moe_combine_backward_ref(scratch.data(), abs_dw.data(), abs_of(dy).data(), abs_of(ys).data(), weights.data(),
                           want.slot_of.data(), T, K, C);
  moe_gather_backward_ref(want_dx.data(), dxs.data(), want.row_of.data(), T, K, C);
  // Copies, and sums in the reference's order and roundings: bit for bit.
  EXPECT_EQ(xs.download<uint16_t>(), to_bits(want_xs)) << "gather";
  EXPECT_EQ(y.download<uint16_t>(), to_bits(want_y)) << "combine";
  EXPECT_EQ(dys.download<uint16_t>(), to_bits(want_dys)) << "combine backward, dys";
  EXPECT_EQ(dx.download<uint16_t>(), to_bits(want_dx)) << "gather backward";
  // dw = Σ_c dy·ys: an fp32 sum of C products (exact in fp32: bf16 × bf16) in lane order against a
  // double sum rounded once: <= (C + 1)·2^-24·Σ|dy·ys| apart (Higham's γ_C, plus the final rounding).
  const std::vector<float> got_dw = ddw.download<float>();
  for (size_t s = 0; s < slots; ++s)
    ASSERT_LE(test::absolute_error(got_dw[s], want_dw[s]), (C + 1) * kF32Eps * abs_dw[s]) << "dweights[" << s << "]";
}

TEST(MoePermuteGpu, AwkwardLoadsMatchTheReference) {
  REQUIRE_GPU();
  const int64_t T = 700;  // 1400 slots: three chunks, the last one partial
  const std::vector<int32_t> experts = awkward_experts(T, 21);
  const Plan p = plan_ref(experts, T, 8, 2);
  ASSERT_EQ(p.counts[0], 0);  // the loads the test is about
  ASSERT_EQ(p.counts[3], T);
  ASSERT_EQ(p.counts[5], 1);
  check_permute(experts, T, 8, 2, 264, 22);  // 33 vectors per row: lane 0 takes two
  check_permute(experts, 1, 8, 2, 8, 23);    // one token, one vector per row
}

TEST(MoePermuteGpu, RoutedTokensMatchTheReference) {
  REQUIRE_GPU();
  const int64_t T = 1000;
  const int E = 128, K = 8;
  const Route r = route_ref(grid_logits(T, E, 31), T, E, K, true);
  check_permute(r.experts, T, E, K, 136, 32);
}

TEST(MoePermuteGpu, NoTokensLeaveZeroCounts) {
  REQUIRE_GPU();
  const int E = 8;
  DeviceArray<int32_t> counts{size_t(E)}, offsets(size_t(E + 1)), none(1);
  DeviceArray<char> workspace(std::max<size_t>(moe_permute_workspace_bytes(0, E, 2), 1));
  counts.poison();
  offsets.poison();
  moe_permute_plan(counts.get(), offsets.get(), none.get(), none.get(), workspace.get(), none.get(), 0, E, 2, nullptr);
  CUDA_CHECK(cudaDeviceSynchronize());
  EXPECT_EQ(counts.download<int32_t>(), std::vector<int32_t>(size_t(E), 0));
  EXPECT_EQ(offsets.download<int32_t>(), std::vector<int32_t>(size_t(E + 1), 0));
}

// ---------------------------------------------------------------------------------------------
// Grouped GEMMs

// Bound on |GPU − reference| of one output whose exact value is want and whose products' absolute
// values sum to abs_sum (alpha and an accumulated old value included): the fp32 sum of `terms`
// products is within terms·2^-24·abs_sum of exact for round-to-nearest (Higham's γ_n), doubled as the
// tensor cores' fp32 adds may truncate; a bf16 output then rounds once more, by <= 2^-8 of itself.
double gemm_bound(double want, double abs_sum, int terms, bool bf16_out) {
  const double sum_err = 2.0 * (terms + 2) * kF32Eps * abs_sum;
  return bf16_out ? kBf16Eps * (std::fabs(want) + sum_err) + sum_err : sum_err + kF32Eps * std::fabs(want);
}

struct Groups {
  std::vector<int32_t> offsets;
  int E;
  int64_t used, rows;  // rows in groups; the buffer's rows (used + rows past the last group)
};

// The rows past the last group are the grid's worst-case slack: no block may write them.
Groups groups_of(const std::vector<int32_t>& counts, int64_t spare_rows) {
  const std::vector<int32_t> offsets = offsets_of(counts);
  return {offsets, int(counts.size()), offsets.back(), offsets.back() + spare_rows};
}

const char* kernel_name(GroupedGemmKernels k) {
  return k == GroupedGemmKernels::kHopper ? "Hopper" : k == GroupedGemmKernels::kWide ? "128x128" : "64x64";
}

// nt (w_kmajor) or nn with the given kernel on the device against the reference.
void check_rows_product_with(GroupedGemmKernels kernels, const Groups& g, int N, int K, bool w_kmajor, float alpha,
                             bool accumulate, uint64_t seed) {
  SCOPED_TRACE(testing::Message() << (w_kmajor ? "nt" : "nn") << " N " << N << " K " << K << " rows " << g.used
                                  << " alpha " << alpha << " accumulate " << accumulate << " kernel "
                                  << kernel_name(kernels));
  const int64_t w_stride = int64_t(N) * K + 8;  // experts' matrices apart by more than their size
  const std::vector<float> X = test::random_bf16_values(size_t(g.rows * K), seed, 1.f);
  const std::vector<float> W = test::random_bf16_values(size_t(g.E * w_stride), seed + 1, 1.f);
  std::vector<float> Y0 = test::random_bf16_values(size_t(g.rows * N), seed + 2, 1.f);
  if (!accumulate) std::fill_n(Y0.begin(), g.used * N, NAN);  // an element the kernel forgets stays NaN
  DeviceArray<bf16> dX(X.size()), dW(W.size()), dY(Y0.size());
  DeviceArray<int32_t> doff(g.offsets.size());
  dX.upload(to_bits(X));
  dW.upload(to_bits(W));
  dY.upload(to_bits(Y0));
  doff.upload(g.offsets);
  (w_kmajor ? grouped_gemm_nt : grouped_gemm_nn)(dY.get(), dX.get(), dW.get(), w_stride, doff.get(), g.E, g.rows, N,
                                                 K, alpha, accumulate, nullptr, kernels);
  CUDA_CHECK(cudaDeviceSynchronize());
  const std::vector<float> got = bf16_of(dY);
  std::vector<float> want = Y0, abs_sum = abs_of(Y0);
  auto ref = w_kmajor ? grouped_gemm_nt_ref : grouped_gemm_nn_ref;
  ref(want.data(), X.data(), W.data(), w_stride, g.offsets.data(), g.E, N, K, alpha, accumulate);
  ref(abs_sum.data(), abs_of(X).data(), abs_of(W).data(), w_stride, g.offsets.data(), g.E, N, K, std::fabs(alpha),
      accumulate);
  for (int64_t i = 0; i < g.used * N; ++i)
    ASSERT_LE(test::absolute_error(got[size_t(i)], want[size_t(i)]),
              gemm_bound(want[size_t(i)], abs_sum[size_t(i)], K, true))
        << "row " << i / N << " column " << i % N;
  for (int64_t i = g.used * N; i < g.rows * N; ++i)
    ASSERT_EQ(float_to_bf16_bits(got[size_t(i)]), float_to_bf16_bits(Y0[size_t(i)])) << "spare row " << i / N;
}

// The kernels that can compute an nt / nn product N wide in this build (ops/grouped_gemm.h; a
// GPU_ARCH=90 build runs on sm_90 GPUs only, as tests/attention_families.h assumes too).
std::vector<GroupedGemmKernels> kernels_for(int N) {
  if (N < 128) return {GroupedGemmKernels::kNarrow};
  std::vector<GroupedGemmKernels> kernels = {GroupedGemmKernels::kNarrow, GroupedGemmKernels::kWide};
  if (grouped_gemm_hopper_built()) kernels.push_back(GroupedGemmKernels::kHopper);
  return kernels;
}

// nt (w_kmajor) or nn on the device against the reference, alpha and accumulate as given, with each
// kernel that can take N.
void check_rows_product(const Groups& g, int N, int K, bool w_kmajor, float alpha, bool accumulate, uint64_t seed) {
  for (GroupedGemmKernels kernels : kernels_for(N))
    check_rows_product_with(kernels, g, N, K, w_kmajor, alpha, accumulate, seed);
}

// The _sum form (an expert product and its LoRA term in one call) with the given kernel against the
// two reference products summed in fp32. The bound allows the mma.sync kernels' rounding of a's
// result to bf16 before b is added (two launches); Hopper rounds once, well inside it.
void check_sum_product_with(GroupedGemmKernels kernels, const Groups& g, int N, int Ka, int Kb, bool w_kmajor,
                            float alpha_a, float alpha_b, bool accumulate, uint64_t seed) {
  SCOPED_TRACE(testing::Message() << (w_kmajor ? "nt" : "nn") << "_sum N " << N << " K " << Ka << " + " << Kb
                                  << " rows " << g.used << " alpha " << alpha_a << ", " << alpha_b << " accumulate "
                                  << accumulate << " kernel " << kernel_name(kernels));
  const int64_t wa_stride = int64_t(N) * Ka + 8, wb_stride = int64_t(N) * Kb + 16;
  const std::vector<float> Xa = test::random_bf16_values(size_t(g.rows * Ka), seed, 1.f);
  const std::vector<float> Wa = test::random_bf16_values(size_t(g.E * wa_stride), seed + 1, 1.f);
  const std::vector<float> Xb = test::random_bf16_values(size_t(g.rows * Kb), seed + 2, 1.f);
  const std::vector<float> Wb = test::random_bf16_values(size_t(g.E * wb_stride), seed + 3, 1.f);
  std::vector<float> Y0 = test::random_bf16_values(size_t(g.rows * N), seed + 4, 1.f);
  if (!accumulate) std::fill_n(Y0.begin(), g.used * N, NAN);  // an element the kernel forgets stays NaN
  DeviceArray<bf16> dXa(Xa.size()), dWa(Wa.size()), dXb(Xb.size()), dWb(Wb.size()), dY(Y0.size());
  DeviceArray<int32_t> doff(g.offsets.size());
  dXa.upload(to_bits(Xa));
  dWa.upload(to_bits(Wa));
  dXb.upload(to_bits(Xb));
  dWb.upload(to_bits(Wb));
  dY.upload(to_bits(Y0));
  doff.upload(g.offsets);
  (w_kmajor ? grouped_gemm_nt_sum : grouped_gemm_nn_sum)(dY.get(), {dXa.get(), dWa.get(), wa_stride, Ka, alpha_a},
                                                         {dXb.get(), dWb.get(), wb_stride, Kb, alpha_b}, doff.get(),
                                                         g.E, g.rows, N, accumulate, nullptr, kernels);
  CUDA_CHECK(cudaDeviceSynchronize());
  const std::vector<float> got = bf16_of(dY);
  auto ref = w_kmajor ? grouped_gemm_nt_ref : grouped_gemm_nn_ref;
  // a alone (with the old Y), then a + b; and the same sums over absolute values.
  std::vector<float> want_a = Y0, abs_a = abs_of(Y0);
  ref(want_a.data(), Xa.data(), Wa.data(), wa_stride, g.offsets.data(), g.E, N, Ka, alpha_a, accumulate);
  ref(abs_a.data(), abs_of(Xa).data(), abs_of(Wa).data(), wa_stride, g.offsets.data(), g.E, N, Ka,
      std::fabs(alpha_a), accumulate);
  std::vector<float> want = want_a, abs_sum = abs_a;
  ref(want.data(), Xb.data(), Wb.data(), wb_stride, g.offsets.data(), g.E, N, Kb, alpha_b, true);
  ref(abs_sum.data(), abs_of(Xb).data(), abs_of(Wb).data(), wb_stride, g.offsets.data(), g.E, N, Kb,
      std::fabs(alpha_b), true);
  for (int64_t i = 0; i < g.used * N; ++i) {
    const size_t at = size_t(i);
    // a rounded to bf16 (two launches), that error carried and rounded again with the sum.
    const double first = gemm_bound(want_a[at], abs_a[at], Ka, true);
    ASSERT_LE(test::absolute_error(got[at], want[at]),
              (1 + kBf16Eps) * first + gemm_bound(want[at], abs_sum[at] + first, Kb + Ka, true))
        << "row " << i / N << " column " << i % N;
  }
  for (int64_t i = g.used * N; i < g.rows * N; ++i)
    ASSERT_EQ(float_to_bf16_bits(got[size_t(i)]), float_to_bf16_bits(Y0[size_t(i)])) << "spare row " << i / N;
}

void check_sum_product(const Groups& g, int N, int Ka, int Kb, bool w_kmajor, float alpha_a, float alpha_b,
                       bool accumulate, uint64_t seed) {
  for (GroupedGemmKernels kernels : kernels_for(N))
    check_sum_product_with(kernels, g, N, Ka, Kb, w_kmajor, alpha_a, alpha_b, accumulate, seed);
}

void check_tn(const Groups& g, int N, int K, float alpha, uint64_t seed) {
  SCOPED_TRACE(testing::Message() << "tn N " << N << " K " << K << " rows " << g.used << " alpha " << alpha);
  const int64_t d_stride = int64_t(N) * K + 8;
  const std::vector<float> Y = test::random_bf16_values(size_t(g.rows * N), seed, 1.f);
  const std::vector<float> X = test::random_bf16_values(size_t(g.rows * K), seed + 1, 1.f);
  const std::vector<float> D0 = test::random_floats(size_t(g.E * d_stride), seed + 2);
  DeviceArray<bf16> dY(Y.size()), dX(X.size());
  DeviceArray<float> dD(D0.size());
  DeviceArray<int32_t> doff(g.offsets.size());
  dY.upload(to_bits(Y));
  dX.upload(to_bits(X));
  dD.upload(D0);
  doff.upload(g.offsets);
  grouped_gemm_tn(dD.get(), d_stride, dY.get(), dX.get(), doff.get(), g.E, N, K, alpha, nullptr);
  CUDA_CHECK(cudaDeviceSynchronize());
  const std::vector<float> got = dD.download<float>();
  std::vector<float> want = D0, abs_sum = abs_of(D0);
  grouped_gemm_tn_ref(want.data(), d_stride, Y.data(), X.data(), g.offsets.data(), g.E, N, K, alpha);
  grouped_gemm_tn_ref(abs_sum.data(), d_stride, abs_of(Y).data(), abs_of(X).data(), g.offsets.data(), g.E, N, K,
                      std::fabs(alpha));
  for (int e = 0; e < g.E; ++e) {
    const int rows = g.offsets[size_t(e + 1)] - g.offsets[size_t(e)];
    for (int64_t i = e * d_stride; i < (e + 1) * d_stride; ++i) {
      if (rows == 0 || i - e * d_stride >= int64_t(N) * K) {  // an empty group, or the gap between experts
        ASSERT_EQ(got[size_t(i)], D0[size_t(i)]) << "expert " << e << " element " << i - e * d_stride;
        continue;
      }
      ASSERT_LE(test::absolute_error(got[size_t(i)], want[size_t(i)]),
                gemm_bound(want[size_t(i)], abs_sum[size_t(i)], rows, false))
          << "expert " << e << " element " << i - e * d_stride;
    }
  }
}

// Groups of 0, 1, 63, 64, 65 and 200 rows, and spare rows past the last group.
const std::vector<int32_t> kAwkwardCounts = {0, 1, 63, 64, 65, 0, 200, 7};
// Around the 128-row tiles of the kernels for N >= 128 (the counts above cross them too).
const std::vector<int32_t> kWideCounts = {127, 0, 128, 129, 1, 300};

// 40 groups of 0..299 rows (a fixed draw, a quarter of them empty): the tile walk crosses its batches
// of 32 groups, with several column tiles per group in the Hopper kernel's expert-major order.
Groups forty_groups() {
  std::mt19937 rng(9);
  std::vector<int32_t> counts(40);
  for (int32_t& c : counts) c = rng() % 4 == 0 ? 0 : int32_t(rng() % 300);
  return groups_of(counts, 17);
}

TEST(GroupedGemmGpu, ForwardMatchesTheReference) {
  REQUIRE_GPU();
  const Groups g = groups_of(kAwkwardCounts, 5);
  check_rows_product(g, 72, 136, true, 1.f, false, 41);    // y = x·Wᵀ, N and K no multiple of the tile
  check_rows_product(g, 16, 136, true, 1.f, false, 42);    // u = x·Aᵀ (a rank-16 adapter)
  check_rows_product(g, 72, 16, true, 0.5f, true, 43);     // y += s·u·Bᵀ (K = R below the k step)
  check_rows_product(groups_of({0, 300, 0}, 0), 64, 64, true, 1.f, false, 44);  // one expert takes all
  check_rows_product(groups_of({1000, 3, 0, 517}, 64), 256, 520, true, 1.f, false, 45);  // many rows
  check_rows_product(groups_of(kWideCounts, 3), 392, 200, true, 1.f, false, 46);  // wide: 4 column tiles, last partial
  check_rows_product(g, 136, 16, true, 0.5f, true, 47);  // wide, K below the k step, accumulating
  check_rows_product(forty_groups(), 520, 136, true, 1.f, false, 48);  // 3 Hopper column tiles, 40 groups
  check_rows_product(groups_of({130, 0, 257}, 3), 512, 2048, true, 1.f, false, 49);  // 32 k steps: stages wrap 8 times
}

TEST(GroupedGemmGpu, BackwardInputGradientMatchesTheReference) {
  REQUIRE_GPU();
  const Groups g = groups_of(kAwkwardCounts, 5);
  check_rows_product(g, 136, 72, false, 1.f, false, 51);   // dx = dy·W
  check_rows_product(g, 16, 72, false, 0.5f, false, 52);   // du = s·dy·B
  check_rows_product(g, 136, 16, false, 1.f, true, 53);    // dx += du·A
  check_rows_product(groups_of({0, 300, 0}, 0), 64, 64, false, 1.f, false, 54);
  check_rows_product(groups_of(kWideCounts, 3), 392, 200, false, 1.f, false, 55);  // wide: n-major W
  check_rows_product(groups_of({1000, 3, 0, 517}, 64), 2048, 96, false, 1.f, true, 56);  // the experts' dx shape
  check_rows_product(forty_groups(), 520, 136, false, 1.f, true, 57);
  check_rows_product(groups_of({130, 0, 257}, 3), 512, 2048, false, 1.f, false, 58);
}

// An expert product and its LoRA term summed in one call (models/moe_layer.cpp): the forward's
// y = x·Wᵀ + s·u·Bᵀ (nt) and the backward's dx = dy·W + du·A (nn), ranks 16, 24 (a partial k step
// after the full ones) and 72 (two k steps of the second term); K = 64, whose one step leaves the
// prologue to copy the second term's.
TEST(GroupedGemmGpu, SumOfAProductAndItsAdapterMatchesTheReference) {
  REQUIRE_GPU();
  const Groups g = groups_of(kAwkwardCounts, 5);
  check_sum_product(g, 72, 136, 16, true, 1.f, 0.5f, false, 81);  // narrow only (N < 128)
  check_sum_product(groups_of(kWideCounts, 3), 392, 200, 16, true, 1.f, 2.f, false, 82);
  check_sum_product(forty_groups(), 520, 136, 24, true, 1.f, 0.25f, true, 83);
  check_sum_product(groups_of({130, 0, 257}, 3), 512, 2048, 72, true, 0.5f, 3.f, false, 84);
  check_sum_product(groups_of(kWideCounts, 3), 392, 200, 16, false, 1.f, 1.f, false, 85);
  check_sum_product(forty_groups(), 136, 520, 24, false, 1.f, 1.f, true, 86);
  check_sum_product(groups_of({1000, 3, 0, 517}, 64), 2048, 96, 16, false, 1.f, 1.f, false, 87);
  check_sum_product(groups_of(kWideCounts, 3), 264, 64, 16, true, 1.f, 0.5f, false, 88);  // b copied in the prologue
  check_sum_product(groups_of(kWideCounts, 3), 264, 200, 24, false, 2.f, 0.5f, true, 89);
  // |a.alpha / b.alpha| past 2^32: Hopper's two launches (b's carries the sum, a's adds ~2^-40 of it).
  check_sum_product(groups_of(kWideCounts, 3), 392, 200, 16, true, 0x1p-40f, 1.f, false, 90);
}

// The 128×128 and 64×64 mma.sync kernels on the same product: the same MMAs over k in the same order,
// so the same bits (ops/grouped_gemm.h). 40 groups, most of them empty, so the tile search crosses its
// batches of 32 groups.
std::vector<uint16_t> product_bits(GroupedGemmKernels kernel, const Groups& g, int N, int K, bool w_kmajor,
                                   const std::vector<float>& X, const std::vector<float>& W) {
  DeviceArray<bf16> dX(X.size()), dW(W.size()), dY(size_t(g.rows * N));
  DeviceArray<int32_t> doff(g.offsets.size());
  dX.upload(to_bits(X));
  dW.upload(to_bits(W));
  doff.upload(g.offsets);
  (w_kmajor ? grouped_gemm_nt : grouped_gemm_nn)(dY.get(), dX.get(), dW.get(), int64_t(N) * K, doff.get(), g.E,
                                                 g.rows, N, K, 1.f, false, nullptr, kernel);
  CUDA_CHECK(cudaDeviceSynchronize());
  std::vector<uint16_t> y = dY.download<uint16_t>();
  y.resize(size_t(g.used * N));  // the rows in groups
  return y;
}

TEST(GroupedGemmGpu, WideAndNarrowKernelsGiveTheSameBits) {
  REQUIRE_GPU();
  std::vector<int32_t> counts(40, 0);
  counts[3] = 129, counts[17] = 1, counts[33] = 200, counts[39] = 64;
  const Groups g = groups_of(counts, 0);
  const int N = 136, K = 200;
  const std::vector<float> X = test::random_bf16_values(size_t(g.rows * K), 71, 1.f);
  const std::vector<float> W = test::random_bf16_values(size_t(g.E) * N * K, 72, 1.f);
  for (bool w_kmajor : {true, false}) {
    SCOPED_TRACE(w_kmajor ? "nt" : "nn");
    const std::vector<uint16_t> wide = product_bits(GroupedGemmKernels::kWide, g, N, K, w_kmajor, X, W);
    const std::vector<uint16_t> narrow = product_bits(GroupedGemmKernels::kNarrow, g, N, K, w_kmajor, X, W);
    ASSERT_EQ(wide.size(), size_t(g.used) * N);
    EXPECT_TRUE(wide == narrow);
  }
}

TEST(GroupedGemmGpu, WeightGradientMatchesTheReference) {
  REQUIRE_GPU();
  const Groups g = groups_of(kAwkwardCounts, 5);
  check_tn(g, 72, 16, 0.5f, 61);   // dB += s·dyᵀ·u
  check_tn(g, 16, 136, 1.f, 62);   // dA += duᵀ·x
  check_tn(g, 72, 136, 1.f, 63);   // a full weight gradient, both sides no multiple of the tile
  check_tn(groups_of({0, 300, 0}, 0), 64, 64, 1.f, 64);
  check_tn(groups_of({1000, 3, 0, 517}, 64), 392, 32, 0.5f, 65);  // 32 row steps: the stages wrap 8 times
}

}  // namespace
}  // namespace loom
