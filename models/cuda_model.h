// The decoder on the GPU: the same model as models/reference_model.h, in bf16 storage with fp32
// accumulation, on the kernels of ops/*.cu and cuBLASLt. Frozen projections are NF4 (QLoRA,
// dequantized to a bf16 scratch per GEMM) or bf16; LoRA adapters keep fp32 master weights, fp32
// gradients and AdamW state, and a bf16 copy for the GEMMs.
// Every buffer is listed in one MemoryPlan (printed, checked against free memory before any
// weight is loaded) and carved from one allocation; the step allocates nothing and syncs the host
// once (end_step). Recompute policy (train.recompute):
//   none       every activation of every layer is kept for backward
//   selective  the norm outputs and the SwiGLU product are recomputed (elementwise) in backward
//   full       only each layer's input is kept; backward reruns the layer's forward first
#pragma once
#include <cuda_runtime.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "data/batch.h"
#include "engine/config.h"
#include "models/lora.h"
#include "models/model_config.h"
#include "models/weights.h"

namespace loom {

struct CudaModelOptions {
  std::string quant = "nf4";   // nf4 | bf16
  bool double_quant = true;
  std::string recompute = "selective";
  int64_t token_budget = 16384;  // the largest micro-batch (T)
  TrainSection train;            // optimizer settings
  bool print_plan = true;
};

class CudaModel {
 public:
  // Plans and allocates every buffer, then uploads the weights from src (quantizing to NF4 when asked)
  // and the initial LoRA weights.
  CudaModel(const ModelConfig& cfg, const WeightSource& src, const LoraLayout& lora, const std::vector<float>& lora_init,
            const CudaModelOptions& opt);
  ~CudaModel();
  CudaModel(const CudaModel&) = delete;
  CudaModel& operator=(const CudaModel&) = delete;

  // Forward + backward of one packed micro-batch (T <= token_budget): LoRA grads += d(grad_scale·Σ loss_t),
  // and Σ loss_t added to the step's device loss. Asynchronous. In the step's last micro-batch
  // (last = true) the layer hook runs as soon as each layer's LoRA gradients are final (last layer
  // first), so their all-reduce can overlap the rest of the backward. dropout_seed picks the LoRA
  // dropout masks (the reference model draws the same ones from the same seed).
  void forward_backward(const MicroBatch& mb, float grad_scale, uint64_t dropout_seed, bool last);
  void set_layer_grads_hook(std::function<void(int layer)> hook);
  float* device_grads();     // (P) fp32 LoRA gradients
  float* device_loss_sum();  // one float: Σ loss_t of the step so far
  cudaStream_t stream() const;
  // Forward only: per-token losses (T) copied to the host (synchronous). For scoring and tests.
  std::vector<float> token_losses(const MicroBatch& mb);
  struct StepResult {
    double loss_sum, grad_norm;
  };
  // Clip + AdamW at lr; zero grads and the loss. One host sync.
  StepResult end_step(float lr);

  std::vector<float> lora_params() const;       // fp32 master weights
  std::vector<float> lora_grads() const;        // fp32, as accumulated so far (tests)
  void get_optimizer_state(std::vector<float>& m, std::vector<float>& v) const;
  void set_state(const std::vector<float>& params, const std::vector<float>& m, const std::vector<float>& v,
                 int step);
  int optimizer_step() const { return adam_step_; }
  size_t planned_bytes() const;
  // Largest device memory in use (the whole process: context, arena, workspaces) seen at step ends.
  double peak_memory_gib() const { return peak_gib_; }
  std::string describe() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
  int adam_step_ = 0;
  double peak_gib_ = 0;
};

}  // namespace loom
