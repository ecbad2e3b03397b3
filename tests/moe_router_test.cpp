// Top-K softmax routing and the load-balancing loss (ops/moe_router.h): the backward against central
// differences of the forward, ties, and the loss on a case worked by hand.
#include "ops/moe_router.h"

#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "ops/random.h"

namespace loom {
namespace {

constexpr int T = 5, E = 6, K = 2;

std::vector<float> random_logits(uint64_t seed) {
  std::vector<float> z(T * E);
  for (size_t i = 0; i < z.size(); ++i) z[i] = 2.f * random_symmetric(seed, 1, i);
  return z;
}

// L = Σ_t,k c_{t,k} w_{t,k} + Σ_t,e g_e p_{t,e}: the routing weights' and probabilities' gradients are
// c and g (g the same for every row, as the load-balancing loss's).
double objective(const std::vector<float>& z, const std::vector<float>& c, const std::vector<float>& g, bool normalize,
                 std::vector<int32_t>* chosen = nullptr) {
  std::vector<int32_t> experts(T * K);
  std::vector<float> w(T * K), p(T * E);
  moe_route_ref(experts.data(), w.data(), p.data(), z.data(), T, E, K, normalize);
  if (chosen) *chosen = experts;
  double L = 0;
  for (int i = 0; i < T * K; ++i) L += double(c[size_t(i)]) * w[size_t(i)];
  for (int t = 0; t < T; ++t)
    for (int e = 0; e < E; ++e) L += double(g[size_t(e)]) * p[size_t(t * E + e)];
  return L;
}

// dz from moe_route_backward_ref against (L(z + h) - L(z - h)) / 2h of the fp32 forward: the
// choice of experts is held fixed by the step (h far below the logits' gaps), so L is smooth there.
TEST(MoeRouter, BackwardMatchesCentralDifferences) {
  for (const bool normalize : {false, true}) {
    SCOPED_TRACE(normalize ? "normalised" : "plain");
    const std::vector<float> z = random_logits(3);
    std::vector<float> c(T * K), g(E);
    for (size_t i = 0; i < c.size(); ++i) c[i] = random_symmetric(4, 1, i);
    for (size_t i = 0; i < g.size(); ++i) g[i] = random_symmetric(5, 1, i);
    std::vector<int32_t> experts(T * K);
    std::vector<float> w(T * K), p(T * E), dprobs(T * E), dz(T * E);
    moe_route_ref(experts.data(), w.data(), p.data(), z.data(), T, E, K, normalize);
    for (int t = 0; t < T; ++t)
      for (int e = 0; e < E; ++e) dprobs[size_t(t * E + e)] = g[size_t(e)];
    moe_route_backward_ref(dz.data(), c.data(), dprobs.data(), p.data(), experts.data(), w.data(), T, E, K, normalize);
    const float h = 1e-2f;
    for (size_t i = 0; i < z.size(); ++i) {
      std::vector<float> up = z, down = z;
      up[i] += h;
      down[i] -= h;
      std::vector<int32_t> e_up, e_down;
      const double fd = (objective(up, c, g, normalize, &e_up) - objective(down, c, g, normalize, &e_down)) / (2 * h);
      ASSERT_EQ(e_up, e_down) << "the step changed the routing at logit " << i;
      // O(h²) truncation of the central difference (second derivatives O(1)) plus fp32 rounding / h: ~1e-4
      EXPECT_NEAR(dz[i], fd, 2e-3) << "logit " << i;
    }
  }
}

// Equal probabilities: the lower expert first (torch.topk's order among equal values is unspecified).
TEST(MoeRouter, TiesPickTheLowerExpert) {
  const std::vector<float> z = {0.f, 1.f, 1.f, 1.f};
  std::vector<int32_t> experts(2);
  std::vector<float> w(2), p(4);
  moe_route_ref(experts.data(), w.data(), p.data(), z.data(), 1, 4, 2, true);
  EXPECT_EQ(experts, (std::vector<int32_t>{1, 2}));
  EXPECT_FLOAT_EQ(w[0], 0.5f);
}

// Two rows, E = 2, K = 1: row 0 picks expert 0 (p = 0.75, 0.25), row 1 expert 1 (p = 0.25, 0.75):
// f = (1/2, 1/2), P = (1/2, 1/2), aux = 2 · (1/4 + 1/4) = 1; d aux / d p_e = 2 · f_e / 2 = 1/2.
TEST(MoeRouter, AuxLossWorkedByHand) {
  const float l3 = std::log(3.f);
  const std::vector<float> z = {l3, 0.f, 0.f, l3};
  std::vector<int32_t> experts(2);
  std::vector<float> w(2), p(4);
  moe_route_ref(experts.data(), w.data(), p.data(), z.data(), 2, 2, 1, false);
  EXPECT_EQ(experts, (std::vector<int32_t>{0, 1}));
  MoeAuxSums sums(2);
  moe_aux_accumulate_ref(sums, experts.data(), p.data(), 2, 1);
  EXPECT_NEAR(moe_aux_loss_ref(sums), 1.0, 1e-6);
  std::vector<float> d(2);
  moe_aux_dprob_ref(d.data(), sums);
  EXPECT_FLOAT_EQ(d[0], 0.5f);
  EXPECT_FLOAT_EQ(d[1], 0.5f);
  EXPECT_EQ(moe_aux_loss_ref(MoeAuxSums(2)), 0.0);  // no rows
}

}  // namespace
}  // namespace loom
