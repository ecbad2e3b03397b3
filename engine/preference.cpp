#include "engine/preference.h"

#include <algorithm>
#include <cmath>
#include <tuple>

#include "dist/dist.h"
#include "ops/cross_entropy.h"
#include "ops/error.h"

namespace loom {
namespace {

double sigmoid(double x) { return x >= 0 ? 1 / (1 + std::exp(-x)) : std::exp(x) / (1 + std::exp(x)); }
// log σ(x), without overflow for large |x|.
double log_sigmoid(double x) { return x >= 0 ? -std::log1p(std::exp(-x)) : x - std::log1p(std::exp(x)); }

double mean_of(double sum, int64_t n) { return n > 0 ? sum / double(n) : 0.0; }

PairFigures dpo(const PairLogps& p, const PreferenceOptions& o) {
  PairFigures f;
  const double b = o.beta, e = o.label_smoothing;
  const double h = (p.policy_chosen - p.policy_rejected) - (p.reference_chosen - p.reference_rejected);
  const double z = b * h;
  double dz = 0;  // ∂ℓ/∂z
  switch (o.loss) {
    case PreferenceLoss::kSigmoid:
      f.loss = -(1 - e) * log_sigmoid(z) - e * log_sigmoid(-z);
      dz = -(1 - e) * sigmoid(-z) + e * sigmoid(z);
      break;
    case PreferenceLoss::kRobust:
      f.loss = (-(1 - e) * log_sigmoid(z) + e * log_sigmoid(-z)) / (1 - 2 * e);
      dz = (-(1 - e) * sigmoid(-z) - e * sigmoid(z)) / (1 - 2 * e);
      break;
    case PreferenceLoss::kHinge:
      f.loss = std::max(0.0, 1 - z);
      dz = z < 1 ? -1.0 : 0.0;
      break;
    default:
      fail("dpo: unexpected loss type");
  }
  f.dloss_dchosen = b * dz;
  f.dloss_drejected = -b * dz;
  f.reward_chosen = b * (p.policy_chosen - p.reference_chosen);
  f.reward_rejected = b * (p.policy_rejected - p.reference_rejected);
  return f;
}

// IPO compares mean log-probs per completion token (TRL averages them for this loss only).
PairFigures ipo(const PairLogps& p, const PreferenceOptions& o) {
  PairFigures f;
  const double pc = mean_of(p.policy_chosen, p.chosen_tokens), pr = mean_of(p.policy_rejected, p.rejected_tokens);
  const double rc = mean_of(p.reference_chosen, p.chosen_tokens), rr = mean_of(p.reference_rejected, p.rejected_tokens);
  const double d = ((pc - pr) - (rc - rr)) - 1 / (2 * o.beta);
  f.loss = d * d;
  f.dloss_dchosen = p.chosen_tokens > 0 ? 2 * d / double(p.chosen_tokens) : 0.0;
  f.dloss_drejected = p.rejected_tokens > 0 ? -2 * d / double(p.rejected_tokens) : 0.0;
  // TRL (1.16) reports IPO's rewards on the summed log-probs, like the other DPO losses.
  f.reward_chosen = o.beta * (p.policy_chosen - p.reference_chosen);
  f.reward_rejected = o.beta * (p.policy_rejected - p.reference_rejected);
  return f;
}

// ORPO's odds-ratio term; its NLL over the chosen tokens is the objective's, per step.
PairFigures orpo(const PairLogps& p, const PreferenceOptions& o) {
  PairFigures f;
  const double pc = mean_of(p.policy_chosen, p.chosen_tokens), pr = mean_of(p.policy_rejected, p.rejected_tokens);
  // log(1 - e^x) for x < 0, exact near 0 and for very negative x.
  auto log1m_exp = [](double x) { return x > -0.693 ? std::log(-std::expm1(x)) : std::log1p(-std::exp(x)); };
  f.log_odds = (pc - pr) - (log1m_exp(pc) - log1m_exp(pr));
  const double lam = o.orpo_lambda;
  f.loss = -lam * log_sigmoid(f.log_odds);
  const double dlo = -lam * sigmoid(-f.log_odds);  // ∂ℓ/∂log_odds
  // ∂log_odds/∂π̄_c = 1 + e^{π̄_c}/(1 − e^{π̄_c}) = 1/(1 − e^{π̄_c}); ∂/∂π̄_r = −1/(1 − e^{π̄_r}).
  f.dloss_dchosen = p.chosen_tokens > 0 ? dlo / (-std::expm1(pc)) / double(p.chosen_tokens) : 0.0;
  f.dloss_drejected = p.rejected_tokens > 0 ? -dlo / (-std::expm1(pr)) / double(p.rejected_tokens) : 0.0;
  f.reward_chosen = lam * pc;
  f.reward_rejected = lam * pr;
  return f;
}

}  // namespace

PairFigures pair_figures(const PairLogps& p, const PreferenceOptions& o) {
  switch (o.loss) {
    case PreferenceLoss::kIpo:
      return ipo(p, o);
    case PreferenceLoss::kOrpo:
      return orpo(p, o);
    default:
      return dpo(p, o);
  }
}

namespace {

int pairs_in(const MicroBatch& mb) {
  LOOM_CHECK(mb.ndoc() % 2 == 0, "preference objective: a micro-batch of ", mb.ndoc(),
             " sequences; every document of a preference run must be a pair (chosen, rejected)");
  return mb.ndoc() / 2;
}

// Chosen-sequence targets of this rank's micro-batches.
double chosen_targets(const std::vector<MicroBatch>& micro) {
  double n = 0;
  for (const MicroBatch& mb : micro)
    for (int s = 0; s < mb.ndoc(); s += 2)
      for (int32_t t = mb.cu_seqlens[s]; t < mb.cu_seqlens[s + 1]; ++t) n += mb.targets[t] != kIgnoreIndex;
  return n;
}

PreferenceObjective::Sums all_ranks(PreferenceObjective::Sums s) {
  for (double* v : {&s.pairs, &s.loss, &s.reward_chosen, &s.reward_rejected, &s.accurate, &s.logp_chosen,
                    &s.logp_rejected, &s.log_odds, &s.log_sigmoid_odds, &s.chosen_loss, &s.chosen_targets})
    *v = allreduce_sum(*v);
  return s;
}

// The document index of pair k of mb in a reference table of `size` pairs.
int64_t table_index(const MicroBatch& mb, int k, size_t size) {
  LOOM_CHECK(size_t(k) < mb.documents.size() && mb.documents[size_t(k)] >= 0 && size_t(mb.documents[size_t(k)]) < size,
             "dpo.precompute_reference: pair ", k, " of a micro-batch has no entry in the reference table (",
             size, " pairs); the table is made from the training data the loader steps through");
  return mb.documents[size_t(k)];
}

}  // namespace

ReferenceTable precompute_reference(TrainBackend& backend, const std::vector<Document>& pairs, int64_t token_budget,
                                    int rank, int world) {
  ReferenceTable t;
  t.chosen.assign(pairs.size(), 0.0);
  t.rejected.assign(pairs.size(), 0.0);
  std::vector<const Document*> batch;
  std::vector<int64_t> index;
  int64_t tokens = 0;
  auto score = [&] {
    if (batch.empty()) return;
    const MicroBatch mb = pack_documents(batch);
    const std::vector<float> losses = backend.reference_losses(mb);
    for (size_t k = 0; k < index.size(); ++k) {
      t.chosen[size_t(index[k])] = sequence_logp(mb, losses, int(2 * k)).first;
      t.rejected[size_t(index[k])] = sequence_logp(mb, losses, int(2 * k + 1)).first;
    }
    batch.clear();
    index.clear();
    tokens = 0;
  };
  for (size_t i = size_t(rank); i < pairs.size(); i += size_t(world)) {
    const int64_t n = int64_t(pairs[i].ids.size());
    if (tokens + n > token_budget) score();
    batch.push_back(&pairs[i]);
    index.push_back(int64_t(i));
    tokens += n;
  }
  score();
  allreduce_sum(t.chosen.data(), t.chosen.size());  // each entry is non-zero on one rank only: the sum is exact
  allreduce_sum(t.rejected.data(), t.rejected.size());
  return t;
}

std::pair<double, int64_t> sequence_logp(const MicroBatch& mb, const std::vector<float>& losses, int s) {
  double sum = 0;
  int64_t n = 0;
  for (int32_t t = mb.cu_seqlens[s]; t < mb.cu_seqlens[s + 1]; ++t)
    if (mb.targets[t] != kIgnoreIndex) {
      sum -= double(losses[t]);
      ++n;
    }
  return {sum, n};
}

std::vector<PairFigures> PreferenceObjective::add_pairs(const MicroBatch& mb, const std::vector<float>& policy_loss,
                                                        const std::vector<float>& reference_loss) {
  std::vector<PairFigures> out;
  for (int k = 0; k < pairs_in(mb); ++k) {
    PairLogps p;
    std::tie(p.policy_chosen, p.chosen_tokens) = sequence_logp(mb, policy_loss, 2 * k);
    std::tie(p.policy_rejected, p.rejected_tokens) = sequence_logp(mb, policy_loss, 2 * k + 1);
    LOOM_CHECK(p.chosen_tokens > 0 && p.rejected_tokens > 0, "preference pair ", k,
               " of a micro-batch has a completion without a target token (data preparation drops such pairs)");
    if (uses_reference() && !reference_loss.empty()) {
      p.reference_chosen = sequence_logp(mb, reference_loss, 2 * k).first;
      p.reference_rejected = sequence_logp(mb, reference_loss, 2 * k + 1).first;
    } else if (uses_reference()) {
      const int64_t doc = table_index(mb, k, table_.chosen.size());
      p.reference_chosen = table_.chosen[size_t(doc)];
      p.reference_rejected = table_.rejected[size_t(doc)];
    }
    const PairFigures f = pair_figures(p, o_);
    const bool mean_logps = o_.loss == PreferenceLoss::kOrpo;  // TRL's logps/*: ORPO's are per-token means
    sums_.pairs += 1;
    sums_.loss += f.loss;
    sums_.reward_chosen += f.reward_chosen;
    sums_.reward_rejected += f.reward_rejected;
    sums_.accurate += f.reward_chosen > f.reward_rejected;
    sums_.logp_chosen += mean_logps && p.chosen_tokens ? p.policy_chosen / double(p.chosen_tokens) : p.policy_chosen;
    sums_.logp_rejected +=
        mean_logps && p.rejected_tokens ? p.policy_rejected / double(p.rejected_tokens) : p.policy_rejected;
    sums_.log_odds += f.log_odds;
    sums_.log_sigmoid_odds += log_sigmoid(f.log_odds);
    sums_.chosen_loss -= p.policy_chosen;
    sums_.chosen_targets += double(p.chosen_tokens);
    out.push_back(f);
  }
  return out;
}

void PreferenceObjective::begin_step(const Step& step) {
  sums_ = {};
  if (o_.loss == PreferenceLoss::kOrpo) step_chosen_targets_ = allreduce_sum(chosen_targets(step.micro));
}

std::vector<float> PreferenceObjective::token_weights(const MicroBatch& mb, const Step& step,
                                                      const std::vector<float>& policy_loss,
                                                      const std::vector<float>& reference_loss) {
  const std::vector<PairFigures> figs = add_pairs(mb, policy_loss, reference_loss);
  const double n = double(std::max<int64_t>(step.global_docs, 1));  // pairs of the global batch
  const double nll = o_.loss == PreferenceLoss::kOrpo && step_chosen_targets_ > 0 ? 1 / step_chosen_targets_ : 0.0;
  std::vector<float> w(mb.targets.size(), 0.f);
  for (size_t k = 0; k < figs.size(); ++k)
    for (int side = 0; side < 2; ++side) {
      const int s = int(2 * k) + side;
      // ∂L/∂loss_t = −∂L/∂logp(sequence): loss_t = −log p_t.
      const double weight = -(side == 0 ? figs[k].dloss_dchosen : figs[k].dloss_drejected) / n + (side == 0 ? nll : 0.0);
      for (int32_t t = mb.cu_seqlens[s]; t < mb.cu_seqlens[s + 1]; ++t)
        if (mb.targets[t] != kIgnoreIndex) w[t] = float(weight);
    }
  return w;
}

ObjectiveFigures PreferenceObjective::figures(Sums a) const {
  const double n = std::max(a.pairs, 1.0);
  ObjectiveFigures f;
  f.loss = a.loss / n;
  f.metrics = {{"rewards/chosen", a.reward_chosen / n},
               {"rewards/rejected", a.reward_rejected / n},
               {"rewards/accuracies", a.accurate / n},
               {"rewards/margins", (a.reward_chosen - a.reward_rejected) / n},
               {"logps/chosen", a.logp_chosen / n},
               {"logps/rejected", a.logp_rejected / n}};
  if (o_.loss == PreferenceLoss::kOrpo) {
    const double nll = a.chosen_targets > 0 ? a.chosen_loss / a.chosen_targets : 0.0;
    f.loss += nll;
    f.metrics.push_back({"nll_loss", nll});
    f.metrics.push_back({"log_odds_ratio", a.log_sigmoid_odds / n});
    f.metrics.push_back({"log_odds_chosen", a.log_odds / n});
  }
  return f;
}

ObjectiveFigures PreferenceObjective::end_step(const Step&, double) { return figures(all_ranks(sums_)); }

ObjectiveFigures PreferenceObjective::evaluate(TrainBackend& backend, const std::vector<MicroBatch>& micro) {
  const Sums kept = sums_;
  sums_ = {};
  for (const MicroBatch& mb : micro) {
    const std::vector<float> ref = uses_reference() ? backend.reference_losses(mb) : std::vector<float>();
    add_pairs(mb, backend.token_losses(mb), ref);
  }
  const ObjectiveFigures f = figures(all_ranks(sums_));
  sums_ = kept;
  return f;
}

}  // namespace loom
