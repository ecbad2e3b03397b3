// The optimizer of the LoRA adapters, one for both paths: global-norm gradient clipping then AdamW,
// with the semantics of torch clip_grad_norm_ + torch.optim.AdamW (ops/grad_norm.h, ops/adamw.h):
//   norm = ‖g‖₂ over all LoRA grads; g *= min(1, max_norm / (norm + 1e-6)); AdamW(lr); g = 0.
// The moments live where the parameters do: host vectors on the CPU reference path, buffers of the
// run's MemoryPlan on the GPU (where clipping is folded into the update and nothing syncs).
#pragma once
#include <cuda_runtime.h>

#include <cstdint>
#include <vector>

#include "engine/config.h"
#include "ops/memory_plan.h"

namespace loom {

struct OptimizerState {
  std::vector<float> m, v;  // AdamW moments, the layout of the params
  int step = 0;             // updates done so far
};

class AdamW {
 public:
  // Host moments (the CPU path).
  AdamW(const TrainSection& t, int64_t n);
  // Device moments and scratch, listed in plan (group "optimizer"); usable once plan is allocated.
  AdamW(const TrainSection& t, int64_t n, MemoryPlan& plan);

  // Host arrays of n floats: clip + update in place, grads zeroed. Returns the norm before clipping.
  double step(float* params, float* grads, float lr);
  // Device arrays: the same, asynchronous on stream; the norm stays on the device (device_norm()).
  void step(float* params, float* grads, float lr, cudaStream_t stream);
  const float* device_norm() const { return norm_; }

  OptimizerState state(cudaStream_t stream = nullptr) const;  // device: waits for stream
  void set_state(const OptimizerState& s);

 private:
  TrainSection hp_;
  int64_t n_;
  bool on_device_;
  int step_ = 0;
  std::vector<float> m_host_, v_host_;
  float *m_ = nullptr, *v_ = nullptr, *norm_ = nullptr, *coef_ = nullptr, *partials_ = nullptr;
};

}  // namespace loom
