// KV cache writes, fp32 reference (math in kv_cache.h).
#include <algorithm>

#include "ops/error.h"
#include "ops/kv_cache.h"

namespace loom {

void kv_cache_write_ref(float* cache_k, float* cache_v, const float* k, const float* v, const int32_t* slot,
                        const int32_t* pos, int64_t T, int KVH, int D, int B, int64_t capacity) {
  const int64_t row = int64_t(KVH) * D;
  for (int64_t t = 0; t < T; ++t) {
    LOOM_CHECK(slot[t] >= 0 && slot[t] < B && pos[t] >= 0 && pos[t] < capacity, "kv cache: row ", t, " goes to slot ",
               slot[t], " position ", pos[t], ", outside ", B, " sequences of ", capacity, " positions");
    const int64_t at = (int64_t(slot[t]) * capacity + pos[t]) * row;
    std::copy(k + t * row, k + (t + 1) * row, cache_k + at);
    std::copy(v + t * row, v + (t + 1) * row, cache_v + at);
  }
}

void token_cache_write_ref(int32_t* ids, const int32_t* tokens, const int32_t* slot, const int32_t* pos, int64_t T,
                           int B, int64_t capacity) {
  for (int64_t t = 0; t < T; ++t) {
    LOOM_CHECK(slot[t] >= 0 && slot[t] < B && pos[t] >= 0 && pos[t] < capacity, "token cache: token ", t,
               " goes to slot ", slot[t], " position ", pos[t], ", outside ", B, " sequences of ", capacity, " positions");
    ids[int64_t(slot[t]) * capacity + pos[t]] = tokens[t];
  }
}

}  // namespace loom
