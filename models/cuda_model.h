// The decoder on the GPU: the same model as models/reference_model.h, in bf16 storage with fp32
// accumulation, on the kernels of ops/*.cu and cuBLASLt. Three pieces, each listing its buffers in
// the one MemoryPlan of the run (printed, checked against free memory before any weight is loaded,
// carved from one allocation; the step allocates nothing):
//   DeviceWeights   (models/device_weights.h)   the frozen weights, NF4 or bf16
//   DeviceAdapters  (models/device_adapters.h)  LoRA fp32 master + bf16 copy (+ gradients when training)
//   this class      the layer loop and the activations and scratch of its mode
//   MoeLayers       (models/moe_layer.h)        a mixture-of-experts model's sparse MLPs: routers, experts,
//                   the token permutation (training needs recompute full; no generation)
// The optimizer (engine/optimizer.h) adds its state to plan() before load().
// The model knows no objective: a forward writes per-token losses loss_t = -log p(target_t); the
// backward takes per-token weights w_t from the objective and accumulates d(Σ w_t · loss_t) into the
// LoRA gradients. Adapters can be switched off per forward (PassOptions::adapters).
// Modes:
//   kTrain    activations kept for backward as train.recompute says:
//               none       every activation of every layer
//               selective  the norm outputs and the SwiGLU product are recomputed (elementwise) in backward
//               full       only each layer's input; backward reruns the layer's forward first
//                          (train.offload: activations keeps those inputs in pinned host memory: a
//                          copy stream takes each out as the forward leaves the layer and brings it
//                          back one layer ahead of its backward; the device holds two slots of them)
//   kForward  scoring: one layer's activations, rewritten layer after layer; the MLP in token tiles;
//             no gradients, no backward scratch, no optimizer state.
//   kGenerate kForward plus a bf16 KV cache of decode_batch sequences × decode_context positions per
//             layer (keys after RoPE and the q/k norm, values): prefill() runs the prompts packed
//             (varlen flash attention) and writes their rows into the cache; decode() runs one token
//             per sequence, appends its key and value and attends to the cache
//             (ops/attention_decode.h). Logits of the last position of each sequence, fp32, or
//             only their next tokens (ops/sampling.h greedy_tokens / sample_tokens: B ids cross to the
//             host, not B · V logits; the sequences' token ids are kept beside the KV cache for the
//             repetition penalty). A decode step runs as a CUDA graph (see Impl::decode_graphs).
#pragma once
#include <cuda_runtime.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "data/batch.h"
#include "models/compute_options.h"
#include "models/device_adapters.h"
#include "models/lora.h"
#include "models/model_config.h"
#include "models/weights.h"
#include "ops/sampling.h"

namespace loom {

enum class ModelMode { kTrain, kForward, kGenerate };

// Rows of the LM head's logits chunk (fp32, (rows, V)) a model plans for a token budget: a fixed
// budget of logits memory (512 MiB training, 128 MiB forward-only), at least 16 rows, at most the budget.
int lm_head_chunk_rows(int V, int64_t token_budget, bool training);

struct CudaModelOptions {
  ModelMode mode = ModelMode::kTrain;
  Quant quant = Quant::kNf4;
  bool double_quant = true;
  Recompute recompute = Recompute::kSelective;  // kTrain only
  Offload offload = Offload::kNone;             // kTrain with recompute full only; never kAuto (resolved)
  // With offload: the first this many layers keep their inputs on the device (at most L - 2, the last
  // two always do); the others' go to pinned host memory. engine/backend.h picks as many as fit.
  int offload_device_layers = 0;
  // kTrain: forward_backward replays a CUDA graph per token bucket (the micro-batch padded up to a
  // multiple of 256 tokens, at most token_budget, data/batch.h pad_micro_batch) instead of launching
  // each kernel from the host, where nothing in the pass varies but its inputs: LoRA dropout 0, no
  // offload, no mixture of experts, one rank (no layer-gradient hook); otherwise it runs as usual.
  bool step_graphs = false;
  // kTrain with recompute full: the MLP in sequence tiles of this many rows (a multiple of
  // kMlpRowChunk) in forward and backward, so its (rows, F) buffers hold a tile, not the micro-batch;
  // 0: the whole micro-batch at once. Any tile size gives the same bits (the MLP's GEMMs then run in a
  // row-invariant GemmContext, ops/gemm.h); those bits differ from the untiled path's by rounding.
  int64_t mlp_tile = 0;
  int64_t token_budget = 16384;                 // the largest micro-batch (T)
  bool print_plan = true;
  bool reference_adapter = false;  // plan a frozen reference adapter (DeviceAdapters::set_reference)
  // Sequences the KV cache holds and positions per sequence (prompt + new tokens): kGenerate; in
  // kTrain the generation of train.sample_every, planned beside training (0: no cache).
  int decode_batch = 0;
  int64_t decode_context = 0;
};

class CudaModel {
 public:
  // Plans every buffer of the mode; nothing is allocated yet.
  CudaModel(const ModelConfig& cfg, const LoraLayout& lora, const CudaModelOptions& opt);
  ~CudaModel();
  CudaModel(const CudaModel&) = delete;
  CudaModel& operator=(const CudaModel&) = delete;

  // The run's plan, for the optimizer to add its state before load().
  MemoryPlan& plan();
  // Prints the plan (print_plan), checks it against free device memory (naming `hint` and the
  // settings that shrink it), allocates it, uploads the weights from src (quantizing to NF4 when
  // asked) and the LoRA weights.
  void load(const WeightSource& src, const std::vector<float>& lora, const std::string& hint = "");

  // Forward of one packed micro-batch (T <= token_budget): per-token losses on the device. A training
  // pass (pass.train, kTrain only) keeps what backward() needs and adds Σ target losses to
  // device_loss_sum(); any other pass adds them to the forward sum (take_forward_loss_sum()).
  // Asynchronous.
  void forward(const MicroBatch& mb, const PassOptions& pass);
  // Backward of the last training forward: LoRA grads += d(Σ_t w_t · loss_t), w = token_weight (T).
  // In the step's last micro-batch (last = true) the layer hook runs as soon as each layer's LoRA
  // gradients are final (last layer first), so their all-reduce overlaps the rest of the backward.
  void backward(const std::vector<float>& token_weight, bool last);
  // forward (a training pass) + backward in one, when the weights are known before the forward
  // (SFT): the LM head's logits are computed once. Same results as forward then backward.
  void forward_backward(const MicroBatch& mb, const std::vector<float>& token_weight, uint64_t dropout_seed,
                        bool last);
  // kGenerate, or kTrain planned with a decode batch (between steps). Empties the cache and runs the prompts (at most decode_batch, their tokens together at
  // most token_budget, each shorter than decode_context), sequence b = prompts[b]; returns the logits
  // (prompts, V) of each prompt's last token into `logits` (waits). adapters: the LoRA on or off.
  void prefill(const std::vector<std::vector<int32_t>>& prompts, bool adapters, std::vector<float>& logits);
  // kGenerate (or kTrain with a decode batch). One token per sequence of the last prefill: tokens[b] at position positions[b] (its
  // cache then holds positions[b] + 1 tokens; positions[b] < decode_context); logits (B, V) into
  // `logits`, whose storage a caller reuses step after step (waits).
  void decode(const std::vector<int32_t>& tokens, const std::vector<int32_t>& positions, bool adapters,
              std::vector<float>& logits);
  // prefill and decode returning each row's next token instead of its logits, chosen on the GPU as
  // ops/sampling.h sample_token_ref chooses it (plain greedy: greedy_tokens; else sample_tokens over
  // the row's ids so far); choice.sequence and choice.step per row (prompt / cache row order; unused
  // for plain greedy). A row the reference refuses (a non-finite logit, ...) is its error.
  void prefill_tokens(const std::vector<std::vector<int32_t>>& prompts, bool adapters, const TokenChoice& choice,
                      std::vector<int32_t>& ids);
  void decode_tokens(const std::vector<int32_t>& tokens, const std::vector<int32_t>& positions, bool adapters,
                     const TokenChoice& choice, std::vector<int32_t>& ids);

  // The per-token losses (T) of the last forward (waits for the stream).
  std::vector<float> token_losses();
  // Σ target losses of the forward passes that were not training passes since the last call (waits).
  double take_forward_loss_sum();

  void set_layer_grads_hook(std::function<void(int layer)> hook);
  float* device_loss_sum();  // one float: Σ target losses of the training passes since zero_loss_sum
  void zero_loss_sum();
  DeviceAdapters& adapters();
  std::vector<float> lora_params() const;  // fp32 master (waits)
  std::vector<float> lora_grads() const;   // fp32, as accumulated so far (waits)
  void set_lora(const std::vector<float>& params);
  cudaStream_t stream() const;
  size_t planned_bytes() const;
  // Whether the plan (with what was added to it, e.g. the optimizer's state) fits the device's free
  // memory now, as load() checks it; nothing is allocated.
  bool plan_fits_device() const;
  // Pinned host memory the plan takes (train.offload: the layer inputs; 0 without offload), and
  // whether it fits the host's available memory now, as load() checks it.
  size_t planned_host_bytes() const;
  bool plan_fits_host() const;
  // train.offload: seconds the compute stream has stood still waiting for the layer inputs' copies
  // since the model was built (waits for the device; 0 without offload): the copies' share the
  // compute did not hide. Call it where the device is idle anyway (a step's end): it also frees the
  // timing events for reuse.
  double offload_wait_seconds();
  std::string describe() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace loom
