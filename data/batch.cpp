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

std::vector<int32_t> sequence_lengths(const Document& d) {
  return d.segments.empty() ? std::vector<int32_t>{int32_t(d.ids.size())} : d.segments;
}

int64_t document_targets(const Document& d) {
  int64_t n = 0, start = 0;
  for (int32_t len : sequence_lengths(d)) {
    for (int64_t i = start + 1; i < start + len; ++i) n += (d.mask[size_t(i)] != 0);
    start += len;
  }
  return n;
}

MicroBatch pad_micro_batch(const MicroBatch& mb, int64_t T) {
  LOOM_CHECK(T >= mb.T() && !mb.cu_seqlens.empty() && mb.cu_seqlens.back() == mb.T(), "pad_micro_batch: ", mb.T(),
             " tokens cannot grow to ", T);
  MicroBatch padded = mb;
  const int64_t pad = T - mb.T();
  padded.tokens.resize(size_t(T), 0);
  padded.targets.resize(size_t(T), kIgnoreIndex);
  for (int64_t i = 0; i < pad; ++i) padded.positions.push_back(int32_t(i));
  padded.cu_seqlens.resize(size_t(T) + 1, int32_t(T));  // the padding sequence ends at T, then empty ones
  return padded;
}

MicroBatch pack_documents(const std::vector<const Document*>& docs) {
  MicroBatch mb;
  mb.cu_seqlens.push_back(0);
  for (const Document* d : docs) {
    size_t start = 0;
    for (int32_t len : sequence_lengths(*d)) {
      const size_t end = start + size_t(len);
      for (size_t i = start; i < end; ++i) {
        mb.tokens.push_back(d->ids[i]);
        const bool has_next = i + 1 < end && d->mask[i + 1];
        mb.targets.push_back(has_next ? d->ids[i + 1] : kIgnoreIndex);
        mb.positions.push_back(int32_t(i - start));
      }
      mb.cu_seqlens.push_back(int32_t(mb.tokens.size()));
      start = end;
    }
  }
  return mb;
}

void check_segments(const Document& d, const std::string& name) {
  LOOM_CHECK(d.segments.size() != 1, name, " has a single segment; a document of one sequence has none (leave ",
             "segments empty)");
  int64_t covered = 0;
  for (size_t s = 0; s < d.segments.size(); ++s) {
    LOOM_CHECK(d.segments[s] >= 1, name, ": segment ", s, " has ", d.segments[s],
               " tokens; every sequence of a document has at least one (re-run data preparation)");
    covered += d.segments[s];
  }
  LOOM_CHECK(d.segments.empty() || covered == int64_t(d.ids.size()), name, " has ", d.ids.size(),
             " tokens but its segments sum to ", covered, "; they must cover it exactly (re-run data preparation)");
}

void check_packable(const Document& d, const std::string& name, int64_t token_budget) {
  LOOM_CHECK(!d.ids.empty(), name, " is empty; data preparation should drop empty documents");
  LOOM_CHECK(d.mask.size() == d.ids.size(), name, " has ", d.ids.size(), " ids but ", d.mask.size(),
             " mask entries; they must have the same length (re-run data preparation)");
  check_segments(d, name);
  LOOM_CHECK(int64_t(d.ids.size()) <= token_budget, name, " has ", d.ids.size(),
             " tokens, more than train.token_budget = ", token_budget,
             " (a micro-batch holds whole documents); raise train.token_budget to at least ", d.ids.size(),
             " or lower data.max_seq_len to at most ", token_budget, " and prepare the data again");
}

}  // namespace loom
