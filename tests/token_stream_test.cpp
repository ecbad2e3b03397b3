// Decoding as HF does, and streaming it. Tokenizer::decode(ids, skip_special_tokens) against
// transformers' tokenizer.decode on the fixtures of tools/make_decode_fixture.py (byte-level BPE:
// Qwen3, Llama 3; Metaspace with byte fallback: Mistral; sentencepiece: the demo model and
// sp_bpe.model), then TokenStream fed one id at a time against the decode of all the ids: on the
// fixtures' ids, on loom's own encodings of their texts, and on random id sequences.
#include "data/token_stream.h"

#include <cstdio>
#include <fstream>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <random>

#include "data/tokenizer.h"
#include "data/utf8.h"
#include "tests/test_util.h"

namespace {

using json = nlohmann::json;
using loom::Tokenizer;
using loom::TokenStream;
using Ids = std::vector<int32_t>;


// decode_<name>.json, read once per run.
const json& read_fixture(const std::string& name) {
  static std::map<std::string, json> cache;
  json& fx = cache[name];
  if (fx.is_null()) {
    const std::string path = loom::test::fixtures_dir() + "/tokenizer/decode_" + name + ".json";
    std::ifstream f(path);
    EXPECT_TRUE(f.good()) << "cannot open " << path << " (run /tmp/h5venv/bin/python tools/make_decode_fixture.py)";
    fx = json::parse(f);
  }
  return fx;
}

// The fixture's "tokenizer": shared tokenizers under ../shared, the others inside the repository.
const Tokenizer& load(const std::string& name) {
  static std::map<std::string, std::unique_ptr<Tokenizer>> cache;
  auto& t = cache[name];
  if (!t) {
    const std::string where = read_fixture(name).at("tokenizer");
    const bool shared = where.rfind("tokenizers/", 0) == 0;
    t = Tokenizer::load(shared ? loom::test::shared_dir() + "/" + where : where);
  }
  return *t;
}

// Every piece push() and finish() return, in order.
std::vector<std::string> stream_pieces(const Tokenizer& tok, const Ids& ids, bool skip) {
  TokenStream stream(tok, skip);
  std::vector<std::string> pieces;
  for (int32_t id : ids) pieces.push_back(stream.push(id));
  pieces.push_back(stream.finish());
  return pieces;
}

std::string joined(const std::vector<std::string>& pieces) {
  std::string s;
  for (const std::string& p : pieces) s += p;
  return s;
}

std::string shown(const Ids& ids) {
  std::string s;
  for (int32_t id : ids) s += (s.empty() ? "" : " ") + std::to_string(id);
  return s;
}

// Streaming ids gives decode(ids, skip) in both modes, and every piece on its own is valid UTF-8
// (no character is ever cut between two pieces).
void expect_streams(const Tokenizer& tok, const Ids& ids, const std::string& what) {
  for (bool skip : {true, false}) {
    const std::vector<std::string> pieces = stream_pieces(tok, ids, skip);
    EXPECT_EQ(joined(pieces), tok.decode(ids, skip)) << what << ", skip_special_tokens=" << skip << ", ids "
                                                     << shown(ids);
    for (size_t i = 0; i < pieces.size(); ++i)
      EXPECT_EQ(loom::utf8::first_invalid(pieces[i]), std::string::npos)
          << what << ": piece " << i << " is not valid UTF-8, ids " << shown(ids);
  }
}

class DecodeFixture : public testing::TestWithParam<std::string> {};

TEST_P(DecodeFixture, DecodeMatchesTransformers) {
  const Tokenizer& tok = load(GetParam());
  size_t n = 0;
  for (const json& c : read_fixture(GetParam()).at("cases")) {
    const Ids ids = c.at("ids").get<Ids>();
    EXPECT_EQ(tok.decode(ids, true), c.at("skip").get<std::string>()) << "ids " << shown(ids);
    EXPECT_EQ(tok.decode(ids, false), c.at("keep").get<std::string>()) << "ids " << shown(ids);
    ++n;
  }
  EXPECT_GE(n, 70u) << "the fixture holds too few cases; regenerate it";
}

TEST_P(DecodeFixture, StreamingTheFixtureIdsGivesTransformersText) {
  const Tokenizer& tok = load(GetParam());
  for (const json& c : read_fixture(GetParam()).at("cases")) {
    const Ids ids = c.at("ids").get<Ids>();
    EXPECT_EQ(joined(stream_pieces(tok, ids, true)), c.at("skip").get<std::string>()) << "ids " << shown(ids);
    EXPECT_EQ(joined(stream_pieces(tok, ids, false)), c.at("keep").get<std::string>()) << "ids " << shown(ids);
  }
}

// loom's encodings of the fixture texts (emoji, CJK, combining marks, accents, spaces, newlines),
// with and without BOS/EOS, streamed whole and from every token on (a continuation starts anywhere).
TEST_P(DecodeFixture, StreamingEncodedTextEqualsDecode) {
  const Tokenizer& tok = load(GetParam());
  size_t byte_pieces = 0, held = 0;
  for (const json& c : read_fixture(GetParam()).at("cases")) {
    if (!c.contains("text")) continue;
    const std::string text = c.at("text");
    for (bool specials : {false, true}) {
      const Ids ids = tok.encode(text, specials);
      for (size_t k = 0; k < ids.size() || k == 0; ++k)
        expect_streams(tok, Ids(ids.begin() + std::ptrdiff_t(k), ids.end()), "text \"" + text + "\" from token " +
                                                                                  std::to_string(k));
      for (int32_t id : ids) byte_pieces += tok.is_byte_piece(id);
      const std::vector<std::string> pieces = stream_pieces(tok, ids, true);
      for (size_t i = 0; i + 1 < pieces.size(); ++i) held += pieces[i].empty();
    }
  }
  // The texts must exercise what the stream holds back: characters split over byte-level tokens
  // (every tokenizer) and byte-fallback pieces (all but the byte-level ones).
  EXPECT_GT(held, 0u) << "no push returned \"\": no character was split over tokens";
  const bool byte_level = GetParam() == "qwen3" || GetParam() == "llama3";
  if (!byte_level) {
    EXPECT_GT(byte_pieces, 0u) << "no text was encoded with byte-fallback pieces";
  }
}

// Random ids: broken UTF-8 and byte runs cut short everywhere, specials and ids past the vocabulary.
TEST_P(DecodeFixture, StreamingRandomIdsEqualsDecode) {
  const Tokenizer& tok = load(GetParam());
  const int32_t V = tok.vocab_size();
  // Ids of the fixture texts (many of them parts of characters), byte pieces, special tokens.
  std::vector<int32_t> text_ids, bytes, specials;
  for (const json& c : read_fixture(GetParam()).at("cases"))
    if (c.contains("text"))
      for (int32_t id : tok.encode(c.at("text").get<std::string>())) text_ids.push_back(id);
  for (int32_t id = 0; id < V; ++id) {
    if (tok.is_byte_piece(id)) bytes.push_back(id);
    if (tok.decode_skips(id, true) && !tok.decode_skips(id, false)) specials.push_back(id);
  }
  ASSERT_FALSE(specials.empty());
  std::mt19937 rng(7);
  auto pick = [&](const std::vector<int32_t>& from) { return from[rng() % from.size()]; };
  for (int n = 0; n < 1500; ++n) {
    Ids ids(1 + rng() % 12);
    for (int32_t& id : ids) {
      const uint32_t r = rng() % 100;
      id = r < 30 && !bytes.empty() ? pick(bytes)
           : r < 60                 ? pick(text_ids)
           : r < 70                 ? pick(specials)
           : r < 73                 ? V + int32_t(rng() % 3)
                                    : int32_t(rng() % uint32_t(V));
    }
    expect_streams(tok, ids, "random ids");
    if (HasFailure()) return;  // one failing sequence says enough
  }
}

INSTANTIATE_TEST_SUITE_P(Tokenizers, DecodeFixture,
                         testing::Values("qwen3", "llama3", "mistral", "demo", "sp_bpe"));

// Counts the ids it decodes: the work a stream does.
class CountingTokenizer : public Tokenizer {
 public:
  explicit CountingTokenizer(const Tokenizer& inner) : inner_(inner) {}
  std::string decode(const std::vector<int32_t>& ids) const override { return inner_.decode(ids); }
  bool decode_skips(int32_t id, bool skip) const override { return inner_.decode_skips(id, skip); }
  bool is_byte_piece(int32_t id) const override { return inner_.is_byte_piece(id); }
  int32_t vocab_size() const override { return inner_.vocab_size(); }
  int32_t token_to_id(std::string_view token) const override { return inner_.token_to_id(token); }
  mutable size_t decoded = 0;

 private:
  void encode_into(std::string_view, std::vector<int32_t>&, std::vector<size_t>*) const override {}
  // The ids come without those decode_skips drops, so keeping specials decodes them as they are.
  std::string decode_kept(const std::vector<int32_t>& ids) const override {
    decoded += ids.size();
    return inner_.decode(ids, false);
  }
  const Tokenizer& inner_;
};

TEST(TokenStream, DecodesAWindowNotTheHistory) {
  for (const char* name : {"qwen3", "mistral", "demo"}) {
    const Tokenizer& tok = load(name);
    std::string text;
    for (const json& c : read_fixture(name).at("cases"))
      if (c.contains("text")) text += c.at("text").get<std::string>();
    Ids ids;
    while (ids.size() < 4000) {
      const Ids more = tok.encode(text);
      ids.insert(ids.end(), more.begin(), more.end());
    }
    CountingTokenizer counting(tok);
    EXPECT_EQ(joined(stream_pieces(counting, ids, true)), tok.decode(ids, true)) << name;
    // Each push decodes its window (the ids emitted last, then those held: two or three when
    // nothing is split) and, when it emits, the new context once more. A character split over
    // four tokens or a run of byte pieces holds more; 12 per id leaves room for those and still
    // fails at once if the window grows with the history (that would be ~ids/2 per id).
    EXPECT_LE(counting.decoded, 12 * ids.size()) << name << ": " << ids.size() << " ids";
  }
}

// "€" as byte pieces is held until the run ends: a byte after it that breaks the run turns every
// byte of the run into U+FFFD (HF's ByteFallback), so nothing of it could have been sent before.
TEST(TokenStream, HoldsAByteFallbackRunUntilItEnds) {
  const Tokenizer& tok = load("mistral");
  auto byte = [&](int b) {
    char name[8];
    std::snprintf(name, sizeof name, "<0x%02X>", b);
    return tok.token_to_id(name);
  };
  const int32_t hello = tok.encode("Hello")[0];
  TokenStream stream(tok);
  for (int b : {0xE2, 0x82, 0xAC, 0x41}) EXPECT_EQ(stream.push(byte(b)), "");
  EXPECT_EQ(stream.push(hello), "€A Hello");
  for (int b : {0xE2, 0x82, 0xAC, 0xFF}) EXPECT_EQ(stream.push(byte(b)), "");
  EXPECT_EQ(stream.push(hello), "\uFFFD\uFFFD\uFFFD\uFFFD Hello");
  EXPECT_EQ(stream.push(byte(0xE2)), "");
  EXPECT_EQ(stream.finish(), "\uFFFD");
}

// The first token of a continuation loses its "▁" as in HF's decode of the new ids alone; later
// ones keep it, and after finish() the next push starts a new text.
TEST(TokenStream, FirstTokenOfTheTextLosesItsSpace) {
  for (const char* name : {"mistral", "demo"}) {
    const Tokenizer& tok = load(name);
    const Ids ids = tok.encode("Hello world");
    size_t k = 0;  // where "▁world" starts
    while (k < ids.size() && tok.decode(Ids(ids.begin(), ids.begin() + std::ptrdiff_t(k)), true) != "Hello") ++k;
    ASSERT_LT(k, ids.size()) << name;
    const Ids rest(ids.begin() + std::ptrdiff_t(k), ids.end());
    EXPECT_EQ(tok.decode(rest, true), "world") << name;
    TokenStream stream(tok);
    std::string text;
    for (int32_t id : rest) text += stream.push(id);
    EXPECT_EQ(text + stream.finish(), "world") << name;
    for (int32_t id : ids) text += stream.push(id);
    EXPECT_EQ(text + stream.finish(), "worldHello world") << name;
  }
}

// A character split over tokens comes out whole once its last byte is in; unfinished at the end,
// it comes out as U+FFFD, as HF decodes it.
TEST(TokenStream, SplitCharacterWaitsForItsLastByte) {
  const Tokenizer& tok = load("qwen3");
  const Ids ids = tok.encode("a𪚥");  // U+2A6A5: four bytes, three byte-level tokens in Qwen3
  ASSERT_EQ(ids.size(), 4u);
  TokenStream stream(tok);
  EXPECT_EQ(stream.push(ids[0]), "a");
  EXPECT_EQ(stream.push(ids[1]), "");
  EXPECT_EQ(stream.push(ids[2]), "");
  EXPECT_EQ(stream.push(ids[3]), "𪚥");
  EXPECT_EQ(stream.finish(), "");
  EXPECT_EQ(stream.push(ids[1]), "");
  EXPECT_EQ(stream.finish(), "\uFFFD");
}

TEST(TokenStream, SkipsSpecialTokensOnlyWhenAsked) {
  const Tokenizer& tok = load("qwen3");
  const int32_t im_end = tok.token_to_id("<|im_end|>"), think = tok.token_to_id("<think>");
  const Ids ids = {tok.encode("Hi")[0], im_end, think, tok.vocab_size() + 5};
  EXPECT_EQ(joined(stream_pieces(tok, ids, true)), "Hi<think>");  // <think> is an added, not special, token
  EXPECT_EQ(joined(stream_pieces(tok, ids, false)), "Hi<|im_end|><think>");
}

// Ids past the vocabulary decode as nothing (HF's decode; a model's embedding often has more rows
// than the tokenizer has tokens), while decode(ids) keeps refusing them; negative ids are errors.
TEST(TokenStream, IdsOutsideTheVocabulary) {
  for (const char* name : {"llama3", "demo"}) {
    const Tokenizer& tok = load(name);
    const int32_t V = tok.vocab_size();
    EXPECT_EQ(tok.decode({V, V + 100}, true), "") << name;
    EXPECT_EQ(tok.decode({V}, false), "") << name;
    EXPECT_THROW(tok.decode({V}), loom::Error) << name;
    loom::test::expect_error([&] { tok.decode({-1}, true); }, {"token id -1"});
    TokenStream stream(tok);
    loom::test::expect_error([&] { stream.push(-3); }, {"token id -3"});
  }
}

}  // namespace
