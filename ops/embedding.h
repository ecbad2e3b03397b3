// Embedding lookup: out[t, :] = table[ids[t], :]. The table is frozen, so there is no backward.
#pragma once
#include <cstdint>

namespace loom {
// out (T, C), ids (T), table (V, C). Ids must be < V (checked by the data pipeline).
void embedding_forward_ref(float* out, const int32_t* ids, const float* table, int64_t T, int C);
}  // namespace loom
