#include "engine/optimizer.h"

#include <algorithm>
#include <cmath>

#include "ops/adamw.h"
#include "ops/grad_norm.h"

namespace loom {

double optimizer_step(std::vector<float>& params, std::vector<float>& grads, OptimizerState& st,
                      const TrainSection& t, float lr) {
  const int64_t n = int64_t(params.size());
  if (st.m.empty()) {
    st.m.assign(n, 0.f);
    st.v.assign(n, 0.f);
  }
  const double norm = std::sqrt(sum_squares_ref(grads.data(), n));
  const float coef = clip_coefficient(norm, t.max_grad_norm);
  if (coef != 1.f) scale_ref(grads.data(), n, coef);
  AdamWParams a{lr, t.beta1, t.beta2, t.eps, t.weight_decay, ++st.step};
  adamw_ref(params.data(), st.m.data(), st.v.data(), grads.data(), n, a);
  std::fill(grads.begin(), grads.end(), 0.f);
  return norm;
}

}  // namespace loom
