// Token sampling: the next token from one row of logits (V), with Hugging Face generate's semantics
// (transformers 5.x, generation/utils.py: _get_logits_processor builds the list, _sample applies it).
//
//   1. RepetitionPenaltyLogitsProcessor (HF "processor": greedy and sampling alike): each distinct id of
//      the context, prompt included, gets x = x < 0 ? x · penalty : x / penalty, once however often it
//      occurs. Ids ≥ V are ignored (HF clamps them to a padding column it then drops).
//   Greedy (temperature 0, HF do_sample=False): the token is argmax x, the lowest index on ties
//   (torch.argmax). HF applies no warper without do_sample, so top-k/top-p/min-p are ignored.
//   Sampling, HF's "warpers" in _get_logits_processor's order:
//   2. TemperatureLogitsWarper: x = x / temperature.
//   3. TopKLogitsWarper: removes x_i < (k-th largest x), so every token tied with the k-th is kept.
//   4. TopPLogitsWarper: HF sorts ascending and removes tokens whose cumulative probability is
//      ≤ 1 − top_p. Equivalently, with ≺ the order by probability descending: token i is kept iff the
//      mass of the tokens before it is < top_p (cum_asc(i) = 1 − mass_before(i)); the top token always is.
//   5. MinPLogitsWarper: removes p_i < min_p · p_max, on the distribution left by 2–4 (its max is
//      still the top token's, which 3 and 4 always keep).
//   6. softmax, then torch.multinomial: here an inverse-CDF draw.
//
// Arithmetic. Everything below is chosen so a GPU kernel reproduces each bit from the same inputs:
// - Steps 1–2 are single IEEE fp32 operations per element (true division, as torch's CPU division
//   is): bit-equal to HF's fp32 scores, and the same on a GPU compiled without fast-math.
// - Step 3 compares fp32 values: exact in any order.
// - Weights w_i = exp(x_i − max x) in fp32 by sampling_exp (written with explicit fmaf, as glibc's
//   expf and CUDA's differ in the last bit), then fixed point q_i = ⌊w_i · 2^40⌋ (uint64). The
//   softmax normaliser Z, the top-p masses and the CDF are integer sums: exact, so a parallel
//   reduction or scan in any order gets the same bits. V ≤ 2^23 keeps Z < 2^63. The price: a token
//   with w < 2^-40 (probability < 9e-13 of the top token's) gets weight 0 and is never drawn; all such
//   tokens together hold < V · 2^-40 of the mass (1.2e-7 at V = 128k).
// - Step 4 orders by (q descending, index ascending) and keeps i iff double(mass_before(i)) <
//   double(top_p) · double(Z). Among tokens of equal probability straddling the cut, HF's result
//   depends on torch.sort's unstable order; here the lower index is kept.
// - Step 5 keeps w_i ≥ min_p: the max token has w = 1 exactly, so this is HF's p_i < min_p · p_max
//   with the normaliser cancelled.
// - Step 6 draws r = ⌊h · Z / 2^64⌋ from 64 random bits h of (seed, sequence, step), uniform on
//   [0, Z) to within Z / 2^64, and picks the first index i, in vocabulary order, whose inclusive
//   prefix sum of q exceeds r: an integer prefix scan on a GPU, no sort.
// The probabilities this op reports (sampling_distribution_ref) are q_i / Z, in double.
#pragma once
#include <climits>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <vector>

#include "ops/cuda_common.h"
#include "ops/random.h"

namespace loom {

struct SamplingParams {
  float temperature = 1.f;         // 0: greedy (argmax, HF do_sample=False)
  int top_k = 0;                   // 0: off
  float top_p = 1.f;               // 1: off
  float min_p = 0.f;               // 0: off
  float repetition_penalty = 1.f;  // 1: off (HF RepetitionPenaltyLogitsProcessor: every context id, prompt included)
  uint64_t seed = 0;
  // Greedy without a penalty: the argmax of the raw logits, which needs no context.
  bool plain_greedy() const { return temperature == 0.f && repetition_penalty == 1.f; }
};

// The next token of each row of a batch, as sample_token_ref chooses it: the parameters, and per row
// sample_token_ref's sequence (the request's index) and step (tokens it has generated so far).
struct TokenChoice {
  SamplingParams sampling;
  std::vector<uint64_t> sequence, step;
};

// Throws loom::Error naming the command-line option, e.g. "--top-p must be in (0, 1], got 1.5".
void check_sampling_params(const SamplingParams& p);

// The processed distribution of one row of logits (V): repetition penalty over the context ids, then
// (sampling only) temperature, top-k, top-p, min-p; returns probabilities (V), filtered tokens at
// exactly 0. For greedy it is the softmax of the penalised logits (HF's scores under do_sample=False).
// Throws loom::Error on invalid params, a NaN or +inf logit, no finite logit, or a negative context id.
std::vector<double> sampling_distribution_ref(const float* logits, int V, const SamplingParams& p,
                                              const int32_t* context, size_t n_context);

// The next token. sequence: the prompt's index in the input, not its slot in a batch, so a seed gives
// the same text at any batch size; step: the index of the token among the generated ones.
int32_t sample_token_ref(const float* logits, int V, const SamplingParams& p, const int32_t* context,
                         size_t n_context, uint64_t sequence, uint64_t step);

// ---- greedy on the GPU (ops/sampling.cu) ----
// Greedy without a repetition penalty, for rows of logits already on the device, so that a decode
// step sends B ids to the host instead of B · V logits. codes[b] for row b (V fp32 values):
//   the argmax, lowest index on ties (sample_token_ref with temperature 0, penalty 1);
//   -1 when every logit is -inf; -2 - i when logit i is NaN or +inf (the lowest such i).
void greedy_tokens(int32_t* codes, const float* logits, int rows, int V, cudaStream_t stream);
// The token of a greedy_tokens code, or the loom::Error sample_token_ref throws for that row.
int32_t greedy_token_of_code(int32_t code, int V);

// ---- sampling on the GPU (ops/sampling.cu) ----
// sample_token_ref for every row of logits already on the device, exactly (the same token, the same
// refusals): one block per row; the penalty through a per-row bitmask of the context ids seen; top-k
// and the top-p cut by radix selects (fp32 keys; 41-bit fixed-point weights, summed as integers);
// the draw by an integer prefix scan in vocabulary order. Row b:
//   logits + b·V: V fp32 values; the penalised context ids are rewritten in place.
//   context + b·context_stride: the row's context_len[b] ids (prompt + generated so far),
//     0 <= context_len[b] <= context_stride.
//   sequence[b], step[b]: sample_token_ref's sequence and step (the draw's random bits).
//   scratch: at least sample_tokens_scratch_bytes(rows, V) bytes of device memory, 4-byte aligned,
//     no contents expected (each call clears what it uses).
// codes[b]: greedy_tokens' codes (token, -1, -2 - i), and beyond them the codes below;
// sampled_token_of_code turns one into the token or sample_token_ref's error.
// Params are the same for every row; invalid ones throw here, as check_sampling_params.
void sample_tokens(int32_t* codes, float* logits, int rows, int V, const SamplingParams& p, const int32_t* context,
                   const int32_t* context_len, int64_t context_stride, const uint64_t* sequence,
                   const uint64_t* step, void* scratch, int64_t scratch_bytes, cudaStream_t stream);
int64_t sample_tokens_scratch_bytes(int rows, int V);
// The token of a sample_tokens code, or the loom::Error sample_token_ref throws for that row.
int32_t sampled_token_of_code(int32_t code, int V, const SamplingParams& p);

// sample_tokens' refusals beyond greedy_tokens', below its codes (-1 - V is the lowest of those):
// the repetition penalty overflows the logit of `token`: in [-1 - 2V, -2 - V]
LOOM_HD constexpr int32_t sampling_code_penalty_overflow(int token, int V) { return -2 - V - token; }
// largest logit / temperature is not finite
LOOM_HD constexpr int32_t sampling_code_temperature_overflow(int V) { return -2 - 2 * V; }
// the context id at `position` is negative; needs position < sampling_max_context(V)
LOOM_HD constexpr int32_t sampling_code_negative_context(int64_t position, int V) {
  return int32_t(-3 - 2 * int64_t(V) - position);
}
// The longest context whose every position has a code in int32 (context_stride's limit).
constexpr int64_t sampling_max_context(int V) { return int64_t(INT32_MAX) - 1 - 2 * int64_t(V); }

// ---- the per-element math, shared with a GPU kernel ----

// Largest V: keeps the fixed-point normaliser Z ≤ V · 2^40 below 2^63.
constexpr int kSamplingMaxVocab = 1 << 23;
// One unit of probability weight: q = ⌊w · 2^40⌋.
constexpr float kSamplingFixedOne = 1099511627776.f;  // 2^40
// Below this x − max, ⌊exp(x − max) · 2^40⌋ = 0 (e^-28 · 2^40 ≈ 0.76): weight 0, no exp needed.
constexpr float kSamplingMinExponent = -28.f;

// HF RepetitionPenaltyLogitsProcessor on one logit of a context token.
LOOM_HD inline float sampling_penalize(float x, float penalty) { return x < 0.f ? x * penalty : x / penalty; }

// exp(x) for x in [kSamplingMinExponent, 0], the same bits on host and device: x = n·ln2 + r with
// |r| ≤ ln2/2 (ln2 split in two, Cody–Waite, so r keeps its low bits), then the
// degree-7 Taylor polynomial of e^r (truncation r^8/8! < 5.3e-9, below fp32's 6e-8), then · 2^n.
// Every multiply-add is an explicit fmaf so no compiler contracts differently. exp(0) = 1 exactly.
LOOM_HD inline float sampling_exp(float x) {
  const float n = rintf(x * 1.44269504f);  // log2(e)
  float r = fmaf(-n, 0.693145752f, x);     // ln2, high part (0x3f317200)
  r = fmaf(-n, 1.42860677e-6f, r);         // ln2, low part (0x35bfbe8e)
  float e = 1.f / 5040.f;
  e = fmaf(e, r, 1.f / 720.f);
  e = fmaf(e, r, 1.f / 120.f);
  e = fmaf(e, r, 1.f / 24.f);
  e = fmaf(e, r, 1.f / 6.f);
  e = fmaf(e, r, 0.5f);
  e = fmaf(e, r, 1.f);
  e = fmaf(e, r, 1.f);
  return ldexpf(e, int(n));
}

// The fp32 weight w = exp(x − max) of a token (0 for a filtered one, x = -inf).
LOOM_HD inline float sampling_weight(float x, float max) {
  const float d = x - max;
  return d < kSamplingMinExponent ? 0.f : sampling_exp(d);
}

// Fixed-point weight ⌊w · 2^40⌋: the product by a power of two is exact, the conversion truncates.
LOOM_HD inline uint64_t sampling_fixed(float w) { return uint64_t(w * kSamplingFixedOne); }

// Top-p keeps a token iff the mass of the tokens before it (q descending, index ascending) < top_p · Z.
LOOM_HD inline bool sampling_top_p_keeps(uint64_t mass_before, uint64_t Z, float top_p) {
  return double(mass_before) < double(top_p) * double(Z);
}

// The 64 random bits of one draw. The seed is salted so a run that samples with its training seed
// does not reuse the (stream, index) bits of its dropout masks.
LOOM_HD inline uint64_t sampling_random_bits(uint64_t seed, uint64_t sequence, uint64_t step) {
  return random_bits(seed ^ 0x73616d706c696e67ull, sequence, step);  // "sampling" in ASCII
}

// fp32 values as uint32 keys in the same order (-inf lowest; NaN excluded), so a radix select over
// keys picks fp32 values: -0 becomes +0 first, as the reference's float comparisons hold -0 == +0.
LOOM_HD inline uint32_t sampling_order_key(float x) {
  const float v = x == 0.f ? 0.f : x;
  uint32_t u;
#ifdef __CUDA_ARCH__
  u = __float_as_uint(v);
#else
  __builtin_memcpy(&u, &v, 4);
#endif
  return (u & 0x80000000u) ? ~u : u | 0x80000000u;
}

// Top-p within the tie group straddling the cut: the group's `ties` tokens of weight v follow tokens of
// total weight `above` (every heavier one), so its m-th token in index order has mass before it
// above + m · v, and is kept iff that is below top_p · Z (sampling_top_p_keeps). The number kept, in
// [1, ties] when the first one is kept: a binary search, as the mass grows with m.
LOOM_HD inline uint64_t sampling_top_p_kept_ties(uint64_t above, uint64_t v, uint64_t ties, uint64_t Z, float top_p) {
  uint64_t lo = 1, hi = ties;  // tokens before lo are kept; the count is in [lo, hi]
  while (lo < hi) {
    const uint64_t mid = lo + (hi - lo) / 2;
    if (sampling_top_p_keeps(above + mid * v, Z, top_p)) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}

// r = ⌊h · Z / 2^64⌋ in [0, Z): the draw's position on the integer CDF.
LOOM_HD inline uint64_t sampling_position(uint64_t h, uint64_t Z) {
#ifdef __CUDA_ARCH__
  return __umul64hi(h, Z);
#else
  return uint64_t((unsigned __int128)h * Z >> 64);
#endif
}

}  // namespace loom
