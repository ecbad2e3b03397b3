#include "data/packing.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "ops/error.h"

namespace loom {
namespace {

// Positions sorted longest first; equal lengths keep their batch order so the plan is a pure
// function of the input (std::stable_sort is deterministic on every standard library).
std::vector<int64_t> longest_first(const std::vector<int64_t>& lengths) {
  std::vector<int64_t> order(lengths.size());
  std::iota(order.begin(), order.end(), int64_t(0));
  std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return lengths[a] > lengths[b]; });
  return order;
}

// Loads while splitting: `cost` is sum of L·K + L² (see the header).
struct SplitLoad {
  int64_t tokens = 0;
  int64_t cost = 0;
};

// The rank of least cost (ties: fewer tokens, then the lower rank) among those whose tokens stay
// <= token_cap after taking `length`. The least-token rank always qualifies when token_cap is
// min tokens + the longest document.
int cheapest_within(const std::vector<SplitLoad>& loads, int64_t length, int64_t token_cap) {
  int best = -1;
  for (int r = 0; r < int(loads.size()); ++r) {
    if (loads[r].tokens + length > token_cap) continue;
    const bool better = best < 0 || loads[r].cost < loads[best].cost ||
                        (loads[r].cost == loads[best].cost && loads[r].tokens < loads[best].tokens);
    if (better) best = r;
  }
  return best;
}

}  // namespace

int64_t attention_span(double matmul_params, int n_layers, int n_heads, int head_dim) {
  LOOM_CHECK(matmul_params > 0 && n_layers > 0 && n_heads > 0 && head_dim > 0,
             "attention_span: parameters and shapes must be > 0");
  const double span = 2.0 * matmul_params / (3.0 * n_layers * double(n_heads) * head_dim);
  return std::max<int64_t>(1, std::llround(span));
}

std::vector<std::vector<int64_t>> split_across_ranks(const std::vector<int64_t>& lengths, int world,
                                                     int64_t attention_span) {
  LOOM_CHECK(world >= 1, "split_across_ranks: world size must be >= 1, got ", world);
  LOOM_CHECK(attention_span >= 1, "split_across_ranks: attention span must be >= 1, got ", attention_span);
  std::vector<std::vector<int64_t>> ranks(world);
  if (lengths.empty()) return ranks;
  const std::vector<int64_t> order = longest_first(lengths);
  const int64_t longest = lengths[order.front()];
  std::vector<SplitLoad> loads(world);
  for (int64_t pos : order) {
    const int64_t length = lengths[pos];
    int64_t fewest = loads[0].tokens;
    for (const SplitLoad& l : loads) fewest = std::min(fewest, l.tokens);
    const int r = cheapest_within(loads, length, fewest + longest);
    ranks[r].push_back(pos);
    loads[r].tokens += length;
    loads[r].cost += length * attention_span + length * length;
  }
  return ranks;
}

std::vector<std::vector<int64_t>> pack_first_fit_decreasing(const std::vector<int64_t>& lengths,
                                                            int64_t token_budget) {
  LOOM_CHECK(token_budget > 0, "token budget must be > 0, got ", token_budget);
  std::vector<std::vector<int64_t>> bins;
  std::vector<int64_t> used;
  for (int64_t pos : longest_first(lengths)) {
    const int64_t length = lengths[pos];
    LOOM_CHECK(length <= token_budget, "a document of ", length, " tokens (position ", pos,
               " of the batch) does not fit in a micro-batch of train.token_budget = ", token_budget,
               " tokens; raise train.token_budget to at least ", length, " or lower data.max_seq_len");
    size_t b = 0;
    while (b < bins.size() && used[b] + length > token_budget) ++b;
    if (b == bins.size()) {
      bins.emplace_back();
      used.push_back(0);
    }
    bins[b].push_back(pos);
    used[b] += length;
  }
  return bins;
}

int64_t padded_batch_tokens(const std::vector<int64_t>& lengths, int group) {
  LOOM_CHECK(group >= 1, "padded baseline group size must be >= 1, got ", group);
  int64_t total = 0;
  for (size_t begin = 0; begin < lengths.size(); begin += size_t(group)) {
    const size_t end = std::min(lengths.size(), begin + size_t(group));
    const int64_t longest = *std::max_element(lengths.begin() + begin, lengths.begin() + end);
    total += int64_t(end - begin) * longest;
  }
  return total;
}

double PackingStats::efficiency() const {
  const int64_t capacity = micro_batches * token_budget;
  return capacity > 0 ? double(real_tokens) / double(capacity) : 0.0;
}

double PackingStats::baseline_pad_share() const {
  return padded_tokens > 0 ? double(padding_saved()) / double(padded_tokens) : 0.0;
}

}  // namespace loom
