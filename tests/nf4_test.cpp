// NF4 reference against bitsandbytes 0.50.2 (CPU) outputs in tests/fixtures/nf4 (written by
// tools/make_nf4_fixture.py): packed codes, absmax, double-quantization codes / nested absmax /
// offset and the dynamic map must match bit for bit; dequantization must equal bitsandbytes'
// fp32 output exactly. Plus the code table, the nibble order, tie rules and error bounds.
#include "ops/nf4.h"

#include <cstring>
#include <fstream>
#include <nlohmann/json.hpp>

#include "ops/error.h"
#include "tests/test_util.h"

namespace {

std::string nf4_dir() { return loom::test::fixtures_dir() + "/nf4"; }

template <class T>
std::vector<T> read_raw(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  EXPECT_TRUE(in) << "missing fixture " << path << " (run python3 tools/make_nf4_fixture.py)";
  std::string bytes((std::istreambuf_iterator<char>(in)), {});
  std::vector<T> out(bytes.size() / sizeof(T));
  std::memcpy(out.data(), bytes.data(), out.size() * sizeof(T));
  return out;
}

uint32_t bits(float x) {
  uint32_t b;
  std::memcpy(&b, &x, 4);
  return b;
}

float bf16_to_float(uint16_t b) {
  uint32_t u = uint32_t(b) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

// Counts positions where a and b differ bitwise; prints the first few.
template <class T>
size_t count_differences(const std::vector<T>& a, const std::vector<T>& b, const std::string& what) {
  EXPECT_EQ(a.size(), b.size()) << what;
  size_t diff = 0;
  for (size_t i = 0; i < std::min(a.size(), b.size()); ++i) {
    if (std::memcmp(&a[i], &b[i], sizeof(T)) == 0) continue;
    if (++diff <= 3) ADD_FAILURE() << what << "[" << i << "]: got " << +a[i] << ", bitsandbytes " << +b[i];
  }
  return diff;
}

struct Case {
  nlohmann::json meta;
  std::string dir;
  std::vector<float> input;
  int64_t rows() const { return meta["rows"]; }
  int64_t cols() const { return meta["cols"]; }
  int blocksize() const { return meta["blocksize"]; }
  bool nested() const { return meta["nested"]; }

  // bitsandbytes' quantization state, read back from the fixture files.
  loom::Nf4Host bnb_state() const {
    loom::Nf4Host q;
    q.rows = rows();
    q.cols = cols();
    q.blocksize = blocksize();
    q.codes = read_raw<uint8_t>(dir + "/codes.u8");
    q.nested = nested();
    if (q.nested) {
      q.absmax_q = read_raw<uint8_t>(dir + "/absmax_q.u8");
      q.nested_absmax = read_raw<float>(dir + "/nested_absmax.f32");
      q.nested_map = read_raw<float>(nf4_dir() + "/dynamic_map.f32");
      uint32_t offset_bits = meta["nested_offset_bits"];
      std::memcpy(&q.nested_offset, &offset_bits, 4);
      q.nested_blocksize = meta["nested_blocksize"];
    } else {
      q.absmax = read_raw<float>(dir + "/absmax.f32");
    }
    return q;
  }
};

std::vector<Case> load_cases() {
  std::ifstream in(nf4_dir() + "/manifest.json");
  EXPECT_TRUE(in) << "missing " << nf4_dir() << "/manifest.json (run python3 tools/make_nf4_fixture.py)";
  if (!in) return {};
  nlohmann::json manifest = nlohmann::json::parse(in);
  std::vector<Case> cases;
  for (const nlohmann::json& meta : manifest["cases"]) {
    Case c{meta, nf4_dir() + "/" + meta["name"].get<std::string>(), {}};
    if (meta["input_dtype"] == "bfloat16") {
      for (uint16_t b : read_raw<uint16_t>(c.dir + "/input.bf16")) c.input.push_back(bf16_to_float(b));
    } else {
      c.input = read_raw<float>(c.dir + "/input.f32");
    }
    EXPECT_EQ(int64_t(c.input.size()), c.rows() * c.cols()) << c.dir;
    cases.push_back(std::move(c));
  }
  EXPECT_GE(cases.size(), 8u);
  return cases;
}

}  // namespace

TEST(Nf4, TableIsBitsandbytesNf4Type) {
  std::vector<float> table = read_raw<float>(nf4_dir() + "/nf4_table.f32");
  ASSERT_EQ(table.size(), 16u);
  for (int i = 0; i < 16; ++i) EXPECT_EQ(bits(loom::kNf4Table[i]), bits(table[size_t(i)])) << "code " << i;
  for (int i = 0; i < 15; ++i) EXPECT_LT(loom::kNf4Table[i], loom::kNf4Table[i + 1]);
  EXPECT_EQ(loom::kNf4Table[7], 0.f);
}

TEST(Nf4, DynamicMapEqualsBitsandbytesBitForBit) {
  std::vector<float> want = read_raw<float>(nf4_dir() + "/dynamic_map.f32");
  std::vector<float> got = loom::dynamic_map_signed();
  ASSERT_EQ(got.size(), 256u);
  EXPECT_EQ(count_differences(got, want, "dynamic map"), 0u);
}

TEST(Nf4, QuantizerGivesBitsandbytesBytes) {
  for (const Case& c : load_cases()) {
    SCOPED_TRACE(c.dir);
    loom::Nf4Host got = loom::nf4_quantize_ref(c.input.data(), c.rows(), c.cols(), c.blocksize(), c.nested());
    loom::Nf4Host want = c.bnb_state();
    EXPECT_EQ(count_differences(got.codes, want.codes, "codes"), 0u);
    EXPECT_EQ(got.nested, want.nested);
    if (c.nested()) {
      EXPECT_EQ(bits(got.nested_offset), bits(want.nested_offset))
          << "offset " << got.nested_offset << " vs bitsandbytes " << want.nested_offset;
      EXPECT_EQ(count_differences(got.absmax_q, want.absmax_q, "absmax codes"), 0u);
      EXPECT_EQ(count_differences(got.nested_absmax, want.nested_absmax, "nested absmax"), 0u);
      EXPECT_EQ(count_differences(got.nested_map, want.nested_map, "nested map"), 0u);
      EXPECT_EQ(got.nested_blocksize, 256);
    } else {
      EXPECT_EQ(count_differences(got.absmax, want.absmax, "absmax"), 0u);
    }
  }
}

TEST(Nf4, BlockScalesAndDequantizationEqualBitsandbytesExactly) {
  for (const Case& c : load_cases()) {
    SCOPED_TRACE(c.dir);
    loom::Nf4Host q = c.bnb_state();
    EXPECT_EQ(count_differences(loom::nf4_block_scales(q), read_raw<float>(c.dir + "/scales.f32"), "scales"), 0u);
    if (!c.meta["dequant"]) continue;  // the large case keeps only its scales
    std::vector<float> out(static_cast<size_t>(q.numel()));
    loom::nf4_dequantize_ref(out.data(), q);
    EXPECT_EQ(count_differences(out, read_raw<float>(c.dir + "/dequant.f32"), "dequant"), 0u);
  }
}

TEST(Nf4, FirstElementGoesInTheHighNibble) {
  // absmax 1: 1.0 -> code 15, -1.0 -> code 0, 0.0 -> code 7; the odd count pads with code 7.
  const float w[5] = {1.0f, -1.0f, 0.0f, 1.0f, -1.0f};
  loom::Nf4Host q = loom::nf4_quantize_ref(w, 1, 5, 64);
  ASSERT_EQ(q.codes.size(), 3u);
  EXPECT_EQ(q.codes[0], 0xF0);
  EXPECT_EQ(q.codes[1], 0x7F);
  EXPECT_EQ(q.codes[2], 0x07);
  std::vector<float> out(5);
  loom::nf4_dequantize_ref(out.data(), q);
  EXPECT_EQ(out, std::vector<float>(w, w + 5));
}

TEST(Nf4, ExactMidpointGoesToTheLowerCode) {
  for (int i = 0; i < 15; ++i) {
    const float mid = (loom::kNf4Table[i] + loom::kNf4Table[i + 1]) / 2.0f;
    const float w[2] = {1.0f, mid};
    loom::Nf4Host q = loom::nf4_quantize_ref(w, 1, 2, 64);
    EXPECT_EQ(q.codes[0] & 0xF, i) << "midpoint between codes " << i << " and " << i + 1;
    const float above[2] = {1.0f, std::nextafter(mid, 2.0f)};
    EXPECT_EQ(loom::nf4_quantize_ref(above, 1, 2, 64).codes[0] & 0xF, i + 1);
  }
}

TEST(Nf4, RoundTripErrorIsBoundedByHalfTheLargestCodeGap) {
  // |w - dq| <= absmax * max_i (T[i+1] - T[i]) / 2 = absmax * 0.1519..., plus the scale error of
  // double quantization: half the largest gap of the dynamic map (0.9 / 64 / 2) plus half a LUT bin
  // (1 / 65535), times the group's nested absmax.
  float half_gap = 0, map_half_gap = 0;
  for (int i = 0; i < 15; ++i) half_gap = std::max(half_gap, (loom::kNf4Table[i + 1] - loom::kNf4Table[i]) / 2);
  const std::vector<float> map = loom::dynamic_map_signed();
  for (size_t i = 0; i + 1 < map.size(); ++i) map_half_gap = std::max(map_half_gap, (map[i + 1] - map[i]) / 2);
  EXPECT_NEAR(map_half_gap, 0.9 / 64 / 2, 1e-6);
  for (bool nested : {false, true}) {
    for (int blocksize : {32, 64, 256, 4096}) {
      SCOPED_TRACE(::testing::Message() << "blocksize " << blocksize << (nested ? " nested" : ""));
      const int64_t rows = 37, cols = 300;
      std::vector<float> w = loom::test::random_floats(size_t(rows * cols), 1234 + blocksize, -0.2f, 0.2f);
      loom::Nf4Host q = loom::nf4_quantize_ref(w.data(), rows, cols, blocksize, nested);
      std::vector<float> scales = loom::nf4_block_scales(q), out(w.size());
      loom::nf4_dequantize_ref(out.data(), q);
      double sq_err = 0, sq = 0;
      for (size_t i = 0; i < w.size(); ++i) {
        const size_t b = i / size_t(blocksize);
        float amax = 0;
        for (size_t j = b * size_t(blocksize); j < std::min(w.size(), (b + 1) * size_t(blocksize)); ++j)
          amax = std::max(amax, std::fabs(w[j]));
        const float scale_err = std::fabs(scales[b] - amax);
        const float scale_bound = nested ? q.nested_absmax[b / 256] * (map_half_gap + 2.0f / 65535.0f) + 1e-7f : 0.f;
        ASSERT_LE(scale_err, scale_bound) << "block " << b;
        ASSERT_LE(std::fabs(out[i] - w[i]), amax * half_gap * 1.0001f + scale_err) << "element " << i;
        sq_err += double(out[i] - w[i]) * (out[i] - w[i]);
        sq += double(w[i]) * w[i];
      }
      // Uniform data: NF4's relative RMS error is about 0.1; a broken coder is far worse.
      EXPECT_LT(std::sqrt(sq_err / sq), 0.15);
    }
  }
}

TEST(Nf4, RejectsInvalidBlocksize) {
  const float w[4] = {1, 2, 3, 4};
  for (int b : {16, 48, 8192}) {
    try {
      loom::nf4_quantize_ref(w, 2, 2, b);
      ADD_FAILURE() << "no error for blocksize " << b;
    } catch (const loom::Error& e) {
      EXPECT_NE(std::string(e.what()).find("power of two in [32, 4096], got " + std::to_string(b)), std::string::npos)
          << e.what();
    }
  }
}

TEST(Nf4, CheckSizesNamesTheMismatch) {
  std::vector<float> w(100, 0.5f);
  loom::Nf4Host q = loom::nf4_quantize_ref(w.data(), 10, 10, 32, true);
  EXPECT_NO_THROW(loom::nf4_check_sizes(q, "w"));
  q.absmax_q.pop_back();
  try {
    loom::nf4_check_sizes(q, "layers.0.q_proj");
    ADD_FAILURE() << "no error";
  } catch (const loom::Error& e) {
    EXPECT_NE(std::string(e.what()).find("layers.0.q_proj: 3 absmax codes for 4 blocks"), std::string::npos) << e.what();
  }
  loom::Nf4Host p = loom::nf4_quantize_ref(w.data(), 10, 10, 32);
  p.codes.resize(49);
  EXPECT_THROW(loom::nf4_check_sizes(p, "w"), loom::Error);
  std::vector<float> out(100);
  EXPECT_THROW(loom::nf4_dequantize_ref(out.data(), p), loom::Error);
}
