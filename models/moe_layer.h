// The sparse MLP of a mixture-of-experts model (Qwen3-MoE, Mixtral) on the GPU: the math of
// models/reference_model.cpp's moe_forward / moe_backward, on the kernels of ops/moe_route.h,
// ops/moe_permute.h and ops/grouped_gemm.h. CudaModel (models/cuda_model.cpp) owns one MoeLayers and
// calls it for every layer cfg.is_moe_layer(l) says is sparse; the dense layers of a Qwen3-MoE keep
// the dense MLP path.
//
// Weights (group "weights"), per sparse layer: the router (E, C) bf16 (frozen; HF keeps it unquantized)
// and the expert stacks gate_up (E, 2·FE, C) and down (E, C, FE), bf16 or NF4. NF4 quantizes each
// expert's gate, up and down on its own, as apply_nf4_roundtrip (models/weights.cpp) does, so 3·E NF4
// tensors per layer, dequantized together into one bf16 scratch (E·3·FE·C) before the layer's
// grouped GEMMs (kept for the backward of the same layer).
//
// Scratch (group "moe"), one set shared by every sparse layer, sized for the worst case: every slot of
// the micro-batch's R = T·K (token, pick) slots has a sorted row, whatever the split between experts.
//   (T, E) fp32 router logits, probs (+ dlogits fp32 and bf16 when training)
//   (T, K) experts, routing weights (+ their gradient)     (R) row_of, slot_of     (E + 1) counts, offsets
//   (R, C) xs, ys (+ dys/dxs, one buffer)                   (R, 2·FE) [gate | up] rows, (R, FE) act (act holds dact in backward)
//   (R, 2r), (R, r) LoRA u of gate_up and down (+ du (R, 2r)) when the experts are adapted
// Nothing is kept per layer: training requires train.recompute=full, whose backward reruns the
// layer's forward (and so the routing and the expert activations) right before the layer's backward.
//
// Load-balancing loss (ops/moe_router.h): a training pass's first forward adds each sparse layer's
// counts and probability sums (begin_forward zeroes them per micro-batch; a recompute does not count
// again); end_forward turns them into router_aux_loss_coef · d aux / d p (E), which every sparse
// layer's backward adds to its dprobs, as the reference does. Its value is not reported.
#pragma once
#include <cstdint>
#include <vector>

#include "models/compute_options.h"
#include "models/device_adapters.h"
#include "models/device_buffers.h"
#include "models/lora.h"
#include "models/model_config.h"
#include "models/weights.h"
#include "ops/gemm.h"
#include "ops/grouped_gemm.h"
#include "ops/nf4.h"

namespace loom {

struct MoeOptions {
  Quant quant = Quant::kNf4;
  bool double_quant = true;
  bool training = false;    // plan the backward's buffers and the load-balancing loss
  Recompute recompute = Recompute::kFull;  // training: only kFull is supported (checked)
  bool generation = false;  // a KV cache is planned (kGenerate, or samples during training): refused
  int64_t token_budget = 0;
};

class MoeLayers {
 public:
  // Refuses, naming the setting to change, what the GPU path does not implement for an MoE model
  // (generation, training without recompute=full, an expert LoRA rank not a multiple of 8, ...).
  MoeLayers(const ModelConfig& cfg, const LoraLayout& lora, const MoeOptions& opt);
  void plan(MemoryPlan& plan);
  // Sparse layer l's router and expert stacks from its weights (after allocation); dense layers: nothing.
  void load_layer(int l, const LayerWeights& lw);

  // A training pass: zero the load-balancing sums before its first layer, and turn them into the
  // aux gradient after its last.
  void begin_forward(cudaStream_t stream);
  void end_forward(cudaStream_t stream);
  // out (T, C) = Σ_k w_k · expert_{e_k}(xn2) (the MLP output, not added to anything). count_aux: this
  // forward's routing adds to the load-balancing sums (a training pass, not a recompute).
  void forward(GemmContext& ctx, int l, const bf16* xn2, bf16* out, int64_t T, const ExpertLoraDevice& gate_up,
               const ExpertLoraDevice& down, bool count_aux, cudaStream_t stream);
  // dxn2 (T, C) written from dout (T, C), the gradient of the MLP output; the expert adapters'
  // gradients accumulated. Needs the forward of the same layer and micro-batch just before.
  void backward(GemmContext& ctx, int l, const bf16* dout, bf16* dxn2, int64_t T,
                const ExpertLoraDevice& gate_up, const ExpertLoraDevice& down, cudaStream_t stream);

 private:
  struct Stack {  // one sparse layer's expert weights
    const bf16* gate_up = nullptr;  // (E, 2·FE, C)
    const bf16* down = nullptr;     // (E, C, FE)
  };
  Stack experts(int l, cudaStream_t stream);
  void plan_weights(MemoryPlan& plan);
  void plan_scratch(MemoryPlan& plan);
  void upload_nf4(int s, int piece, const float* w, std::vector<float>& rounded);
  void experts_forward(const Stack& w, int64_t rows, const ExpertLoraDevice& gate_up,
                       const ExpertLoraDevice& down, cudaStream_t stream);
  void linear_forward(bf16* y, const GroupedTerm& own, const ExpertLoraDevice& lora, bf16* u, int64_t rows, int N,
                      cudaStream_t stream);
  void input_gradient(bf16* dx, const GroupedTerm& own, const ExpertLoraDevice& lora, int64_t rows, int N,
                      cudaStream_t stream);
  bool nf4() const { return opt_.quant == Quant::kNf4; }
  bool aux_on() const { return opt_.training && cfg_.output_router_logits && cfg_.router_aux_loss_coef != 0; }

  ModelConfig cfg_;
  MoeOptions opt_;
  int E_ = 0, K_ = 0, C_ = 0, FE_ = 0, r_ = 0;  // r_: the layout's rank (gate_up's is 2·r_)
  int64_t Tmax_ = 0;
  bool gate_up_adapted_ = false, down_adapted_ = false;  // in some sparse layer of the layout
  std::vector<int> sparse_index_;  // (L) layer → its index among the sparse layers, -1 for a dense one
  int sparse_layers_ = 0;

  // Weights: one slice per sparse layer. NF4: 3·E tensors of FE·C values per layer (gate_e at piece
  // 2e, up_e at 2e + 1, down_e at 2E + e), each in a slot of its own.
  LayerBuf<bf16> router_, gate_up_, down_;
  LayerBuf<uint8_t> codes_, absmax_q_;
  LayerBuf<float> absmax_, nested_absmax_;
  size_t codes_per_piece_ = 0, blocks_per_piece_ = 0, nested_per_piece_ = 0;
  std::vector<Nf4Device> nf4_;  // (sparse layers · 3·E)
  Nf4Device* device_nf4_ = nullptr;  // nf4_ on the device
  float *nf4_table_ = nullptr, *nested_map_ = nullptr;
  bf16* dequantized_ = nullptr;  // (E·3·FE·C): gate_up stack, then down stack
  int dequantized_layer_ = -1;   // the sparse layer dequantized_ holds

  // Scratch of the current layer.
  float *logits_ = nullptr, *probs_ = nullptr, *dlogits_ = nullptr, *weights_ = nullptr, *dweights_ = nullptr;
  bf16* dlogits_bf16_ = nullptr;
  int32_t *experts_ = nullptr, *counts_ = nullptr, *offsets_ = nullptr, *row_of_ = nullptr, *slot_of_ = nullptr;
  bf16 *xs_ = nullptr, *ys_ = nullptr, *dxs_ = nullptr, *gate_up_rows_ = nullptr, *act_ = nullptr;
  bf16 *u_gate_up_ = nullptr, *u_down_ = nullptr, *du_ = nullptr;
  void *permute_workspace_ = nullptr, *aux_workspace_ = nullptr;
  double *aux_counts_ = nullptr, *aux_prob_sum_ = nullptr;  // (E) each
  float* aux_dprob_ = nullptr;                              // (E)
  int64_t aux_rows_ = 0;
  bool aux_ready_ = false;  // aux_dprob_ holds the last training forward's gradient
};

}  // namespace loom
