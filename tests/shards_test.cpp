// Prepared-dataset shards: round trip, sharding, and rejection of damaged, foreign or unfinished files.
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <nlohmann/json.hpp>
#include <random>

#include "data/shards.h"
#include "ops/error.h"
#include "tests/test_util.h"

namespace {

namespace fs = std::filesystem;

// A fresh folder per test, removed afterwards.
class Shards : public testing::Test {
 protected:
  void SetUp() override {
    const auto* info = testing::UnitTest::GetInstance()->current_test_info();
    dir_ = fs::temp_directory_path() / ("loom_shards_" + std::to_string(getpid()) + "_" + info->name());
    fs::remove_all(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }
  std::string dir() const { return dir_.string(); }
  std::string shard(int i) const {
    char name[32];
    std::snprintf(name, sizeof name, "shard-%05d.bin", i);
    return (dir_ / name).string();
  }
  fs::path dir_;
};

std::vector<loom::Document> random_docs(int n, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::vector<loom::Document> docs(n);
  for (auto& d : docs) {
    const size_t len = rng() % 40;  // includes empty documents
    for (size_t t = 0; t < len; ++t) {
      d.ids.push_back(int32_t(rng() % 150000));
      d.mask.push_back(uint8_t(rng() % 2));
    }
  }
  return docs;
}

void expect_same_docs(const std::vector<loom::Document>& a, const std::vector<loom::Document>& b) {
  ASSERT_EQ(a.size(), b.size());
  for (size_t i = 0; i < a.size(); ++i) {
    EXPECT_EQ(a[i].ids, b[i].ids) << "document " << i;
    EXPECT_EQ(a[i].mask, b[i].mask) << "document " << i;
  }
}

std::string error_of_load(const std::string& dir) {
  return loom::test::error_of([&] { loom::load_prepared(dir); });
}

void flip_byte(const std::string& path, std::streamoff at) {
  std::fstream f(path, std::ios::in | std::ios::out | std::ios::binary);
  f.seekg(at);
  char c = 0;
  f.get(c);
  f.seekp(at);
  f.put(char(c ^ 0x10));
}

}  // namespace

TEST_F(Shards, Fnv1aMatchesReferenceVectors) {
  // Published FNV-1a-64 test vectors (Fowler/Noll/Vo).
  EXPECT_EQ(loom::hex64(loom::fnv1a64("", 0)), "cbf29ce484222325");
  EXPECT_EQ(loom::hex64(loom::fnv1a64("a", 1)), "af63dc4c8601ec8c");
  EXPECT_EQ(loom::hex64(loom::fnv1a64("foobar", 6)), "85944171f73967e8");
}

TEST_F(Shards, RoundTripKeepsIdsAndMasks) {
  const auto docs = random_docs(300, 1);
  const auto shards = loom::write_prepared(dir(), docs, R"({"note": "test"})", 1000);
  EXPECT_GT(shards.size(), 2u);
  expect_same_docs(loom::load_prepared(dir()), docs);
  const auto manifest = nlohmann::json::parse(loom::read_manifest(dir()));
  EXPECT_EQ(manifest["note"], "test");
  EXPECT_EQ(manifest["shards"].size(), shards.size());
}

TEST_F(Shards, ShardsHoldWholeDocumentsUpToTheTokenLimit) {
  std::vector<loom::Document> docs(5);
  for (int i = 0; i < 5; ++i) docs[i] = {std::vector<int32_t>(4, i), std::vector<uint8_t>(4, 1)};
  const auto shards = loom::write_prepared(dir(), docs, "{}", 8);
  ASSERT_EQ(shards.size(), 3u);
  EXPECT_EQ(shards[0].documents, 2);
  EXPECT_EQ(shards[2].documents, 1);
  EXPECT_EQ(shards[2].tokens, 4);
  EXPECT_EQ(int64_t(fs::file_size(shard(0))), shards[0].bytes);
  // A document larger than the limit gets a shard of its own.
  docs[1].ids.assign(20, 7);
  docs[1].mask.assign(20, 0);
  EXPECT_EQ(loom::write_prepared(dir(), docs, "{}", 8).size(), 4u);
}

TEST_F(Shards, CorruptedShardIsRejectedByChecksum) {
  loom::write_prepared(dir(), random_docs(50, 2), "{}");
  flip_byte(shard(0), 48 + 8 * 51 + 3);  // inside the ids block
  const std::string err = error_of_load(dir());
  EXPECT_NE(err.find("checksum mismatch"), std::string::npos) << err;
  EXPECT_NE(err.find(shard(0)), std::string::npos) << err;
  EXPECT_NE(err.find("build/prepare"), std::string::npos) << err;
}

TEST_F(Shards, TruncatedShardIsRejected) {
  loom::write_prepared(dir(), random_docs(50, 3), "{}");
  fs::resize_file(shard(0), fs::file_size(shard(0)) - 5);
  const std::string err = error_of_load(dir());
  EXPECT_NE(err.find("truncated or damaged"), std::string::npos) << err;
  fs::resize_file(shard(0), 20);
  EXPECT_NE(error_of_load(dir()).find("shorter than the 48-byte shard header"), std::string::npos);
}

TEST_F(Shards, WrongMagicOrVersionIsRejected) {
  loom::write_prepared(dir(), random_docs(5, 4), "{}");
  flip_byte(shard(0), 8);  // version 2 ^ 0x10
  EXPECT_NE(error_of_load(dir()).find("shard format version 18, this build reads versions 1 to 2"), std::string::npos)
      << error_of_load(dir());
  flip_byte(shard(0), 8);
  flip_byte(shard(0), 0);
  EXPECT_NE(error_of_load(dir()).find("not a loom shard"), std::string::npos);
}

TEST_F(Shards, DamagedCountsAreRejectedWithoutOverflow) {
  loom::write_prepared(dir(), random_docs(5, 5), "{}");
  {
    std::fstream f(shard(0), std::ios::in | std::ios::out | std::ios::binary);
    const uint64_t huge = ~uint64_t(0) / 2;
    f.seekp(16);
    f.write(reinterpret_cast<const char*>(&huge), 8);
  }
  EXPECT_NE(error_of_load(dir()).find("more bytes than the file"), std::string::npos) << error_of_load(dir());
}

TEST_F(Shards, UnfinishedPreparationIsNeverPickedUp) {
  const auto docs = random_docs(20, 6);
  loom::write_prepared(dir(), docs, "{}");
  // What an interrupted writer leaves: a temporary shard with a name that is not a shard's.
  std::ofstream(shard(1) + ".tmp.12345") << "partial";
  expect_same_docs(loom::load_prepared(dir()), docs);
  // Without the manifest (removed first when re-preparing) the folder is not a dataset at all.
  fs::remove(fs::path(dir()) / loom::kManifestName);
  EXPECT_NE(error_of_load(dir()).find("preparation did not finish"), std::string::npos);
}

TEST_F(Shards, RepreparingReplacesEveryOldShard) {
  loom::write_prepared(dir(), random_docs(100, 7), "{}", 200);
  ASSERT_TRUE(fs::exists(shard(2)));
  const auto fresh = random_docs(10, 8);
  EXPECT_EQ(loom::write_prepared(dir(), fresh, "{}", 1 << 20).size(), 1u);
  EXPECT_FALSE(fs::exists(shard(1)));
  EXPECT_FALSE(fs::exists(shard(2)));
  expect_same_docs(loom::load_prepared(dir()), fresh);
}

TEST_F(Shards, ShardFromAnotherPreparationIsRejected) {
  loom::write_prepared(dir(), random_docs(10, 9), "{}");
  const std::string other = dir() + "_other";
  loom::write_prepared(other, random_docs(10, 10), "{}");
  fs::copy_file(fs::path(other) / "shard-00000.bin", shard(0), fs::copy_options::overwrite_existing);
  fs::remove_all(other);
  const std::string err = error_of_load(dir());
  EXPECT_NE(err.find("mixes two preparations"), std::string::npos) << err;
}

namespace {

// Pair documents (two segments) among single-sequence ones, including empty documents.
std::vector<loom::Document> docs_with_pairs(int n, uint64_t seed) {
  std::vector<loom::Document> docs = random_docs(n, seed);
  std::mt19937_64 rng(seed + 1);
  for (auto& d : docs)
    if (d.ids.size() >= 2 && rng() % 2) {
      const int32_t first = 1 + int32_t(rng() % (d.ids.size() - 1));
      d.segments = {first, int32_t(d.ids.size()) - first};
    }
  return docs;
}

// A version-1 shard (before segments) as build/prepare wrote it: the layout of shards.h without
// the sequence bits, every document one sequence.
std::string write_version1(const std::string& dir, const std::vector<loom::Document>& docs) {
  std::vector<uint64_t> offsets{0};
  std::vector<int32_t> ids;
  std::vector<uint8_t> bits;
  for (const auto& d : docs) {
    for (size_t t = 0; t < d.ids.size(); ++t) {
      if (ids.size() % 8 == 0) bits.push_back(0);
      bits.back() |= uint8_t(d.mask[t] << (ids.size() % 8));
      ids.push_back(d.ids[t]);
    }
    offsets.push_back(ids.size());
  }
  const std::string summary = "{}";
  std::string body(reinterpret_cast<const char*>(offsets.data()), 8 * offsets.size());
  body.append(reinterpret_cast<const char*>(ids.data()), 4 * ids.size());
  body.append(reinterpret_cast<const char*>(bits.data()), bits.size());
  body += summary;
  const uint64_t header[5] = {1, docs.size(), ids.size(), summary.size(), loom::fnv1a64(body.data(), body.size())};
  fs::create_directories(dir);
  std::ofstream(dir + "/shard-00000.bin", std::ios::binary)
      << "LOOMSHRD" << std::string(reinterpret_cast<const char*>(header), sizeof header) << body;
  const nlohmann::json manifest = {
      {"format", "loom-prepared"},
      {"version", 1},
      {"shards",
       {{{"file", "shard-00000.bin"}, {"documents", docs.size()}, {"tokens", ids.size()},
         {"bytes", 48 + body.size()}, {"checksum", loom::hex64(header[4])}}}}};
  std::ofstream(dir + "/prepared.json") << manifest.dump();
  return dir;
}

}  // namespace

TEST_F(Shards, RoundTripKeepsSegments) {
  const auto docs = docs_with_pairs(300, 11);
  loom::write_prepared(dir(), docs, "{}", 700);
  const auto back = loom::load_prepared(dir());
  expect_same_docs(back, docs);
  size_t pairs = 0;
  for (size_t i = 0; i < docs.size(); ++i) {
    EXPECT_EQ(back[i].segments, docs[i].segments) << "document " << i;
    pairs += !docs[i].segments.empty();
  }
  EXPECT_GT(pairs, 100u);
}

// Shards written before segments existed still load, every document one sequence.
TEST_F(Shards, VersionOneShardsStillRead) {
  const auto docs = random_docs(40, 12);
  write_version1(dir(), docs);
  const auto back = loom::load_prepared(dir());
  expect_same_docs(back, docs);
  for (const auto& d : back) EXPECT_TRUE(d.segments.empty());
}

// A sequence start on a document's first token cannot come from the writer: the shard is damaged.
TEST_F(Shards, SequenceBitOnADocumentStartIsRejected) {
  std::vector<loom::Document> docs(2);
  docs[0] = {{1, 2, 3}, {0, 1, 1}, {1, 2}};
  docs[1] = {{4, 5}, {0, 1}, {}};
  loom::write_prepared(dir(), docs, "{}");
  // Tokens 0..4: the sequence bits follow the 4-byte ids block and the 1-byte mask bits; bit 1
  // (token 1, pair 0's second sequence) is set; set bit 3 too (document 1's first token).
  const std::streamoff bits = 48 + 8 * 3 + 4 * 5 + 1;
  std::string bytes;
  {
    std::ifstream in(shard(0), std::ios::binary);
    bytes.assign(std::istreambuf_iterator<char>(in), {});
  }
  ASSERT_EQ(uint8_t(bytes[size_t(bits)]), 0x02);
  bytes[size_t(bits)] = char(0x0A);
  const uint64_t sum = loom::fnv1a64(bytes.data() + 48, bytes.size() - 48);
  std::memcpy(&bytes[40], &sum, 8);
  std::ofstream(shard(0), std::ios::binary) << bytes;
  nlohmann::json m = nlohmann::json::parse(loom::read_manifest(dir()));
  m["shards"][0]["checksum"] = loom::hex64(sum);
  std::ofstream(fs::path(dir()) / loom::kManifestName) << m.dump();
  const std::string err = error_of_load(dir());
  EXPECT_NE(err.find("document 1 has a sequence start on its first token"), std::string::npos) << err;
}

TEST_F(Shards, SegmentsThatDoNotCoverTheDocumentAreNotWritten) {
  std::vector<loom::Document> docs(1);
  docs[0] = {{1, 2, 3}, {0, 1, 1}, {1, 1}};
  EXPECT_NE(loom::test::error_of([&] { loom::write_prepared(dir(), docs, "{}"); })
                .find("document 0 has 3 tokens but its segments sum to 2"),
            std::string::npos);
  docs[0].segments = {3};
  EXPECT_NE(loom::test::error_of([&] { loom::write_prepared(dir(), docs, "{}"); }).find("document 0 has a single segment"),
            std::string::npos);
}
