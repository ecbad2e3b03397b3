// The KV cache of generation: each row of a layer's new keys and values goes to its sequence's slot
// at its position.
//   cache[(slot[t] · capacity + pos[t]) · KVH · D + i] = src[t · KVH · D + i]    for k and v
// Prefill writes a packed batch of prompts (row t: its prompt's index, its position in the prompt);
// a decode step writes one row per sequence (slot b, the sequence's length so far). A pure copy:
// the GPU result equals the reference bit for bit. Layout of a cache: (B, capacity, KVH, D), as
// ops/attention_decode.h reads it.
// The sequences' token ids are kept the same way, one id per position (ids (B, capacity)):
//   ids[slot[t] · capacity + pos[t]] = tokens[t]
// the context a repetition penalty looks at (ops/sampling.h sample_tokens).
#pragma once
#include <cstdint>

#include "ops/cuda_common.h"

namespace loom {

// fp32 reference (tests); every slot in [0, B) and pos in [0, capacity) (checked).
void kv_cache_write_ref(float* cache_k, float* cache_v, const float* k, const float* v, const int32_t* slot,
                        const int32_t* pos, int64_t T, int KVH, int D, int B, int64_t capacity);

// bf16 on the device; slot and pos device arrays (T), in range (the caller plans them).
void kv_cache_write(bf16* cache_k, bf16* cache_v, const bf16* k, const bf16* v, const int32_t* slot,
                    const int32_t* pos, int64_t T, int KVH, int D, int64_t capacity, cudaStream_t stream);

// The token ids: reference (checked) and device (tokens, slot, pos device arrays (T), in range).
void token_cache_write_ref(int32_t* ids, const int32_t* tokens, const int32_t* slot, const int32_t* pos, int64_t T,
                           int B, int64_t capacity);
void token_cache_write(int32_t* ids, const int32_t* tokens, const int32_t* slot, const int32_t* pos, int64_t T,
                       int64_t capacity, cudaStream_t stream);

}  // namespace loom
