#include <algorithm>
#include <cstdio>
#include <functional>
#include <optional>

#include "dist/buckets.h"
#include "dist/dist.h"
#include "dist/nccl_comm.h"
#include "engine/backend.h"
#include "engine/generation.h"
#include "models/cuda_model.h"
#include "ops/device.h"
#include "ops/error.h"

namespace loom {
namespace {

// train.mlp_tile 0 (auto): under recompute full, a token budget above this many tokens runs the MLP in
// tiles of it (every micro-batch of the run, a shorter one as one tile, through the row-invariant GEMMs).
// At and below it the path of short documents is untouched; at 16,384 rows the MLP's GEMMs
// are as large as the sft-alpaca workload's, and its four (rows, F) buffers hold 1.75 GiB on llama-3.1-8b
// (F 14,336) whatever the document's length (issue 14).
constexpr int64_t kAutoMlpTile = 16384;

CudaModelOptions model_options(const TrainConfig& tc, const DecodeShape& decode, int offload_device_layers,
                               bool step_graphs) {
  CudaModelOptions opt;
  opt.mode = ModelMode::kTrain;
  opt.decode_batch = decode.batch;
  opt.decode_context = decode.context;
  opt.quant = tc.model.quant;
  opt.double_quant = tc.model.double_quant;
  opt.recompute = tc.train.recompute;
  opt.offload = tc.train.offload;  // never kAuto here: make_cuda_backend resolves it, run_plan_fits sets it
  opt.offload_device_layers = offload_device_layers;
  opt.step_graphs = step_graphs;
  opt.token_budget = tc.train.token_budget;
  opt.mlp_tile = mlp_tile_of(tc.train);
  // Preference tuning from an adapter keeps a frozen copy of it as the reference (TRL's choice).
  opt.reference_adapter = tc.train.objective != ObjectiveKind::kSft && !tc.lora.init_from.empty();
  return opt;
}

class CudaBackend : public TrainBackend {
 public:
  CudaBackend(const ModelConfig& cfg, const WeightSource& src, const LoraLayout& layout,
              const std::vector<float>& lora, const TrainConfig& tc, const DecodeShape& decode,
              const CudaTuning& tuning)
      : model_(cfg, layout, model_options(tc, decode, tuning.offload_device_layers, tuning.step_graphs)),
        optimizer_(tc.train, layout.total, model_.plan()),
        cfg_(cfg),
        decode_(decode) {
    model_.load(src, lora);
    CUDA_CHECK(cudaMallocHost(&host_scalars_, 2 * sizeof(float)));  // before the step loop, once
    const DistContext& ctx = dist_context();
    if (ctx.world == 1 || layout.total == 0) return;
    comm_ = std::make_unique<NcclComm>(ctx);
    bounds_ = lora_layer_bounds(layout);
    reducer_ = std::make_unique<GradAllReducer>(*comm_, model_.adapters().grads(),
                                                merge_layer_buckets(bounds_, kMinBucketFloats), model_.stream());
    model_.set_layer_grads_hook([this](int l) { reducer_->mark_ready(bounds_[l], bounds_[l + 1]); });
  }
  ~CudaBackend() override {
    if (host_scalars_) cudaFreeHost(host_scalars_);
  }

  std::string describe() const override { return model_.describe(); }
  std::unique_ptr<DecodeModel> decode_model() override {
    if (decode_.batch == 0) return nullptr;
    return std::make_unique<CudaDecoder>(model_, cfg_, decode_.batch, decode_.context, true);
  }
  std::vector<float> forward(const MicroBatch& mb, uint64_t dropout_seed) override {
    model_.forward(mb, PassOptions{true, true, dropout_seed});
    return model_.token_losses();
  }
  void backward(const std::vector<float>& token_weight, bool last) override { model_.backward(token_weight, last); }
  void forward_backward(const MicroBatch& mb, const std::vector<float>& token_weight, uint64_t dropout_seed,
                        bool last) override {
    model_.forward_backward(mb, token_weight, dropout_seed, last);
  }
  double loss_sum(const std::vector<MicroBatch>& mbs, bool adapters) override {
    for (const MicroBatch& mb : mbs) model_.forward(mb, PassOptions{adapters, false, 0});
    return model_.take_forward_loss_sum();
  }
  std::vector<float> token_losses(const MicroBatch& mb) override { return forward_only(mb, {true, false, 0}); }
  std::vector<float> reference_losses(const MicroBatch& mb) override {
    return forward_only(mb, {has_reference_, false, 0, has_reference_});
  }
  void set_reference_adapter(const std::vector<float>& params) override {
    model_.adapters().set_reference(params);
    has_reference_ = true;
  }
  StepResult end_step(float lr) override {
    cudaStream_t s = model_.stream();
    if (reducer_) {
      reducer_->finish(s);
      comm_->allreduce_sum(model_.device_loss_sum(), 1, s, "loss sum");
    }
    DeviceAdapters& a = model_.adapters();
    optimizer_.step(a.master(), a.grads(), lr, s);
    a.refresh_bf16(s);
    CUDA_CHECK(cudaMemcpyAsync(host_scalars_, model_.device_loss_sum(), 4, cudaMemcpyDeviceToHost, s));
    CUDA_CHECK(cudaMemcpyAsync(host_scalars_ + 1, optimizer_.device_norm(), 4, cudaMemcpyDeviceToHost, s));
    model_.zero_loss_sum();
    CUDA_CHECK(cudaStreamSynchronize(s));
    model_.offload_wait_seconds();  // the step's copy waits summed now, while the device is idle
    size_t free_b = 0, total_b = 0;
    CUDA_CHECK(cudaMemGetInfo(&free_b, &total_b));
    peak_gib_ = std::max(peak_gib_, double(total_b - free_b) / double(size_t(1) << 30));
    return {double(host_scalars_[0]), double(host_scalars_[1])};
  }
  std::vector<float> lora_params() const override { return model_.lora_params(); }
  std::vector<float> lora_grads() const override { return model_.lora_grads(); }
  OptimizerState optimizer_state() const override { return optimizer_.state(model_.stream()); }
  void restore(const std::vector<float>& params, const OptimizerState& opt) override {
    model_.set_lora(params);
    optimizer_.set_state(opt);
  }
  bool on_gpu() const override { return true; }
  // Largest device memory in use (the whole process: context, arena, workspaces) seen at step ends.
  double peak_memory_gib() const override { return peak_gib_; }
  double offload_wait_seconds() override { return model_.offload_wait_seconds(); }

 private:
  // 1M floats (4 MiB) per bucket at least: NCCL's per-call cost is amortised, and a layer of an
  // 8B model's r=16 adapters (~1.4M floats) is one bucket.
  static constexpr size_t kMinBucketFloats = size_t(1) << 20;
  CudaModel model_;  // declared first: destroyed after the reducer and the communicator
  AdamW optimizer_;
  ModelConfig cfg_;
  DecodeShape decode_;  // train.sample_every's generation (batch 0: none)
  std::unique_ptr<NcclComm> comm_;
  std::vector<size_t> bounds_;
  std::unique_ptr<GradAllReducer> reducer_;
  float* host_scalars_ = nullptr;  // pinned: loss sum, grad norm
  bool has_reference_ = false;     // a frozen reference adapter is set (else the reference is the base)

  std::vector<float> forward_only(const MicroBatch& mb, const PassOptions& pass) {
    model_.forward(mb, pass);
    model_.take_forward_loss_sum();  // this pass's sum is not an evaluation's
    return model_.token_losses();
  }
  double peak_gib_ = 0;
};

}  // namespace

int64_t mlp_tile_of(const TrainSection& t) {
  if (t.mlp_tile > 0) return t.mlp_tile;
  return t.recompute == Recompute::kFull && t.token_budget > kAutoMlpTile ? kAutoMlpTile : 0;
}

Offload choose_offload(Offload requested, Recompute recompute, const std::function<bool(Offload)>& plan_fits) {
  if (requested != Offload::kAuto) return requested;
  if (recompute != Recompute::kFull || plan_fits(Offload::kNone)) return Offload::kNone;
  return plan_fits(Offload::kActivations) ? Offload::kActivations : Offload::kNone;
}

int most_device_layers(int max_layers, const std::function<bool(int)>& device_fits) {
  if (max_layers <= 0 || !device_fits(0)) return 0;
  int fits = 0, fails = max_layers + 1;  // device_fits(fits) holds; every D >= fails does not
  while (fails - fits > 1) {
    const int mid = fits + (fails - fits) / 2;
    (device_fits(mid) ? fits : fails) = mid;
  }
  return fits;
}

CudaPlan plan_cuda_training(const ModelConfig& cfg, const LoraLayout& layout, const TrainConfig& tc,
                            const DecodeShape& decode, Offload offload, int offload_device_layers) {
  const auto plan = [&](int device_layers) {
    CudaModelOptions opt = model_options(tc, decode, device_layers, false);
    opt.offload = offload;
    opt.print_plan = false;
    CudaModel model(cfg, layout, opt);
    AdamW optimizer(tc.train, layout.total, model.plan());
    return CudaPlan{device_layers, model.planned_bytes(), model.planned_host_bytes(), model.plan_fits_device(),
                    model.plan_fits_host()};
  };
  int kept = offload == Offload::kActivations ? offload_device_layers : 0;
  if (kept < 0) kept = most_device_layers(std::max(cfg.L - 2, 0), [&](int d) { return plan(d).fits_device; });
  return plan(kept);  // the last two layers' inputs stay on the device anyway: at most L - 2 kept
}

std::unique_ptr<TrainBackend> make_cuda_backend(const ModelConfig& cfg, const WeightSource& src,
                                                const LoraLayout& layout, const std::vector<float>& lora,
                                                const TrainConfig& tc, const DecodeShape& decode,
                                                const CudaTuning& tuning) {
  // With offload, the layers kept on the device are planned once; auto judges the offload plan with them,
  // so the host holds less.
  std::optional<CudaPlan> offload_plan;
  const auto activations_plan = [&]() -> const CudaPlan& {
    if (!offload_plan)
      offload_plan = plan_cuda_training(cfg, layout, tc, decode, Offload::kActivations, tuning.offload_device_layers);
    return *offload_plan;
  };
  TrainConfig resolved = tc;
  resolved.train.offload = choose_offload(tc.train.offload, tc.train.recompute, [&](Offload o) {
    return cuda_available() &&
           (o == Offload::kActivations ? activations_plan() : plan_cuda_training(cfg, layout, tc, decode, o)).fits();
  });
  if (tc.train.offload == Offload::kAuto && resolved.train.offload == Offload::kActivations)
    std::fprintf(stderr, "train.offload auto: the layer inputs go to pinned host memory (the plan with them on the "
                         "GPU does not fit its free memory)\n");
  CudaTuning chosen = tuning;
  chosen.offload_device_layers = resolved.train.offload == Offload::kActivations && cuda_available()
                                     ? activations_plan().offload_device_layers
                                     : 0;
  return std::make_unique<CudaBackend>(cfg, src, layout, lora, resolved, decode, chosen);
}

}  // namespace loom
