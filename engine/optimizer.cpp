#include "engine/optimizer.h"

#include <algorithm>
#include <cmath>

#include "ops/adamw.h"
#include "ops/error.h"
#include "ops/grad_norm.h"

namespace loom {

AdamW::AdamW(const TrainSection& t, int64_t n)
    : hp_(t), n_(n), on_device_(false), m_host_(size_t(n), 0.f), v_host_(size_t(n), 0.f) {}

AdamW::AdamW(const TrainSection& t, int64_t n, MemoryPlan& plan) : hp_(t), n_(n), on_device_(true) {
  plan.add("optimizer", "AdamW exp_avg", &m_, size_t(n), "(P)", "f32");
  plan.add("optimizer", "AdamW exp_avg_sq", &v_, size_t(n), "(P)", "f32");
  plan.add("optimizer", "grad norm", &norm_, 1, "(1)", "f32");
  plan.add("optimizer", "clip coefficient", &coef_, 1, "(1)", "f32");
  plan.add("optimizer", "grad-norm partials", &partials_, kGradNormPartials, "(1024)", "f32");
}

double AdamW::step(float* params, float* grads, float lr) {
  LOOM_CHECK(!on_device_, "AdamW: host step on device moments");
  const double norm = std::sqrt(sum_squares_ref(grads, n_));
  const float coef = clip_coefficient(norm, hp_.max_grad_norm);
  if (coef != 1.f) scale_ref(grads, n_, coef);
  AdamWParams a{lr, hp_.beta1, hp_.beta2, hp_.eps, hp_.weight_decay, ++step_};
  adamw_ref(params, m_host_.data(), v_host_.data(), grads, n_, a);
  std::fill(grads, grads + n_, 0.f);
  return norm;
}

void AdamW::step(float* params, float* grads, float lr, cudaStream_t stream) {
  LOOM_CHECK(on_device_, "AdamW: device step on host moments");
  grad_norm_clip(norm_, coef_, partials_, grads, n_, hp_.max_grad_norm, stream);
  AdamWParams a{lr, hp_.beta1, hp_.beta2, hp_.eps, hp_.weight_decay, ++step_};
  adamw_update(params, m_, v_, grads, coef_, n_, a, stream);
  if (n_ > 0) CUDA_CHECK(cudaMemsetAsync(grads, 0, size_t(n_) * 4, stream));
}

OptimizerState AdamW::state(cudaStream_t stream) const {
  OptimizerState s;
  s.step = step_;
  if (!on_device_) {
    s.m = m_host_;
    s.v = v_host_;
    return s;
  }
  s.m.resize(size_t(n_));
  s.v.resize(size_t(n_));
  CUDA_CHECK(cudaStreamSynchronize(stream));
  CUDA_CHECK(cudaMemcpy(s.m.data(), m_, size_t(n_) * 4, cudaMemcpyDeviceToHost));
  CUDA_CHECK(cudaMemcpy(s.v.data(), v_, size_t(n_) * 4, cudaMemcpyDeviceToHost));
  return s;
}

void AdamW::set_state(const OptimizerState& s) {
  LOOM_CHECK(int64_t(s.m.size()) == n_ && int64_t(s.v.size()) == n_, "optimizer state has ", s.m.size(), "/",
             s.v.size(), " moments, expected ", n_);
  step_ = s.step;
  if (!on_device_) {
    m_host_ = s.m;
    v_host_ = s.v;
    return;
  }
  CUDA_CHECK(cudaMemcpy(m_, s.m.data(), size_t(n_) * 4, cudaMemcpyHostToDevice));
  CUDA_CHECK(cudaMemcpy(v_, s.v.data(), size_t(n_) * 4, cudaMemcpyHostToDevice));
}

}  // namespace loom
