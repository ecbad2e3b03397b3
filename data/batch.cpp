#include "data/batch.h"

#include <cstddef>

#include "ops/cross_entropy.h"
#include "ops/error.h"

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

void check_packable(const Document& d, const std::string& name, int64_t token_budget) {
  LOOM_CHECK(!d.ids.empty(), name, " is empty; data preparation should drop empty documents");
  LOOM_CHECK(d.mask.size() == d.ids.size(), name, " has ", d.ids.size(), " ids but ", d.mask.size(),
             " mask entries; they must have the same length (re-run data preparation)");
  LOOM_CHECK(int64_t(d.ids.size()) <= token_budget, name, " has ", d.ids.size(),
             " tokens, more than train.token_budget = ", token_budget,
             " (a micro-batch holds whole documents); raise train.token_budget to at least ", d.ids.size(),
             " or lower data.max_seq_len to at most ", token_budget, " and prepare the data again");
}

}  // namespace loom
