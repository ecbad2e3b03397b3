// Held-out eval documents: no training document in eval (duplicates included), the split a
// function of the content alone, its sizes and errors; eval micro-batches: every eval document
// exactly once over the ranks, within the token budget, for any world size.
#include <algorithm>
#include <map>

#include "data/eval_set.h"
#include "data/rng.h"
#include "ops/error.h"
#include "tests/test_util.h"

namespace loom {
namespace {

// n documents of 1..max_length random tokens, the first never a target; every 7th is a copy of
// the document 3 before it, so the data has duplicates.
std::vector<Document> random_documents(size_t n, int64_t max_length, uint64_t seed) {
  SplitMix64 rng(seed);
  std::vector<Document> docs;
  for (size_t i = 0; i < n; ++i) {
    if (i % 7 == 6) {
      docs.push_back(docs[i - 3]);
      continue;
    }
    Document d;
    const size_t len = 1 + size_t(rng.below(uint64_t(max_length)));
    for (size_t t = 0; t < len; ++t) {
      d.ids.push_back(int32_t(rng.below(1000)));
      d.mask.push_back(t > 0 && rng.below(4) != 0);
    }
    docs.push_back(d);
  }
  return docs;
}

using Content = std::pair<std::vector<int32_t>, std::vector<uint8_t>>;
Content content(const Document& d) { return {d.ids, d.mask}; }

// Documents by content with their multiplicity: the multiset the tests compare.
std::map<Content, int> multiset(const std::vector<Document>& docs) {
  std::map<Content, int> m;
  for (const Document& d : docs) ++m[content(d)];
  return m;
}

std::vector<Content> contents(const std::vector<Document>& docs) {
  std::vector<Content> c;
  for (const Document& d : docs) c.push_back(content(d));
  return c;
}

TEST(EvalSet, NoTrainingDocumentIsInEvalWithDuplicates) {
  const std::vector<Document> docs = random_documents(300, 40, 1);
  for (double split : {0.1, 0.5, 0.9, 1.0, 17.0, 150.0}) {
    const EvalSplit s = split_eval_documents(docs, split);
    const auto train = multiset(s.train);
    for (const Document& d : s.eval) EXPECT_EQ(train.count(content(d)), 0u) << "eval_split " << split;
    // Nothing lost or made up: train + eval is the input as a multiset.
    auto all = multiset(s.train);
    for (const Document& d : s.eval) ++all[content(d)];
    EXPECT_EQ(all, multiset(docs)) << "eval_split " << split;
  }
}

TEST(EvalSet, DuplicatesOfAHeldOutDocumentAllGoToEval) {
  // Ten copies of one document among distinct ones: whatever the cut, all ten land on one side.
  std::vector<Document> docs = random_documents(40, 20, 2);
  const Document copy = docs[0];
  for (int i = 0; i < 9; ++i) docs.push_back(copy);
  for (int64_t k = 1; k < 30; ++k) {
    const EvalSplit s = split_eval_documents(docs, double(k));
    const int in_eval = multiset(s.eval)[content(copy)];
    EXPECT_TRUE(in_eval == 0 || in_eval == 10) << "count " << k << ": " << in_eval << " of 10 copies in eval";
    EXPECT_GE(int64_t(s.eval.size()), k);
    EXPECT_LT(int64_t(s.eval.size()), k + 10) << "overshoot is below one group of copies";
  }
}

// Pairs (two segments): copies of a pair go together; the same tokens cut into other sequences
// are another document, so they may land on either side, and a held-out pair keeps its segments.
TEST(EvalSet, IdenticalPairsStayTogetherAndSegmentsAreContent) {
  std::vector<Document> docs = random_documents(60, 20, 7);
  for (Document& d : docs)
    if (d.ids.size() >= 2) d.segments = {1, int32_t(d.ids.size()) - 1};
  Document pair;
  pair.ids = {3, 4, 5, 6, 7, 8};
  pair.mask = {0, 1, 1, 0, 1, 1};
  pair.segments = {3, 3};
  Document recut = pair;
  recut.segments = {2, 4};
  for (int i = 0; i < 5; ++i) docs.push_back(pair);
  docs.push_back(recut);
  bool recut_apart = false;
  for (int64_t k = 1; k < 40; ++k) {
    const EvalSplit s = split_eval_documents(docs, double(k));
    int pairs_in_eval = 0, recut_in_eval = 0;
    for (const Document& d : s.eval) {
      pairs_in_eval += d.ids == pair.ids && d.segments == pair.segments;
      recut_in_eval += d.ids == recut.ids && d.segments == recut.segments;
    }
    EXPECT_TRUE(pairs_in_eval == 0 || pairs_in_eval == 5) << "count " << k << ": " << pairs_in_eval << " of 5 copies";
    recut_apart = recut_apart || (pairs_in_eval == 5) != (recut_in_eval == 1);
  }
  EXPECT_TRUE(recut_apart) << "the recut pair was always taken with the copies: segments are not part of the content";
}

TEST(EvalSet, SplitDependsOnContentNotOrder) {
  const std::vector<Document> docs = random_documents(200, 30, 3);
  std::vector<Document> shuffled = docs;
  SplitMix64 rng(99);
  for (size_t i = shuffled.size() - 1; i > 0; --i) std::swap(shuffled[i], shuffled[rng.below(i + 1)]);
  std::vector<Document> reversed(docs.rbegin(), docs.rend());
  for (double split : {0.05, 0.25, 31.0}) {
    const EvalSplit a = split_eval_documents(docs, split);
    // The eval set comes out in the same order for any input order.
    EXPECT_EQ(contents(split_eval_documents(shuffled, split).eval), contents(a.eval)) << split;
    EXPECT_EQ(contents(split_eval_documents(reversed, split).eval), contents(a.eval)) << split;
  }
}

TEST(EvalSet, TrainingDocumentsKeepTheirOrder) {
  const std::vector<Document> docs = random_documents(100, 30, 4);
  const EvalSplit s = split_eval_documents(docs, 0.2);
  const auto eval = multiset(s.eval);
  std::vector<Content> want;
  for (const Document& d : docs)
    if (!eval.count(content(d))) want.push_back(content(d));
  EXPECT_EQ(contents(s.train), want);
}

TEST(EvalSet, FractionAndCountSizes) {
  // Distinct documents (no copies), so the eval set has exactly the requested size.
  std::vector<Document> docs;
  for (int32_t i = 0; i < 10; ++i) docs.push_back(Document{{i, i + 1}, {0, 1}});
  const std::vector<std::pair<double, size_t>> cases = {
      {0.1, 1}, {0.25, 3} /* 2.5 rounds to 3 */, {0.24, 2}, {0.01, 1} /* at least one */, {0.94, 9},
      {1.0, 1}, {4.0, 4},  {9.0, 9}};
  for (const auto& [split, want] : cases) {
    const EvalSplit s = split_eval_documents(docs, split);
    EXPECT_EQ(s.eval.size(), want) << "eval_split " << split;
    EXPECT_EQ(s.train.size(), docs.size() - want) << "eval_split " << split;
  }
}

TEST(EvalSet, SplitErrors) {
  std::vector<Document> docs;
  for (int32_t i = 0; i < 10; ++i) docs.push_back(Document{{i, i + 1}, {0, 1}});
  test::expect_error([&] { split_eval_documents(docs, 10.0); }, {"data.eval_split = 10", "10 of the 10", "none to train"});
  test::expect_error([&] { split_eval_documents(docs, 25.0); }, {"data.eval_split = 25", "25 of the 10"});
  test::expect_error([&] { split_eval_documents(docs, 0.96); }, {"data.eval_split = 0.96", "10 of the 10"});
  for (double bad : {0.0, -0.5, -3.0, 2.5})
    test::expect_error([&] { split_eval_documents(docs, bad); }, {"data.eval_split must be a fraction in (0, 1)"});
  // Copies can swallow the rest: 1 of 3 asked, but all 3 are the same document.
  const std::vector<Document> same(3, Document{{5, 6}, {0, 1}});
  test::expect_error([&] { split_eval_documents(same, 1.0); }, {"data.eval_split = 1", "copies", "remove the duplicates"});
}

TEST(EvalSet, MicroBatchesCoverEveryDocumentOnceOnAnyWorld) {
  const std::vector<Document> eval = random_documents(57, 300, 5);
  const int64_t budget = 512;
  int64_t total_targets = 0;
  for (const Document& d : eval)
    for (size_t i = 1; i < d.mask.size(); ++i) total_targets += d.mask[i];
  size_t micro_batches_world1 = 0;
  for (int world : {1, 2, 3, 5, 64}) {
    std::vector<Document> seen;  // every document of every rank's micro-batches, unpacked
    int64_t targets = 0;
    size_t micro_batches = 0;
    for (int rank = 0; rank < world; ++rank) {
      for (const MicroBatch& mb : eval_micro_batches(eval, budget, rank, world)) {
        EXPECT_LE(mb.T(), budget) << "world " << world << " rank " << rank;
        EXPECT_EQ(mb.cu_seqlens.back(), mb.T());
        targets += mb.n_targets();
        ++micro_batches;
        for (int d = 0; d < mb.ndoc(); ++d)
          seen.push_back(Document{std::vector<int32_t>(mb.tokens.begin() + mb.cu_seqlens[d],
                                                       mb.tokens.begin() + mb.cu_seqlens[d + 1]),
                                  {}});
      }
    }
    // Ids only: the packed micro-batch holds targets, not the mask; copies count twice.
    std::map<std::vector<int32_t>, int> got, want;
    for (const Document& d : seen) ++got[d.ids];
    for (const Document& d : eval) ++want[d.ids];
    EXPECT_EQ(got, want) << "world " << world;
    EXPECT_EQ(targets, total_targets) << "world " << world;
    if (world == 1) micro_batches_world1 = micro_batches;
    EXPECT_EQ(micro_batches, micro_batches_world1) << "the same micro-batches for every world size";
  }
}

TEST(EvalSet, MicroBatchesAreBalancedByTokens) {
  const std::vector<Document> eval = random_documents(400, 300, 6);
  const int64_t budget = 1024;
  for (int world : {2, 3, 5}) {
    int64_t lo = INT64_MAX, hi = 0;
    for (int rank = 0; rank < world; ++rank) {
      int64_t tokens = 0;
      for (const MicroBatch& mb : eval_micro_batches(eval, budget, rank, world)) tokens += mb.T();
      lo = std::min(lo, tokens);
      hi = std::max(hi, tokens);
    }
    // Dealing largest first to the least-loaded rank keeps the spread within one micro-batch.
    EXPECT_LE(hi - lo, budget) << "world " << world;
  }
}

TEST(EvalSet, FewMicroBatchesLeaveRanksEmpty) {
  const std::vector<Document> eval = {Document{{1, 2, 3}, {0, 1, 1}}, Document{{4, 5}, {0, 1}}};
  EXPECT_EQ(eval_micro_batches(eval, 100, 0, 3).size(), 1u);
  EXPECT_TRUE(eval_micro_batches(eval, 100, 1, 3).empty());
  EXPECT_TRUE(eval_micro_batches(eval, 100, 2, 3).empty());
  EXPECT_TRUE(eval_micro_batches({}, 100, 0, 1).empty());
}

TEST(EvalSet, MicroBatchErrors) {
  const std::vector<Document> long_doc = {Document{{1, 2}, {0, 1}}, Document{std::vector<int32_t>(9, 1),
                                                                              std::vector<uint8_t>(9, 1)}};
  test::expect_error([&] { eval_micro_batches(long_doc, 8, 0, 1); },
                     {"eval document 1 has 9 tokens", "train.token_budget = 8"});
  const std::vector<Document> bad_mask = {Document{{1, 2}, {0}}};
  test::expect_error([&] { eval_micro_batches(bad_mask, 8, 0, 1); }, {"eval document 0", "mask entries"});
  test::expect_error([&] { eval_micro_batches(bad_mask, 8, 2, 2); }, {"rank 2 is outside a world of 2"});
}

}  // namespace
}  // namespace loom
