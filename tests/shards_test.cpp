// Prepared-dataset shards: round trip, sharding, and rejection of damaged, foreign or unfinished files.
#include <unistd.h>

#include <filesystem>
#include <fstream>
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
  flip_byte(shard(0), 8);  // version
  EXPECT_NE(error_of_load(dir()).find("shard format version 17"), std::string::npos) << error_of_load(dir());
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
