// Exports a user ships (engine/export.h): the merged HF folder (complete, in the dtype it says,
// loading back to exactly the merged weights), GGUF files (structure parsed back, metadata as
// llama.cpp's converter writes it, tensors that decode to the merged weights within their type's
// rounding), Q8_0's error bound, build/export and output.export end to end, and
// tools/check_export.py (transformers + llama-cpp-python) where those packages are installed.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>

#include "data/batch.h"
#include "data/tokenizer.h"
#include "engine/export.h"
#include "models/gguf.h"
#include "models/gguf_model.h"
#include "models/reference_model.h"
#include "models/safetensors.h"
#include "ops/cuda_common.h"
#include "ops/fp16.h"
#include "tests/hostile.h"
#include "tests/test_util.h"

namespace loom {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;
using ordered_json = nlohmann::ordered_json;

// Each HF fixture model with the export tokenizer of its family (tools/make_export_fixtures.py).
struct Family {
  const char* arch;
  const char* tokenizer;
};
const Family kFamilies[] = {{"llama", "llama3"}, {"qwen2", "qwen"}, {"qwen3", "qwen"}, {"mistral", "mistral"}};

std::string fixture_model(const std::string& arch) { return test::fixtures_dir() + "/hf/" + arch + "/model"; }
std::string fixture_adapter(const std::string& arch) { return test::fixtures_dir() + "/hf/" + arch + "/adapter"; }
std::string export_tokenizer(const std::string& kind) { return test::fixtures_dir() + "/export/" + kind; }

ordered_json read_ordered(const std::string& path) {
  std::ifstream f(path);
  return ordered_json::parse(f);
}

void write_text(const std::string& path, const std::string& text) {
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  f << text;
}

std::string read_text(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(f), {});
}

int tokenizer_size(const std::string& kind) {
  const json t = json::parse(read_text(export_tokenizer(kind) + "/tokenizer.json"));
  int n = 0;
  for (const auto& [token, id] : t["model"]["vocab"].items()) n = std::max(n, id.get<int>() + 1);
  return n;
}

// A base model folder: the fixture's weights and config.json, with an embedding (and head) as large
// as the family's tokenizer (random, bf16-exact), stored in `dtype`, and the tokenizer's files.
std::string make_base(const std::string& dir, const Family& f, DType dtype = DType::BF16) {
  fs::create_directories(dir);
  const ModelConfig fixture = load_model_config(fixture_model(f.arch));
  ModelWeights w = load_weights(fixture_model(f.arch), fixture);
  ordered_json config = read_ordered(fixture_model(f.arch) + "/config.json");
  config["vocab_size"] = tokenizer_size(f.tokenizer);
  config["dtype"] = dtype == DType::F32 ? "float32" : dtype == DType::F16 ? "float16" : "bfloat16";
  write_text(dir + "/config.json", config.dump(2));
  const ModelConfig mc = load_model_config(dir);
  const ModelWeights sized = random_weights(mc, 7);
  w.embed = sized.embed;
  w.lm_head = sized.lm_head;
  save_weights(dir, mc, w, dtype);
  write_text(dir + "/config.json", config.dump(2));  // the fixture's form, not save_weights' own
  for (const char* file : {"tokenizer.json", "tokenizer_config.json"})
    fs::copy_file(export_tokenizer(f.tokenizer) + "/" + file, dir + "/" + file, fs::copy_options::overwrite_existing);
  return dir;
}

// The fixture's adapter with B drawn at random: PEFT initialises B = 0, which merges to nothing.
struct Adapter {
  LoraLayout layout;
  std::vector<float> lora;
};
Adapter make_adapter(const std::string& dir, const Family& f, const ModelConfig& mc) {
  Adapter a;
  a.layout = make_lora_layout(mc, read_peft_lora_options(fixture_adapter(f.arch)));
  a.lora = load_peft_adapter(fixture_adapter(f.arch), a.layout);
  const std::vector<float> b = test::random_floats(a.lora.size(), 3, -0.05f, 0.05f);
  for (const auto& layer : a.layout.layers)
    for (const LoraSlot& s : layer)
      if (s.enabled)
        for (int64_t i = 0; i < int64_t(s.out) * a.layout.R; ++i) a.lora[s.b_offset + i] = b[s.b_offset + i];
  save_peft_adapter(dir, a.layout, a.lora, "base");
  return a;
}

LoraLayout no_adapter(const ModelConfig& mc) {
  LoraOptions none;
  none.targets.clear();
  return make_lora_layout(mc, none);
}

// A prompt made of the fixture tokenizers' characters.
const char* kPrompt = "the cat sat on the mat, and it is in the hat.";

MicroBatch prompt_batch(const std::string& tokenizer_dir, int window) {
  const auto tok = Tokenizer::load(tokenizer_dir);
  Document d;
  d.ids = tok->encode(kPrompt, true);  // as HF add_special_tokens=True
  d.mask.assign(d.ids.size(), 1);
  return pack_documents({&d});
}

// Mean NLL of a batch's targets.
double mean_nll(const ReferenceModel& m, const MicroBatch& mb, const float* lora) {
  std::vector<float> loss(mb.T());
  m.forward(mb, lora, {}, loss.data());
  double sum = 0;
  for (float x : loss) sum += x;
  return sum / double(mb.n_targets());
}

float round_to(float x, DType t) {
  if (t == DType::BF16) return bf16_bits_to_float(float_to_bf16_bits(x));
  if (t == DType::F16) return f16_bits_to_float(float_to_f16_bits(x));
  return x;
}

// ---------------------------------------------------------------------------------------------
// Merged HF folder

class MergedExport : public test::TempDirTest {};

TEST_F(MergedExport, FolderIsCompleteInItsDtypeAndLoadsBackToTheMergedWeights) {
  for (const Family& f : kFamilies)
    for (DType dtype : {DType::BF16, DType::F32}) {
      SCOPED_TRACE(cat(f.arch, " ", dtype_name(dtype)));
      const std::string base = make_base(cat(dir_, "/", f.arch, dtype_name(dtype), "/base"), f, dtype);
      const ModelConfig mc = load_model_config(base);
      const Adapter a = make_adapter(cat(dir_, "/", f.arch, dtype_name(dtype), "/adapter"), f, mc);
      ExportSource src;
      src.model.path = base;
      src.tokenizer = base;
      const ModelWeights merged = merged_weights(src, mc, a.layout, a.lora);
      const std::string out = cat(dir_, "/", f.arch, dtype_name(dtype), "/merged");
      EXPECT_TRUE(write_merged_folder(out, src, mc, merged).empty());

      for (const char* file : {"config.json", "model.safetensors", "generation_config.json", "tokenizer.json",
                               "tokenizer_config.json"})
        EXPECT_TRUE(fs::is_regular_file(cat(out, "/", file))) << file;
      // config.json: the base's, key for key, but for the dtype of the tensors written.
      ordered_json got = read_ordered(out + "/config.json"), want = read_ordered(base + "/config.json");
      const char* dtype_text = dtype == DType::F32 ? "float32" : "bfloat16";
      EXPECT_EQ(got["dtype"], dtype_text);
      got.erase("dtype"), want.erase("dtype");
      EXPECT_EQ(got.dump(), want.dump());
      const Checkpoint ck = Checkpoint::open(out);
      for (const std::string& name : ck.names()) EXPECT_EQ(ck.get(name).dtype, dtype) << name;
      EXPECT_EQ(ck.has("lm_head.weight"), !mc.tie_embeddings) << "a tied model writes no lm_head.weight";
      // generation_config.json from config.json's ids (the fixtures have none of their own).
      const json gen = json::parse(read_text(out + "/generation_config.json"));
      EXPECT_EQ(gen.value("bos_token_id", -1), mc.bos_id);
      EXPECT_EQ(read_text(out + "/tokenizer.json"), read_text(base + "/tokenizer.json"));

      // Loaded back, every tensor is the fp32 merge rounded once to the dtype, bit for bit.
      const ModelConfig back_cfg = load_model_config(out);
      const ModelWeights back = load_weights(out, back_cfg);
      for (int l = 0; l < mc.L; ++l)
        for (int t = 0; t < kNumTargets; ++t) {
          const std::vector<float>& want_w = *projection(merged.layers[l], t);
          const std::vector<float>& got_w = *projection(back.layers[l], t);
          ASSERT_EQ(got_w.size(), want_w.size());
          for (size_t i = 0; i < want_w.size(); ++i)
            ASSERT_EQ(got_w[i], round_to(want_w[i], dtype)) << "layer " << l << " target " << t << " index " << i;
        }

      // It scores what base + adapter scores: exactly (to fp32 summation order) for an fp32 base.
      const MicroBatch mb = prompt_batch(out, 0);
      const double adapter_nll = mean_nll(ReferenceModel(mc, load_weights(base, mc), a.layout), mb, a.lora.data());
      const double merged_nll = mean_nll(ReferenceModel(back_cfg, back, no_adapter(back_cfg)), mb, nullptr);
      const double rounded_nll = [&] {
        ModelWeights r = merged;
        for (LayerWeights& lw : r.layers)
          for (int t = 0; t < kNumTargets; ++t)
            for (float& x : *projection(lw, t)) x = round_to(x, dtype);
        return mean_nll(ReferenceModel(mc, r, no_adapter(mc)), mb, nullptr);
      }();
      // The folder's NLL is the NLL of the rounded merge, bit for bit (same weights, same code).
      EXPECT_EQ(merged_nll, rounded_nll);
      // x·(W + s·B·A) against x·W + s·(x·Aᵀ)·Bᵀ in fp32 differ by summation order only: measured
      // <= 6e-8 on these fixtures. 1e-5 is far above that and still below what the bf16 rounding
      // of the same merge moves the NLL by (1.5e-5 to 3.5e-4, printed below), so a folder written
      // in the wrong dtype fails here.
      if (dtype == DType::F32) {
        EXPECT_NEAR(merged_nll, adapter_nll, 1e-5);
      }
      std::printf("[ merged ] %s %s: NLL base+adapter %.7f, merged folder %.7f (diff %.2e)\n", f.arch,
                  dtype_name(dtype), adapter_nll, merged_nll, std::fabs(merged_nll - adapter_nll));
    }
}

// A bitsandbytes 4-bit base (tests/fixtures/nf4) merges into plain bf16 tensors: its
// quantization_config goes, the rest of its config.json and its side files stay.
TEST_F(MergedExport, BitsandbytesBaseLosesItsQuantizationConfigAndKeepsItsSideFiles) {
  const std::string base = dir_ + "/bnb";
  fs::copy(test::fixtures_dir() + "/nf4/bnb_llama_tiny", base);
  write_text(base + "/generation_config.json", R"({"bos_token_id": 1, "eos_token_id": 2, "temperature": 0.6})");
  write_text(base + "/special_tokens_map.json", R"({"bos_token": "<s>"})");
  write_text(base + "/chat_template.jinja", "{{ messages }}");
  const ModelConfig mc = load_model_config(base);
  ASSERT_TRUE(mc.bnb_4bit);
  LoraOptions ls;
  ls.r = 2;
  const LoraLayout layout = make_lora_layout(mc, ls);
  const std::vector<float> lora = test::random_floats(layout.total, 4, -0.1f, 0.1f);
  ExportSource src{ModelOptions{}, base};
  src.model.path = base;
  const ModelWeights merged = merged_weights(src, mc, layout, lora);
  write_merged_folder(dir_ + "/merged", src, mc, merged);
  ordered_json got = read_ordered(dir_ + "/merged/config.json"), want = read_ordered(base + "/config.json");
  EXPECT_FALSE(got.contains("quantization_config"));
  EXPECT_EQ(got["dtype"], "bfloat16");
  want.erase("quantization_config");
  EXPECT_EQ(got.dump(), want.dump()) << "nothing else changes";
  const Checkpoint ck = Checkpoint::open(dir_ + "/merged");
  for (const std::string& name : ck.names()) EXPECT_EQ(ck.get(name).dtype, DType::BF16) << name;
  const ModelConfig back_cfg = load_model_config(dir_ + "/merged");
  EXPECT_FALSE(back_cfg.bnb_4bit);
  const ModelWeights back = load_weights(dir_ + "/merged", back_cfg);
  for (int t = 0; t < kNumTargets; ++t) {
    const std::vector<float>& w = *projection(merged.layers[0], t);
    for (size_t i = 0; i < w.size(); ++i)
      ASSERT_EQ((*projection(back.layers[0], t))[i], round_to(w[i], DType::BF16)) << kLoraTargetNames[t] << " " << i;
  }
  for (const char* file : {"generation_config.json", "special_tokens_map.json", "chat_template.jinja"})
    EXPECT_EQ(read_text(cat(dir_, "/merged/", file)), read_text(cat(base, "/", file))) << file;
}

TEST_F(MergedExport, PresetWritesWhatItCanAndSaysWhatIsMissing) {
  ExportSource src;
  src.model.preset = "tiny";
  const ModelConfig mc = preset_model_config("tiny");
  LoraOptions ls;
  ls.r = 4;
  const LoraLayout layout = make_lora_layout(mc, ls);
  const std::vector<float> lora = test::random_floats(layout.total, 9, -0.1f, 0.1f);
  const std::vector<std::string> notes =
      write_merged_folder(dir_ + "/merged", src, mc, merged_weights(src, mc, layout, lora));
  ASSERT_EQ(notes.size(), 2u);
  EXPECT_NE(notes[0].find("no tokenizer files"), std::string::npos) << notes[0];
  EXPECT_NE(notes[0].find("data.tokenizer"), std::string::npos) << notes[0];
  EXPECT_NE(notes[1].find("random preset weights"), std::string::npos) << notes[1];
  EXPECT_EQ(load_model_config(dir_ + "/merged").torch_dtype, "bfloat16");
  EXPECT_TRUE(fs::exists(dir_ + "/merged/generation_config.json"));
  // With the run's tokenizer (data.tokenizer) it is included under the name transformers reads.
  src.tokenizer = "data/demo/tokenizer.model";
  EXPECT_EQ(write_merged_folder(dir_ + "/merged", src, mc, merged_weights(src, mc, layout, lora)).size(), 1u);
  EXPECT_EQ(read_text(dir_ + "/merged/tokenizer.model"), read_text("data/demo/tokenizer.model"));
}

// ---------------------------------------------------------------------------------------------
// Q8_0 and the GGUF container

// gguf-py / ggml reference values: d = absmax / 127, q = round half away from zero.
TEST(Q8_0, QuantizesAsGgmlDoes) {
  std::vector<float> x(32, 0.f);
  x[0] = 127.f, x[1] = -63.5f, x[2] = 0.5f, x[3] = -0.5f, x[4] = 1.49f;
  const std::vector<uint8_t> q = quantize_q8_0(x.data(), 32);
  ASSERT_EQ(q.size(), 34u);
  uint16_t d;
  std::memcpy(&d, q.data(), 2);
  EXPECT_EQ(f16_bits_to_float(d), 1.f);
  EXPECT_EQ(int8_t(q[2]), 127);
  EXPECT_EQ(int8_t(q[3]), -64) << "-63.5 rounds away from zero";
  EXPECT_EQ(int8_t(q[4]), 1);
  EXPECT_EQ(int8_t(q[5]), -1);
  EXPECT_EQ(int8_t(q[6]), 1);
  std::vector<float> zeros(32, 0.f);
  const std::vector<uint8_t> z = quantize_q8_0(zeros.data(), 32);
  for (uint8_t b : z) EXPECT_EQ(b, 0) << "an all-zero block has d = 0 and q = 0";
  test::expect_error([] { std::vector<float> v(33); quantize_q8_0(v.data(), 33); }, {"33 values", "32"});
}

// Per value |x - d_h·q| <= d/2 (int8 rounding with the fp32 scale d) + 127·|d - d_h| (the stored
// fp16 scale d_h), plus fp32 rounding of x/d: the bound below adds 1e-6 relative for that.
TEST(Q8_0, RoundTripStaysWithinItsBound) {
  for (float scale : {1e-6f, 1e-3f, 1.f, 300.f}) {
    const std::vector<float> x = test::random_floats(32 * 64, 11, -scale, scale);
    const std::vector<uint8_t> q = quantize_q8_0(x.data(), int64_t(x.size()));
    std::vector<float> back(x.size());
    dequantize_q8_0(q.data(), int64_t(x.size()), back.data());
    double worst = 0;
    for (size_t b = 0; b < x.size() / 32; ++b) {
      float amax = 0;
      for (int i = 0; i < 32; ++i) amax = std::max(amax, std::fabs(x[b * 32 + i]));
      const double d = double(amax / 127.f);
      const double dh = f16_bits_to_float(float_to_f16_bits(float(d)));
      const double bound = d / 2 + 127 * std::fabs(d - dh) + 1e-6 * amax;
      for (int i = 0; i < 32; ++i) {
        const double err = std::fabs(double(back[b * 32 + i]) - double(x[b * 32 + i]));
        ASSERT_LE(err, bound) << "scale " << scale << " block " << b;
        ASSERT_TRUE(std::isfinite(back[b * 32 + i]));
        worst = std::max(worst, err / amax);
      }
    }
    // Below absmax = 127 * 2^-14 the scale d is an fp16 subnormal and loses relative precision (below
    // 127 * 2^-25 it is 0 and the block dequantizes to zeros), as in ggml itself.
    std::printf("[ q8_0 ] scale %g: worst error %.3e of the block's absmax (1/254 + 2^-11 = %.3e while d is a "
                "normal fp16)\n", scale, worst, 1.0 / 254 + 1.0 / 2048);
  }
}

TEST(Fp16, RoundsToNearestEvenLikeNumpy) {
  // Values and their fp16 bits as numpy's astype(float16) gives them.
  const std::pair<float, uint16_t> cases[] = {
      {1.f, 0x3c00},        {-2.f, 0xc000},       {65504.f, 0x7bff},   {65520.f, 0x7c00},  {1e6f, 0x7c00},
      {6.1035156e-5f, 0x0400}, {5.9604645e-8f, 0x0001}, {2.9802322e-8f, 0x0000}, {4.4703484e-8f, 0x0001},
      {1.00048828125f, 0x3c00}, {1.00146484375f, 0x3c02}, {0.f, 0x0000}, {-0.f, 0x8000}};
  for (const auto& [x, bits] : cases) EXPECT_EQ(float_to_f16_bits(x), bits) << x;
  for (uint32_t h = 0; h < 0x7c00; ++h) ASSERT_EQ(float_to_f16_bits(f16_bits_to_float(uint16_t(h))), h);
  EXPECT_TRUE(std::isnan(f16_bits_to_float(float_to_f16_bits(NAN))));
}

std::string small_gguf(const std::string& path) {
  GgufWriter g;
  g.set("general.architecture", std::string("llama"));
  g.set("llama.block_count", uint32_t(2));
  g.set("x.eps", 1e-5f);
  g.set("x.flag", true);
  g.set("x.list", std::vector<std::string>{"a", "bc"});
  g.set("x.ints", std::vector<int32_t>{1, -2});
  g.set("x.floats", std::vector<float>{0.5f});
  g.add_tensor({"a", GgmlType::F32, {3}, encode_values({1, 2, 3}, GgmlType::F32)});
  g.add_tensor({"b", GgmlType::Q8_0, {2, 32}, encode_values(test::random_floats(64, 1), GgmlType::Q8_0)});
  g.add_tensor({"c", GgmlType::F16, {5}, encode_values({1, 2, 3, 4, 5}, GgmlType::F16)});
  g.write(path);
  return path;
}

class Gguf : public test::TempDirTest {};

TEST_F(Gguf, WritesWhatItReadsBackAligned) {
  const GgufFile f = read_gguf(small_gguf(dir_ + "/s.gguf"));
  EXPECT_EQ(f.version, 3u);
  EXPECT_EQ(std::string(reinterpret_cast<const char*>(f.bytes.data()), 4), "GGUF");
  ASSERT_EQ(f.kv.size(), 7u);
  EXPECT_EQ(std::get<std::string>(*f.find("general.architecture")), "llama");
  EXPECT_EQ(std::get<uint32_t>(*f.find("llama.block_count")), 2u);
  EXPECT_EQ(std::get<float>(*f.find("x.eps")), 1e-5f);
  EXPECT_EQ(std::get<bool>(*f.find("x.flag")), true);
  EXPECT_EQ(std::get<std::vector<std::string>>(*f.find("x.list")), (std::vector<std::string>{"a", "bc"}));
  EXPECT_EQ(std::get<std::vector<int32_t>>(*f.find("x.ints")), (std::vector<int32_t>{1, -2}));
  ASSERT_EQ(f.tensors.size(), 3u);
  EXPECT_EQ(f.data_offset % 32, 0u);
  uint64_t expect_offset = 0;
  for (const GgufTensorInfo& t : f.tensors) {
    EXPECT_EQ(t.offset, expect_offset) << t.name;
    EXPECT_EQ(t.offset % 32, 0u) << t.name;
    expect_offset += (t.nbytes + 31) / 32 * 32;
  }
  EXPECT_EQ(f.tensor("b")->shape, (std::vector<int64_t>{2, 32}));
  EXPECT_EQ(f.tensor("b")->nbytes, 68u);
  EXPECT_EQ(f.read_tensor("c"), (std::vector<float>{1, 2, 3, 4, 5}));
  EXPECT_EQ(f.bytes.size(), f.data_offset + expect_offset);
}

// Every truncation of a valid file is refused naming the file; so are a wrong magic and version.
TEST_F(Gguf, TruncatedOrForeignFilesAreRefused) {
  const std::string good = read_text(small_gguf(dir_ + "/s.gguf"));
  // The padding after the last tensor may go (llama.cpp's loader checks each tensor's bytes, not it).
  const GgufFile parsed = read_gguf(dir_ + "/s.gguf");
  const size_t needed = parsed.data_offset + parsed.tensors.back().offset + parsed.tensors.back().nbytes;
  ASSERT_LT(needed, good.size());
  for (size_t n = 0; n < needed; n += 3) {
    write_text(dir_ + "/t.gguf", good.substr(0, n));
    test::expect_error([&] { read_gguf(dir_ + "/t.gguf"); }, {dir_ + "/t.gguf"});
  }
  std::string bad = good;
  bad[0] = 'X';
  write_text(dir_ + "/m.gguf", bad);
  test::expect_error([&] { read_gguf(dir_ + "/m.gguf"); }, {"not a GGUF file"});
  bad = good;
  bad[4] = 2;
  write_text(dir_ + "/v.gguf", bad);
  test::expect_error([&] { read_gguf(dir_ + "/v.gguf"); }, {"GGUF version 2", "version 3"});
  bad = good;
  bad[8] = '\xff', bad[9] = '\xff', bad[10] = '\xff';  // tensor count in the millions
  write_text(dir_ + "/c.gguf", bad);
  test::expect_error([&] { read_gguf(dir_ + "/c.gguf"); }, {"the tensor count", "more than"});
}

// ---------------------------------------------------------------------------------------------
// GGUF of a merged model

// HF row r of a permuted q/k matrix: llama rows were permuted (LlamaModel.permute), others not.
std::vector<float> unpermute(const std::vector<float>& w, int heads, int64_t cols) {
  const int64_t half = int64_t(w.size()) / cols / heads / 2;
  std::vector<float> out(w.size());
  for (int h = 0; h < heads; ++h)
    for (int64_t j = 0; j < half; ++j)
      for (int part = 0; part < 2; ++part)
        std::copy_n(&w[((h * half + j) * 2 + part) * cols], cols, &out[((h * 2 + part) * half + j) * cols]);
  return out;
}

// The weights a GGUF file holds, back in loom's layout (the weights llama.cpp computes with).
ModelWeights weights_of(const GgufFile& g, const ModelConfig& mc) {
  const bool permuted = std::get<std::string>(*g.find("general.architecture")) == "llama";
  auto get = [&](const std::string& name) { return g.tensor(name) ? g.read_tensor(name) : std::vector<float>{}; };
  auto rope_rows = [&](const std::string& name, int heads, int64_t cols) {
    std::vector<float> v = get(name);
    return permuted && !v.empty() ? unpermute(v, heads, cols) : v;
  };
  ModelWeights w;
  w.embed = get("token_embd.weight");
  w.final_norm = get("output_norm.weight");
  w.lm_head = get("output.weight");
  w.layers.resize(mc.L);
  for (int l = 0; l < mc.L; ++l) {
    LayerWeights& lw = w.layers[l];
    const std::string p = cat("blk.", l, ".");
    lw.ln1 = get(p + "attn_norm.weight");
    lw.ln2 = get(p + "ffn_norm.weight");
    lw.q = rope_rows(p + "attn_q.weight", mc.H, mc.C);
    lw.k = rope_rows(p + "attn_k.weight", mc.KVH, mc.C);
    lw.v = get(p + "attn_v.weight");
    lw.o = get(p + "attn_output.weight");
    lw.gate = get(p + "ffn_gate.weight");
    lw.up = get(p + "ffn_up.weight");
    lw.down = get(p + "ffn_down.weight");
    lw.q_bias = rope_rows(p + "attn_q.bias", mc.H, 1);
    lw.k_bias = rope_rows(p + "attn_k.bias", mc.KVH, 1);
    lw.v_bias = get(p + "attn_v.bias");
    lw.o_bias = get(p + "attn_output.bias");
    lw.gate_bias = get(p + "ffn_gate.bias");
    lw.up_bias = get(p + "ffn_up.bias");
    lw.down_bias = get(p + "ffn_down.bias");
    lw.q_norm = get(p + "attn_q_norm.weight");
    lw.k_norm = get(p + "attn_k_norm.weight");
  }
  return w;
}

// w with every matrix rounded as a GGUF file of `type` stores it (norms and biases stay fp32).
ModelWeights rounded_like_gguf(ModelWeights w, GgmlType type) {
  auto round = [&](std::vector<float>& v) {
    if (!v.empty()) v = decode_values(encode_values(v, type).data(), int64_t(v.size()), type);
  };
  round(w.embed);
  round(w.lm_head);
  for (LayerWeights& lw : w.layers)
    for (int t = 0; t < kNumTargets; ++t) round(*projection(lw, t));
  return w;
}

// |a - b| / max|b| over a tensor: the error of a type's rounding at the tensor's scale.
double scaled_diff(const std::vector<float>& a, const std::vector<float>& b) {
  if (a.size() != b.size()) return INFINITY;
  return test::scaled_error(a, b);
}

class GgufExport : public test::TempDirTest {};

TEST_F(GgufExport, MetadataTensorsAndValuesAreWhatLlamaCppReads) {
  for (const Family& f : kFamilies) {
    const std::string base = make_base(cat(dir_, "/", f.arch, "/base"), f);
    const ModelConfig mc = load_model_config(base);
    const Adapter a = make_adapter(cat(dir_, "/", f.arch, "/adapter"), f, mc);
    ExportSource src{ModelOptions{}, base};
    src.model.path = base;
    const ModelWeights merged = merged_weights(src, mc, a.layout, a.lora);
    // Worst error of a type's rounding (relative to the tensor's largest value): bf16 keeps 8
    // significant bits (2^-8 relative), f16 11 (2^-11; weights are far above its subnormals), Q8_0 1/254 of a
    // block's largest value plus the fp16 scale's rounding (test Q8_0.RoundTripStaysWithinItsBound).
    const std::map<std::string, double> bound = {{"bf16", std::ldexp(1.0, -8)}, {"f16", std::ldexp(1.0, -11)},
                                                 {"q8_0", 1.0 / 254 + 1.0 / 2048}};
    for (const std::string& type : gguf_type_names()) {
      SCOPED_TRACE(cat(f.arch, " ", type));
      const std::string path = cat(dir_, "/", f.arch, "/model-", type, ".gguf");
      const std::vector<std::string> notes = write_merged_gguf(path, src, mc, merged, gguf_type_from_name(type));
      EXPECT_EQ(notes.size(), std::string(f.arch) == "mistral" ? 1u : 0u);
      const GgufFile g = read_gguf(path);
      const std::string arch = std::string(f.arch) == "mistral" ? "llama" : f.arch;
      auto u32 = [&](const std::string& key) {
        const GgufValue* v = g.find(key);
        EXPECT_TRUE(v && std::holds_alternative<uint32_t>(*v)) << key;
        return v && std::holds_alternative<uint32_t>(*v) ? std::get<uint32_t>(*v) : ~0u;
      };
      EXPECT_EQ(std::get<std::string>(*g.find("general.architecture")), arch);
      EXPECT_EQ(std::get<std::string>(*g.find("general.name")), "base");
      EXPECT_EQ(u32(arch + ".block_count"), uint32_t(mc.L));
      EXPECT_EQ(u32(arch + ".embedding_length"), uint32_t(mc.C));
      EXPECT_EQ(u32(arch + ".feed_forward_length"), uint32_t(mc.F));
      EXPECT_EQ(u32(arch + ".attention.head_count"), uint32_t(mc.H));
      EXPECT_EQ(u32(arch + ".attention.head_count_kv"), uint32_t(mc.KVH));
      EXPECT_EQ(u32(arch + ".context_length"), uint32_t(mc.max_position));
      EXPECT_EQ(std::get<float>(*g.find(arch + ".rope.freq_base")), float(mc.rope.theta));
      EXPECT_EQ(std::get<float>(*g.find(arch + ".attention.layer_norm_rms_epsilon")), mc.rms_eps);
      EXPECT_EQ(u32("general.file_type"), type == "q8_0" ? 7u : type == "f16" ? 1u : 32u);
      if (arch == "llama") {
        EXPECT_EQ(u32("llama.rope.dimension_count"), uint32_t(mc.D));
      }
      EXPECT_EQ(g.tensor("rope_freqs.weight") != nullptr, mc.rope.type == "llama3");
      EXPECT_EQ(g.tensor("output.weight") != nullptr, !mc.tie_embeddings);
      EXPECT_EQ(g.tensor("blk.0.attn_q_norm.weight") != nullptr, mc.qk_norm);
      EXPECT_EQ(g.tensor("blk.0.attn_output.weight")->type, gguf_type_from_name(type));
      EXPECT_EQ(g.tensor("blk.0.attn_norm.weight")->type, GgmlType::F32);

      // Tokenizer: one entry per embedding row, the chat template of tokenizer_config.json.
      const auto& tokens = std::get<std::vector<std::string>>(*g.find("tokenizer.ggml.tokens"));
      EXPECT_EQ(int(tokens.size()), mc.V);
      EXPECT_EQ(std::get<std::vector<int32_t>>(*g.find("tokenizer.ggml.token_type")).size(), tokens.size());
      const json tc = json::parse(read_text(base + "/tokenizer_config.json"));
      EXPECT_EQ(std::get<std::string>(*g.find("tokenizer.chat_template")), tc["chat_template"].get<std::string>());
      const std::string model = std::get<std::string>(*g.find("tokenizer.ggml.model"));
      const std::string pre = std::get<std::string>(*g.find("tokenizer.ggml.pre"));
      if (std::string(f.tokenizer) == "llama3") {
        EXPECT_EQ(model, "gpt2");
        EXPECT_EQ(pre, "llama-bpe");
        EXPECT_EQ(std::get<bool>(*g.find("tokenizer.ggml.add_bos_token")), true);
        EXPECT_EQ(u32("tokenizer.ggml.bos_token_id"), 1u);
      } else if (std::string(f.tokenizer) == "qwen") {
        EXPECT_EQ(model, "gpt2");
        EXPECT_EQ(pre, "qwen2");
        EXPECT_EQ(std::get<bool>(*g.find("tokenizer.ggml.add_bos_token")), false);
        EXPECT_EQ(tokens[u32("tokenizer.ggml.eos_token_id")], "<|im_end|>");
        EXPECT_EQ(tokens[u32("tokenizer.ggml.padding_token_id")], "<|endoftext|>");
        EXPECT_EQ(std::get<std::vector<std::string>>(*g.find("tokenizer.ggml.merges")).front(), "Ġ t");
      } else {
        EXPECT_EQ(model, "llama");
        EXPECT_EQ(std::get<bool>(*g.find("tokenizer.ggml.add_space_prefix")), true);
        const auto& types = std::get<std::vector<int32_t>>(*g.find("tokenizer.ggml.token_type"));
        const auto& scores = std::get<std::vector<float>>(*g.find("tokenizer.ggml.scores"));
        EXPECT_EQ(types[0], 2) << "<unk> is the unknown token";
        EXPECT_EQ(types[1], 3) << "<s> is a control token";
        EXPECT_EQ(types[3 + 0x0A], 6) << "<0x0A> is a byte";
        // The first merge's result scores highest among merged tokens (llama.cpp merges by score).
        const auto at = std::find(tokens.begin(), tokens.end(), "\xE2\x96\x81t") - tokens.begin();
        const auto the = std::find(tokens.begin(), tokens.end(), "\xE2\x96\x81the") - tokens.begin();
        EXPECT_EQ(scores[at], 0.f);
        EXPECT_EQ(scores[the], -2.f);
      }
      if (tokens.size() != size_t(mc.V)) continue;

      // The tensors decode to the merged weights within the type's rounding (rows in HF order),
      // exactly as rounding them in memory gives (every fixture row is whole Q8_0 blocks).
      const ModelWeights back = weights_of(g, mc);
      const ModelWeights rounded = rounded_like_gguf(merged, gguf_type_from_name(type));
      EXPECT_EQ(back.embed, rounded.embed);
      for (int l = 0; l < mc.L; ++l)
        for (int t = 0; t < kNumTargets; ++t)
          EXPECT_EQ(*projection(back.layers[l], t), *projection(rounded.layers[l], t)) << l << " " << t;
      const double tol = bound.at(type);
      EXPECT_LE(scaled_diff(back.embed, merged.embed), tol);
      EXPECT_EQ(back.final_norm, merged.final_norm) << "norms stay F32";
      for (int l = 0; l < mc.L; ++l) {
        for (int t = 0; t < kNumTargets; ++t)
          EXPECT_LE(scaled_diff(*projection(back.layers[l], t), *projection(merged.layers[l], t)), tol)
              << "layer " << l << " " << kLoraTargetNames[t];
        EXPECT_EQ(back.layers[l].q_bias, merged.layers[l].q_bias) << "biases stay F32, rows unpermuted";
        EXPECT_EQ(back.layers[l].k_norm, merged.layers[l].k_norm);
      }
    }
  }
}

TEST(GgufRope, PermutationIsTheConvertersAndItsOwnInverse) {
  // 2 heads of D = 4, 1 column: rows (0, 2, 1, 3) of each head move to (0, 1, 2, 3).
  const std::vector<float> w = {0, 1, 2, 3, 10, 11, 12, 13};
  EXPECT_EQ(permute_rope_rows(w, 2, 1), (std::vector<float>{0, 2, 1, 3, 10, 12, 11, 13}));
  const std::vector<float> m = test::random_floats(4 * 8 * 3, 2);
  EXPECT_EQ(unpermute(permute_rope_rows(m, 4, 3), 4, 3), m);
}

TEST_F(GgufExport, TokenizersLlamaCppCannotReproduceAreRefused) {
  const Family f = kFamilies[1];
  const std::string base = make_base(dir_ + "/base", f);
  const ModelConfig mc = load_model_config(base);
  ExportSource src{ModelOptions{}, base};
  src.model.path = base;
  const ModelWeights w = load_weights(base, mc);
  std::string tok = read_text(base + "/tokenizer.json");
  const std::string regex = "\\\\p{N}| ?";
  ASSERT_NE(tok.find(regex), std::string::npos);
  tok.replace(tok.find(regex), regex.size(), "\\\\p{N}{1,2}| ?");
  write_text(base + "/tokenizer.json", tok);
  test::expect_error([&] { write_merged_gguf(dir_ + "/m.gguf", src, mc, w, GgmlType::F16); },
                     {base + "/tokenizer.json", "not one llama.cpp implements", "llama-bpe", "qwen2"});
  EXPECT_FALSE(fs::exists(dir_ + "/m.gguf"));
  // A tokenizer with ids past the model's embedding is another model's.
  src.tokenizer = test::shared_dir() + "/tokenizers/qwen3";
  test::expect_error([&] { write_merged_gguf(dir_ + "/m.gguf", src, mc, w, GgmlType::F16); },
                     {"vocab_size is " + std::to_string(mc.V), "trained with"});
  // Without a tokenizer (a preset) the file says so and is still a model llama.cpp runs on ids.
  src.tokenizer = "";
  const std::vector<std::string> notes = write_merged_gguf(dir_ + "/m.gguf", src, mc, w, GgmlType::F16);
  ASSERT_EQ(notes.size(), 1u);
  EXPECT_NE(notes[0].find("no tokenizer"), std::string::npos) << notes[0];
  EXPECT_EQ(std::get<std::string>(*read_gguf(dir_ + "/m.gguf").find("tokenizer.ggml.model")), "none");
}

// A sentencepiece .model (the demo's) gives its pieces, scores and types, as the converter reads them.
TEST_F(GgufExport, SentencepieceTokenizerOfThePresetDemo) {
  ExportSource src;
  src.model.preset = "tiny";
  src.tokenizer = "data/demo/tokenizer.model";
  const ModelConfig mc = preset_model_config("tiny");
  const ModelWeights w = random_weights(mc, 1);
  write_merged_gguf(dir_ + "/tiny.gguf", src, mc, w, GgmlType::Q8_0);
  const GgufFile g = read_gguf(dir_ + "/tiny.gguf");
  const auto tok = Tokenizer::load(src.tokenizer);
  const auto& tokens = std::get<std::vector<std::string>>(*g.find("tokenizer.ggml.tokens"));
  ASSERT_EQ(int(tokens.size()), mc.V);
  EXPECT_EQ(std::get<std::string>(*g.find("tokenizer.ggml.model")), "llama");
  for (int id = 0; id < std::min(tok->vocab_size(), mc.V); ++id) ASSERT_EQ(tok->token_to_id(tokens[id]), id) << id;
  EXPECT_EQ(std::get<std::string>(*g.find("general.name")), "loom-tiny");
}

// ---------------------------------------------------------------------------------------------
// Programs: build/export and output.export

class ExportProgram : public test::TempDirTest {};

TEST_F(ExportProgram, ConvertsAnAdapterAndRefusesBadArguments) {
  const Family f = kFamilies[2];
  const std::string base = make_base(dir_ + "/base", f);
  make_adapter(dir_ + "/adapter", f, load_model_config(base));
  test::run_cli({"build/export", "--model", base, "--adapter", dir_ + "/adapter", "--out", dir_ + "/merged",
                 "--format", "merged"});
  EXPECT_TRUE(fs::exists(dir_ + "/merged/tokenizer.json"));
  test::run_cli({"build/export", "--model", base, "--adapter", dir_ + "/adapter", "--out", dir_ + "/m.gguf",
                 "--format", "gguf", "--gguf-type", "f16"});
  EXPECT_EQ(std::get<uint32_t>(*read_gguf(dir_ + "/m.gguf").find("general.file_type")), 1u);
  const std::vector<std::pair<std::vector<std::string>, std::vector<std::string>>> bad = {
      {{"--model", base, "--adapter", dir_ + "/adapter", "--out", dir_ + "/x"}, {"--format is required"}},
      {{"--model", base, "--adapter", dir_ + "/adapter", "--out", dir_ + "/x", "--format", "onnx"}, {"--format"}},
      {{"--model", base, "--adapter", dir_ + "/adapter", "--out", dir_, "--format", "gguf"}, {"--out", "is a folder"}},
      {{"--model", base, "--adapter", dir_ + "/adapter", "--out", dir_ + "/x", "--format", "gguf", "--gguf-type",
        "q4"},
       {"--gguf-type"}},
      {{"--model", base, "--adapter", dir_ + "/nope", "--out", dir_ + "/x", "--format", "merged"}, {"--adapter"}},
      {{"--model", base, "--adapter", dir_ + "/adapter", "--out", dir_ + "/x", "--format", "gguf", "--tokenizer",
        test::shared_dir() + "/tokenizers/llama3"},
       {"vocab_size"}},
      {{"--model", base, "--adapter", dir_ + "/adapter", "--out", dir_ + "/x", "--format", "merged", "--bogus"},
       {"unknown argument '--bogus'"}},
  };
  for (const auto& [args, parts] : bad) {
    std::vector<std::string> argv = {"build/export"};
    argv.insert(argv.end(), args.begin(), args.end());
    test::expect_error([&] { test::run_cli(argv); }, parts);
  }
}

// output.export: merged | gguf at the end of build/train: the adapter beside the export.
TEST_F(ExportProgram, TrainingRunsExportMergedAndGgufBesideTheAdapter) {
  const std::string base = make_base(dir_ + "/base", kFamilies[0]);
  write_text(dir_ + "/data.jsonl",
             "{\"text\": \"the cat sat on the mat and it is in the hat\"}\n"
             "{\"text\": \"on the hat sat the cat, and the mat is in it\"}\n");
  for (const std::string format : {"merged", "gguf"}) {
    const std::string run = dir_ + "/run-" + format;
    test::run_cli({"build/train", "configs/demo.yaml", "model.path=" + base, "model.preset=", "model.quant=bf16",
                   "data.path=" + dir_ + "/data.jsonl", "data.tokenizer=", "data.template=none", "data.max_seq_len=64",
                   "train.token_budget=64", "train.global_batch=2", "train.steps=2", "train.device=cpu",
                   "lora.r=4", "train.sample_every=0", "output.dir=" + run, "output.export=" + format, "output.checkpoint_every=0"},
                  "", 300);
    EXPECT_TRUE(fs::exists(run + "/adapter/adapter_model.safetensors")) << format;
    if (format == "merged") {
      EXPECT_TRUE(fs::exists(run + "/merged/model.safetensors"));
      EXPECT_TRUE(fs::exists(run + "/merged/tokenizer_config.json"));
    } else {
      EXPECT_EQ(std::get<uint32_t>(*read_gguf(run + "/model-q8_0.gguf").find("general.file_type")), 7u)
          << "output.gguf_type defaults to q8_0";
    }
  }
}

// ---------------------------------------------------------------------------------------------
// transformers and llama.cpp themselves (tools/check_export.py), where installed

// The Python that runs tools/check_export.py: LOOM_PYTHON (e.g. a virtual environment's), else python3.
std::string python() {
  const char* env = std::getenv("LOOM_PYTHON");
  return env && *env ? env : "python3";
}

bool python_has(const std::string& modules) {
  return std::system((python() + " -c 'import " + modules + "' >/dev/null 2>&1").c_str()) == 0;
}

json logits_json(const std::vector<float>& logits, int V, int64_t T) {
  json rows = json::array();
  for (int64_t t = 0; t < T; ++t) rows.push_back(std::vector<float>(logits.begin() + t * V, logits.begin() + (t + 1) * V));
  return rows;
}

// Prepares, per family, a base, an adapter, the merged folder and the three GGUF files, with loom's
// ids and logits for a prompt (of the fp32 merged model, of the merged folder, and of each GGUF
// file's own weights), and runs tools/check_export.py on them; it prints the figures README's
// formats section quotes.
TEST_F(ExportProgram, TransformersAndLlamaCppReproduceLoom) {
  const bool hf = python_has("torch, transformers"), llama = python_has("llama_cpp");
  if (!hf && !llama) GTEST_SKIP() << "neither torch + transformers nor llama-cpp-python is installed";
  json manifest = {{"cases", json::array()}, {"score", "build/score"}, {"hf", hf}, {"llama_cpp", llama}};
  for (const Family& f : kFamilies) {
    const std::string d = cat(dir_, "/", f.arch);
    // One fp32 base: its merged folder is fp32 too and must give the trained model's NLL itself.
    const DType base_dtype = std::string(f.arch) == "llama" ? DType::F32 : DType::BF16;
    const std::string base = make_base(d + "/base", f, base_dtype);
    const ModelConfig mc = load_model_config(base);
    const Adapter a = make_adapter(d + "/adapter", f, mc);
    ExportSource src{ModelOptions{}, base};
    src.model.path = base;
    const ModelWeights merged = merged_weights(src, mc, a.layout, a.lora);
    write_merged_folder(d + "/merged", src, mc, merged);
    const MicroBatch mb = prompt_batch(base, 0);
    // The trained model itself (fp32 merge), and as the merged folder holds it (rounded to bf16).
    std::vector<float> logits, folder_logits;
    ReferenceModel(mc, merged, no_adapter(mc)).forward(mb, nullptr, {}, nullptr, &logits);
    const ModelConfig back_cfg = load_model_config(d + "/merged");
    ReferenceModel(back_cfg, load_weights(d + "/merged", back_cfg), no_adapter(back_cfg))
        .forward(mb, nullptr, {}, nullptr, &folder_logits);
    int window = 0;
    for (int w : mc.window) window = std::max(window, w);
    json c = {{"arch", f.arch},
              {"base", base},
              {"adapter", d + "/adapter"},
              {"merged", d + "/merged"},
              {"text", kPrompt},
              {"ids", mb.tokens},
              {"window", window},
              {"exact", base_dtype == DType::F32},
              {"logits", logits_json(logits, mc.V, mb.T())},
              {"merged_logits", logits_json(folder_logits, mc.V, mb.T())},
              {"gguf", json::object()}};
    for (const std::string& type : gguf_type_names()) {
      const std::string path = cat(d, "/model-", type, ".gguf");
      write_merged_gguf(path, src, mc, merged, gguf_type_from_name(type));
      // loom on the merged weights rounded to the type in memory, not read from the file: the type's
      // own effect, independent of the file's layout (which llama.cpp alone judges).
      std::vector<float> own;
      ReferenceModel(mc, rounded_like_gguf(merged, gguf_type_from_name(type)), no_adapter(mc))
          .forward(mb, nullptr, {}, nullptr, &own);
      c["gguf"][type] = {{"path", path}, {"logits", logits_json(own, mc.V, mb.T())}};
    }
    manifest["cases"].push_back(c);
  }
  write_text(dir_ + "/manifest.json", manifest.dump());
  const test::ProgramResult r =
      test::run_program({"/usr/bin/env", python(), "tools/check_export.py", dir_ + "/manifest.json"}, "", 600);
  std::printf("%s%s", r.out.c_str(), r.err.c_str());
  EXPECT_EQ(r.exit_code, 0) << r.err;
}

}  // namespace
}  // namespace loom
