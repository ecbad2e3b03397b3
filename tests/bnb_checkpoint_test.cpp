// Pre-quantized bitsandbytes checkpoints: tests/fixtures/nf4/bnb_llama_tiny{,_plain} are real
// transformers save_pretrained outputs of a 1-layer LlamaForCausalLM loaded with
// BitsAndBytesConfig(load_in_4bit, nf4, double quant on / off) on the CPU (tools/make_nf4_fixture.py).
// Reading them, dequantizing, re-quantizing their bf16 source and writing them back must all agree
// with bitsandbytes byte for byte; malformed variants must fail naming the tensor.
#include "models/bnb_nf4.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <functional>

#include "ops/error.h"
#include "tests/test_util.h"

namespace fs = std::filesystem;
using loom::Checkpoint;
using loom::Nf4Host;

namespace {

std::string nf4_dir() { return loom::test::fixtures_dir() + "/nf4"; }

struct Linear {
  const char* name;
  int64_t rows, cols;
};
// hidden 64, intermediate 96, 4 heads / 2 kv heads of head_dim 16.
const Linear kLinears[] = {
    {"model.layers.0.self_attn.q_proj.weight", 64, 64}, {"model.layers.0.self_attn.k_proj.weight", 32, 64},
    {"model.layers.0.self_attn.v_proj.weight", 32, 64}, {"model.layers.0.self_attn.o_proj.weight", 64, 64},
    {"model.layers.0.mlp.gate_proj.weight", 96, 64},    {"model.layers.0.mlp.up_proj.weight", 96, 64},
    {"model.layers.0.mlp.down_proj.weight", 64, 96},
};

uint32_t bits(float x) {
  uint32_t b;
  std::memcpy(&b, &x, 4);
  return b;
}

using loom::test::expect_error;

void expect_same_state(const Nf4Host& got, const Nf4Host& want) {
  EXPECT_EQ(got.codes, want.codes);
  EXPECT_EQ(got.nested, want.nested);
  EXPECT_EQ(got.blocksize, want.blocksize);
  if (want.nested) {
    EXPECT_EQ(got.absmax_q, want.absmax_q);
    ASSERT_EQ(got.nested_absmax.size(), want.nested_absmax.size());
    for (size_t i = 0; i < got.nested_absmax.size(); ++i) EXPECT_EQ(bits(got.nested_absmax[i]), bits(want.nested_absmax[i]));
    EXPECT_EQ(bits(got.nested_offset), bits(want.nested_offset));
    EXPECT_EQ(got.nested_blocksize, want.nested_blocksize);
  } else {
    ASSERT_EQ(got.absmax.size(), want.absmax.size());
    for (size_t i = 0; i < got.absmax.size(); ++i) EXPECT_EQ(bits(got.absmax[i]), bits(want.absmax[i])) << i;
  }
}

class BnbFile : public loom::test::TempDirTest {
 protected:

  // Writes the stored tensors (after `edit`) as DIR/name and opens it.
  Checkpoint write(const std::string& name, std::vector<loom::StoredTensor> tensors,
                   const std::function<void(std::vector<loom::StoredTensor>&)>& edit = nullptr) {
    if (edit) edit(tensors);
    std::vector<loom::TensorToWrite> views;
    for (const loom::StoredTensor& t : tensors) views.push_back(t.view());
    loom::write_safetensors(dir_ + "/" + name, views);
    return Checkpoint::open(dir_ + "/" + name);
  }

  std::vector<loom::StoredTensor> quantized(const std::string& weight, bool nested) {
    std::vector<float> w = loom::test::random_floats(24 * 64, 99, -0.1f, 0.1f);
    std::vector<loom::StoredTensor> out;
    loom::append_bnb_nf4_tensors(weight, loom::nf4_quantize_ref(w.data(), 24, 64, 64, nested), "bfloat16", out);
    return out;
  }

};

loom::StoredTensor& find(std::vector<loom::StoredTensor>& tensors, const std::string& name) {
  for (loom::StoredTensor& t : tensors)
    if (t.name == name) return t;
  throw std::runtime_error("test setup: no tensor " + name);
}

}  // namespace

TEST(BnbCheckpoint, ReadsTransformersSavedModels) {
  for (const char* folder : {"bnb_llama_tiny", "bnb_llama_tiny_plain"}) {
    SCOPED_TRACE(folder);
    const bool nested = std::string(folder) == "bnb_llama_tiny";
    Checkpoint ck = Checkpoint::open(nf4_dir() + "/" + folder);
    for (const Linear& l : kLinears) {
      ASSERT_TRUE(loom::is_bnb_nf4(ck, l.name)) << l.name;
      Nf4Host q = loom::read_bnb_nf4(ck, l.name, l.rows, l.cols);
      EXPECT_EQ(q.blocksize, 64);
      EXPECT_EQ(q.nested, nested);
      EXPECT_EQ(int64_t(q.codes.size()), l.rows * l.cols / 2);
    }
    for (const char* plain : {"model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"}) {
      EXPECT_FALSE(loom::is_bnb_nf4(ck, plain)) << plain;
      EXPECT_EQ(ck.get(plain).dtype, loom::DType::BF16) << plain;
    }
  }
}

TEST(BnbCheckpoint, DequantizationEqualsBitsandbytes) {
  Checkpoint ck = Checkpoint::open(nf4_dir() + "/bnb_llama_tiny");
  Checkpoint want = Checkpoint::open(nf4_dir() + "/bnb_llama_tiny_dequant.safetensors");
  for (const Linear& l : kLinears) {
    if (!want.has(l.name)) continue;
    SCOPED_TRACE(l.name);
    Nf4Host q = loom::read_bnb_nf4(ck, l.name, l.rows, l.cols);
    std::vector<float> got(size_t(l.rows * l.cols));
    loom::nf4_dequantize_ref(got.data(), q);
    std::vector<float> ref = want.read_f32(l.name, {l.rows, l.cols});
    size_t diff = 0;
    for (size_t i = 0; i < got.size(); ++i) diff += bits(got[i]) != bits(ref[i]);
    EXPECT_EQ(diff, 0u);
  }
  EXPECT_EQ(want.names().size(), 2u);
}

TEST(BnbCheckpoint, QuantizingTheBf16SourceGivesTheSavedBytes) {
  Checkpoint source = Checkpoint::open(nf4_dir() + "/bnb_llama_tiny_source.safetensors");
  for (const char* folder : {"bnb_llama_tiny", "bnb_llama_tiny_plain"}) {
    SCOPED_TRACE(folder);
    const bool nested = std::string(folder) == "bnb_llama_tiny";
    Checkpoint ck = Checkpoint::open(nf4_dir() + "/" + folder);
    for (const Linear& l : kLinears) {
      SCOPED_TRACE(l.name);
      std::vector<float> w = source.read_f32(l.name, {l.rows, l.cols});
      expect_same_state(loom::nf4_quantize_ref(w.data(), l.rows, l.cols, 64, nested),
                        loom::read_bnb_nf4(ck, l.name, l.rows, l.cols));
    }
  }
}

TEST(BnbCheckpoint, WritingBackReproducesEveryTensorByte) {
  for (const char* folder : {"bnb_llama_tiny", "bnb_llama_tiny_plain"}) {
    SCOPED_TRACE(folder);
    Checkpoint ck = Checkpoint::open(nf4_dir() + "/" + folder);
    for (const Linear& l : kLinears) {
      std::vector<loom::StoredTensor> out;
      loom::append_bnb_nf4_tensors(l.name, loom::read_bnb_nf4(ck, l.name, l.rows, l.cols), "bfloat16", out);
      for (const loom::StoredTensor& t : out) {
        SCOPED_TRACE(t.name);
        ASSERT_TRUE(ck.has(t.name));
        const loom::TensorView& v = ck.get(t.name);
        EXPECT_EQ(t.dtype, v.dtype);
        EXPECT_EQ(t.shape, v.shape);
        ASSERT_EQ(t.bytes.size(), v.nbytes);
        EXPECT_EQ(std::memcmp(t.bytes.data(), v.data, v.nbytes), 0)
            << (t.name.find("quant_state") != std::string::npos
                    ? "ours: " + std::string(t.bytes.begin(), t.bytes.end()) +
                          "\nfile: " + std::string(v.data, v.data + v.nbytes)
                    : std::string());
      }
      const size_t listed = out.size();
      size_t in_file = 0;
      for (const std::string& n : ck.names()) in_file += n.rfind(l.name, 0) == 0;
      EXPECT_EQ(listed, in_file) << l.name;
    }
  }
}

TEST_F(BnbFile, RoundTripsThroughWriteSafetensors) {
  for (bool nested : {false, true}) {
    std::vector<float> w = loom::test::random_floats(10 * 70, 5, -1.f, 1.f);
    Nf4Host q = loom::nf4_quantize_ref(w.data(), 10, 70, 32, nested);
    std::vector<loom::StoredTensor> out;
    loom::append_bnb_nf4_tensors("x.weight", q, "float32", out);
    Checkpoint ck = write(nested ? "n.safetensors" : "p.safetensors", out);
    expect_same_state(loom::read_bnb_nf4(ck, "x.weight", 10, 70), q);
  }
}

TEST_F(BnbFile, RejectsFp4) {
  Checkpoint ck = write("fp4.safetensors", quantized("w", false), [](auto& t) {
    find(t, "w.quant_state.bitsandbytes__nf4").name = "w.quant_state.bitsandbytes__fp4";
  });
  expect_error([&] { loom::is_bnb_nf4(ck, "w"); }, {"tensor 'w'", "fp4.safetensors", "FP4", "NF4 only"});
  expect_error([&] { loom::read_bnb_nf4(ck, "w", 24, 64); }, {"tensor 'w'", "FP4"});
}

TEST_F(BnbFile, RejectsShapeMismatch) {
  Checkpoint ck = write("s.safetensors", quantized("model.layers.1.mlp.up_proj.weight", true));
  expect_error([&] { loom::read_bnb_nf4(ck, "model.layers.1.mlp.up_proj.weight", 64, 24); },
               {"tensor 'model.layers.1.mlp.up_proj.weight'", "s.safetensors", "shape [24,64], expected [64, 24]"});
}

TEST_F(BnbFile, RejectsQuantMapThatIsNotNf4) {
  Checkpoint ck = write("m.safetensors", quantized("w", false), [](auto& t) {
    float* map = reinterpret_cast<float*>(find(t, "w.quant_map").bytes.data());
    map[3] = 0.f;
  });
  expect_error([&] { loom::read_bnb_nf4(ck, "w", 24, 64); }, {"tensor 'w.quant_map'", "not the NF4 code table", "entry 3"});
}

TEST_F(BnbFile, RejectsMissingOrMisSizedParts) {
  Checkpoint no_absmax = write("a.safetensors", quantized("w", false), [](auto& t) {
    t.erase(std::find_if(t.begin(), t.end(), [](const loom::StoredTensor& s) { return s.name == "w.absmax"; }));
  });
  expect_error([&] { loom::read_bnb_nf4(no_absmax, "w", 24, 64); }, {"tensor 'w.absmax' not found", "a.safetensors"});
  Checkpoint short_codes = write("c.safetensors", quantized("w", true), [](auto& t) {
    loom::StoredTensor& w = find(t, "w");
    w.bytes.resize(w.bytes.size() - 2);
    w.shape = {int64_t(w.bytes.size()), 1};
  });
  expect_error([&] { loom::read_bnb_nf4(short_codes, "w", 24, 64); }, {"tensor 'w'", "holds 766 bytes", "expected 768"});
  Checkpoint bad_nested = write("n.safetensors", quantized("w", true), [](auto& t) {
    loom::StoredTensor& m = find(t, "w.nested_quant_map");
    m.bytes.resize(128 * 4);
    m.shape = {128};
  });
  expect_error([&] { loom::read_bnb_nf4(bad_nested, "w", 24, 64); }, {"w.nested_quant_map", "[128]", "expected [256]"});
}

TEST_F(BnbFile, RejectsBadQuantStateJson) {
  auto set_state = [](const std::string& text) {
    return [text](std::vector<loom::StoredTensor>& t) {
      loom::StoredTensor& s = find(t, "w.quant_state.bitsandbytes__nf4");
      s.bytes.assign(text.begin(), text.end());
      s.shape = {int64_t(text.size())};
    };
  };
  expect_error([&] { loom::read_bnb_nf4(write("j.safetensors", quantized("w", false), set_state("{\"quant_")), "w", 24, 64); },
               {"w.quant_state.bitsandbytes__nf4", "invalid JSON"});
  expect_error([&] {
    loom::read_bnb_nf4(write("b.safetensors", quantized("w", false),
                             set_state(R"({"quant_type": "nf4", "blocksize": 48, "dtype": "bfloat16", "shape": [24, 64]})")),
                       "w", 24, 64);
  }, {"tensor 'w'", "blocksize 48"});
  expect_error([&] {
    loom::read_bnb_nf4(write("t.safetensors", quantized("w", false),
                             set_state(R"({"quant_type": "int4", "blocksize": 64, "dtype": "bfloat16", "shape": [24, 64]})")),
                       "w", 24, 64);
  }, {"tensor 'w'", "quant_type \"int4\""});
  expect_error([&] {
    loom::read_bnb_nf4(write("o.safetensors", quantized("w", true),
                             set_state(R"({"quant_type": "nf4", "blocksize": 64, "dtype": "bfloat16", "shape": [24, 64],
                                           "nested_blocksize": 256, "nested_dtype": "float32"})")),
                       "w", 24, 64);
  }, {"tensor 'w'", "no \"nested_offset\""});
}

// Scales are checked finite as they are read: a NaN absmax would dequantize a whole block to NaN.
TEST_F(BnbFile, RejectsNonFiniteScales) {
  Checkpoint absmax = write("a.safetensors", quantized("w", false), [](auto& t) {
    reinterpret_cast<float*>(find(t, "w.absmax").bytes.data())[2] = std::nanf("");
  });
  expect_error([&] { loom::read_bnb_nf4(absmax, "w", 24, 64); }, {"tensor 'w.absmax'", "holds nan at index [2]"});
  Checkpoint nested = write("n.safetensors", quantized("w", true), [](auto& t) {
    reinterpret_cast<float*>(find(t, "w.nested_absmax").bytes.data())[0] = -INFINITY;
  });
  expect_error([&] { loom::read_bnb_nf4(nested, "w", 24, 64); }, {"tensor 'w.nested_absmax'", "holds -inf at index [0]"});
  Checkpoint offset = write("o.safetensors", quantized("w", true), [](auto& t) {
    loom::StoredTensor& s = find(t, "w.quant_state.bitsandbytes__nf4");
    std::string text(s.bytes.begin(), s.bytes.end());
    text.replace(text.find("\"nested_offset\": ") + 17, std::string::npos, "1e300}");
    s.bytes.assign(text.begin(), text.end());
    s.shape = {int64_t(text.size())};
  });
  expect_error([&] { loom::read_bnb_nf4(offset, "w", 24, 64); }, {"tensor 'w'", "nested_offset must be a finite float"});
}

TEST(BnbCheckpoint, QuantStateJsonWritesOffsetsAsPythonDoes) {
  // Expected text: json.dumps(float(numpy.float32(v))) in Python.
  const std::pair<float, const char*> cases[] = {{1e-5f, "9.999999747378752e-06"}, {1e-4f, "9.999999747378752e-05"},
                                                 {1e-3f, "0.0010000000474974513"}, {123456.0f, "123456.0"},
                                                 {1e16f, "1.0000000272564224e+16"}, {3e20f, "3.000000060122632e+20"},
                                                 {-0.25f, "-0.25"},              {0.0f, "0.0"},
                                                 {0.1f, "0.10000000149011612"}};
  std::vector<float> w(64, 0.5f);
  Nf4Host q = loom::nf4_quantize_ref(w.data(), 1, 64, 64, true);
  for (const auto& [offset, text] : cases) {
    q.nested_offset = offset;
    std::vector<loom::StoredTensor> out;
    loom::append_bnb_nf4_tensors("w", q, "bfloat16", out);
    const std::vector<uint8_t>& json = out.back().bytes;
    EXPECT_EQ(std::string(json.begin(), json.end()),
              std::string(R"({"quant_type": "nf4", "blocksize": 64, "dtype": "bfloat16", "shape": [1, 64], )"
                          R"("nested_blocksize": 256, "nested_dtype": "float32", "nested_offset": )") + text + "}");
  }
}
