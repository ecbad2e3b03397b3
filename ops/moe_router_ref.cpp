#include "ops/moe_router.h"

#include <algorithm>
#include <cmath>
#include <numeric>

namespace loom {

void moe_route_ref(int32_t* experts, float* weights, float* probs, const float* logits, int64_t T, int E, int K,
                   bool normalize) {
  std::vector<int32_t> order(static_cast<size_t>(E), 0);
  for (int64_t t = 0; t < T; ++t) {
    const float* z = logits + t * E;
    float* p = probs + t * E;
    const float zmax = *std::max_element(z, z + E);
    float sum = 0;
    for (int e = 0; e < E; ++e) sum += p[e] = std::exp(z[e] - zmax);
    for (int e = 0; e < E; ++e) p[e] /= sum;
    std::iota(order.begin(), order.end(), 0);
    // stable: of equal probabilities the lower expert comes first
    std::stable_sort(order.begin(), order.end(), [&](int32_t a, int32_t b) { return p[a] > p[b]; });
    float chosen = 0;
    for (int k = 0; k < K; ++k) chosen += p[order[size_t(k)]];
    for (int k = 0; k < K; ++k) {
      experts[t * K + k] = order[size_t(k)];
      weights[t * K + k] = normalize ? p[order[size_t(k)]] / chosen : p[order[size_t(k)]];
    }
  }
}

void moe_route_backward_ref(float* dlogits, const float* dweights, const float* dprobs, const float* probs,
                            const int32_t* experts, const float* weights, int64_t T, int E, int K, bool normalize) {
  std::vector<float> dp(static_cast<size_t>(E));
  for (int64_t t = 0; t < T; ++t) {
    const float* p = probs + t * E;
    const float* w = weights + t * K;
    const float* dw = dweights + t * K;
    for (int e = 0; e < E; ++e) dp[size_t(e)] = dprobs ? dprobs[t * E + e] : 0.f;
    float wdw = 0, chosen = 0;
    for (int k = 0; k < K; ++k) {
      wdw += w[k] * dw[k];
      chosen += p[experts[t * K + k]];
    }
    for (int k = 0; k < K; ++k) dp[size_t(experts[t * K + k])] += normalize ? (dw[k] - wdw) / chosen : dw[k];
    float pdp = 0;
    for (int e = 0; e < E; ++e) pdp += p[e] * dp[size_t(e)];
    for (int e = 0; e < E; ++e) dlogits[t * E + e] = p[e] * (dp[size_t(e)] - pdp);
  }
}

void moe_aux_accumulate_ref(MoeAuxSums& sums, const int32_t* experts, const float* probs, int64_t T, int K) {
  const size_t E = sums.counts.size();
  for (int64_t t = 0; t < T; ++t) {
    for (int k = 0; k < K; ++k) sums.counts[size_t(experts[t * K + k])] += 1;
    for (size_t e = 0; e < E; ++e) sums.prob_sum[e] += probs[size_t(t) * E + e];
  }
  sums.rows += T;
}

double moe_aux_loss_ref(const MoeAuxSums& sums) {
  if (sums.rows == 0) return 0;
  const double n = double(sums.rows);
  double aux = 0;
  for (size_t e = 0; e < sums.counts.size(); ++e) aux += (sums.counts[e] / n) * (sums.prob_sum[e] / n);
  return double(sums.counts.size()) * aux;
}

void moe_aux_dprob_ref(float* dprob, const MoeAuxSums& sums) {
  const double n = double(sums.rows), E = double(sums.counts.size());
  for (size_t e = 0; e < sums.counts.size(); ++e) dprob[e] = sums.rows ? float(E * sums.counts[e] / (n * n)) : 0.f;
}

}  // namespace loom
