// Divergence checks of the step loop; the rules are in divergence.h.
#include "engine/divergence.h"

#include <algorithm>
#include <cmath>
#include <cstdio>

#include "ops/error.h"

namespace loom {
namespace {

double median(std::vector<double> v) {
  const size_t mid = v.size() / 2;
  std::nth_element(v.begin(), v.begin() + mid, v.end());
  if (v.size() % 2) return v[mid];
  return (v[mid] + *std::max_element(v.begin(), v.begin() + mid)) / 2;
}

std::string figure(double v) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.4g", v);
  return buf;
}

}  // namespace

DivergenceOptions divergence_options(const TrainSection& t) {
  return {t.divergence_check, t.divergence_window, t.divergence_factor, t.zero_grad_steps};
}

std::optional<Divergence> DivergenceDetector::check(double loss, double grad_norm, int64_t targets) {
  if (!std::isfinite(loss) || !std::isfinite(grad_norm))
    return Divergence{cat("the ", std::isfinite(loss) ? "gradient norm" : "loss", " is not finite (loss ",
                          figure(loss), ", grad norm ", figure(grad_norm), ")"),
                      "Lower train.lr, enable clipping (train.max_grad_norm), or check the data for empty or "
                      "corrupt documents."};
  if (!options_.enabled || targets == 0) return std::nullopt;
  zero_grad_run_ = grad_norm == 0 ? zero_grad_run_ + 1 : 0;
  if (zero_grad_run_ >= options_.zero_grad_steps)
    return Divergence{cat("the gradient norm has been exactly 0 for ", zero_grad_run_,
                          " steps in a row while the steps had target tokens (loss ", figure(loss),
                          "): the model saturated and no longer learns"),
                      "Lower train.lr or lora.alpha (or raise train.warmup_steps); train.zero_grad_steps sets "
                      "how many such steps stop a run, train.divergence_check=false none.",
                      zero_grad_run_ - 1};
  if (auto d = outside_band(loss)) return d;
  recent_.push_back(loss);
  if (recent_.size() > size_t(options_.window)) recent_.pop_front();
  return std::nullopt;
}

std::optional<Divergence> DivergenceDetector::outside_band(double loss) const {
  if (recent_.empty()) return std::nullopt;
  const double m = median({recent_.begin(), recent_.end()});
  if (loss <= std::max(options_.factor * m, m + kMinLossRise)) return std::nullopt;
  return Divergence{cat("the loss ", figure(loss), " left the band of its recent history: above ",
                        figure(options_.factor), " × the median ", figure(m), " of the last ", recent_.size(),
                        " steps, and more than ", figure(kMinLossRise), " above it"),
                    "Lower train.lr or raise train.warmup_steps, and keep clipping on (train.max_grad_norm); "
                    "if the data has rare batches this much harder, raise train.divergence_factor or "
                    "train.divergence_window (train.divergence_check=false turns the check off)."};
}

namespace {

// The first weight of slot s (named `module`) that is not finite or beyond ±kMaxAdapterWeight, or "".
std::string slot_problem(const std::vector<float>& params, const LoraSlot& s, const std::string& module) {
  struct Factor { const char* name; int64_t offset, count; };
  const Factor factors[] = {{"lora_A", s.a_offset, int64_t(s.r) * s.in},   // A (r, in)
                            {"lora_B", s.b_offset, int64_t(s.out) * s.r}};  // B (out, r)
  for (const Factor& f : factors)
    for (int64_t i = 0; i < f.count; ++i) {
      const float w = params[size_t(f.offset + i)];
      if (std::isfinite(w) && std::fabs(w) <= kMaxAdapterWeight) continue;
      return cat(module, ' ', f.name, '[', i, "] is ", figure(w),
                 std::isfinite(w) ? cat(" (beyond ±", figure(kMaxAdapterWeight), ")") : "");
    }
  return "";
}

}  // namespace

std::string adapter_weight_problem(const std::vector<float>& params, const LoraLayout& layout) {
  for (size_t l = 0; l < layout.layers.size(); ++l) {
    for (int t = 0; t < kNumTargets; ++t) {
      const LoraSlot& s = layout.layers[l][t];
      if (!s.enabled) continue;
      const std::string p = slot_problem(params, s, cat("model.layers.", l, '.', lora_module_path(LoraTarget(t))));
      if (!p.empty()) return p;
    }
    for (size_t e = 0; e < layout.experts[l].size(); ++e)
      for (int t = 0; t < kNumExpertTargets; ++t) {
        const LoraSlot& s = layout.experts[l][e][t];
        if (!s.enabled) continue;
        const std::string p =
            slot_problem(params, s, cat("model.layers.", l, ".mlp.experts.", e, '.', kExpertTargetNames[t]));
        if (!p.empty()) return p;
      }
  }
  return "";
}

}  // namespace loom
