// Top-K softmax routing of a mixture-of-experts layer and its load-balancing loss, as transformers
// 5.23 computes them (Qwen3MoeTopKRouter, MixtralTopKRouter, load_balancing_loss_func), in fp32.
//
// Routing, per token t, logits z (E) = x_t·Wrᵀ (the caller's matmul; the router Wr is frozen):
//   p = softmax(z)
//   the K experts e_1..e_K of largest p, in decreasing p; equal p: the lower expert first (torch.topk's
//   order among equal values is unspecified: on the CPU it returns [2, 3] of four equal ones)
//   w_k = p_{e_k}, or w_k = p_{e_k} / S with S = Σ_j p_{e_j} when normalised (Qwen3-MoE
//   norm_topk_prob, Mixtral always)
// The layer's output is Σ_k w_k · expert_{e_k}(x_t); its gradient reaches z through w only (the choice
// of experts is piecewise constant):
//   normalised:  dp_{e_k} = (dw_k − Σ_j w_j dw_j) / S       plain: dp_{e_k} = dw_k
//   dz_i = p_i · (dp_i − Σ_j p_j dp_j)                         (softmax backward)
// with dp of the experts not chosen 0, plus whatever the load-balancing loss adds to dp.
//
// Load-balancing loss over the N = Σ_layers T rows of a micro-batch's sparse layers together (HF
// concatenates the router logits of every sparse layer; padding rows are masked out, and loom's
// packed micro-batches have none):
//   f_e = (times e is among a row's top K) / N,  P_e = (Σ_rows p_e) / N,  aux = E · Σ_e f_e · P_e
// f is piecewise constant, so d aux / d p_{row, e} = E · f_e / N for every row of every layer.
#pragma once
#include <cstddef>
#include <cstdint>
#include <vector>

namespace loom {

// experts, weights (T, K) written; probs (T, E) written with softmax(logits) (T, E).
void moe_route_ref(int32_t* experts, float* weights, float* probs, const float* logits, int64_t T, int E, int K,
                   bool normalize);

// dlogits (T, E) written from dweights (T, K), the gradient of the loss w.r.t. the routing weights,
// and dprobs (T, E) (added to dp before the softmax backward; may be null). probs, experts and
// weights are moe_route_ref's outputs.
void moe_route_backward_ref(float* dlogits, const float* dweights, const float* dprobs, const float* probs,
                            const int32_t* experts, const float* weights, int64_t T, int E, int K, bool normalize);

// The load-balancing loss's sums over one micro-batch's sparse layers: counts (E) += how often each
// expert is chosen, prob_sum (E) += Σ_t p_t, rows += T. Call once per sparse layer.
struct MoeAuxSums {
  explicit MoeAuxSums(int E) : counts(size_t(E), 0.0), prob_sum(size_t(E), 0.0) {}
  std::vector<double> counts, prob_sum;  // (E)
  int64_t rows = 0;
};
void moe_aux_accumulate_ref(MoeAuxSums& sums, const int32_t* experts, const float* probs, int64_t T, int K);
// aux = E · Σ_e (counts_e / rows) · (prob_sum_e / rows); 0 with no rows.
double moe_aux_loss_ref(const MoeAuxSums& sums);
// d aux / d p_e of any row (E written): E · counts_e / rows².
void moe_aux_dprob_ref(float* dprob, const MoeAuxSums& sums);

}  // namespace loom
