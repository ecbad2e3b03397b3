#include "dist/dist.h"
#include "engine/backend.h"
#include "models/reference_model.h"

namespace loom {
namespace {

class CpuBackend : public TrainBackend {
 public:
  CpuBackend(const ModelConfig& cfg, ModelWeights w, const LoraLayout& layout, std::vector<float> lora,
             const TrainSection& train)
      : model_(cfg, std::move(w), layout),
        params_(std::move(lora)),
        grads_(params_.size(), 0.f),
        optimizer_(train, int64_t(params_.size())) {}

  std::string describe() const override { return "cpu (fp32 reference path)"; }

  std::vector<float> forward(const MicroBatch& mb, uint64_t dropout_seed) override {
    std::vector<float> losses(mb.T());
    loss_sum_ += model_.forward(mb, params_.data(), {true, true, dropout_seed}, losses.data(), nullptr, &kept_).loss_sum;
    return losses;
  }
  void backward(const std::vector<float>& token_weight, bool) override {
    model_.backward(kept_, token_weight.data(), grads_.data());
  }
  void forward_backward(const MicroBatch& mb, const std::vector<float>& token_weight, uint64_t dropout_seed,
                        bool) override {
    loss_sum_ += model_.forward_backward(mb, params_.data(), grads_.data(), token_weight.data(),
                                         {true, true, dropout_seed}).loss_sum;
  }
  double loss_sum(const std::vector<MicroBatch>& mbs, bool adapters) override {
    double sum = 0;
    for (const MicroBatch& mb : mbs) sum += model_.forward(mb, params_.data(), {adapters, false, 0}).loss_sum;
    return sum;
  }
  std::vector<float> token_losses(const MicroBatch& mb) override {
    std::vector<float> losses(mb.T());
    model_.forward(mb, params_.data(), {true, false, 0}, losses.data());
    return losses;
  }
  std::vector<float> reference_losses(const MicroBatch& mb) override {
    std::vector<float> losses(mb.T());
    model_.forward(mb, reference_.data(), {!reference_.empty(), false, 0}, losses.data());
    return losses;
  }
  void set_reference_adapter(const std::vector<float>& params) override { reference_ = params; }
  std::unique_ptr<DecodeModel> decode_model() override {
    return std::make_unique<ReferenceDecoder>(model_, params_.data(), true);
  }
  StepResult end_step(float lr) override {
    allreduce_sum(grads_.data(), grads_.size());  // identity in a single process
    const double loss = allreduce_sum(loss_sum_);
    StepResult r{loss, optimizer_.step(params_.data(), grads_.data(), lr)};
    loss_sum_ = 0;
    return r;
  }
  std::vector<float> lora_params() const override { return params_; }
  std::vector<float> lora_grads() const override { return grads_; }
  OptimizerState optimizer_state() const override { return optimizer_.state(); }
  void restore(const std::vector<float>& params, const OptimizerState& opt) override {
    params_ = params;
    optimizer_.set_state(opt);
  }

 private:
  ReferenceModel model_;
  std::vector<float> params_, grads_;
  AdamW optimizer_;
  ReferencePass kept_;
  std::vector<float> reference_;  // the frozen reference adapter; empty: the base
  double loss_sum_ = 0;
};

}  // namespace

std::unique_ptr<TrainBackend> make_cpu_backend(const ModelConfig& cfg, ModelWeights weights, const LoraLayout& layout,
                                               std::vector<float> lora, const TrainSection& train) {
  return std::make_unique<CpuBackend>(cfg, std::move(weights), layout, std::move(lora), train);
}

}  // namespace loom
