// The packed, rank-aware dataloader over documents whose token ids name the document and the
// position (id = doc · kStride + position), so every token seen can be traced back; and the
// synthetic sft-alpaca data of BENCHMARK.md.
#include <algorithm>
#include <cstdio>
#include <numeric>

#include "data/dataloader.h"
#include "data/rng.h"
#include "data/synthetic.h"
#include "ops/error.h"
#include "tests/test_util.h"

namespace loom {
namespace {

constexpr int32_t kStride = 10000;

// n documents of 1..max_length tokens; ids traceable; masks cleared on a pseudo-random third of
// the tokens so that targets and tokens differ.
std::vector<Document> traceable_documents(int n, int max_length, uint64_t seed) {
  SplitMix64 rng(seed);
  std::vector<Document> docs(static_cast<size_t>(n));
  for (int d = 0; d < n; ++d) {
    const int length = 1 + int(rng.below(uint64_t(max_length)));
    for (int i = 0; i < length; ++i) {
      docs[d].ids.push_back(d * kStride + i);
      docs[d].mask.push_back(rng.below(3) != 0);
    }
  }
  return docs;
}

LoaderOptions options(int64_t budget, int64_t global_batch, int world = 1, int rank = 0, uint64_t seed = 42) {
  LoaderOptions o;
  o.token_budget = budget;
  o.global_batch = global_batch;
  o.world = world;
  o.rank = rank;
  o.seed = seed;
  return o;
}

// One loader per rank (each restored to `state` when given), stepped together: steps[s][r] is
// rank r's view of step s.
std::vector<std::vector<Step>> run_all_ranks(const std::vector<Document>& docs, LoaderOptions o, int64_t steps,
                                             const LoaderState* state = nullptr) {
  std::vector<DataLoader> loaders;
  for (int r = 0; r < o.world; ++r) {
    o.rank = r;
    loaders.emplace_back(docs, o);
    if (state) loaders.back().restore(*state);
  }
  std::vector<std::vector<Step>> out(static_cast<size_t>(steps));
  for (auto& step : out)
    for (auto& l : loaders) step.push_back(l.next());
  return out;
}

// Documents of one step over all ranks, sorted (a document is named by its first id).
std::vector<int32_t> step_documents(const std::vector<Step>& ranks) {
  std::vector<int32_t> docs;
  for (const Step& s : ranks)
    for (const MicroBatch& mb : s.micro)
      for (int i = 0; i < mb.ndoc(); ++i) docs.push_back(mb.tokens[mb.cu_seqlens[i]] / kStride);
  std::sort(docs.begin(), docs.end());
  return docs;
}

std::vector<int32_t> all_targets(const std::vector<Document>& docs) {
  std::vector<int32_t> want;
  for (const Document& d : docs)
    for (size_t i = 1; i < d.ids.size(); ++i)
      if (d.mask[i]) want.push_back(d.ids[i]);
  std::sort(want.begin(), want.end());
  return want;
}

TEST(DataLoader, EveryTargetOncePerEpochOnEveryWorldSize) {
  const auto docs = traceable_documents(103, 300, 1);
  for (int world : {1, 2, 3, 4, 8}) {
    const LoaderOptions o = options(1024, 10, world);
    const int64_t steps = DataLoader(docs, o).steps_per_epoch();
    ASSERT_EQ(steps, 11);  // 10 steps of 10 documents, then 3: fewer than 4 or 8 ranks
    std::vector<int32_t> seen;
    for (const auto& step : run_all_ranks(docs, o, steps)) {
      int64_t targets = 0, tokens = 0;
      for (const Step& s : step) {
        EXPECT_EQ(s.global_targets, step[0].global_targets) << "ranks disagree on the loss divisor";
        for (const MicroBatch& mb : s.micro) {
          targets += mb.n_targets();
          tokens += mb.T();
          for (int32_t t : mb.targets)
            if (t != -100) seen.push_back(t);
        }
      }
      EXPECT_EQ(targets, step[0].global_targets) << "world " << world;
      EXPECT_EQ(tokens, step[0].global_tokens) << "world " << world;
    }
    std::sort(seen.begin(), seen.end());
    EXPECT_EQ(seen, all_targets(docs)) << "world " << world;
  }
}

// MicroBatch::documents names each packed document by its index in the data set (what
// dpo.precompute_reference looks its reference log-probs up by).
TEST(DataLoader, MicroBatchesNameTheirDocuments) {
  const auto docs = traceable_documents(97, 400, 5);
  for (int world : {1, 3})
    for (const auto& step : run_all_ranks(docs, options(900, 16, world), 8))
      for (const Step& s : step)
        for (const MicroBatch& mb : s.micro) {
          ASSERT_EQ(int(mb.documents.size()), mb.ndoc()) << "one index per document (these have one sequence)";
          for (int i = 0; i < mb.ndoc(); ++i)
            EXPECT_EQ(mb.documents[size_t(i)], mb.tokens[mb.cu_seqlens[i]] / kStride) << "world " << world;
        }
}

TEST(DataLoader, MicroBatchesHoldWholeDocumentsWithinBudget) {
  const auto docs = traceable_documents(200, 500, 2);
  for (int world : {1, 3}) {
    for (const auto& step : run_all_ranks(docs, options(700, 24, world), 9)) {
      for (const Step& s : step) {
        for (const MicroBatch& mb : s.micro) {
          EXPECT_LE(mb.T(), 700);
          ASSERT_EQ(mb.cu_seqlens.back(), mb.T());
          for (int i = 0; i < mb.ndoc(); ++i) {
            const int32_t begin = mb.cu_seqlens[i], end = mb.cu_seqlens[i + 1];
            const Document& d = docs[size_t(mb.tokens[begin] / kStride)];
            ASSERT_EQ(size_t(end - begin), d.ids.size())
                << "document " << mb.tokens[begin] / kStride << " was split";
            for (int32_t t = begin; t < end; ++t) {
              EXPECT_EQ(mb.tokens[t], d.ids[size_t(t - begin)]);
              EXPECT_EQ(mb.positions[t], t - begin);
            }
          }
        }
      }
    }
  }
}

TEST(DataLoader, WorldNTrainsOnTheDocumentsOfWorld1) {
  const auto docs = traceable_documents(150, 400, 3);
  const auto single = run_all_ranks(docs, options(2048, 16), 20);  // crosses two epoch ends
  for (int world : {2, 3, 4, 8}) {
    const auto multi = run_all_ranks(docs, options(2048, 16, world), 20);
    for (size_t s = 0; s < single.size(); ++s) {
      EXPECT_EQ(step_documents(multi[s]), step_documents(single[s])) << "world " << world << ", step " << s;
      EXPECT_EQ(multi[s][0].global_targets, single[s][0].global_targets);
      EXPECT_EQ(multi[s][0].global_tokens, single[s][0].global_tokens);
    }
  }
}

TEST(DataLoader, SameSeedSameStepsOtherSeedOtherOrder) {
  const auto docs = traceable_documents(64, 200, 4);
  DataLoader a(docs, options(1024, 8)), b(docs, options(1024, 8)), c(docs, options(1024, 8, 1, 0, 43));
  bool order_differs = false;
  for (int s = 0; s < 8; ++s) {
    const Step sa = a.next(), sb = b.next(), sc = c.next();
    ASSERT_EQ(sa.micro.size(), sb.micro.size());
    for (size_t m = 0; m < sa.micro.size(); ++m) {
      EXPECT_EQ(sa.micro[m].tokens, sb.micro[m].tokens);
      EXPECT_EQ(sa.micro[m].targets, sb.micro[m].targets);
      EXPECT_EQ(sa.micro[m].cu_seqlens, sb.micro[m].cu_seqlens);
    }
    order_differs |= step_documents({sa}) != step_documents({sc});
  }
  EXPECT_TRUE(order_differs) << "seeds 42 and 43 gave the same document order";
}

TEST(DataLoader, EpochBoundariesKeepTheLastSmallerBatch) {
  const auto docs = traceable_documents(10, 50, 5);
  DataLoader loader(docs, options(512, 4));
  EXPECT_EQ(loader.steps_per_epoch(), 3);
  EXPECT_EQ(loader.total_steps(3), 9);
  std::vector<std::vector<int32_t>> epochs(3);
  const int64_t want_docs[] = {4, 4, 2};
  for (int s = 0; s < 9; ++s) {
    const Step step = loader.next();
    EXPECT_EQ(step.epoch, s / 3);
    EXPECT_EQ(step.step_in_epoch, s % 3);
    EXPECT_EQ(step.global_docs, want_docs[s % 3]) << "step " << s;
    const auto d = step_documents({step});
    epochs[size_t(s / 3)].insert(epochs[size_t(s / 3)].end(), d.begin(), d.end());
  }
  std::vector<int32_t> every(10);
  std::iota(every.begin(), every.end(), 0);
  for (auto& e : epochs) {
    std::vector<int32_t> sorted = e;
    std::sort(sorted.begin(), sorted.end());
    EXPECT_EQ(sorted, every) << "an epoch must visit every document once";
  }
  EXPECT_NE(epochs[0], epochs[1]) << "epochs 0 and 1 were shuffled alike";
  EXPECT_EQ(loader.state().epoch, 3);
  EXPECT_EQ(loader.state().step_in_epoch, 0);
}

TEST(DataLoader, ResumeFromStateMatchesTheContinuingRun) {
  const auto docs = traceable_documents(90, 300, 6);
  const LoaderOptions o = options(1024, 13, 2);  // 7 steps per epoch, the last of 12 documents
  const auto continuing = run_all_ranks(docs, o, 22);
  for (int64_t k : {0, 3, 6, 7, 12}) {  // start, middle, last of epoch 0, first and middle of epoch 1
    DataLoader original(docs, options(1024, 13, 2, 1));
    for (int64_t s = 0; s < k; ++s) original.next();
    const std::string saved = to_json(original.state());
    // Same world: the very same micro-batches. Three ranks: the same documents and loss divisor.
    // Seed 999 in the options: the state's seed must win.
    for (int world : {2, 3}) {
      const LoaderState state = loader_state_from_json(saved, "state.json");
      const auto resumed = run_all_ranks(docs, options(1024, 13, world, 0, 999), 10, &state);
      for (size_t s = 0; s < resumed.size(); ++s) {
        const auto& want = continuing[size_t(k) + s];
        EXPECT_EQ(resumed[s][0].epoch, want[0].epoch);
        EXPECT_EQ(resumed[s][0].step_in_epoch, want[0].step_in_epoch);
        EXPECT_EQ(resumed[s][0].global_targets, want[0].global_targets);
        EXPECT_EQ(step_documents(resumed[s]), step_documents(want)) << "k " << k << ", world " << world;
        if (world != 2) continue;
        for (int r = 0; r < 2; ++r) {
          ASSERT_EQ(resumed[s][r].micro.size(), want[r].micro.size());
          for (size_t m = 0; m < want[r].micro.size(); ++m)
            EXPECT_EQ(resumed[s][r].micro[m].tokens, want[r].micro[m].tokens) << "k " << k << ", step " << s;
        }
      }
    }
  }
}

TEST(DataLoader, ResumeRejectsOtherDataOrGlobalBatch) {
  const auto docs = traceable_documents(40, 100, 7);
  DataLoader original(docs, options(512, 8));
  original.next();
  const LoaderState state = original.state();

  auto changed = docs;
  changed[5].mask[0] ^= 1;
  DataLoader other_data(changed, options(512, 8));
  try {
    other_data.restore(state);
    FAIL() << "resuming on changed documents did not throw";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("use the same data"), std::string::npos) << e.what();
  }
  DataLoader other_batch(docs, options(512, 16));
  try {
    other_batch.restore(state);
    FAIL() << "resuming with another global batch did not throw";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("train.global_batch = 8"), std::string::npos) << e.what();
  }
}

TEST(DataLoader, StateJsonRoundTripsAndNamesBadFields) {
  LoaderState s;
  s.epoch = 2;
  s.step_in_epoch = 17;
  s.seed = 0xFEDCBA9876543210ull;  // above 2^63: must survive as an unsigned integer
  s.global_batch = 32;
  s.documents = 4096;
  s.data_fingerprint = 0x0123456789ABCDEFull;
  EXPECT_EQ(loader_state_from_json(to_json(s), "state.json"), s);

  const auto message = [](const std::string& text) {
    try {
      loader_state_from_json(text, "ckpt/loader.json");
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  EXPECT_NE(message("{\"epoch\": 1}").find("ckpt/loader.json: dataloader state has no \"step_in_epoch\""),
            std::string::npos);
  EXPECT_NE(message("{\"epoch\": \"one\"}").find("ckpt/loader.json: loader.epoch must be an integer"),
            std::string::npos);
  EXPECT_NE(message("{\"epoch\":").find("ckpt/loader.json: invalid JSON"), std::string::npos);
  std::string bad_hex = to_json(s);
  bad_hex.replace(bad_hex.find("0123456789abcdef"), 16, "xyz");
  EXPECT_NE(message(bad_hex).find("16 hex digits"), std::string::npos) << message(bad_hex);
}

TEST(DataLoader, RankTokenSpreadIsWithinTheLongestDocument) {
  SyntheticSpec spec;
  spec.documents = 640;
  spec.vocab = 1000;
  const auto docs = synthetic_documents(spec);
  for (int world : {2, 3, 4, 8}) {
    DataLoader loader(docs, options(4096, 32, world));
    for (int64_t s = 0; s < loader.steps_per_epoch(); ++s) {
      const Step step = loader.next();
      int64_t lo = INT64_MAX, hi = 0, docs_seen = 0, tokens = 0;
      for (const RankLoad& r : step.ranks) {
        lo = std::min(lo, r.tokens);
        hi = std::max(hi, r.tokens);
        docs_seen += r.docs;
        tokens += r.tokens;
      }
      int64_t longest = 0;  // rank 0 (this loader) takes each step's longest document first
      for (const MicroBatch& mb : step.micro)
        for (int i = 0; i < mb.ndoc(); ++i)
          longest = std::max<int64_t>(longest, mb.cu_seqlens[i + 1] - mb.cu_seqlens[i]);
      EXPECT_EQ(docs_seen, step.global_docs);
      EXPECT_EQ(tokens, step.global_tokens);
      EXPECT_LE(hi - lo, longest) << "world " << world << ", step " << s;
    }
  }
}

TEST(DataLoader, TooLongDocumentIsAnErrorNamingItAndTheSettings) {
  std::vector<Document> docs(3);
  for (size_t d = 0; d < docs.size(); ++d) {
    docs[d].ids.assign(d == 1 ? 3000 : 100, 7);
    docs[d].mask.assign(docs[d].ids.size(), 1);
  }
  try {
    DataLoader loader(docs, options(2048, 2));
    FAIL() << "a 3000-token document in a 2048-token budget did not throw";
  } catch (const Error& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find("document 1 has 3000 tokens"), std::string::npos) << msg;
    EXPECT_NE(msg.find("train.token_budget = 2048"), std::string::npos) << msg;
    EXPECT_NE(msg.find("data.max_seq_len"), std::string::npos) << msg;
  }
}

TEST(DataLoader, ReportsPackingEfficiencyAndPaddingSaved) {
  SyntheticSpec spec;
  spec.documents = 4096;
  spec.vocab = 32768;
  const auto docs = synthetic_documents(spec);
  DataLoader loader(docs, options(16384, 32));
  PackingStats total;
  for (int s = 0; s < 16; ++s) {
    const PackingStats p = loader.next().packing;
    EXPECT_GT(p.efficiency(), 0.0);
    EXPECT_LE(p.efficiency(), 1.0);
    EXPECT_GT(p.padding_saved(), 0);
    total.real_tokens += p.real_tokens;
    total.micro_batches += p.micro_batches;
    total.padded_tokens += p.padded_tokens;
  }
  total.token_budget = 16384;
  std::printf("sft-alpaca, 32 documents per step, budget 16384: packing efficiency %.3f, padding saved "
              "%lld tokens (baseline pad share %.3f) over 16 steps\n",
              total.efficiency(), (long long)total.padding_saved(), total.baseline_pad_share());
  // ~7.7k tokens per step fit one 16k micro-batch: every step packs into exactly one.
  EXPECT_EQ(total.micro_batches, 16);
}

// n pair documents (data/batch.h segments): chosen and rejected of 1..max_length tokens each,
// ids traceable (doc · kStride + position in the document), random masks.
std::vector<Document> traceable_pairs(int n, int max_length, uint64_t seed) {
  SplitMix64 rng(seed);
  std::vector<Document> docs(static_cast<size_t>(n));
  for (int d = 0; d < n; ++d) {
    for (int s = 0; s < 2; ++s) docs[d].segments.push_back(1 + int32_t(rng.below(uint64_t(max_length))));
    for (int i = 0; i < docs[d].segments[0] + docs[d].segments[1]; ++i) {
      docs[d].ids.push_back(d * kStride + i);
      docs[d].mask.push_back(rng.below(3) != 0);
    }
  }
  return docs;
}

// A pair moves whole, for any token budget and world size: a rank's micro-batch holds each of its
// pairs as two adjacent sequences (2i chosen, 2i+1 rejected) that restart their positions and
// never predict across their boundary; every pair of a step is on exactly one rank, and
// global_docs counts pairs.
TEST(DataLoader, PairsAreNeverSplit) {
  const auto docs = traceable_pairs(61, 30, 11);
  for (int64_t budget : {60, 61, 97, 250, 4096})
    for (int world : {1, 2, 3, 5}) {
      const LoaderOptions o = options(budget, 9, world);
      const int64_t steps = DataLoader(docs, o).steps_per_epoch();
      std::vector<int> seen(docs.size(), 0);
      for (const auto& step : run_all_ranks(docs, o, steps)) {
        int64_t pairs = 0, targets = 0;
        for (const Step& s : step)
          for (const MicroBatch& mb : s.micro) {
            targets += mb.n_targets();
            ASSERT_EQ(mb.ndoc() % 2, 0) << "budget " << budget << ", world " << world;
            for (int i = 0; i < mb.ndoc(); i += 2, ++pairs) {
              const int32_t d = mb.tokens[mb.cu_seqlens[i]] / kStride;
              const Document& doc = docs[size_t(d)];
              ++seen[size_t(d)];
              for (int k = 0; k < 2; ++k) {
                const int32_t begin = mb.cu_seqlens[i + k], end = mb.cu_seqlens[i + k + 1];
                ASSERT_EQ(end - begin, doc.segments[k]) << "pair " << d << " sequence " << k;
                const int32_t first = k == 0 ? 0 : doc.segments[0];
                for (int32_t t = begin; t < end; ++t) {
                  EXPECT_EQ(mb.tokens[t], d * kStride + first + (t - begin));
                  EXPECT_EQ(mb.positions[t], t - begin);
                }
                EXPECT_EQ(mb.targets[end - 1], -100) << "the last token of a sequence predicts nothing";
              }
            }
          }
        EXPECT_EQ(pairs, step[0].global_docs);
        EXPECT_EQ(targets, step[0].global_targets) << "budget " << budget << ", world " << world;
      }
      EXPECT_EQ(std::count(seen.begin(), seen.end(), 1), int64_t(docs.size())) << "each pair once per epoch";
    }
}

// The fingerprint (resume's check that the data is the same) sees segments: the same tokens cut
// into other sequences are other data.
TEST(DataLoader, FingerprintCoversSegments) {
  auto docs = traceable_pairs(5, 10, 12);
  docs[3].ids.resize(10);
  docs[3].mask.resize(10);
  docs[3].segments = {4, 6};
  const uint64_t before = DataLoader(docs, options(64, 2)).state().data_fingerprint;
  docs[3].segments = {6, 4};
  EXPECT_NE(DataLoader(docs, options(64, 2)).state().data_fingerprint, before);
  docs[3].segments.clear();
  EXPECT_NE(DataLoader(docs, options(64, 2)).state().data_fingerprint, before);
}

// Segments that do not cover their document are refused before anything is packed.
TEST(DataLoader, BadSegmentsAreAnErrorNamingTheDocument) {
  auto docs = traceable_pairs(4, 10, 13);
  docs[2].segments[1] += 1;
  EXPECT_NE(test::error_of([&] { DataLoader loader(docs, options(64, 2)); }).find("document 2 has "), std::string::npos);
  docs[2].segments = {int32_t(docs[2].ids.size())};
  EXPECT_NE(test::error_of([&] { DataLoader loader(docs, options(64, 2)); })
                .find("document 2 has a single segment; a document of one sequence has none"),
            std::string::npos);
  docs[2].segments = {0, int32_t(docs[2].ids.size())};
  EXPECT_NE(test::error_of([&] { DataLoader loader(docs, options(64, 2)); }).find("document 2: segment 0 has 0 tokens"),
            std::string::npos);
}

TEST(Synthetic, LengthStatisticsMatchTheBenchmark) {
  SyntheticSpec spec;
  spec.documents = 100000;
  spec.vocab = 1;
  std::vector<int64_t> lengths = synthetic_lengths(spec);
  const double mean = std::accumulate(lengths.begin(), lengths.end(), 0.0) / double(lengths.size());
  std::nth_element(lengths.begin(), lengths.begin() + 50000, lengths.end());
  std::printf("sft-alpaca lengths over 100000 documents: mean %.2f, median %lld\n", mean,
              (long long)lengths[50000]);
  // 200·exp(0.6²/2) = 239.4; the standard error of 100k draws is 0.5.
  EXPECT_NEAR(mean, 239.4, 2.0);
  EXPECT_NEAR(double(lengths[50000]), 200.0, 3.0);
  EXPECT_EQ(*std::min_element(lengths.begin(), lengths.end()), 32);
  EXPECT_EQ(*std::max_element(lengths.begin(), lengths.end()), 2048);
}

TEST(Synthetic, LengthsAreTheSameOnEveryMachine) {
  // Recorded from this generator; a change here changes every benchmark figure.
  SyntheticSpec spec;
  spec.documents = 8;
  spec.vocab = 1;
  const std::vector<int64_t> want = {135, 154, 138, 547, 168, 128, 221, 404};
  EXPECT_EQ(synthetic_lengths(spec), want);
}

TEST(Synthetic, TokensAreUniformTargetsAndPrefixStable) {
  SyntheticSpec spec;
  spec.documents = 200;
  spec.vocab = 16;
  const auto docs = synthetic_documents(spec);
  std::vector<int64_t> counts(16, 0);
  int64_t total = 0;
  for (const Document& d : docs) {
    EXPECT_TRUE(std::all_of(d.mask.begin(), d.mask.end(), [](uint8_t m) { return m == 1; }));
    for (int32_t id : d.ids) {
      ASSERT_GE(id, 0);
      ASSERT_LT(id, 16);
      ++counts[size_t(id)];
      ++total;
    }
  }
  // ~48k draws over 16 ids: each count within 5% of total/16 (the standard deviation is 1.2%).
  for (int64_t c : counts) EXPECT_NEAR(double(c), double(total) / 16, 0.05 * double(total) / 16);

  spec.documents = 10;
  const auto prefix = synthetic_documents(spec);
  for (size_t d = 0; d < prefix.size(); ++d) EXPECT_EQ(prefix[d].ids, docs[d].ids) << "document " << d;
}

TEST(Synthetic, PaddedBaselineMatchesTheBenchmarkPadShare) {
  // BENCHMARK.md measured a 41.8% pad share for the Hugging Face baseline on this workload.
  SyntheticSpec spec;
  spec.documents = 4096;
  spec.vocab = 1;
  const std::vector<int64_t> lengths = synthetic_lengths(spec);
  PackingStats p;
  p.real_tokens = std::accumulate(lengths.begin(), lengths.end(), int64_t(0));
  p.padded_tokens = padded_batch_tokens(lengths);
  EXPECT_NEAR(p.baseline_pad_share(), 0.418, 0.02);
}

TEST(Synthetic, UnknownWorkloadIsAnError) {
  EXPECT_EQ(synthetic_workload("sft-alpaca", 64, 1000, "cfg.yaml").documents, 64);
  try {
    synthetic_workload("alpaca", 64, 1000, "cfg.yaml");
    FAIL() << "an unknown workload did not throw";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("cfg.yaml: data.synthetic = 'alpaca'"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace loom
