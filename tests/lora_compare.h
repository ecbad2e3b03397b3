// LoRA vectors compared tensor by tensor: every A and every B of every layer, and of every expert of
// a mixture-of-experts layer (an expert's tensors are as small as its token count), against its own scale.
// One max over the whole flat vector lets a wrong tensor hide behind a larger one (a 0.5x gradient
// on one o_proj stays under a tolerance set by the largest gradient anywhere).
#pragma once
#include <gtest/gtest.h>

#include <cmath>
#include <string>
#include <vector>

#include "models/lora.h"
#include "tests/test_util.h"

namespace loom::test {

struct TensorError {
  std::string name;  // "layers.1.o_proj.lora_B"
  double error;      // scaled_error of this tensor alone (+inf on NaN/Inf)
};

// scaled_error of every enabled LoRA tensor, in layout order (the layers' projections, then the
// experts'). Sizes must match the layout.
inline std::vector<TensorError> lora_tensor_errors(const LoraLayout& layout, const std::vector<float>& got,
                                                   const std::vector<float>& want) {
  std::vector<TensorError> out;
  if (int64_t(got.size()) != layout.total || int64_t(want.size()) != layout.total) {
    out.push_back({cat("sizes ", got.size(), " vs ", want.size(), " (layout ", layout.total, ")"), INFINITY});
    return out;
  }
  for (size_t l = 0; l < layout.layers.size(); ++l)
    for (int t = 0; t < kNumTargets; ++t) {
      const LoraSlot& s = layout.slot(int(l), LoraTarget(t));
      if (!s.enabled) continue;
      const std::string name = cat("layers.", l, ".", kLoraTargetNames[t], ".lora_");
      const size_t na = size_t(layout.R) * s.in, nb = size_t(s.out) * layout.R;
      out.push_back({name + "A", scaled_error(&got[s.a_offset], &want[s.a_offset], na)});
      out.push_back({name + "B", scaled_error(&got[s.b_offset], &want[s.b_offset], nb)});
    }
  for (size_t l = 0; l < layout.experts.size(); ++l)
    for (size_t e = 0; e < layout.experts[l].size(); ++e)
      for (int t = 0; t < kNumExpertTargets; ++t) {
        const LoraSlot& s = layout.experts[l][e][t];
        if (!s.enabled) continue;
        const std::string name = cat("layers.", l, ".experts.", e, ".", kExpertTargetNames[t], ".lora_");
        out.push_back({name + "A", scaled_error(&got[size_t(s.a_offset)], &want[size_t(s.a_offset)], size_t(s.r) * s.in)});
        out.push_back({name + "B", scaled_error(&got[size_t(s.b_offset)], &want[size_t(s.b_offset)], size_t(s.out) * s.r)});
      }
  return out;
}

// The largest per-tensor error (NaN kept) and the tensor it belongs to.
inline TensorError worst_tensor(const std::vector<TensorError>& errors) {
  TensorError worst{"(no tensor)", 0};
  for (const TensorError& e : errors) {
    if (std::isnan(worst.error)) break;  // a NaN stays the worst
    if (std::isnan(e.error) || e.error > worst.error) worst = e;
  }
  return worst;
}

// EXPECT every tensor's scaled error <= tol (each failure names the tensor); returns the worst.
inline TensorError expect_lora_tensors_close(const LoraLayout& layout, const std::vector<float>& got,
                                             const std::vector<float>& want, double tol, const std::string& what) {
  const std::vector<TensorError> errors = lora_tensor_errors(layout, got, want);
  for (const TensorError& e : errors)
    EXPECT_LE(e.error, tol) << what << ": " << e.name << " scaled error " << e.error << " > " << tol;
  return worst_tensor(errors);
}

}  // namespace loom::test
