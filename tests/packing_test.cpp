// Step planning on lengths alone: the rank split (every position once, token spread within the
// longest document, attention-aware choice, deterministic ties), first-fit-decreasing packing
// and the padded baseline.
#include <algorithm>
#include <numeric>

#include "data/batch.h"
#include "data/packing.h"
#include "data/rng.h"
#include "ops/error.h"
#include "tests/test_util.h"

namespace loom {
namespace {

std::vector<int64_t> random_lengths(size_t n, int64_t max_length, uint64_t seed) {
  SplitMix64 rng(seed);
  std::vector<int64_t> lengths(n);
  for (auto& l : lengths) l = 1 + int64_t(rng.below(uint64_t(max_length)));
  return lengths;
}

int64_t tokens_of(const std::vector<int64_t>& positions, const std::vector<int64_t>& lengths) {
  int64_t sum = 0;
  for (int64_t p : positions) sum += lengths[p];
  return sum;
}

// Every position of `lengths` appears exactly once over all lists.
void expect_partition(const std::vector<std::vector<int64_t>>& lists, size_t n, const std::string& what) {
  std::vector<int64_t> seen;
  for (const auto& l : lists) seen.insert(seen.end(), l.begin(), l.end());
  std::sort(seen.begin(), seen.end());
  std::vector<int64_t> want(n);
  std::iota(want.begin(), want.end(), int64_t(0));
  EXPECT_EQ(seen, want) << what;
}

TEST(Packing, SplitAssignsEveryPositionToExactlyOneRank) {
  for (int world : {1, 2, 3, 4, 5, 8}) {
    for (size_t n : {size_t(0), size_t(1), size_t(3), size_t(32), size_t(257)}) {
      const auto lengths = random_lengths(n, 2048, 11 * n + world);
      const auto ranks = split_across_ranks(lengths, world);
      ASSERT_EQ(ranks.size(), size_t(world));
      expect_partition(ranks, n, cat("world ", world, ", ", n, " documents"));
    }
  }
}

TEST(Packing, SplitTokenSpreadIsWithinLongestDocument) {
  // Random batches, and the case plain LPT on cost gets wrong: at K = 1 one 1000-token document
  // costs as much as a thousand 10-token ones, so its rank would end 9000 tokens short.
  std::vector<std::vector<int64_t>> batches = {std::vector<int64_t>(1000, 10)};
  batches[0].push_back(1000);
  for (uint64_t seed = 0; seed < 50; ++seed) batches.push_back(random_lengths(32 + seed, 2048, seed));
  for (int world : {2, 3, 4, 8}) {
    for (int64_t span : {int64_t(1), kDefaultAttentionSpan}) {
      for (const auto& lengths : batches) {
        const auto ranks = split_across_ranks(lengths, world, span);
        int64_t lo = INT64_MAX, hi = 0;
        for (const auto& r : ranks) {
          lo = std::min(lo, tokens_of(r, lengths));
          hi = std::max(hi, tokens_of(r, lengths));
        }
        const int64_t longest = *std::max_element(lengths.begin(), lengths.end());
        EXPECT_LE(hi - lo, longest) << "world " << world << ", K " << span << ", " << lengths.size()
                                    << " documents";
      }
    }
  }
}

TEST(Packing, SplitMovesTokensAwayFromAttentionHeavyRank) {
  // K = 100: the 100 costs 100·100 + 100² = 20000; the other rank costs 15100 after 40, 40, 30
  // and 17500 with the 20, so the 20 goes there although that rank already holds more tokens.
  const std::vector<int64_t> lengths = {100, 40, 40, 30, 20};
  const std::vector<std::vector<int64_t>> attention_aware = {{0}, {1, 2, 3, 4}};
  EXPECT_EQ(split_across_ranks(lengths, 2, 100), attention_aware);
  // With a huge K attention is negligible and the split is LPT on tokens: the 20 goes to the 100.
  const std::vector<std::vector<int64_t>> tokens_only = {{0, 4}, {1, 2, 3}};
  EXPECT_EQ(split_across_ranks(lengths, 2, int64_t(1) << 30), tokens_only);
}

TEST(Packing, SplitBreaksTiesByPositionThenRank) {
  const std::vector<int64_t> equal(8, 10);
  const std::vector<std::vector<int64_t>> want = {{0, 4}, {1, 5}, {2, 6}, {3, 7}};
  EXPECT_EQ(split_across_ranks(equal, 4), want);
}

TEST(Packing, FirstFitDecreasingKnownPacking) {
  // Longest first: 5,4 open bin 0 (9); 3 opens bin 1; 3,2,2 fill bin 1 (10); 1 closes bin 0 (10).
  const std::vector<int64_t> lengths = {5, 4, 3, 3, 2, 2, 1};
  const std::vector<std::vector<int64_t>> want = {{0, 1, 6}, {2, 3, 4, 5}};
  EXPECT_EQ(pack_first_fit_decreasing(lengths, 10), want);
}

TEST(Packing, FirstFitDecreasingHoldsBudgetAndKeepsEveryDocument) {
  for (int64_t budget : {int64_t(2048), int64_t(4096), int64_t(16384)}) {
    const auto lengths = random_lengths(300, 2048, uint64_t(budget));
    const auto bins = pack_first_fit_decreasing(lengths, budget);
    expect_partition(bins, lengths.size(), cat("budget ", budget));
    std::vector<int64_t> used;
    for (const auto& b : bins) used.push_back(tokens_of(b, lengths));
    for (size_t i = 0; i < used.size(); ++i) {
      EXPECT_LE(used[i], budget) << "micro-batch " << i;
      // First fit: a bin's first document did not fit into any earlier bin, so no two bins
      // could be merged.
      for (size_t j = i + 1; j < used.size(); ++j)
        EXPECT_GT(used[i] + used[j], budget) << "micro-batches " << i << " and " << j << " fit in one";
    }
  }
}

TEST(Packing, TooLongDocumentErrorNamesLengthAndSettings) {
  try {
    pack_first_fit_decreasing({100, 3000, 5}, 2048);
    FAIL() << "a 3000-token document in a 2048-token budget did not throw";
  } catch (const Error& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find("3000 tokens"), std::string::npos) << msg;
    EXPECT_NE(msg.find("position 1"), std::string::npos) << msg;
    EXPECT_NE(msg.find("train.token_budget = 2048"), std::string::npos) << msg;
    EXPECT_NE(msg.find("data.max_seq_len"), std::string::npos) << msg;
  }
}

TEST(Packing, PaddedBaselinePadsEachGroupToItsLongest) {
  // Groups of 4 in batch order: {10,20,30,40} -> 4·40; {5,7} -> 2·7.
  EXPECT_EQ(padded_batch_tokens({10, 20, 30, 40, 5, 7}), 4 * 40 + 2 * 7);
  EXPECT_EQ(padded_batch_tokens({10, 20, 30, 40, 5, 7}, 1), 112);
  EXPECT_EQ(padded_batch_tokens({}), 0);
}

TEST(Packing, StatsReportEfficiencyAndPaddingSaved) {
  PackingStats s;
  s.real_tokens = 3000;
  s.micro_batches = 2;
  s.token_budget = 2048;
  s.padded_tokens = 5000;
  EXPECT_DOUBLE_EQ(s.efficiency(), 3000.0 / 4096.0);
  EXPECT_EQ(s.padding_saved(), 2000);
  EXPECT_DOUBLE_EQ(s.baseline_pad_share(), 0.4);
  EXPECT_EQ(PackingStats{}.efficiency(), 0.0);
}

TEST(Packing, AttentionSpanFollowsFlopsFormula) {
  // K = 2P / (3·layers·heads·head_dim): 2·3e9 / (3·10·10·100) = 2e5.
  EXPECT_EQ(attention_span(3e9, 10, 10, 100), 200000);
  // qwen3-0.6b: P ≈ 0.44e9 (layers) + 0.156e9 (tied LM head), 28 layers, 16 heads of 128.
  EXPECT_NEAR(double(attention_span(0.596e9, 28, 16, 128)), 6929.0, 1.0);
}

// A micro-batch grown for a step graph: the same tokens first, one ignored sequence after them, and
// T + 1 cu_seqlens entries whose tail is T (so the last start <= any real token is unchanged).
TEST(Packing, PaddedMicroBatchAddsOnlyIgnoredTokens) {
  const Document a{{5, 6, 7}, {1, 1, 1}, {}}, b{{8, 9}, {1, 1}, {}};
  const MicroBatch mb = pack_documents({&a, &b});
  const MicroBatch padded = pad_micro_batch(mb, 8);
  EXPECT_EQ(padded.tokens, (std::vector<int32_t>{5, 6, 7, 8, 9, 0, 0, 0}));
  EXPECT_EQ(padded.targets, (std::vector<int32_t>{6, 7, -100, 9, -100, -100, -100, -100}));
  EXPECT_EQ(padded.positions, (std::vector<int32_t>{0, 1, 2, 0, 1, 0, 1, 2}));
  EXPECT_EQ(padded.cu_seqlens, (std::vector<int32_t>{0, 3, 5, 8, 8, 8, 8, 8, 8}));
  EXPECT_EQ(padded.n_targets(), mb.n_targets());
  EXPECT_EQ(pad_micro_batch(mb, 5).cu_seqlens, (std::vector<int32_t>{0, 3, 5, 5, 5, 5}));  // no padding tokens
  test::expect_error([&] { pad_micro_batch(mb, 4); }, {"pad_micro_batch", "5 tokens cannot grow to 4"});
}

}  // namespace
}  // namespace loom
