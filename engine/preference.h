// Preference tuning objectives (TRL's DPOTrainer / ORPOTrainer semantics). Each document of a
// preference run is a pair: two sequences back to back (Document::segments = {chosen, rejected}),
// the prompt repeated in each and masked out, so a micro-batch holds its pairs whole and the
// sequences of pair k are sequences 2k (chosen) and 2k+1 (rejected) of the micro-batch.
//   logp(seq)   = Σ over the sequence's target tokens of log p(token)   (= −Σ loss_t, as TRL sums)
//   DPO, z      = β·[(π_c − π_r) − (ρ_c − ρ_r)]   π: policy (adapters on), ρ: reference (adapters off)
//     sigmoid   ℓ = −(1−ε)·log σ(z) − ε·log σ(−z)                      (ε = dpo.label_smoothing)
//     robust    ℓ = [−(1−ε)·log σ(z) + ε·log σ(−z)] / (1 − 2ε)
//     hinge     ℓ = max(0, 1 − z)
//     ipo       ℓ = (h − 1/(2β))²,  h = (π̄_c − π̄_r) − (ρ̄_c − ρ̄_r) with π̄ the mean log-prob per
//               target token (TRL averages over the completion for IPO's loss; its rewards and
//               logps/* metrics stay on the sums)
//     rewards   r_c = β(π_c − ρ_c), r_r = β(π_r − ρ_r); accuracy = [r_c > r_r]; margin = r_c − r_r
//   ORPO (no reference), with the mean log-probs π̄ and λ = orpo.lambda:
//     log_odds  = (π̄_c − π̄_r) − (log(1 − e^{π̄_c}) − log(1 − e^{π̄_r}))
//     ℓ = −λ·log σ(log_odds) per pair, plus, once per step, the NLL of the chosen completions:
//         Σ chosen target losses / Σ chosen targets of the global batch (a token mean over the
//         batch, not a mean of per-pair means, as TRL; TRL 1.16 also counts the chosen prompt's
//         tokens in it, loom the completion's alone, as the ORPO paper's L_SFT on y_w)
//     rewards   r_c = λ·π̄_c, r_r = λ·π̄_r (TRL's "rewards/chosen" for ORPO)
// The step's loss is the mean of ℓ over the pairs of the global batch (all micro-batches, all
// ranks), + ORPO's NLL; the backward's token weight of a target token in sequence s is
// ∂L/∂loss_t = −(1/N)·∂ℓ/∂logp(s) (+ 1/(chosen targets) for ORPO's chosen tokens), so the models
// stay objective-free.
#pragma once
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "engine/objective.h"

namespace loom {

enum class PreferenceLoss { kSigmoid, kIpo, kRobust, kHinge, kOrpo };

struct PreferenceOptions {
  PreferenceLoss loss = PreferenceLoss::kSigmoid;
  double beta = 0.1;             // dpo.beta
  double label_smoothing = 0.0;  // dpo.label_smoothing (sigmoid, robust)
  double orpo_lambda = 0.1;      // orpo.lambda
};

// One pair's summed log-probs and target counts: policy (adapters on) and reference (adapters off;
// unused by ORPO).
struct PairLogps {
  double policy_chosen = 0, policy_rejected = 0;
  double reference_chosen = 0, reference_rejected = 0;
  int64_t chosen_tokens = 0, rejected_tokens = 0;
};

// What a pair gives: its loss, the derivatives of the loss with respect to the summed policy
// log-probs of its two sequences, and TRL's metrics.
struct PairFigures {
  double loss = 0;
  double dloss_dchosen = 0, dloss_drejected = 0;  // ∂ℓ/∂π_c, ∂ℓ/∂π_r (summed log-probs)
  double reward_chosen = 0, reward_rejected = 0;
  double log_odds = 0;  // ORPO's log odds ratio (0 for DPO)
};

PairFigures pair_figures(const PairLogps& p, const PreferenceOptions& o);

// Σ log p over the target tokens of sequence s of mb (losses: its per-token losses), and their count.
std::pair<double, int64_t> sequence_logp(const MicroBatch& mb, const std::vector<float>& losses, int s);

// dpo.precompute_reference: the reference model's summed log-probs of both sequences of every pair of
// a data set, computed once before training and looked up by MicroBatch::documents in each step
// (TRL's precompute_ref_log_probs). The same per-token losses and sums as the step's reference
// pass, so training is the same with and without it.
struct ReferenceTable {
  std::vector<double> chosen, rejected;  // by document index
};

// Rank r scores the pairs i with i % world == r (packed in order, at most token_budget tokens per
// micro-batch, a pair never split); the table is then summed over the ranks, so every rank holds all
// of it. Collective: every rank calls it.
ReferenceTable precompute_reference(TrainBackend& backend, const std::vector<Document>& pairs, int64_t token_budget,
                                    int rank, int world);

// The objective of train.objective = dpo | orpo (engine/objective.h): every document a pair.
class PreferenceObjective : public Objective {
 public:
  explicit PreferenceObjective(const PreferenceOptions& o) : o_(o) {}
  std::string name() const override { return o_.loss == PreferenceLoss::kOrpo ? "orpo" : "dpo"; }
  bool needs_forward_losses() const override { return true; }
  bool needs_reference() const override { return uses_reference() && table_.chosen.empty(); }
  // From now on the steps read the reference log-probs from `table` (indexed as the loader's data
  // set) instead of a reference pass; evaluation still runs the reference model on its own data.
  void use_reference_table(ReferenceTable table) { table_ = std::move(table); }
  void begin_step(const Step& step) override;
  std::vector<float> token_weights(const MicroBatch& mb, const Step& step, const std::vector<float>& policy_loss,
                                   const std::vector<float>& reference_loss) override;
  ObjectiveFigures end_step(const Step& step, double target_loss_sum) override;
  ObjectiveFigures evaluate(TrainBackend& backend, const std::vector<MicroBatch>& micro) override;

  // Sums over pairs behind the step's (or an evaluation's) figures.
  struct Sums {
    double pairs = 0, loss = 0, reward_chosen = 0, reward_rejected = 0, accurate = 0, logp_chosen = 0,
           logp_rejected = 0, log_odds = 0, log_sigmoid_odds = 0, chosen_loss = 0, chosen_targets = 0;
  };

 private:
  bool uses_reference() const { return o_.loss != PreferenceLoss::kOrpo; }
  // The pairs of mb (sequences 2k, 2k+1) with their figures, added to sums_. The reference log-probs
  // come from reference_loss, or from table_ when it is empty and the loss uses a reference.
  std::vector<PairFigures> add_pairs(const MicroBatch& mb, const std::vector<float>& policy_loss,
                                     const std::vector<float>& reference_loss);
  ObjectiveFigures figures(Sums all) const;  // after the all-reduce

  PreferenceOptions o_;
  ReferenceTable table_;
  Sums sums_;
  double step_chosen_targets_ = 0;  // ORPO: chosen targets of the global batch, the NLL's divisor
};

}  // namespace loom
