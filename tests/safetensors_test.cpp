// safetensors reader/writer: round trips through write_safetensors, sharded folders, and one
// hand-built file per corruption class, each of which must fail with a message naming the file,
// the tensor and the problem.
#include "models/safetensors.h"

#include <sys/stat.h>

#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>

#include "ops/error.h"
#include "tests/test_util.h"

namespace fs = std::filesystem;
using loom::Checkpoint;
using loom::DType;
using loom::TensorToWrite;

namespace {

class Safetensors : public loom::test::TempDirTest {
 protected:
  std::string path(const std::string& name) const { return (fs::path(dir_) / name).string(); }

  // u64 N ‖ header ‖ data, exactly as given (no padding), for corrupt files.
  std::string write_raw(const std::string& name, const std::string& header, const std::string& data) {
    std::string p = path(name);
    std::ofstream out(p, std::ios::binary);
    uint64_t n = header.size();
    for (int i = 0; i < 8; ++i) out.put(char(n >> (8 * i)));
    out << header << data;
    return p;
  }

};

using loom::test::expect_error;

std::vector<uint8_t> pattern_bytes(size_t n, uint8_t seed) {
  std::vector<uint8_t> v(n);
  for (size_t i = 0; i < n; ++i) v[i] = uint8_t(seed + 37 * i);
  return v;
}

std::string read_file(const std::string& p) {
  std::ifstream in(p, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

}  // namespace

TEST_F(Safetensors, RoundTripsEveryDtype) {
  const DType types[] = {DType::F32, DType::F16, DType::BF16, DType::U8,  DType::I8,  DType::I16, DType::I32,
                         DType::I64, DType::F64, DType::BOOL, DType::U16, DType::U32, DType::U64};
  std::vector<std::vector<uint8_t>> data;
  std::vector<TensorToWrite> tensors;
  for (DType t : types) {
    data.push_back(pattern_bytes(3 * 5 * loom::dtype_size(t), uint8_t(data.size())));
    tensors.push_back({std::string("t.") + loom::dtype_name(t), t, {3, 5}, data.back().data()});
  }
  loom::write_safetensors(path("all.safetensors"), tensors, {{"format", "pt"}, {"note", "x"}});

  Checkpoint ck = Checkpoint::open(path("all.safetensors"));
  ASSERT_EQ(ck.names().size(), std::size(types));
  EXPECT_EQ(ck.metadata().at("format"), "pt");
  EXPECT_EQ(ck.metadata().at("note"), "x");
  for (size_t i = 0; i < std::size(types); ++i) {
    const loom::TensorView& v = ck.get(tensors[i].name);
    EXPECT_EQ(v.dtype, types[i]) << v.name;
    EXPECT_EQ(v.dtype_str, loom::dtype_name(types[i]));
    EXPECT_EQ(v.shape, (std::vector<int64_t>{3, 5}));
    ASSERT_EQ(v.nbytes, data[i].size()) << v.name;
    EXPECT_EQ(std::memcmp(v.data, data[i].data(), v.nbytes), 0) << v.name;
  }
}

TEST_F(Safetensors, HeaderIsPaddedToEightBytesAndWriteLeavesNoTempFile) {
  float x = 1.5f;
  loom::write_safetensors(path("a.safetensors"), {{"odd_name_", DType::F32, {1}, &x}});
  std::string bytes = read_file(path("a.safetensors"));
  uint64_t n = 0;
  std::memcpy(&n, bytes.data(), 8);
  EXPECT_EQ(n % 8, 0u);
  EXPECT_EQ(bytes.size(), 8 + n + 4);
  EXPECT_EQ(bytes[8], '{');
  EXPECT_FALSE(fs::exists(path("a.safetensors.tmp")));
  EXPECT_NE(bytes.find("\"__metadata__\":{\"format\":\"pt\"}"), std::string::npos);
}

TEST_F(Safetensors, ScalarAndEmptyTensors) {
  float scalar = 7.25f;
  loom::write_safetensors(path("s.safetensors"),
                          {{"scalar", DType::F32, {}, &scalar}, {"empty", DType::BF16, {0, 4}, nullptr}});
  Checkpoint ck = Checkpoint::open(path("s.safetensors"));
  EXPECT_EQ(ck.get("scalar").numel(), 1);
  EXPECT_TRUE(ck.get("scalar").shape.empty());
  EXPECT_EQ(ck.read_f32("scalar", {}), std::vector<float>{7.25f});
  EXPECT_EQ(ck.get("empty").numel(), 0);
  EXPECT_EQ(ck.get("empty").nbytes, 0u);
  EXPECT_TRUE(ck.read_f32("empty", {0, 4}).empty());
}

TEST_F(Safetensors, ReadF32ConvertsHalfAndBfloat16Exactly) {
  // F16: 1, -2, 65504 (max), 2^-24 (smallest subnormal), 2^-14 (smallest normal), -0, 0.5.
  const uint16_t f16[] = {0x3c00, 0xc000, 0x7bff, 0x0001, 0x0400, 0x8000, 0x3800};
  const float f16_want[] = {1.f, -2.f, 65504.f, std::ldexp(1.f, -24), std::ldexp(1.f, -14), -0.f, 0.5f};
  // BF16: 1, -3.140625 (0xc049), 2^-133 (bf16 subnormal).
  const uint16_t bf16[] = {0x3f80, 0xc049, 0x0001};
  const float bf16_want[] = {1.f, -3.140625f, std::ldexp(1.f, -133)};
  loom::write_safetensors(path("h.safetensors"),
                          {{"h", DType::F16, {7}, f16}, {"b", DType::BF16, {3}, bf16}});
  Checkpoint ck = Checkpoint::open(path("h.safetensors"));
  std::vector<float> h = ck.read_f32("h", {7});
  for (int i = 0; i < 7; ++i) {
    EXPECT_EQ(h[i], f16_want[i]) << i;
    EXPECT_EQ(std::signbit(h[i]), std::signbit(f16_want[i])) << i;
  }
  std::vector<float> b = ck.read_f32("b", {3});
  for (int i = 0; i < 3; ++i) EXPECT_EQ(b[i], bf16_want[i]) << i;
}

// Infinities and NaN of every float dtype are refused, naming the tensor and the first bad element
// (row-major, as [row, col]), whatever comes after it.
TEST_F(Safetensors, ReadF32RejectsNonFiniteValuesNamingTheFirst) {
  const uint16_t f16[6] = {0x3c00, 0x3c00, 0x3c00, 0x3c00, 0x7c00, 0x7e00};  // +inf at 4, NaN at 5
  const uint16_t bf16[6] = {0x3f80, 0xff80, 0x3f80, 0x7fc0, 0x3f80, 0x3f80};  // -inf at 1, NaN at 3
  float f32[6] = {1, 2, 3, 4, 5, 6};
  f32[2] = std::nanf("");
  loom::write_safetensors(path("n.safetensors"), {{"model.layers.0.mlp.up_proj.weight", DType::F16, {2, 3}, f16},
                                                  {"b", DType::BF16, {2, 3}, bf16},
                                                  {"f", DType::F32, {6}, f32}});
  Checkpoint ck = Checkpoint::open(path("n.safetensors"));
  expect_error([&] { ck.read_f32("model.layers.0.mlp.up_proj.weight", {2, 3}); },
               {"tensor 'model.layers.0.mlp.up_proj.weight'", "n.safetensors", "holds inf at index [1, 1]"});
  expect_error([&] { ck.read_f32("b", {2, 3}); }, {"tensor 'b'", "holds -inf at index [0, 1]"});
  expect_error([&] { ck.read_f32("f", {6}); }, {"tensor 'f'", "holds nan at index [2]"});
}

TEST_F(Safetensors, ReadF32RejectsShapeMismatchAndIntegerDtype) {
  float w[6] = {};
  int32_t ids[2] = {};
  loom::write_safetensors(path("m.safetensors"), {{"model.norm.weight", DType::F32, {2, 3}, w}, {"ids", DType::I32, {2}, ids}});
  Checkpoint ck = Checkpoint::open(path("m.safetensors"));
  expect_error([&] { ck.read_f32("model.norm.weight", {3, 2}); },
               {"model.norm.weight", "m.safetensors", "[2, 3]", "expected [3, 2]"});
  expect_error([&] { ck.read_f32("ids", {2}); }, {"'ids'", "I32", "expected F32, F16 or BF16"});
  expect_error([&] { ck.get("lm_head.weight"); }, {"'lm_head.weight' not found", "m.safetensors"});
  EXPECT_FALSE(ck.has("lm_head.weight"));
  EXPECT_TRUE(ck.has("ids"));
}

TEST_F(Safetensors, AcceptsWhitespaceAroundHeaderAndAnyTensorOrder) {
  std::string data(8, '\0');
  data[4] = 1;
  // b is listed first but stored second; the reader sorts by offset as the reference does.
  std::string p = write_raw("w.safetensors",
                            "  \n{\"b\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[4,8]},"
                            "\"a\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[0,4]}}   ",
                            data);
  Checkpoint ck = Checkpoint::open(p);
  EXPECT_EQ(ck.get("b").data[0], 1);
  EXPECT_EQ(ck.get("a").data[0], 0);
}

TEST_F(Safetensors, OpensSingleFileFolder) {
  float x[2] = {1, 2};
  fs::create_directory(path("m"));
  loom::write_safetensors(path("m/model.safetensors"), {{"x", DType::F32, {2}, x}});
  Checkpoint ck = Checkpoint::open(path("m"));
  EXPECT_EQ(ck.read_f32("x", {2}), (std::vector<float>{1, 2}));
}

namespace {
void write_text(const std::string& p, const std::string& text) { std::ofstream(p) << text; }
}  // namespace

TEST_F(Safetensors, OpensShardedFolderThroughIndex) {
  fs::create_directory(path("m"));
  float a[4] = {1, 2, 3, 4}, b[2] = {5, 6}, c[1] = {7};
  loom::write_safetensors(path("m/model-00001-of-00002.safetensors"),
                          {{"a", DType::F32, {2, 2}, a}, {"b", DType::F32, {2}, b}});
  loom::write_safetensors(path("m/model-00002-of-00002.safetensors"), {{"c", DType::F32, {1}, c}});
  write_text(path("m/model.safetensors.index.json"),
             R"({"metadata": {"total_size": 28}, "weight_map": {"a": "model-00001-of-00002.safetensors",
                 "b": "model-00001-of-00002.safetensors", "c": "model-00002-of-00002.safetensors"}})");
  Checkpoint ck = Checkpoint::open(path("m"));
  EXPECT_EQ(ck.names(), (std::vector<std::string>{"a", "b", "c"}));
  EXPECT_EQ(ck.read_f32("a", {2, 2}), (std::vector<float>{1, 2, 3, 4}));
  EXPECT_EQ(ck.read_f32("c", {1}), std::vector<float>{7});
  EXPECT_NE(ck.get("c").file.find("model-00002-of-00002.safetensors"), std::string::npos);
  // The index file itself is also accepted as the path.
  EXPECT_EQ(Checkpoint::open(path("m/model.safetensors.index.json")).names().size(), 3u);
}

TEST_F(Safetensors, RejectsMissingShard) {
  fs::create_directory(path("m"));
  float a[1] = {1};
  loom::write_safetensors(path("m/model-00001-of-00002.safetensors"), {{"a", DType::F32, {1}, a}});
  write_text(path("m/model.safetensors.index.json"),
             R"({"weight_map": {"a": "model-00001-of-00002.safetensors", "z": "model-00002-of-00002.safetensors"}})");
  expect_error([&] { Checkpoint::open(path("m")); },
               {"model.safetensors.index.json", "model-00002-of-00002.safetensors", "'z'", "missing"});
}

TEST_F(Safetensors, RejectsTensorMissingFromItsShard) {
  fs::create_directory(path("m"));
  float a[1] = {1};
  loom::write_safetensors(path("m/model-00001-of-00001.safetensors"), {{"a", DType::F32, {1}, a}});
  write_text(path("m/model.safetensors.index.json"),
             R"({"weight_map": {"a": "model-00001-of-00001.safetensors",
                 "model.layers.3.mlp.up_proj.weight": "model-00001-of-00001.safetensors"}})");
  expect_error([&] { Checkpoint::open(path("m")); },
               {"tensor 'model.layers.3.mlp.up_proj.weight' not found in", path("m"),
                "listed in model.safetensors.index.json as model-00001-of-00001.safetensors"});
}

TEST_F(Safetensors, RejectsTensorStoredInTwoShards) {
  fs::create_directory(path("m"));
  float a[1] = {1};
  loom::write_safetensors(path("m/s1.safetensors"), {{"a", DType::F32, {1}, a}});
  loom::write_safetensors(path("m/s2.safetensors"), {{"a", DType::F32, {1}, a}, {"b", DType::F32, {1}, a}});
  write_text(path("m/model.safetensors.index.json"), R"({"weight_map": {"a": "s1.safetensors", "b": "s2.safetensors"}})");
  expect_error([&] { Checkpoint::open(path("m")); }, {"tensor 'a' is stored twice", "s1.safetensors", "s2.safetensors"});
}

TEST_F(Safetensors, RejectsIndexWithDuplicateTensorsOrPathsAsShardNamesAndKeepsUnlistedOnes) {
  fs::create_directory(path("m"));
  float a[1] = {1};
  loom::write_safetensors(path("m/s1.safetensors"), {{"a", DType::F32, {1}, a}, {"b", DType::F32, {1}, a}});
  write_text(path("m/model.safetensors.index.json"), R"({"weight_map": {"a": "s1.safetensors", "a": "s1.safetensors"}})");
  expect_error([&] { Checkpoint::open(path("m")); }, {"model.safetensors.index.json", "weight_map lists tensor 'a' twice"});
  // A tensor the shard holds but the index leaves out is part of the checkpoint, as transformers
  // loads every tensor of the shards it opens; the model's audit uses it or names it as unused.
  write_text(path("m/model.safetensors.index.json"), R"({"weight_map": {"a": "s1.safetensors"}})");
  EXPECT_EQ(Checkpoint::open(path("m")).names(), (std::vector<std::string>{"a", "b"}));
  write_text(path("m/model.safetensors.index.json"),
             R"({"weight_map": {"a": "s1.safetensors", "b": "../m/s1.safetensors"}})");
  expect_error([&] { Checkpoint::open(path("m")); },
               {"weight_map[\"b\"] = \"../m/s1.safetensors\" is not a file name in the checkpoint folder"});
  // A key repeated outside weight_map is not a tensor listed twice (the metadata is not read).
  write_text(path("m/model.safetensors.index.json"),
             R"({"metadata": {"total_size": 8, "total_size": 8}, "weight_map": {"a": "s1.safetensors", "b": "s1.safetensors"}})");
  EXPECT_EQ(Checkpoint::open(path("m")).names().size(), 2u);
}

TEST_F(Safetensors, RefusesFilesThatAreNotRegularWithoutBlocking) {
  ASSERT_EQ(mkfifo(path("model.safetensors").c_str(), 0600), 0);
  expect_error([&] { Checkpoint::open(path("model.safetensors")); },
               {"safetensors file", "model.safetensors is a FIFO (named pipe)"});
  fs::create_directories(path("m/model.safetensors"));
  expect_error([&] { Checkpoint::open(path("m")); }, {"m/model.safetensors is a folder"});
}

TEST_F(Safetensors, RejectsHeaderNestedTooDeep) {
  std::string p = write_raw("deep.safetensors", std::string(200000, '[') + std::string(200000, ']'), "");
  expect_error([&] { Checkpoint::open(p); }, {"deep.safetensors: header: JSON nested deeper than 64 levels"});
}

TEST_F(Safetensors, RejectsFolderWithoutCheckpoint) {
  fs::create_directory(path("m"));
  write_text(path("m/pytorch_model.bin"), "x");
  expect_error([&] { Checkpoint::open(path("m")); }, {"no model.safetensors", "PyTorch .bin", "safe_serialization"});
  expect_error([&] { Checkpoint::open(path("nope")); }, {"does not exist"});
}

TEST_F(Safetensors, RejectsTruncatedFile) {
  std::vector<float> w(100, 1.f);
  loom::write_safetensors(path("model-00002-of-00004.safetensors"), {{"w", DType::F32, {100}, w.data()}});
  fs::resize_file(path("model-00002-of-00004.safetensors"), fs::file_size(path("model-00002-of-00004.safetensors")) - 10);
  expect_error([&] { Checkpoint::open(path("model-00002-of-00004.safetensors")); },
               {"model-00002-of-00004.safetensors: truncated: header says 400 bytes of data, file has 390",
                "re-download"});
}

TEST_F(Safetensors, RejectsStrayBytesAfterLastTensor) {
  std::string p = write_raw("x.safetensors", R"({"a":{"dtype":"U8","shape":[2],"data_offsets":[0,2]}})", "abc");
  expect_error([&] { Checkpoint::open(p); }, {"x.safetensors", "1 stray bytes", "header says 2 bytes of data, file has 3"});
}

TEST_F(Safetensors, RejectsHeaderLengthPastEndOfFile) {
  std::string p = path("h.safetensors");
  std::ofstream(p, std::ios::binary) << std::string("\xe8\x03\0\0\0\0\0\0{}", 10);  // N = 1000, 2 bytes follow
  expect_error([&] { Checkpoint::open(p); }, {"h.safetensors", "header length 1000 runs past the end of the file (10 bytes)"});
}

TEST_F(Safetensors, RejectsHugeHeaderLengthAndTinyFile) {
  std::string p = path("big.safetensors");
  std::ofstream(p, std::ios::binary) << std::string("\0\0\0\0\1\0\0\0{}", 10);  // N = 2^32
  expect_error([&] { Checkpoint::open(p); }, {"big.safetensors", "exceeds the 100,000,000-byte limit"});
  std::ofstream(path("tiny.safetensors"), std::ios::binary) << "abc";
  expect_error([&] { Checkpoint::open(path("tiny.safetensors")); }, {"tiny.safetensors", "3 bytes is too small"});
}

TEST_F(Safetensors, RejectsOverlappingOffsets) {
  std::string p = write_raw("o.safetensors",
                            R"({"a":{"dtype":"U8","shape":[4],"data_offsets":[0,4]},)"
                            R"("b":{"dtype":"U8","shape":[4],"data_offsets":[2,6]}})",
                            std::string(6, 'x'));
  expect_error([&] { Checkpoint::open(p); }, {"o.safetensors", "tensor 'b'", "[2, 6]", "overlaps tensor 'a'"});
}

TEST_F(Safetensors, RejectsHoleBetweenTensors) {
  std::string p = write_raw("g.safetensors",
                            R"({"a":{"dtype":"U8","shape":[4],"data_offsets":[0,4]},)"
                            R"("b":{"dtype":"U8","shape":[4],"data_offsets":[6,10]}})",
                            std::string(10, 'x'));
  expect_error([&] { Checkpoint::open(p); }, {"g.safetensors", "2-byte hole before tensor 'b'", "'a' ends at 4"});
  std::string q = write_raw("g0.safetensors", R"({"a":{"dtype":"U8","shape":[4],"data_offsets":[1,5]}})",
                            std::string(5, 'x'));
  expect_error([&] { Checkpoint::open(q); }, {"1-byte hole before tensor 'a'", "data starts at 0"});
}

TEST_F(Safetensors, RejectsWrongByteCount) {
  std::string p = write_raw("n.safetensors", R"({"w":{"dtype":"BF16","shape":[2,3],"data_offsets":[0,10]}})",
                            std::string(10, 'x'));
  expect_error([&] { Checkpoint::open(p); }, {"n.safetensors", "tensor 'w'", "BF16 [2,3]", "needs 12 bytes", "hold 10"});
}

TEST_F(Safetensors, RejectsBadJson) {
  std::string p = write_raw("j.safetensors", R"({"w":{"dtype":"BF16",)", "");
  expect_error([&] { Checkpoint::open(p); }, {"j.safetensors: header: not valid JSON"});
  std::string q = write_raw("arr.safetensors", "[1, 2]", "");
  expect_error([&] { Checkpoint::open(q); }, {"arr.safetensors", "must be a JSON object, found array"});
  std::string r = write_raw("neg.safetensors", R"({"w":{"dtype":"U8","shape":[-1],"data_offsets":[0,0]}})", "");
  expect_error([&] { Checkpoint::open(r); }, {"neg.safetensors", "tensor 'w'", "shape must hold non-negative integers"});
  std::string s = write_raw("keys.safetensors", R"({"w":{"dtype":"U8","shape":[1]}})", "x");
  expect_error([&] { Checkpoint::open(s); }, {"keys.safetensors", "tensor 'w' has no \"data_offsets\""});
}

TEST_F(Safetensors, RejectsUnknownDtype) {
  std::string p = write_raw("d.safetensors", R"({"w":{"dtype":"Q4_K","shape":[1],"data_offsets":[0,1]}})", "x");
  expect_error([&] { Checkpoint::open(p); }, {"d.safetensors", "tensor 'w'", "unknown dtype \"Q4_K\""});
}

TEST_F(Safetensors, RejectsDuplicateName) {
  std::string p = write_raw("dup.safetensors",
                            R"({"w":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},)"
                            R"("w":{"dtype":"U8","shape":[1],"data_offsets":[1,2]}})",
                            "xy");
  expect_error([&] { Checkpoint::open(p); }, {"dup.safetensors", "lists tensor 'w' twice"});
}

TEST_F(Safetensors, RejectsMetadataThatIsNotStrings) {
  std::string p = write_raw("meta.safetensors", R"({"__metadata__":{"total":3}})", "");
  expect_error([&] { Checkpoint::open(p); }, {"meta.safetensors", "__metadata__[\"total\"] must be a string"});
}

TEST_F(Safetensors, AcceptsExoticDtypesWithoutConvertingThem) {
  // F4 packs two elements per byte: shape [2, 3] = 6 elements = 3 bytes.
  std::string p = write_raw("f4.safetensors", R"({"q":{"dtype":"F4","shape":[2,3],"data_offsets":[0,3]}})", "abc");
  Checkpoint ck = Checkpoint::open(p);
  EXPECT_EQ(ck.get("q").dtype, DType::OTHER);
  EXPECT_EQ(ck.get("q").dtype_str, "F4");
  expect_error([&] { ck.read_f32("q", {2, 3}); }, {"dtype F4"});
  std::string q = write_raw("f4odd.safetensors", R"({"q":{"dtype":"F4","shape":[3],"data_offsets":[0,2]}})", "ab");
  expect_error([&] { Checkpoint::open(q); }, {"f4odd.safetensors", "whole number of bytes"});
}

TEST_F(Safetensors, CorruptedBytesGiveErrorsNotCrashes) {
  std::vector<float> a(6, 1.f);
  uint16_t b[4] = {1, 2, 3, 4};
  loom::write_safetensors(path("good.safetensors"), {{"a", DType::F32, {2, 3}, a.data()}, {"b", DType::BF16, {4}, b}});
  const std::string good = read_file(path("good.safetensors"));
  uint64_t header_len = 0;
  std::memcpy(&header_len, good.data(), 8);
  std::mt19937 rng(7);
  int opened = 0, rejected = 0;
  for (int trial = 0; trial < 300; ++trial) {
    std::string bytes = good;
    // Flip one byte of the length field or the header, or cut the file short.
    const size_t pos = rng() % (8 + header_len);
    if (trial % 10 == 9)
      bytes.resize(rng() % bytes.size());
    else
      bytes[pos] = char(rng() % 256);
    std::ofstream(path("bad.safetensors"), std::ios::binary | std::ios::trunc) << bytes;
    try {
      Checkpoint ck = Checkpoint::open(path("bad.safetensors"));
      for (const std::string& n : ck.names()) EXPECT_LE(ck.get(n).nbytes, bytes.size());
      ++opened;
    } catch (const loom::Error& e) {
      EXPECT_NE(std::string(e.what()).find("bad.safetensors"), std::string::npos) << e.what();
      ++rejected;
    }
  }
  EXPECT_GT(rejected, 100);
  EXPECT_EQ(opened + rejected, 300);
}
