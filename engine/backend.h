// What the trainer needs from a device: training forwards and backwards over packed micro-batches
// (the per-token weights of the backward come from the objective, engine/objective.h), forward-only
// passes for evaluation, the optimizer update, and the LoRA parameters / optimizer state for
// checkpoints. The CPU reference backend is engine/cpu_backend.cpp, the CUDA one engine/cuda_backend.cpp.
#pragma once
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "data/batch.h"
#include "engine/config.h"
#include "engine/generation.h"
#include "engine/optimizer.h"
#include "models/lora.h"
#include "models/model_config.h"
#include "models/weights.h"

namespace loom {

class TrainBackend {
 public:
  virtual ~TrainBackend() = default;
  virtual std::string describe() const = 0;
  // A training forward of mb (adapters on, LoRA dropout from dropout_seed) that keeps what backward
  // needs; adds Σ target losses to the step's loss. Returns the per-token losses (T) (waits).
  virtual std::vector<float> forward(const MicroBatch& mb, uint64_t dropout_seed) = 0;
  // Backward of the last forward: LoRA grads += d(Σ_t w_t · loss_t), w = token_weight (T).
  // last: mb is this rank's last micro-batch of the step (gradient all-reduce may start).
  virtual void backward(const std::vector<float>& token_weight, bool last) = 0;
  // forward + backward when the weights are known before the forward. Asynchronous on the GPU.
  virtual void forward_backward(const MicroBatch& mb, const std::vector<float>& token_weight, uint64_t dropout_seed,
                                bool last) = 0;
  // Forward only (evaluation): Σ target losses over mbs on this rank, adapters on or off (waits).
  virtual double loss_sum(const std::vector<MicroBatch>& mbs, bool adapters) = 0;
  // Forward only: the per-token losses (T) of mb under the trained adapters (waits). Overwrites what
  // a training forward kept: call it before the step's training forward of mb, never between it
  // and its backward. The same holds for reference_losses.
  virtual std::vector<float> token_losses(const MicroBatch& mb) = 0;
  // Forward only, the reference model of preference tuning: the base with the adapters off, or the
  // frozen adapter of set_reference_adapter (a run started from an adapter, as TRL takes a frozen
  // copy of it for reference).
  virtual std::vector<float> reference_losses(const MicroBatch& mb) = 0;
  virtual void set_reference_adapter(const std::vector<float>& params) = 0;
  struct StepResult {
    double loss_sum = 0;   // Σ target losses of the step's training forwards
    double grad_norm = 0;  // before clipping
  };
  // Ends the step: sums gradients and loss over the ranks (every rank calls it once per step, also
  // one that had no micro-batch), clips (train.max_grad_norm), AdamW at lr, zeroes the gradients
  // and the loss. The one host sync of a step. loss_sum and grad_norm are global.
  virtual StepResult end_step(float lr) = 0;
  virtual std::vector<float> lora_params() const = 0;
  virtual std::vector<float> lora_grads() const = 0;  // as accumulated so far in this step (tests)
  virtual OptimizerState optimizer_state() const = 0;
  virtual void restore(const std::vector<float>& params, const OptimizerState& opt) = 0;
  // Generation with the adapters as they stand (train.sample_every), valid until the next step. The
  // GPU decodes within its training plan, sized by the DecodeShape it was built with (none: null).
  virtual std::unique_ptr<DecodeModel> decode_model() = 0;
  virtual bool on_gpu() const { return false; }
  // Peak device memory in use so far, GiB (0 on the CPU).
  virtual double peak_memory_gib() const { return 0; }
  // Seconds the GPU's compute has waited for train.offload's copies so far (waits; 0 without offload).
  virtual double offload_wait_seconds() { return 0; }
};

// The generation a training run does besides training (train.sample_every): batches of at most
// `batch` sequences of at most `context` tokens, whose prompts hold at most `prefill_tokens`
// together. batch 0: none.
struct DecodeShape {
  int batch = 0;
  int64_t context = 0;
  int64_t prefill_tokens = 0;
};

// Choices of the GPU path that no config key carries (benchmarks and tests set them).
struct CudaTuning {
  // With train.offload: activations, the first this many layers keep their inputs on the device; -1:
  // as many as the device's free memory holds beside the plan (most_device_layers).
  int offload_device_layers = -1;
  bool step_graphs = false;  // CudaModelOptions::step_graphs (not yet measured: off by default)
};

// The GPU path (models/cuda_model.h): weights streamed from src, quantized per model.quant; with a
// decode shape, the memory plan holds its KV cache too.
std::unique_ptr<TrainBackend> make_cuda_backend(const ModelConfig& cfg, const WeightSource& src,
                                                const LoraLayout& layout, const std::vector<float>& lora,
                                                const TrainConfig& tc, const DecodeShape& decode = {},
                                                const CudaTuning& tuning = {});
// train.offload as the GPU path applies it: auto keeps the layer inputs on the device when the plan
// fits there (and always without recompute full), else moves them to host memory when that fits
// (plan_fits(offload) measures a plan; nothing is allocated); none and activations stay as asked.
Offload choose_offload(Offload requested, Recompute recompute, const std::function<bool(Offload)>& plan_fits);
// The memory plan of a GPU training run with `offload` (none or activations), nothing allocated: with
// activations, the first offload_device_layers layers' inputs kept on the device (-1: as many as fit,
// most_device_layers); whether it fits the device's and the host's free memory now.
struct CudaPlan {
  int offload_device_layers = 0;
  size_t device_bytes = 0, host_bytes = 0;  // the plan with the optimizer's state; pinned host memory
  bool fits_device = false, fits_host = false;
  bool fits() const { return fits_device && fits_host; }
};
CudaPlan plan_cuda_training(const ModelConfig& cfg, const LoraLayout& layout, const TrainConfig& tc,
                            const DecodeShape& decode, Offload offload, int offload_device_layers = -1);
// How many layers keep their inputs on the device under train.offload: activations: the largest D in
// [0, max_layers] with device_fits(D) (true up to some D, false above: each layer kept adds its slot),
// by bisection; 0 when even D = 0 does not fit (the plan's check then says so). Every layer kept is
// one copy to the host and back fewer a step and T·C·2 bytes of pinned host memory fewer.
int most_device_layers(int max_layers, const std::function<bool(int)>& device_fits);
// The MLP's sequence tile of a GPU run (CudaModelOptions::mlp_tile): train.mlp_tile, or for 0 (auto)
// tiles of 16,384 rows under recompute full when the token budget is larger, else none (0).
int64_t mlp_tile_of(const TrainSection& t);
std::unique_ptr<TrainBackend> make_cpu_backend(const ModelConfig& cfg, ModelWeights weights, const LoraLayout& layout,
                                               std::vector<float> lora, const TrainSection& train);

}  // namespace loom
