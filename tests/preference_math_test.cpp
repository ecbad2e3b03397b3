// The per-pair math of the preference objectives (engine/preference.h pair_figures) against closed
// forms: TRL's formulas on hand examples (values to 18 digits from mpmath), the adapter-at-zero case,
// the derivatives by central finite differences, robust = sigmoid without label smoothing. The
// whole-model check against TRL is the fixture test on tests/fixtures/dpo (tools/make_dpo_fixtures.py).
#include <gtest/gtest.h>

#include <cmath>
#include <string>
#include <vector>

#include "engine/preference.h"

namespace loom {
namespace {

// Every closed form below is a handful of double operations on O(1) values: 1e-12 is ~1e4 ulps,
// room for libm's log1p/exp and a different evaluation order, far below any formula error.
constexpr double kExact = 1e-12;

PreferenceOptions options(PreferenceLoss loss, double beta = 0.1, double smoothing = 0.0) {
  PreferenceOptions o;
  o.loss = loss;
  o.beta = beta;
  o.label_smoothing = smoothing;
  o.orpo_lambda = beta;  // λ plays β's role for ORPO in these tests
  return o;
}

// The hand example: π_c = -10, π_r = -14, ρ_c = -11, ρ_r = -12 over 4 and 5 completion tokens, so
// h = (π_c - π_r) - (ρ_c - ρ_r) = 3 and z = βh = 0.3 at β = 0.1.
PairLogps hand_pair() {
  PairLogps p;
  p.policy_chosen = -10;
  p.policy_rejected = -14;
  p.reference_chosen = -11;
  p.reference_rejected = -12;
  p.chosen_tokens = 4;
  p.rejected_tokens = 5;
  return p;
}

TEST(PreferenceMath, DpoLossesOnAHandExample) {
  const PairLogps p = hand_pair();
  // -log σ(0.3) = log(1 + e^-0.3)
  EXPECT_NEAR(pair_figures(p, options(PreferenceLoss::kSigmoid)).loss, 0.554355244468527119, kExact);
  // 0.9·log(1 + e^-0.3) + 0.1·log(1 + e^0.3)  (conservative DPO, TRL 0.28 dpo_loss)
  EXPECT_NEAR(pair_figures(p, options(PreferenceLoss::kSigmoid, 0.1, 0.1)).loss, 0.584355244468527119, kExact);
  // [0.9·log(1 + e^-0.3) - 0.1·log(1 + e^0.3)] / 0.8  (TRL's "robust")
  EXPECT_NEAR(pair_figures(p, options(PreferenceLoss::kRobust, 0.1, 0.1)).loss, 0.516855244468527119, kExact);
  // max(0, 1 - 0.3)
  EXPECT_NEAR(pair_figures(p, options(PreferenceLoss::kHinge)).loss, 0.7, kExact);
  // ∂/∂π_c of -log σ(βh) = -β·σ(-z); ∂/∂π_r the opposite.
  const PairFigures s = pair_figures(p, options(PreferenceLoss::kSigmoid));
  EXPECT_NEAR(s.dloss_dchosen, -0.0425557483188341013, kExact);
  EXPECT_NEAR(s.dloss_drejected, 0.0425557483188341013, kExact);
  // Rewards β(π - ρ) from the summed log-probs: 0.1·1 and 0.1·(-2).
  EXPECT_NEAR(s.reward_chosen, 0.1, kExact);
  EXPECT_NEAR(s.reward_rejected, -0.2, kExact);
}

// IPO's loss takes the log-ratios per completion token (TRL 1.16 _compute_loss "ipo"); its rewards
// stay β(π - ρ) of the sums, as for every DPO loss (TRL 1.16 logs rewards from the summed log-ratios).
TEST(PreferenceMath, IpoUsesMeanLogRatiosForTheLossOnly) {
  const PairFigures f = pair_figures(hand_pair(), options(PreferenceLoss::kIpo));
  // h̄ = (-10+11)/4 - (-14+12)/5 = 0.25 + 0.4 = 0.65; (0.65 - 1/(2·0.1))² = (-4.35)² = 18.9225
  EXPECT_NEAR(f.loss, 18.9225, kExact);
  // ∂ℓ/∂π_c = 2(h̄ - 5)/n_c = -8.7/4, ∂ℓ/∂π_r = -2(h̄ - 5)/n_r = 8.7/5
  EXPECT_NEAR(f.dloss_dchosen, -2.175, kExact);
  EXPECT_NEAR(f.dloss_drejected, 1.74, kExact);
  EXPECT_NEAR(f.reward_chosen, 0.1, kExact);
  EXPECT_NEAR(f.reward_rejected, -0.2, kExact);
}

// ORPO on the completions' mean log-probs π̄_c = -10/4 = -2.5, π̄_r = -14/5 = -2.8 (TRL
// ORPOTrainer.odds_ratio_loss): log_odds = (π̄_c - π̄_r) - (log(1 - e^π̄_c) - log(1 - e^π̄_r)),
// the pair's term -λ·log σ(log_odds) (the NLL is the objective's, over the batch's tokens), rewards λπ̄.
TEST(PreferenceMath, OrpoLogOddsOnAHandExample) {
  const PairFigures f = pair_figures(hand_pair(), options(PreferenceLoss::kOrpo));
  EXPECT_NEAR(f.log_odds, 0.322912939737561891, kExact);
  EXPECT_NEAR(f.loss, 0.0544668567874231828, kExact);
  EXPECT_NEAR(f.reward_chosen, -0.25, kExact);
  EXPECT_NEAR(f.reward_rejected, -0.28, kExact);
}

// The adapter at zero (B = 0): the policy is the reference bit for bit, so h = 0 exactly, every
// sigmoid loss is ln 2 and every reward exactly 0, whatever the log-probs; at z = 0 the other
// losses have closed forms too (robust: ln 2 for any ε; hinge: 1; IPO: (1/2β)²).
TEST(PreferenceMath, AdapterAtZeroGivesLn2AndZeroRewards) {
  for (double c : {-0.5, -7.25, -31.0, -140.125})
    for (double r : {-1.0, -12.5, -97.75}) {
      PairLogps p;
      p.policy_chosen = p.reference_chosen = c;
      p.policy_rejected = p.reference_rejected = r;
      p.chosen_tokens = 3;
      p.rejected_tokens = 8;
      const std::string at = "chosen " + std::to_string(c) + " rejected " + std::to_string(r);
      for (double beta : {0.1, 0.5}) {
        const PairFigures s = pair_figures(p, options(PreferenceLoss::kSigmoid, beta));
        // ln 2 as log1p(1) or log(2): libm may round the two differently by an ulp (DOUBLE_EQ: 4 ulps).
        EXPECT_DOUBLE_EQ(s.loss, std::log(2.0)) << at;
        EXPECT_EQ(s.reward_chosen, 0.0) << at;
        EXPECT_EQ(s.reward_rejected, 0.0) << at;
        // ∂ℓ/∂π_c = -β·σ(0) = -β/2: σ(0) = 1/2 exactly, so the halving is exact too.
        EXPECT_DOUBLE_EQ(s.dloss_dchosen, -beta / 2) << at;
        EXPECT_DOUBLE_EQ(s.dloss_drejected, beta / 2) << at;
      }
      EXPECT_NEAR(pair_figures(p, options(PreferenceLoss::kSigmoid, 0.1, 0.1)).loss, std::log(2.0), kExact) << at;
      EXPECT_NEAR(pair_figures(p, options(PreferenceLoss::kRobust, 0.1, 0.1)).loss, std::log(2.0), kExact) << at;
      EXPECT_EQ(pair_figures(p, options(PreferenceLoss::kHinge)).loss, 1.0) << at;
      EXPECT_NEAR(pair_figures(p, options(PreferenceLoss::kIpo)).loss, 25.0, kExact) << at;
      EXPECT_EQ(pair_figures(p, options(PreferenceLoss::kIpo)).reward_chosen, 0.0) << at;
    }
}

// Without label smoothing the robust loss is the sigmoid loss: same loss, derivatives, rewards.
TEST(PreferenceMath, RobustWithoutSmoothingIsSigmoid) {
  for (double h : {-40.0, -3.0, -0.25, 0.0, 0.5, 6.0, 55.0}) {
    PairLogps p = hand_pair();
    p.policy_chosen = p.policy_rejected + (p.reference_chosen - p.reference_rejected) + h;
    for (double beta : {0.1, 0.5}) {
      const PairFigures s = pair_figures(p, options(PreferenceLoss::kSigmoid, beta));
      const PairFigures r = pair_figures(p, options(PreferenceLoss::kRobust, beta));
      EXPECT_DOUBLE_EQ(r.loss, s.loss) << "h " << h << " beta " << beta;
      EXPECT_DOUBLE_EQ(r.dloss_dchosen, s.dloss_dchosen) << "h " << h << " beta " << beta;
      EXPECT_DOUBLE_EQ(r.dloss_drejected, s.dloss_drejected) << "h " << h << " beta " << beta;
      EXPECT_EQ(r.reward_chosen, s.reward_chosen);
      EXPECT_EQ(r.reward_rejected, s.reward_rejected);
    }
  }
}

// Central differences: (ℓ(π + δ) - ℓ(π - δ)) / 2δ - ℓ'(π) = δ²ℓ'''/6 + O(ε|ℓ|/δ). With δ = 1e-4,
// |ℓ'''| ≤ 1 on these losses (β ≤ 0.5, ≥ 2 tokens: β³σ''' ≤ 0.02, IPO is quadratic, ORPO's terms
// are O(1) at these log-probs) and |ℓ| ≤ 100: ≤ 2e-9 + 1e-10. 1e-7 allows 50x that.
constexpr double kDelta = 1e-4;
constexpr double kFiniteDifference = 1e-7;

double central(const PairLogps& p, const PreferenceOptions& o, double PairLogps::*side) {
  PairLogps up = p, down = p;
  up.*side += kDelta;
  down.*side -= kDelta;
  return (pair_figures(up, o).loss - pair_figures(down, o).loss) / (2 * kDelta);
}

TEST(PreferenceMath, DerivativesMatchCentralDifferencesForEveryLoss) {
  struct Case {
    std::string name;
    PreferenceOptions o;
  };
  const std::vector<Case> cases = {
      {"sigmoid", options(PreferenceLoss::kSigmoid)},
      {"sigmoid beta 0.5", options(PreferenceLoss::kSigmoid, 0.5)},
      {"sigmoid smoothing 0.1", options(PreferenceLoss::kSigmoid, 0.1, 0.1)},
      {"robust smoothing 0.1", options(PreferenceLoss::kRobust, 0.1, 0.1)},
      {"hinge", options(PreferenceLoss::kHinge)},
      {"hinge beta 0.5", options(PreferenceLoss::kHinge, 0.5)},
      {"ipo", options(PreferenceLoss::kIpo)},
      {"orpo", options(PreferenceLoss::kOrpo)},
  };
  // (π_c, π_r, ρ_c, ρ_r, n_c, n_r): h from -13 to +18, so βh falls on both sides of the hinge's
  // kink at 1 (h = 18: 1.8 at β 0.1; h = 4.7: 2.35 at β 0.5) and into both tails of log σ (βh = 9,
  // -6.5); ORPO's mean log-probs from -0.3 (odds > 1) to -9.
  const double pairs[][6] = {{-10, -14, -11, -12, 4, 5},       {-52.5, -48.2, -58.0, -49.0, 11, 11},
                             {-9.8, -22.7, -4.7, -23.8, 2, 5},  {-0.6, -2.4, -0.5, -2.0, 2, 3},
                             {-31.0, -12.0, -30.0, -24.0, 7, 3}, {-90.0, -45.0, -80.0, -48.0, 10, 5},
                             {-5.0, -25.0, -8.0, -10.0, 3, 6}};
  for (const Case& c : cases)
    for (const auto& v : pairs) {
      PairLogps p;
      p.policy_chosen = v[0];
      p.policy_rejected = v[1];
      p.reference_chosen = v[2];
      p.reference_rejected = v[3];
      p.chosen_tokens = int64_t(v[4]);
      p.rejected_tokens = int64_t(v[5]);
      const double z = c.o.beta * ((v[0] - v[1]) - (v[2] - v[3]));
      if (c.o.loss == PreferenceLoss::kHinge && std::fabs(1 - z) < 1e-3) continue;  // the kink
      const PairFigures f = pair_figures(p, c.o);
      const std::string at = c.name + " at pair (" + std::to_string(v[0]) + ", " + std::to_string(v[1]) + ")";
      EXPECT_NEAR(f.dloss_dchosen, central(p, c.o, &PairLogps::policy_chosen), kFiniteDifference) << at;
      EXPECT_NEAR(f.dloss_drejected, central(p, c.o, &PairLogps::policy_rejected), kFiniteDifference) << at;
    }
}

}  // namespace
}  // namespace loom
