// Generation on the fp32 reference path (engine/generation.h, ReferenceModel::extend): the KV cache
// against the full forward, greedy ids against Hugging Face's generate, and the decoding loop's
// rules (eos, stop strings, length, seeds and batch sizes).
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include "data/tokenizer.h"
#include "engine/generation.h"
#include "models/reference_model.h"
#include "models/weights.h"
#include "tests/hf_fixture.h"
#include "tests/test_util.h"

namespace loom {
namespace {

const char* const kArchs[] = {"llama", "mistral", "qwen2", "qwen3"};
constexpr double kLogitTol = 1e-4;  // tests/parity_test.cpp's kTol for fp32 logits against HF

struct FixtureModel {
  test::HfFixture f;
  ReferenceModel model;
  explicit FixtureModel(const std::string& arch)
      : f(test::load_hf_fixture(arch)), model(f.cfg, load_weights(f.dir + "/model", f.cfg), f.layout) {}
};

// Logits (T, V) of one whole sequence through the packed forward.
std::vector<float> full_logits(const ReferenceModel& m, const std::vector<int32_t>& ids, const float* lora) {
  Document d{ids, std::vector<uint8_t>(ids.size(), 1), {}};
  std::vector<float> logits;
  m.forward(pack_documents({&d}), lora, PassOptions{lora != nullptr, false, 0}, nullptr, &logits);
  return logits;
}

// A sequence of n ids drawn below V (deterministic).
std::vector<int32_t> some_ids(int n, int32_t V, uint32_t salt) {
  std::vector<int32_t> ids;
  for (int i = 0; i < n; ++i) ids.push_back(int32_t((uint32_t(i) * 2654435761u + salt) % uint32_t(V)));
  return ids;
}

// The cache holds every earlier token's keys and values exactly as the packed forward computes them,
// and the cached attention repeats the packed one's arithmetic (ops/attention.h), so extending token
// by token, or a prefix at once and then token by token, gives the full forward's logits bit for
// bit. The sequence (60 tokens; the fixtures hold 64 positions) passes mistral's sliding window (checked below), so the window's
// edge is crossed inside the cache.
TEST(Generation, KvCacheExtendsToTheFullForwardBitForBit) {
  for (const char* arch : kArchs) {
    FixtureModel fm(arch);
    const ModelConfig& c = fm.f.cfg;
    const std::vector<int32_t> ids = some_ids(60, c.V, 17);
    if (std::string(arch) == "mistral") {
      ASSERT_LT(c.window[0], 60) << "the test must cross the window";
    }
    for (bool adapters : {false, true}) {
      const float* lora = adapters ? fm.f.lora.data() : nullptr;
      const std::vector<float> want = full_logits(fm.model, ids, lora);
      for (int prefix : {1, 9}) {
        KvCache cache;
        std::vector<float> got, step;
        fm.model.extend(cache, std::vector<int32_t>(ids.begin(), ids.begin() + prefix), lora, adapters, step);
        got = step;
        for (size_t t = size_t(prefix); t < ids.size(); ++t) {
          fm.model.extend(cache, {ids[t]}, lora, adapters, step);
          got.insert(got.end(), step.begin(), step.end());
        }
        ASSERT_EQ(got.size(), want.size()) << arch;
        EXPECT_EQ(cache.length, int64_t(ids.size()));
        EXPECT_EQ(std::memcmp(got.data(), want.data(), got.size() * sizeof(float)), 0)
            << arch << (adapters ? " with" : " without") << " adapter, prefix " << prefix
            << ": max difference " << test::compare(got.data(), want.data(), got.size()).max_abs;
      }
    }
  }
}

// tests/fixtures/generate/<arch>.json (tools/make_generate_fixtures.py): HF's greedy generate.
nlohmann::json generate_fixture(const std::string& arch) {
  return test::read_json(test::fixtures_dir() + "/generate/" + arch + ".json");
}

// Greedy decoding through the KV cache gives HF generate(do_sample=False)'s 40 new ids, token for
// token, with and without the PEFT adapter, on the three prompts of each architecture (lengths 1, 7
// and 23; mistral's window of 4 is crossed). HF ran with eos disabled, so eos is ignored here too.
// The closest fp32 top-2 margin on these paths is 1.3e-4 (the fixture's fp32_top2_gap), and loom's
// logits are those of the full forward (test above), which the parity test holds to HF within 1e-5.
TEST(Generation, GreedyIdsEqualHuggingFaceGenerate) {
  for (const char* arch : kArchs) {
    FixtureModel fm(arch);
    const nlohmann::json fx = generate_fixture(arch);
    const auto prompts = fx["prompts"].get<std::vector<std::vector<int32_t>>>();
    GenerationOptions o;
    o.sampling.temperature = 0;
    o.max_new_tokens = fx["max_new_tokens"];
    ASSERT_GE(o.max_new_tokens, 32);
    for (bool adapters : {false, true}) {
      ReferenceDecoder decoder(fm.model, fm.f.lora.data(), adapters);
      const std::vector<Generation> out = generate(decoder, nullptr, prompts, o);
      const auto want = fx["greedy"][adapters ? "adapter" : "base"].get<std::vector<std::vector<int32_t>>>();
      ASSERT_EQ(out.size(), want.size());
      for (size_t i = 0; i < want.size(); ++i) {
        EXPECT_EQ(out[i].ids, want[i]) << arch << (adapters ? " with" : " without") << " adapter, prompt " << i;
        EXPECT_EQ(out[i].finish_reason, "length");
      }
    }
  }
}

// The logits of a KV-cache decode at steps 0, 1, 20 and 39 of the 23-token prompt with the adapter,
// against HF's own KV-cache decode: scaled error (max |diff| / max |want|) within kLogitTol, the
// parity test's tolerance for fp32 logits (both sides sum in fp32, in different orders).
TEST(Generation, DecodeLogitsFollowHuggingFaceStepByStep) {
  for (const char* arch : kArchs) {
    FixtureModel fm(arch);
    const nlohmann::json fx = generate_fixture(arch);
    const nlohmann::json& sl = fx["step_logits"];
    ASSERT_TRUE(sl["adapter"].get<bool>());
    std::vector<int32_t> seq = fx["prompts"][sl["prompt"].get<size_t>()].get<std::vector<int32_t>>();
    const auto ids = fx["greedy"]["adapter"][sl["prompt"].get<size_t>()].get<std::vector<int32_t>>();
    const auto steps = sl["steps"].get<std::vector<size_t>>();
    KvCache cache;
    std::vector<float> logits;
    double worst = 0;
    fm.model.extend(cache, seq, fm.f.lora.data(), true, logits);
    for (size_t k = 0, next = 0; k < ids.size() && next < steps.size(); ++k) {
      if (k == steps[next]) {
        const std::vector<float> last(logits.end() - fm.f.cfg.V, logits.end());
        const double err = test::scaled_error(last, sl["logits"][next].get<std::vector<float>>());
        EXPECT_LE(err, kLogitTol) << arch << " step " << k;
        worst = test::max_keeping_nan(worst, err);
        ++next;
      }
      fm.model.extend(cache, {ids[k]}, fm.f.lora.data(), true, logits);
    }
    std::printf("[%s] KV-cache decode logits vs HF: max scaled error %.2e\n", arch, worst);
  }
}

// A decode model over fixed logits: token t's row puts its mass on (last token + 1) mod V, so the
// loop's rules can be tested without a network.
class CountingModel : public DecodeModel {
 public:
  explicit CountingModel(int32_t V, int64_t max_len = 0) : V_(V), max_len_(max_len) {}
  void prefill(const std::vector<std::vector<int32_t>>& prompts, std::vector<float>& logits) override {
    logits.clear();
    for (const auto& p : prompts) row(p.back(), logits);
    ++prefills;
  }
  void decode(const std::vector<int>& rows, const std::vector<int32_t>& tokens, std::vector<float>& logits) override {
    logits.clear();
    for (int32_t t : tokens) row(t, logits);
    decoded_rows += rows.size();
  }
  int32_t vocab() const override { return V_; }
  int64_t max_length() const override { return max_len_; }
  int prefills = 0;
  size_t decoded_rows = 0;

 private:
  void row(int32_t last, std::vector<float>& logits) const {
    for (int32_t v = 0; v < V_; ++v) logits.push_back(v == (last + 1) % V_ ? 4.f : 0.f);
  }
  int32_t V_;
  int64_t max_len_;
};

TEST(Generation, FinishesOnEosLengthAndMaxPosition) {
  CountingModel m(10);
  GenerationOptions o;
  o.sampling.temperature = 0;
  o.max_new_tokens = 5;
  o.eos_ids = {7};
  const std::vector<Generation> out = generate(m, nullptr, {{3}, {8}, {0, 1}}, o);
  ASSERT_EQ(out.size(), 3u);
  EXPECT_EQ(out[0].ids, (std::vector<int32_t>{4, 5, 6, 7}));  // the eos is kept in ids
  EXPECT_EQ(out[0].finish_reason, "eos");
  EXPECT_EQ(out[1].ids, (std::vector<int32_t>{9, 0, 1, 2, 3}));
  EXPECT_EQ(out[1].finish_reason, "length");
  EXPECT_EQ(out[2].ids, (std::vector<int32_t>{2, 3, 4, 5, 6}));
  // A sequence that finished is not decoded further: 3 + 4 + 4 rows after the prefill's tokens.
  EXPECT_EQ(m.decoded_rows, 3u + 4u + 4u);

  CountingModel short_model(10, 4);  // max_position_embeddings 4
  const Generation g = generate(short_model, nullptr, {{1, 2}}, o).front();
  EXPECT_EQ(g.ids, (std::vector<int32_t>{3, 4}));
  EXPECT_EQ(g.finish_reason, "length");
  EXPECT_NE(test::error_of([&] { generate(short_model, nullptr, {{1, 2, 3, 4}}, o); })
                .find("prompt 1 has 4 tokens, which leaves no room below the model's max_position_embeddings (4)"),
            std::string::npos);
  EXPECT_NE(test::error_of([&] { generate(m, nullptr, {{1}, {}}, o); }).find("prompt 2 is empty"), std::string::npos);
  EXPECT_NE(test::error_of([&] { generate(m, nullptr, {{10}}, o); })
                .find("prompt 1: token id 10 is outside the vocabulary (10)"),
            std::string::npos);
}

// Text: streamed pieces add up to the final text, which is the tokenizer's decode of the new ids; a
// stop string cuts the text before its first occurrence, and none of it is streamed even when it
// spans tokens (the stream holds back the stop string's length - 1 bytes).
TEST(Generation, StreamedTextAddsUpAndStopStringsCutIt) {
  const std::unique_ptr<Tokenizer> tok = Tokenizer::load("data/demo/tokenizer.model");
  CountingModel m(tok->vocab_size());
  GenerationOptions o;
  o.sampling.temperature = 0;
  o.max_new_tokens = 30;
  const std::vector<std::vector<int32_t>> prompts = {{300}, {400}};
  std::vector<std::string> streamed(prompts.size());
  auto collect = [&](size_t i, const std::string& text) { streamed[i] += text; };
  const std::vector<Generation> plain = generate(m, tok.get(), prompts, o, collect);
  for (size_t i = 0; i < prompts.size(); ++i) {
    EXPECT_EQ(plain[i].text, tok->decode(plain[i].ids)) << i;
    EXPECT_EQ(streamed[i], plain[i].text) << i;
    ASSERT_GT(plain[i].text.size(), 12u) << i;
  }
  // A stop string made of text that several tokens produce, from the middle of the first text.
  const std::string stop = plain[0].text.substr(6, 5);
  const size_t cut = plain[0].text.find(stop);
  o.stop = {stop};
  streamed.assign(prompts.size(), "");
  const std::vector<Generation> stopped = generate(m, tok.get(), prompts, o, collect);
  EXPECT_EQ(stopped[0].text, plain[0].text.substr(0, cut));
  EXPECT_EQ(stopped[0].finish_reason, "stop");
  EXPECT_LT(stopped[0].ids.size(), plain[0].ids.size());
  EXPECT_EQ(streamed[0], stopped[0].text) << "the stop string leaked into the stream";
  EXPECT_EQ(streamed[1], stopped[1].text);
}

// A request's random numbers are a function of (seed, request index, step): the same text at any
// batch size, another text with another seed.
TEST(Generation, SampledIdsDependOnTheSeedNotOnTheBatch) {
  FixtureModel fm("qwen3");
  ReferenceDecoder decoder(fm.model, fm.f.lora.data(), true);
  GenerationOptions o;
  o.sampling.temperature = 1.5f;  // flat enough that different seeds diverge within 12 tokens
  o.max_new_tokens = 12;
  const std::vector<std::vector<int32_t>> prompts = {some_ids(5, fm.f.cfg.V, 1), some_ids(3, fm.f.cfg.V, 2),
                                                     some_ids(8, fm.f.cfg.V, 3)};
  o.batch_size = 3;
  const std::vector<Generation> together = generate(decoder, nullptr, prompts, o);
  o.batch_size = 1;
  const std::vector<Generation> alone = generate(decoder, nullptr, prompts, o);
  o.sampling.seed = 1;
  const std::vector<Generation> reseeded = generate(decoder, nullptr, prompts, o);
  for (size_t i = 0; i < prompts.size(); ++i) {
    EXPECT_EQ(together[i].ids, alone[i].ids) << "prompt " << i;
    EXPECT_NE(together[i].ids, reseeded[i].ids) << "prompt " << i;
  }
}

}  // namespace
}  // namespace loom
