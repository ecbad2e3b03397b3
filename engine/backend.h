// What the trainer needs from a device: forward + backward over packed micro-batches, the
// optimizer update, and the LoRA parameters / optimizer state for checkpoints. The CPU reference
// backend lives in engine/cpu_backend.cpp; the CUDA backend beside it (issue: GPU training step).
#pragma once
#include <memory>
#include <string>
#include <vector>

#include "data/batch.h"
#include "engine/config.h"
#include "engine/optimizer.h"
#include "models/lora.h"
#include "models/model_config.h"
#include "models/weights.h"
#include "ops/cross_entropy.h"

namespace loom {

class TrainBackend {
 public:
  virtual ~TrainBackend() = default;
  virtual std::string describe() const = 0;
  // Accumulates the LoRA gradient of grad_scale · Σ_t loss_t over mb, and Σ_t loss_t into the step's
  // loss. Asynchronous on the GPU: nothing waits for the device.
  // last: mb is this rank's last micro-batch of the step (gradient all-reduce may start).
  virtual void forward_backward(const MicroBatch& mb, float grad_scale, uint64_t dropout_seed, bool last) = 0;
  struct StepResult {
    double loss_sum = 0;   // Σ loss_t over the step's micro-batches
    double grad_norm = 0;  // before clipping
  };
  // Ends the step: sums gradients and loss over the ranks (every rank calls it once per step, also
  // one that had no micro-batch), clips (train.max_grad_norm), AdamW at lr, zeroes the gradients
  // and the loss. The one host sync of a step. loss_sum and grad_norm are global.
  virtual StepResult end_step(float lr) = 0;
  virtual std::vector<float> lora_params() const = 0;
  virtual OptimizerState optimizer_state() const = 0;
  virtual void restore(const std::vector<float>& params, const OptimizerState& opt) = 0;
  virtual bool on_gpu() const { return false; }
  // Peak device memory in use so far, GiB (0 on the CPU).
  virtual double peak_memory_gib() const { return 0; }
};

// The GPU path (models/cuda_model.h): weights streamed from src, quantized per model.quant.
std::unique_ptr<TrainBackend> make_cuda_backend(const ModelConfig& cfg, const WeightSource& src,
                                                const LoraLayout& layout, const std::vector<float>& lora,
                                                const TrainConfig& tc);
std::unique_ptr<TrainBackend> make_cpu_backend(const ModelConfig& cfg, ModelWeights weights, const LoraLayout& layout,
                                               std::vector<float> lora, const TrainSection& train);

}  // namespace loom
