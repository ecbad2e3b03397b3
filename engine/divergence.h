// Divergence: stopping a run whose loss or gradient shows it no longer trains sanely, before it
// writes a checkpoint or an adapter from the damage. Judged once per optimizer step from the step's
// globally reduced loss and gradient norm, which every rank holds bit for bit, so every rank stops at
// the same step (none is left waiting in a collective).
//
// A step diverges when
//   1. its loss or gradient norm is not finite (always checked);
//   2. the gradient norm has been exactly 0 for `zero_grad_steps` steps in a row that had target
//      tokens: the model saturated and stopped learning (demo with train.lr=1e6: grad norm 0.0 from
//      step 4, the loss frozen at ln V = 6.2383, exit 0 with adapter weights of 3.7e6 before this);
//   3. its loss leaves the band of its recent history: above both `factor` × the median and the
//      median + kMinLossRise of the last `window` steps that had targets. The median ignores the
//      odd hard batch; the additive floor keeps a nearly fitted run (median 0.05) from stopping on
//      a batch at 0.2.
// No bound at ln V (worse than guessing uniformly): the saturated run of 2 sits exactly at ln V, and
// random-weight presets start above it (tiny: 6.79 against ln 512 = 6.24).
// 2 and 3 can be switched off (train.divergence_check=false). Steps without target tokens (loss 0,
// gradient 0 by definition) are neither judged nor remembered. The history starts empty in every
// process, so a resumed run judges its first steps against what it has seen since the resume.
//
// Also here: the sanity check of the adapter weights a checkpoint would save.
#pragma once
#include <cstdint>
#include <deque>
#include <optional>
#include <string>
#include <vector>

#include "engine/config.h"
#include "models/lora.h"

namespace loom {

// The smallest rise over the median that counts as leaving the band (nats): e^1 ≈ 2.7× less
// probability on the targets. Over the demo and ten variations of it (README, "What a run does")
// the largest rise of a step over the median of its last 50 was 0.54 nats (global batch 8), and no
// step reached more than 0.45 of the band's edge.
constexpr double kMinLossRise = 1.0;

struct DivergenceOptions {
  bool enabled = true;      // checks 2 and 3; 1 is always on
  int window = 50;          // steps of loss history behind the median
  double factor = 3.0;      // the band: loss <= max(factor × median, median + kMinLossRise)
  int zero_grad_steps = 3;  // steps in a row with grad norm exactly 0 that stop the run
};
DivergenceOptions divergence_options(const TrainSection& train);

struct Divergence {
  std::string what;    // the figure: "the loss 21.3 left the band of its recent history: above 3 × ..."
  std::string advice;  // what to change, naming config keys
  int began_steps_ago = 0;  // the first bad step, counted back from the one judged (a dead gradient
                            // counts from its first zero); the weights of the step before it made it
};

class DivergenceDetector {
 public:
  explicit DivergenceDetector(DivergenceOptions options) : options_(options) {}
  // Judges one optimizer step (loss = mean over its `targets` target tokens); remembers it when sane.
  std::optional<Divergence> check(double loss, double grad_norm, int64_t targets);

 private:
  std::optional<Divergence> outside_band(double loss) const;

  DivergenceOptions options_;
  std::deque<double> recent_;  // losses of the last `window` steps that had targets, oldest first
  int zero_grad_run_ = 0;      // steps in a row (with targets) whose grad norm was exactly 0
};

// Adapter weights no sane run produces: AdamW moves a weight by at most about 3·lr per step
// ((1-β1)/√(1-β2) · lr, Kingma & Ba §2.1), so |w| = 1e4 takes lr × steps >= 3e3 — the demo has
// 200 × 3e-3 = 0.6; the lr=1e6 run reached 3.7e6.
constexpr float kMaxAdapterWeight = 1e4f;
// "" when every weight is finite and within ±kMaxAdapterWeight; else the first that is not, named
// by layer, module and factor: "model.layers.2.self_attn.q_proj lora_A[17] is 3.7e+06".
std::string adapter_weight_problem(const std::vector<float>& params, const LoraLayout& layout);

}  // namespace loom
