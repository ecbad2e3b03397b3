// Embedding lookup: out[t, :] = table[ids[t], :]. The table is frozen, so there is no backward.
#pragma once
#include <cstdint>

namespace loom {
// out (T, C), ids (T), table (V, C). Ids must be < V (checked by the data pipeline).
void embedding_forward_ref(float* out, const int32_t* ids, const float* table, int64_t T, int C);
}  // namespace loom

// CUDA path (ops/embedding.cu): bf16 table and output, the rows copied unchanged.
#include "ops/cuda_common.h"

namespace loom {
// out (T, C) written; ids (T) int32 in [0, V); table (V, C). C % 8 == 0, out and table 16-byte aligned.
void embedding_forward(bf16* out, const int32_t* ids, const bf16* table, int64_t T, int C, cudaStream_t stream);
}  // namespace loom
