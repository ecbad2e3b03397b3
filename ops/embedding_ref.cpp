// Embedding lookup, fp32 CPU reference: out[t, :] = table[ids[t], :] (embedding.h).
#include <cstring>

#include "ops/embedding.h"
#include "ops/parallel.h"

namespace loom {

void embedding_forward_ref(float* out, const int32_t* ids, const float* table, int64_t T, int C) {
#pragma omp parallel for if (worth_threads(T * C))
  for (int64_t t = 0; t < T; ++t)
    std::memcpy(out + t * C, table + static_cast<int64_t>(ids[t]) * C, sizeof(float) * C);
}

}  // namespace loom
