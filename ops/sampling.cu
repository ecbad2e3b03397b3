// Greedy token choice and sampling on the GPU (math in ops/sampling.h): one block per row of logits.
#include <cfloat>
#include <climits>

#include "ops/error.h"
#include "ops/kernel_util.cuh"
#include "ops/sampling.h"

namespace loom {
namespace {

constexpr int kGreedyThreads = 1024;

// The better of two candidates: the larger logit, the lower index on equal logits.
__device__ inline void keep_better(float& best, int& index, float other, int other_index) {
  if (other > best || (other == best && other_index < index)) {
    best = other;
    index = other_index;
  }
}

// Each thread scans a strided slice (indices ascending, so `>` keeps the first of equal maxima), then
// the block reduces (best, index) and the lowest non-finite index through warp shuffles and shared
// memory. A row of -inf leaves index INT_MAX, a NaN or +inf logit sets `bad`.
__global__ void greedy_kernel(int32_t* codes, const float* logits, int V) {
  const float* x = logits + int64_t(blockIdx.x) * V;
  float best = -INFINITY;
  int index = INT_MAX, bad = INT_MAX;
  for (int i = threadIdx.x; i < V; i += blockDim.x) {
    const float v = x[i];
    if (isnan(v) || v == INFINITY) bad = min(bad, i);
    else if (v > best) best = v, index = i;
  }
  for (int offset = 16; offset > 0; offset /= 2) {
    keep_better(best, index, __shfl_down_sync(0xffffffffu, best, offset), __shfl_down_sync(0xffffffffu, index, offset));
    bad = min(bad, __shfl_down_sync(0xffffffffu, bad, offset));
  }
  __shared__ float warp_best[kGreedyThreads / 32];
  __shared__ int warp_index[kGreedyThreads / 32], warp_bad[kGreedyThreads / 32];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  if (lane == 0) warp_best[warp] = best, warp_index[warp] = index, warp_bad[warp] = bad;
  __syncthreads();
  if (threadIdx.x != 0) return;
  for (int w = 1; w < int(blockDim.x / 32); ++w) {
    keep_better(best, index, warp_best[w], warp_index[w]);
    bad = min(bad, warp_bad[w]);
  }
  codes[blockIdx.x] = bad != INT_MAX ? -2 - bad : index == INT_MAX ? -1 : index;
}


// ---- sampling ----
// One block per row walks the row several times (the row is 0.6 MB at V = 151936: passes after the
// first come from L2). Every value a pass needs is recomputed from the logits with sampling.h's
// helpers, so each pass sees the reference's bits; every sum is an integer, so no order matters.

constexpr int kSampleThreads = 1024;
constexpr int kSampleWarps = kSampleThreads / 32;
constexpr int kDigitBits = 11;  // radix select: 3 passes over fp32 keys, 4 over 41-bit weights
constexpr int kBuckets = 1 << kDigitBits;
constexpr int kWeightBits = 41;  // q <= 2^40
using u64 = unsigned long long;  // the type CUDA's 64-bit atomics and shuffles take
static_assert(sizeof(u64) == sizeof(uint64_t), "u64 must be 64 bits");

__device__ inline u64 warp_sum(u64 v) {
  for (int offset = 16; offset > 0; offset /= 2) v += __shfl_xor_sync(0xffffffffu, v, offset);
  return v;
}

__device__ inline u64 warp_inclusive_scan(u64 v) {
  const int lane = threadIdx.x % 32;
  for (int offset = 1; offset < 32; offset *= 2) {
    const u64 other = __shfl_up_sync(0xffffffffu, v, offset);
    if (lane >= offset) v += other;
  }
  return v;
}

// Exclusive prefix sum of v over the threads in index order; total gets the sum of all.
__device__ u64 block_exclusive_scan(u64 v, u64& total) {
  __shared__ u64 warp_totals[kSampleWarps];
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const u64 inclusive = warp_inclusive_scan(v);
  __syncthreads();  // warp_totals may still be read by a previous call
  if (lane == 31) warp_totals[warp] = inclusive;
  __syncthreads();
  const u64 warps_inclusive = warp_inclusive_scan(warp_totals[lane]);
  total = __shfl_sync(0xffffffffu, warps_inclusive, 31);
  const u64 warps_before = __shfl_sync(0xffffffffu, warps_inclusive - warp_totals[lane], warp);
  return warps_before + inclusive - v;
}

__device__ u64 block_sum_u64(u64 v) {
  u64 total;
  block_exclusive_scan(v, total);
  return total;
}

__device__ int block_min_int(int v) {
  __shared__ int warp_mins[kSampleWarps];
  v = __reduce_min_sync(0xffffffffu, v);
  __syncthreads();
  if (threadIdx.x % 32 == 0) warp_mins[threadIdx.x / 32] = v;
  __syncthreads();
  return __reduce_min_sync(0xffffffffu, warp_mins[threadIdx.x % 32]);
}

// Every thread gets the block's argmax (the lowest index of equal maxima, as std::max_element).
__device__ int block_argmax(float best, int index) {
  __shared__ float warp_best[kSampleWarps];
  __shared__ int warp_index[kSampleWarps];
  for (int offset = 16; offset > 0; offset /= 2)
    keep_better(best, index, __shfl_down_sync(0xffffffffu, best, offset), __shfl_down_sync(0xffffffffu, index, offset));
  __syncthreads();
  if (threadIdx.x % 32 == 0) warp_best[threadIdx.x / 32] = best, warp_index[threadIdx.x / 32] = index;
  __syncthreads();
  best = warp_best[threadIdx.x % 32];
  index = warp_index[threadIdx.x % 32];
  for (int offset = 16; offset > 0; offset /= 2)
    keep_better(best, index, __shfl_xor_sync(0xffffffffu, best, offset), __shfl_xor_sync(0xffffffffu, index, offset));
  return index;
}

// What the passes know about a row: each function recomputes an element from the (penalised) logit.
struct SampleRow {
  const float* x;
  float temperature;
  float max;                // of x / temperature
  uint32_t kth_key = 0;     // top-k keeps sampling_order_key(x / temperature) >= kth_key (0: all)
  uint64_t p_floor = 0;     // top-p keeps q > p_floor, and q == p_floor below index p_cut
  int p_cut = INT_MAX;
  float min_p = 0.f;

  __device__ float scaled(int i) const { return x[i] / temperature; }  // true division (no fast-math)
  // The weight w of sampling.h after top-k (0 for a removed token, as its -inf would give).
  __device__ float weight(int i) const {
    const float v = scaled(i);
    return sampling_order_key(v) >= kth_key ? sampling_weight(v, max) : 0.f;
  }
  __device__ uint64_t fixed(int i) const { return sampling_fixed(weight(i)); }
  // The final fixed-point weight: after top-p and min-p.
  __device__ uint64_t kept(int i) const {
    const float w = weight(i);
    const uint64_t q = sampling_fixed(w);
    const bool top_p = q > p_floor || (q == p_floor && i < p_cut);
    return top_p && w >= min_p ? q : 0;
  }
};

// hist[bucket] += weight for the lanes where `take` holds, one shared atomic per distinct bucket of
// the warp: a row's values crowd into few buckets, where plain atomics would serialise 32-fold.
// weight < 2^41 is summed in two parts whose sums over 32 lanes fit 32 bits. All 32 lanes call it.
__device__ inline void histogram_add(u64* hist, bool take, unsigned bucket, uint64_t weight) {
  const unsigned takers = __ballot_sync(0xffffffffu, take);
  if (!take) return;
  const unsigned peers = __match_any_sync(takers, bucket);
  const unsigned low = __reduce_add_sync(peers, unsigned(weight & 0xffffffu));
  const unsigned high = __reduce_add_sync(peers, unsigned(weight >> 24));
  if (int(threadIdx.x % 32) == __ffs(peers) - 1) atomicAdd(&hist[bucket], (u64(high) << 24) + low);
}

struct RadixResult {
  uint64_t key;    // the selected key t
  uint64_t above;  // the weight of the elements whose key is > t
  uint64_t at;     // the weight of those whose key is t
};

// The largest key t (key_bits wide) with enough(weight of the elements with key >= t), digit by digit
// from the top, in hist (kBuckets, shared). enough must be monotone, false for 0 and true for the
// whole row; element(i, key, weight) says whether element i takes part. Each pass keeps `above` (the
// weight of keys greater than the prefix chosen so far) and picks the largest digit d with
// enough(above + weight of digits >= d): one exists, as enough(above) is false and enough(above +
// the prefix's weight) true.
template <class Element, class Enough>
__device__ RadixResult radix_select(int V, int key_bits, Element element, Enough enough, u64* hist) {
  __shared__ RadixResult chosen;
  uint64_t prefix = 0, above = 0, at = 0;
  for (int high = key_bits; high > 0;) {
    const int shift = max(high - kDigitBits, 0);
    for (int b = threadIdx.x; b < kBuckets; b += blockDim.x) hist[b] = 0;
    __syncthreads();
    for (int base = 0; base < V; base += blockDim.x) {
      const int i = base + threadIdx.x;
      uint64_t key = 0, weight = 0;
      const bool take = i < V && element(i, key, weight) && (key >> high) == prefix;
      histogram_add(hist, take, unsigned(key >> shift) & (kBuckets - 1), weight);
    }
    __syncthreads();
    // thread j owns buckets top - 2j and top - 2j - 1: a scan in thread order sums from the top bucket
    const int top = kBuckets - 1 - 2 * int(threadIdx.x);
    const u64 h1 = hist[top], h2 = hist[top - 1];
    u64 total;
    const u64 before = above + block_exclusive_scan(h1 + h2, total);
    if (!enough(before) && enough(before + h1)) chosen = {uint64_t(top), before, h1};
    if (!enough(before + h1) && enough(before + h1 + h2)) chosen = {uint64_t(top - 1), before + h1, h2};
    __syncthreads();
    prefix = (prefix << (high - shift)) | chosen.key;
    above = chosen.above;
    at = chosen.at;
    high = shift;
    __syncthreads();  // chosen is rewritten by the next pass
  }
  return {prefix, above, at};
}

// Per-chunk sums of weight(i) into chunk_sums (one chunk per thread, a multiple of 32 long, each read
// by one warp); returns the total.
template <class Weight>
__device__ u64 chunk_sums_of(int V, int chunk, Weight weight, u64* chunk_sums) {
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  for (int c = warp; c < kSampleThreads; c += kSampleWarps) {
    u64 sum = 0;
    for (int j = lane; j < chunk; j += 32) {
      const int i = c * chunk + j;
      if (i < V) sum += weight(i);
    }
    sum = warp_sum(sum);
    if (lane == 0) chunk_sums[c] = sum;
  }
  __syncthreads();
  return block_sum_u64(chunk_sums[threadIdx.x]);
}

// The first index whose inclusive prefix sum of weight exceeds r (r < the total of chunk_sums, which
// chunk_sums_of filled with the same weight): the chunk by a block scan, the index by warp 0.
template <class Weight>
__device__ int first_exceeding(int V, int chunk, Weight weight, const u64* chunk_sums, u64 r) {
  __shared__ int found_chunk, found_index;
  __shared__ u64 found_base;
  u64 total;
  const u64 mine = chunk_sums[threadIdx.x];
  const u64 before = block_exclusive_scan(mine, total);
  if (before <= r && r - before < mine) found_chunk = threadIdx.x, found_base = before;
  __syncthreads();
  if (threadIdx.x < 32) {
    u64 base = found_base;
    for (int j = 0; j < chunk; j += 32) {
      const int i = found_chunk * chunk + j + int(threadIdx.x);
      const u64 inclusive = warp_inclusive_scan(i < V ? u64(weight(i)) : 0);
      const unsigned over = __ballot_sync(0xffffffffu, base + inclusive > r);
      if (over) {
        if (threadIdx.x == 0) found_index = found_chunk * chunk + j + __ffs(over) - 1;
        break;
      }
      base += __shfl_sync(0xffffffffu, inclusive, 31);
    }
  }
  __syncthreads();
  return found_index;
}

struct SampleArgs {
  int32_t* codes;
  float* logits;
  int V;
  SamplingParams p;
  const int32_t* context;
  const int32_t* context_len;
  int64_t context_stride;
  const uint64_t* sequence;
  const uint64_t* step;
  uint32_t* masks;  // two bitmasks of V bits per row: ids seen, ids whose penalty overflowed
};

__device__ inline int mask_words(int V) { return (V + 31) / 32; }

// Step 1 (sampling_ref.cpp penalised_logits): every distinct context id < V penalised once, by the
// thread that sets its bit. Returns the refusal code, or 0 when none.
__device__ int32_t penalize_context(const SampleArgs& a, float* x, const int32_t* context, int n) {
  const int V = a.V;
  int negative = INT_MAX;
  for (int t = threadIdx.x; t < n; t += blockDim.x)
    if (context[t] < 0) negative = min(negative, t);
  negative = block_min_int(negative);
  if (negative != INT_MAX) return sampling_code_negative_context(negative, V);
  if (a.p.repetition_penalty == 1.f) return 0;
  uint32_t* seen = a.masks + int64_t(blockIdx.x) * 2 * mask_words(V);
  uint32_t* overflowed = seen + mask_words(V);
  for (int w = threadIdx.x; w < 2 * mask_words(V); w += blockDim.x) seen[w] = 0;
  __syncthreads();
  int any_overflow = 0;
  for (int t = threadIdx.x; t < n; t += blockDim.x) {
    const int id = context[t];
    if (id >= V) continue;  // HF drops ids past the vocabulary
    const uint32_t bit = 1u << (id % 32);
    if (atomicOr(&seen[id / 32], bit) & bit) continue;
    const float before = x[id], after = sampling_penalize(before, a.p.repetition_penalty);
    x[id] = after;
    if (!isfinite(after) && !isinf(before)) {
      atomicOr(&overflowed[id / 32], bit);
      any_overflow = 1;
    }
  }
  if (!__syncthreads_or(any_overflow)) return 0;
  // the reference names the first context position holding an overflowing id
  int first = INT_MAX;
  for (int t = threadIdx.x; t < n; t += blockDim.x) {
    const int id = context[t];
    if (id < V && (overflowed[id / 32] >> (id % 32) & 1u)) first = min(first, t);
  }
  return sampling_code_penalty_overflow(context[block_min_int(first)], V);
}

// The reference's steps in its order (sampling_ref.cpp sample_token_ref); each refusal ends the row
// with its code. Every branch depends on block-wide values only, so the block returns together.
__global__ void __launch_bounds__(kSampleThreads) sample_kernel(SampleArgs a) {
  __shared__ u64 shared[kBuckets];  // the radix histograms, then the chunk sums of the scans
  u64* chunk_sums = shared;
  static_assert(kBuckets >= kSampleThreads, "a chunk sum per thread");
  const int V = a.V, row = blockIdx.x;
  float* x = a.logits + int64_t(row) * V;
  auto finish = [&](int32_t code) {
    if (threadIdx.x == 0) a.codes[row] = code;
  };

  // check_logits: the lowest NaN / +inf index, then a row of -inf
  int bad = INT_MAX, finite = 0;
  for (int i = threadIdx.x; i < V; i += blockDim.x) {
    const float v = x[i];
    if (isnan(v) || v == INFINITY) bad = min(bad, i);
    finite |= isfinite(v);
  }
  bad = block_min_int(bad);
  if (bad != INT_MAX) return finish(-2 - bad);
  if (!__syncthreads_or(finite)) return finish(-1);

  const int32_t* context = a.context + int64_t(row) * a.context_stride;
  const int32_t refusal = penalize_context(a, x, context, a.context_len[row]);
  if (refusal != 0) return finish(refusal);
  __syncthreads();  // the penalised logits are read by every thread below

  if (a.p.temperature == 0.f) {  // greedy over the penalised logits
    float best = -INFINITY;
    int index = INT_MAX;
    for (int i = threadIdx.x; i < V; i += blockDim.x)
      if (x[i] > best) best = x[i], index = i;
    return finish(block_argmax(best, index));
  }

  // chunks of the CDF scans: one per thread, whole warps of elements
  const int chunk = ((V + kSampleThreads - 1) / kSampleThreads + 31) / 32 * 32;
  SampleRow s{x, a.p.temperature, -INFINITY};
  float max = -INFINITY;
  for (int i = threadIdx.x; i < V; i += blockDim.x) max = fmaxf(max, s.scaled(i));
  s.max = block_max(max);
  if (!isfinite(s.max)) return finish(sampling_code_temperature_overflow(V));

  const int k = a.p.top_k;
  if (k > 0 && k < V) {  // the k-th largest value: the largest t with #{key >= t} >= k
    const RadixResult kth = radix_select(
        V, 32,
        [&](int i, uint64_t& key, uint64_t& weight) {
          key = sampling_order_key(s.scaled(i));
          weight = 1;
          return true;
        },
        [&](uint64_t count) { return count >= uint64_t(k); }, shared);
    s.kth_key = uint32_t(kth.key);
  }

  if (a.p.top_p < 1.f) {
    // Tokens in order (q descending, index ascending) are kept while the mass before them is below
    // top_p · Z: the lowest kept value v is the largest t whose mass of q >= t is not (> v are all
    // kept); within v's ties the first ones in index order are.
    u64 sum = 0;
    for (int i = threadIdx.x; i < V; i += blockDim.x) sum += s.fixed(i);
    const uint64_t Z = block_sum_u64(sum);
    const float top_p = a.p.top_p;
    const RadixResult cut = radix_select(
        V, kWeightBits,
        [&](int i, uint64_t& key, uint64_t& weight) {
          key = weight = s.fixed(i);
          return weight > 0;
        },
        [&](uint64_t mass) { return !sampling_top_p_keeps(mass, Z, top_p); }, shared);
    const uint64_t v = cut.key, ties = cut.at / v;
    const uint64_t kept_ties = sampling_top_p_kept_ties(cut.above, v, ties, Z, top_p);
    s.p_floor = v;
    if (kept_ties < ties) {  // the cut falls inside the ties: at the index of the tie of rank kept_ties
      auto is_tie = [&](int i) { return u64(s.fixed(i) == v); };
      chunk_sums_of(V, chunk, is_tie, chunk_sums);
      s.p_cut = first_exceeding(V, chunk, is_tie, chunk_sums, kept_ties);
    }
  }
  s.min_p = a.p.min_p;

  // The draw: r on the integer CDF of the kept weights, then its token.
  auto kept = [&](int i) { return u64(s.kept(i)); };
  const u64 Z_kept = chunk_sums_of(V, chunk, kept, chunk_sums);
  const u64 r = sampling_position(sampling_random_bits(a.p.seed, a.sequence[row], a.step[row]), Z_kept);
  finish(first_exceeding(V, chunk, kept, chunk_sums, r));
}

}  // namespace

void greedy_tokens(int32_t* codes, const float* logits, int rows, int V, cudaStream_t stream) {
  LOOM_CHECK(rows >= 0 && V >= 1 && V <= kSamplingMaxVocab, "greedy_tokens: ", rows, " rows of ", V, " logits");
  if (rows == 0) return;
  greedy_kernel<<<unsigned(rows), kGreedyThreads, 0, stream>>>(codes, logits, V);
  CUDA_CHECK(cudaGetLastError());
}


int64_t sample_tokens_scratch_bytes(int rows, int V) {
  LOOM_CHECK(rows >= 0 && V >= 1 && V <= kSamplingMaxVocab, "sample_tokens: ", rows, " rows of ", V, " logits");
  return int64_t(rows) * 2 * ((V + 31) / 32) * int64_t(sizeof(uint32_t));
}

void sample_tokens(int32_t* codes, float* logits, int rows, int V, const SamplingParams& p, const int32_t* context,
                   const int32_t* context_len, int64_t context_stride, const uint64_t* sequence,
                   const uint64_t* step, void* scratch, int64_t scratch_bytes, cudaStream_t stream) {
  check_sampling_params(p);
  const int64_t needed = sample_tokens_scratch_bytes(rows, V);
  LOOM_CHECK(scratch_bytes >= needed && reinterpret_cast<uintptr_t>(scratch) % alignof(uint32_t) == 0,
             "sample_tokens: scratch of ", scratch_bytes, " bytes at ", scratch, "; needs ", needed,
             " bytes, 4-byte aligned (sample_tokens_scratch_bytes)");
  LOOM_CHECK(context_stride >= 0 && context_stride <= sampling_max_context(V), "sample_tokens: context stride ",
             context_stride, " must be in [0, ", sampling_max_context(V), "]");
  if (rows == 0) return;
  const SampleArgs args{codes,    logits, V,    p, context, context_len, context_stride,
                        sequence, step,   static_cast<uint32_t*>(scratch)};
  sample_kernel<<<unsigned(rows), kSampleThreads, 0, stream>>>(args);
  CUDA_CHECK(cudaGetLastError());
}

}  // namespace loom
