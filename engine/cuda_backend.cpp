#include "engine/backend.h"
#include "dist/buckets.h"
#include "dist/dist.h"
#include "dist/nccl_comm.h"
#include "models/cuda_model.h"

namespace loom {
namespace {

class CudaBackend : public TrainBackend {
 public:
  CudaBackend(const ModelConfig& cfg, const WeightSource& src, const LoraLayout& layout,
              const std::vector<float>& lora, const CudaModelOptions& opt)
      : model_(cfg, src, layout, lora, opt) {
    const DistContext& ctx = dist_context();
    if (ctx.world == 1 || layout.total == 0) return;
    comm_ = std::make_unique<NcclComm>(ctx);
    bounds_ = lora_layer_bounds(layout);
    reducer_ = std::make_unique<GradAllReducer>(*comm_, model_.device_grads(),
                                                merge_layer_buckets(bounds_, kMinBucketFloats), model_.stream());
    model_.set_layer_grads_hook([this](int l) { reducer_->mark_ready(bounds_[l], bounds_[l + 1]); });
  }

  std::string describe() const override { return model_.describe(); }
  void forward_backward(const MicroBatch& mb, float grad_scale, uint64_t dropout_seed, bool last) override {
    model_.forward_backward(mb, grad_scale, dropout_seed, last);
  }
  StepResult end_step(float lr) override {
    if (reducer_) {
      reducer_->finish(model_.stream());
      comm_->allreduce_sum(model_.device_loss_sum(), 1, model_.stream(), "loss sum");
    }
    CudaModel::StepResult r = model_.end_step(lr);
    return {r.loss_sum, r.grad_norm};
  }
  std::vector<float> lora_params() const override { return model_.lora_params(); }
  OptimizerState optimizer_state() const override {
    OptimizerState st;
    model_.get_optimizer_state(st.m, st.v);
    st.step = model_.optimizer_step();
    return st;
  }
  void restore(const std::vector<float>& params, const OptimizerState& opt) override {
    model_.set_state(params, opt.m, opt.v, opt.step);
  }
  bool on_gpu() const override { return true; }
  double peak_memory_gib() const override { return model_.peak_memory_gib(); }

 private:
  // 1M floats (4 MiB) per bucket at least: NCCL's per-call cost is amortised, and a layer of an
  // 8B model's r=16 adapters (~1.4M floats) is one bucket.
  static constexpr size_t kMinBucketFloats = size_t(1) << 20;
  CudaModel model_;  // declared first: destroyed after the reducer and the communicator
  std::unique_ptr<NcclComm> comm_;
  std::vector<size_t> bounds_;
  std::unique_ptr<GradAllReducer> reducer_;
};

}  // namespace

std::unique_ptr<TrainBackend> make_cuda_backend(const ModelConfig& cfg, const WeightSource& src,
                                                const LoraLayout& layout, const std::vector<float>& lora,
                                                const TrainConfig& tc) {
  CudaModelOptions opt;
  opt.quant = tc.model.quant;
  opt.double_quant = tc.model.double_quant;
  opt.recompute = tc.train.recompute;
  opt.token_budget = tc.train.token_budget;
  opt.train = tc.train;
  return std::make_unique<CudaBackend>(cfg, src, layout, lora, opt);
}

}  // namespace loom
