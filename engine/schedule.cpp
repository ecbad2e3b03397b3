// Formulas and their transformers counterparts: see schedule.h.
#include "engine/schedule.h"

#include <algorithm>
#include <cmath>

#include "ops/error.h"

namespace loom {
namespace {

// The decay factor in [0, 1] at progress p in [0, 1] after warmup.
double decay(Schedule schedule, double p) {
  switch (schedule) {
    case Schedule::kCosine: return 0.5 * (1.0 + std::cos(M_PI * p));
    case Schedule::kLinear: return 1.0 - p;
    case Schedule::kConstant: return 1.0;
  }
  fail("train.schedule holds no schedule (", int(schedule), ")");
}

}  // namespace

float lr_at(const TrainSection& t, int step, int total_steps) {
  LOOM_CHECK(step >= 0, "lr_at: step must be >= 0 (found ", step, ")");
  if (step < t.warmup_steps) return float(double(t.lr) * step / std::max(1, t.warmup_steps));
  double p = double(step - t.warmup_steps) / std::max(1, total_steps - t.warmup_steps);
  double m = t.min_lr_ratio;
  return float(double(t.lr) * (m + (1.0 - m) * decay(t.schedule, std::min(1.0, p))));
}

}  // namespace loom
