// Top-K softmax routing of a mixture-of-experts layer on the GPU, its backward and the load-balancing
// loss's sums: the math of ops/moe_router.h (whose _ref functions are the references), in fp32 from
// the router logits (T, E) the model's cuBLASLt GEMM wrote.
//
// CUDA (ops/moe_route.cu): one warp per token; the warp keeps the token's E probabilities in shared
// memory, picks the K largest by K warp arg-max reductions (equal p: the lower expert, as the
// reference's stable sort) and forms the chosen sum S in k order, as the reference does. What differs
// from the reference: expf (≤ 2 ulp, CUDA programming guide) instead of std::exp and a shuffle-tree
// order for Σ_e exp and Σ_e p·dp, so probs and weights agree within a few·E fp32 ulps, and the experts
// agree exactly unless two probabilities of a token lie within that distance of each other (a tie the
// two roundings may break differently; exact ties are broken alike).
//
// Load-balancing sums, deterministically (no float atomics): the rows are cut into kMoeAuxSlices
// fixed slices; one block per (32 experts, slice) sums its rows in a fixed order into a partial in a
// workspace, then one pass adds the slices in slice order into the double accumulators.
#pragma once
#include <cstddef>
#include <cstdint>

#include "ops/cuda_common.h"
#include "ops/moe_router.h"

namespace loom {

// Largest expert count and top-K the kernels take (Qwen3-MoE: 128 and 8; Mixtral: 8 and 2).
constexpr int kMoeMaxExperts = 1024;
constexpr int kMoeMaxTopK = 32;
// Row slices of the load-balancing sums (their partials' count; fixed so the result depends on T only).
constexpr int kMoeAuxSlices = 64;

// experts, weights (T, K) and probs (T, E) written from logits (T, E): moe_route_ref on the device.
void moe_route(int32_t* experts, float* weights, float* probs, const float* logits, int64_t T, int E, int K,
               bool normalize, cudaStream_t stream);

// dlogits (T, E) written: moe_route_backward_ref with dprobs' every row equal to dprob_row (E), the
// load-balancing loss's d aux / d p scaled by its coefficient (moe_aux_loss below), or null when off.
void moe_route_backward(float* dlogits, const float* dweights, const float* dprob_row, const float* probs,
                        const int32_t* experts, const float* weights, int64_t T, int E, int K, bool normalize,
                        cudaStream_t stream);

// Bytes of the workspace moe_aux_accumulate needs for E experts.
size_t moe_aux_workspace_bytes(int E);
// counts (E) += how often each expert is chosen, prob_sum (E) += Σ_t probs[t] (device doubles, zeroed
// by the caller once per micro-batch): moe_aux_accumulate_ref for one sparse layer. The caller adds T
// to its host row count.
void moe_aux_accumulate(double* counts, double* prob_sum, void* workspace, const int32_t* experts, const float* probs,
                        int64_t T, int E, int K, cudaStream_t stream);
// loss (1) = moe_aux_loss_ref, dprob (E) = scale · moe_aux_dprob_ref (scale: router_aux_loss_coef), from
// the sums over `rows` rows; 0 with no rows. Either output may be null.
void moe_aux_loss(double* loss, float* dprob, const double* counts, const double* prob_sum, int E, int64_t rows,
                  float scale, cudaStream_t stream);

}  // namespace loom
