#include "data/eval_set.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "data/packing.h"
#include "data/rng.h"
#include "ops/error.h"

namespace loom {
namespace {

// Segments count only when a document has them: single-sequence data keeps the split it had
// before segments existed.
uint64_t content_hash(const Document& d) {
  uint64_t h = mix64(uint64_t(d.ids.size()));
  for (size_t i = 0; i < d.ids.size(); ++i)
    h = mix64(h ^ (uint64_t(uint32_t(d.ids[i])) | (uint64_t(d.mask[i]) << 32)));
  if (!d.segments.empty()) h = mix64(h ^ (uint64_t(d.segments.size()) << 40));
  for (int32_t len : d.segments) h = mix64(h ^ uint64_t(uint32_t(len)));
  return h;
}

bool same_content(const Document& a, const Document& b) {
  return a.ids == b.ids && a.mask == b.mask && a.segments == b.segments;
}

// Documents to hold out for data.eval_split = value out of n.
int64_t eval_count(double value, int64_t n) {
  const bool fraction = value > 0 && value < 1;
  const bool count = value >= 1 && value == std::floor(value);
  LOOM_CHECK(fraction || count, "data.eval_split must be a fraction in (0, 1) or a whole count of documents >= 1 ",
             "(found ", value, ")");
  const int64_t k = fraction ? std::max<int64_t>(1, std::llround(value * double(n))) : int64_t(value);
  LOOM_CHECK(k < n, "data.eval_split = ", value, " holds out ", k, " of the ", n,
             " training documents, leaving none to train on; lower data.eval_split");
  return k;
}

// Positions of docs by (hash, content): a total order on contents, so copies are adjacent.
std::vector<size_t> hash_order(const std::vector<Document>& docs) {
  std::vector<uint64_t> hash(docs.size());
  for (size_t i = 0; i < docs.size(); ++i) hash[i] = content_hash(docs[i]);
  std::vector<size_t> order(docs.size());
  std::iota(order.begin(), order.end(), size_t(0));
  std::sort(order.begin(), order.end(), [&](size_t a, size_t b) {
    if (hash[a] != hash[b]) return hash[a] < hash[b];
    if (docs[a].ids != docs[b].ids) return docs[a].ids < docs[b].ids;
    if (docs[a].mask != docs[b].mask) return docs[a].mask < docs[b].mask;
    return docs[a].segments < docs[b].segments;
  });
  return order;
}


// Owner rank of each micro-batch (tokens per micro-batch given): largest first to the rank with
// the fewest tokens, ties to the lower rank.
std::vector<int> deal_to_ranks(const std::vector<int64_t>& tokens, int world) {
  std::vector<size_t> order(tokens.size());
  std::iota(order.begin(), order.end(), size_t(0));
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) { return tokens[a] > tokens[b]; });
  std::vector<int64_t> load(size_t(world), 0);
  std::vector<int> owner(tokens.size());
  for (size_t m : order) {
    const int r = int(std::min_element(load.begin(), load.end()) - load.begin());
    owner[m] = r;
    load[size_t(r)] += tokens[m];
  }
  return owner;
}

}  // namespace

EvalSplit split_eval_documents(std::vector<Document> docs, double eval_split) {
  const int64_t n = int64_t(docs.size());
  const int64_t k = eval_count(eval_split, n);
  const std::vector<size_t> order = hash_order(docs);
  std::vector<bool> held(docs.size(), false);
  int64_t taken = 0;
  // Whole groups of copies, smallest hash first, until k documents are held out.
  for (size_t i = 0; i < order.size() && taken < k; ++i) {
    held[order[i]] = true;
    ++taken;
    while (i + 1 < order.size() && same_content(docs[order[i]], docs[order[i + 1]])) {
      held[order[++i]] = true;
      ++taken;
    }
  }
  LOOM_CHECK(taken < n, "data.eval_split = ", eval_split, " holds out ", k, " of the ", n,
             " training documents, and their copies in the data make it all ", n,
             ", leaving none to train on; lower data.eval_split or remove the duplicates");
  EvalSplit split;
  split.train.reserve(size_t(n - taken));
  split.eval.reserve(size_t(taken));
  for (size_t i : order)
    if (held[i]) split.eval.push_back(std::move(docs[i]));
  for (size_t i = 0; i < docs.size(); ++i)
    if (!held[i]) split.train.push_back(std::move(docs[i]));
  return split;
}

std::vector<MicroBatch> eval_micro_batches(const std::vector<Document>& eval, int64_t token_budget, int rank,
                                           int world) {
  LOOM_CHECK(token_budget > 0, "train.token_budget must be > 0, got ", token_budget);
  LOOM_CHECK(world >= 1 && rank >= 0 && rank < world, "eval: rank ", rank, " is outside a world of ", world,
             " ranks");
  std::vector<int64_t> lengths;
  lengths.reserve(eval.size());
  for (size_t i = 0; i < eval.size(); ++i) {
    check_packable(eval[i], cat("eval document ", i), token_budget);
    lengths.push_back(int64_t(eval[i].ids.size()));
  }
  const auto bins = pack_first_fit_decreasing(lengths, token_budget);
  std::vector<int64_t> bin_tokens;
  for (const auto& bin : bins) {
    int64_t t = 0;
    for (int64_t pos : bin) t += lengths[size_t(pos)];
    bin_tokens.push_back(t);
  }
  const std::vector<int> owner = deal_to_ranks(bin_tokens, world);
  std::vector<MicroBatch> mine;
  for (size_t b = 0; b < bins.size(); ++b) {
    if (owner[b] != rank) continue;
    std::vector<const Document*> docs;
    for (int64_t pos : bins[b]) docs.push_back(&eval[size_t(pos)]);
    mine.push_back(pack_documents(docs));
  }
  return mine;
}

}  // namespace loom
