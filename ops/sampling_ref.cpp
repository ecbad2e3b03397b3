// Token sampling, CPU reference (math, HF correspondence and arithmetic in sampling.h).
#include <algorithm>
#include <functional>
#include <limits>
#include <numeric>

#include "ops/error.h"
#include "ops/sampling.h"

namespace loom {

void check_sampling_params(const SamplingParams& p) {
  LOOM_CHECK(std::isfinite(p.temperature) && p.temperature >= 0.f,
             "--temperature must be a finite number >= 0 (0 = greedy), got ", p.temperature);
  LOOM_CHECK(p.top_k >= 0, "--top-k must be >= 0 (0 = off), got ", p.top_k);
  LOOM_CHECK(p.top_p > 0.f && p.top_p <= 1.f, "--top-p must be in (0, 1] (1 = off), got ", p.top_p);
  LOOM_CHECK(p.min_p >= 0.f && p.min_p <= 1.f, "--min-p must be in [0, 1] (0 = off), got ", p.min_p);
  LOOM_CHECK(std::isfinite(p.repetition_penalty) && p.repetition_penalty > 0.f,
             "--repetition-penalty must be a finite number > 0 (1 = off), got ", p.repetition_penalty);
}

namespace {

// A NaN or +inf logit means the forward pass broke: no token may be picked from it. -inf is a
// legitimate mask (weight 0).
void check_logits(const float* logits, int V) {
  LOOM_CHECK(V >= 1 && V <= kSamplingMaxVocab, "sampling: vocabulary size must be in [1, ", kSamplingMaxVocab,
             "], got ", V);
  bool any_finite = false;
  for (int i = 0; i < V; ++i) {
    LOOM_CHECK(!std::isnan(logits[i]) && logits[i] != std::numeric_limits<float>::infinity(),
               "sampling: logit ", i, " of ", V, " is ", logits[i],
               "; the model's forward produced a non-finite value (check the weights and the adapter)");
    any_finite = any_finite || std::isfinite(logits[i]);
  }
  LOOM_CHECK(any_finite, "sampling: every one of the ", V, " logits is -inf; no token can be picked");
}

// Step 1: each distinct context id < V penalised once.
std::vector<float> penalised_logits(const float* logits, int V, float penalty, const int32_t* context,
                                    size_t n_context) {
  for (size_t t = 0; t < n_context; ++t)
    LOOM_CHECK(context[t] >= 0, "sampling: context id ", context[t], " at position ", t, " is negative");
  std::vector<float> x(logits, logits + V);
  if (penalty == 1.f) return x;
  std::vector<char> seen(V, 0);
  for (size_t t = 0; t < n_context; ++t) {
    const int32_t id = context[t];
    if (id >= V || seen[id]) continue;
    seen[id] = 1;
    x[id] = sampling_penalize(x[id], penalty);
    LOOM_CHECK(std::isfinite(x[id]) || std::isinf(logits[id]), "--repetition-penalty ", penalty,
               " overflows the logit of token ", id, " (", logits[id], " becomes ", x[id],
               "); use a penalty closer to 1");
  }
  return x;
}

// Step 2. A temperature small enough to overflow the largest score is reported: exp(x - max) would be NaN.
void apply_temperature(std::vector<float>& x, float temperature) {
  for (float& v : x) v = v / temperature;
  const float max = *std::max_element(x.begin(), x.end());
  LOOM_CHECK(std::isfinite(max), "--temperature ", temperature, " overflows the logits (largest logit / temperature = ",
             max, "); use a larger temperature, or 0 for greedy");
}

// Step 3: everything below the k-th largest value becomes -inf (ties with it survive).
void apply_top_k(std::vector<float>& x, int k) {
  if (k == 0 || k >= int(x.size())) return;
  std::vector<float> sorted(x);
  std::nth_element(sorted.begin(), sorted.begin() + (k - 1), sorted.end(), std::greater<float>());
  const float kth = sorted[k - 1];
  for (float& v : x)
    if (v < kth) v = -std::numeric_limits<float>::infinity();
}

// Step 4 on the fixed-point weights: zeroes every token whose mass before it reaches top_p · Z.
void apply_top_p(std::vector<uint64_t>& q, float top_p) {
  std::vector<int> order;
  for (int i = 0; i < int(q.size()); ++i)
    if (q[i] > 0) order.push_back(i);
  std::sort(order.begin(), order.end(), [&](int a, int b) { return q[a] != q[b] ? q[a] > q[b] : a < b; });
  const uint64_t Z = std::accumulate(q.begin(), q.end(), uint64_t(0));
  uint64_t before = 0;
  for (int i : order) {
    const uint64_t qi = q[i];
    if (!sampling_top_p_keeps(before, Z, top_p)) q[i] = 0;
    before += qi;
  }
}

// The fixed-point weights q (V) of the processed distribution, 0 where filtered.
std::vector<uint64_t> processed_weights(const float* logits, int V, const SamplingParams& p, const int32_t* context,
                                        size_t n_context) {
  check_sampling_params(p);
  check_logits(logits, V);
  std::vector<float> x = penalised_logits(logits, V, p.repetition_penalty, context, n_context);
  const bool sampling = p.temperature > 0.f;
  if (sampling) {
    apply_temperature(x, p.temperature);
    apply_top_k(x, p.top_k);
  }
  const float max = *std::max_element(x.begin(), x.end());
  std::vector<float> w(V);
  std::vector<uint64_t> q(V);
  for (int i = 0; i < V; ++i) {
    w[i] = sampling_weight(x[i], max);
    q[i] = sampling_fixed(w[i]);
  }
  if (sampling && p.top_p < 1.f) apply_top_p(q, p.top_p);
  if (sampling && p.min_p > 0.f)  // step 5
    for (int i = 0; i < V; ++i)
      if (w[i] < p.min_p) q[i] = 0;
  return q;
}

// torch.argmax: the first of equal maxima.
int32_t argmax_first(const std::vector<float>& x) {
  return int32_t(std::max_element(x.begin(), x.end()) - x.begin());
}

}  // namespace

std::vector<double> sampling_distribution_ref(const float* logits, int V, const SamplingParams& p,
                                              const int32_t* context, size_t n_context) {
  const std::vector<uint64_t> q = processed_weights(logits, V, p, context, n_context);
  const double Z = double(std::accumulate(q.begin(), q.end(), uint64_t(0)));
  std::vector<double> probs(V);
  for (int i = 0; i < V; ++i) probs[i] = double(q[i]) / Z;
  return probs;
}

int32_t sample_token_ref(const float* logits, int V, const SamplingParams& p, const int32_t* context,
                         size_t n_context, uint64_t sequence, uint64_t step) {
  if (p.temperature == 0.f) {
    check_sampling_params(p);
    check_logits(logits, V);
    return argmax_first(penalised_logits(logits, V, p.repetition_penalty, context, n_context));
  }
  const std::vector<uint64_t> q = processed_weights(logits, V, p, context, n_context);
  std::vector<uint64_t> cdf(V);
  std::partial_sum(q.begin(), q.end(), cdf.begin());
  const uint64_t r = sampling_position(sampling_random_bits(p.seed, sequence, step), cdf.back());
  // The first inclusive prefix sum > r; r < Z = cdf.back() and the top token has q > 0, so one exists.
  return int32_t(std::upper_bound(cdf.begin(), cdf.end(), r) - cdf.begin());
}

int32_t greedy_token_of_code(int32_t code, int V) {
  LOOM_CHECK(code > -2 - V && code < V, "greedy_tokens: code ", code, " for a vocabulary of ", V);
  LOOM_CHECK(code >= -1, "sampling: logit ", -2 - code, " of ", V,
             " is NaN or +inf; the model's forward produced a non-finite value (check the weights and the adapter)");
  LOOM_CHECK(code >= 0, "sampling: every one of the ", V, " logits is -inf; no token can be picked");
  return code;
}

int32_t sampled_token_of_code(int32_t code, int V, const SamplingParams& p) {
  if (code >= -1 - V) return greedy_token_of_code(code, V);
  LOOM_CHECK(code < sampling_code_penalty_overflow(V - 1, V), "--repetition-penalty ", p.repetition_penalty,
             " overflows the logit of token ", -2 - V - code, " (it becomes infinite); use a penalty closer to 1");
  LOOM_CHECK(code != sampling_code_temperature_overflow(V), "--temperature ", p.temperature,
             " overflows the logits (largest logit / temperature is infinite); use a larger temperature, or 0 for",
             " greedy");
  fail("sampling: the context id at position ", -3 - 2 * int64_t(V) - code,
       " is negative; context ids must be token ids in [0, vocabulary size)");
}

}  // namespace loom
