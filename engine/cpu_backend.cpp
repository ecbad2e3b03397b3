#include "engine/backend.h"
#include "dist/dist.h"
#include "models/reference_model.h"

namespace loom {
namespace {

class CpuBackend : public TrainBackend {
 public:
  CpuBackend(const ModelConfig& cfg, ModelWeights w, const LoraLayout& layout, std::vector<float> lora,
             const TrainSection& train)
      : model_(cfg, std::move(w), layout), params_(std::move(lora)), grads_(params_.size(), 0.f), train_(train) {}

  std::string describe() const override { return "cpu (fp32 reference path)"; }

  void forward_backward(const MicroBatch& mb, float grad_scale, uint64_t dropout_seed, bool) override {
    loss_sum_ += model_.run(mb, params_.data(), grads_.data(), grad_scale, nullptr, nullptr, dropout_seed).loss_sum;
  }
  StepResult end_step(float lr) override {
    allreduce_sum(grads_.data(), grads_.size());  // identity in a single process
    const double loss = allreduce_sum(loss_sum_);
    StepResult r{loss, optimizer_step(params_, grads_, opt_, train_, lr)};
    loss_sum_ = 0;
    return r;
  }
  std::vector<float> lora_params() const override { return params_; }
  OptimizerState optimizer_state() const override { return opt_; }
  void restore(const std::vector<float>& params, const OptimizerState& opt) override {
    params_ = params;
    opt_ = opt;
  }

 private:
  ReferenceModel model_;
  std::vector<float> params_, grads_;
  OptimizerState opt_;
  TrainSection train_;
  double loss_sum_ = 0;
};

}  // namespace

std::unique_ptr<TrainBackend> make_cpu_backend(const ModelConfig& cfg, ModelWeights weights, const LoraLayout& layout,
                                               std::vector<float> lora, const TrainSection& train) {
  return std::make_unique<CpuBackend>(cfg, std::move(weights), layout, std::move(lora), train);
}

}  // namespace loom
