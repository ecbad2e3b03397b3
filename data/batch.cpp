#include "data/batch.h"

#include <cstddef>

#include "ops/cross_entropy.h"

namespace loom {

int64_t MicroBatch::n_targets() const {
  int64_t n = 0;
  for (int32_t t : targets) n += (t != kIgnoreIndex);
  return n;
}

MicroBatch pack_documents(const std::vector<const Document*>& docs) {
  MicroBatch mb;
  mb.cu_seqlens.push_back(0);
  for (const Document* d : docs) {
    const size_t n = d->ids.size();
    for (size_t i = 0; i < n; ++i) {
      mb.tokens.push_back(d->ids[i]);
      const bool has_next = i + 1 < n && d->mask[i + 1];
      mb.targets.push_back(has_next ? d->ids[i + 1] : kIgnoreIndex);
      mb.positions.push_back(int32_t(i));
    }
    mb.cu_seqlens.push_back(int32_t(mb.tokens.size()));
  }
  return mb;
}

}  // namespace loom
