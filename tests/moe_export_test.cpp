// Adapters of mixture-of-experts models as loom writes them (models/lora.h save_peft_adapter):
// loom reads them back bit for bit, and PEFT 0.21.2 loads them with PeftModel.from_pretrained to
// loom's logits (tools/check_moe_export.py, where torch + transformers + peft are installed). Cases:
// attention and experts (the fused form with .base_layer), attention only (lora.targets without the
// MLP names: no expert adapter), and q_proj + down_proj (one expert wrapper, no .base_layer).
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <cstdlib>
#include <filesystem>
#include <fstream>

#include "data/batch.h"
#include "engine/export.h"
#include "models/lora.h"
#include "models/model_config.h"
#include "models/reference_model.h"
#include "models/weights.h"
#include "ops/random.h"
#include "tests/hf_fixture.h"
#include "tests/hostile.h"
#include "tests/test_util.h"

namespace loom {
namespace {

using json = nlohmann::json;

struct Case {
  const char* arch;
  std::vector<std::string> targets;
  const char* name;
};

const Case kCases[] = {
    {"qwen3_moe", {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}, "all"},
    {"mixtral", {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}, "all"},
    {"qwen3_moe", {"q_proj", "k_proj", "v_proj", "o_proj"}, "attention_only"},
    {"mixtral", {"q_proj", "down_proj"}, "q_and_down"},
};

// The layout of case c's adapter: r 4, alpha 8, its targets.
LoraLayout layout_of(const ModelConfig& cfg, const Case& c) {
  LoraOptions o;
  o.r = 4;
  o.alpha = 8;
  o.targets = c.targets;
  return make_lora_layout(cfg, o);
}

// Every LoRA weight random and non-zero (B too), distinct per expert: a layout mistake shows.
std::vector<float> random_adapter(const LoraLayout& lay, uint64_t seed) {
  std::vector<float> p(size_t(lay.total));
  for (size_t i = 0; i < p.size(); ++i) p[i] = 0.2f * random_symmetric(seed, 7, i);
  return p;
}

std::string python() {
  const char* env = std::getenv("LOOM_PYTHON");
  return env && *env ? env : "python3";
}

TEST(MoeExport, AdaptersReadBackBitForBit) {
  for (const Case& c : kCases) {
    SCOPED_TRACE(cat(c.arch, " ", c.name));
    const ModelConfig cfg = load_model_config(test::fixtures_dir() + "/moe/" + c.arch + "/model");
    const LoraLayout lay = layout_of(cfg, c);
    const std::vector<float> p = random_adapter(lay, 3);
    const std::string dir = test::fresh_temp_dir(cat("moe_export_", c.arch, "_", c.name));
    save_peft_adapter(dir, lay, p, "base");
    const LoraLayout back = make_lora_layout(cfg, read_peft_lora_options(dir));
    EXPECT_EQ(back.total, lay.total);
    EXPECT_EQ(back.targeted, lay.targeted);
    EXPECT_EQ(load_peft_adapter(dir, lay), p);
  }
}

// Attention only: no expert slot anywhere, and the file names no MLP module.
TEST(MoeExport, AttentionOnlyAdaptsNoExpert) {
  const ModelConfig cfg = load_model_config(test::fixtures_dir() + "/moe/qwen3_moe/model");
  LoraOptions o;
  o.targets = {"q_proj", "v_proj"};
  const LoraLayout lay = make_lora_layout(cfg, o);
  for (int l = 0; l < cfg.L; ++l) {
    EXPECT_EQ(lay.experts[size_t(l)].size(), cfg.is_moe_layer(l) ? size_t(cfg.num_experts) : 0u);
    for (const auto& e : lay.experts[size_t(l)]) EXPECT_FALSE(e[kExpertGateUp].enabled || e[kExpertDown].enabled);
    EXPECT_FALSE(lay.slot(l, kGate).enabled || lay.slot(l, kDown).enabled);
  }
  const std::string dir = test::fresh_temp_dir("moe_export_attention");
  save_peft_adapter(dir, lay, random_adapter(lay, 1), "base");
  const json j = test::read_json(dir + "/adapter_config.json");
  EXPECT_EQ(j["target_modules"], json({"q_proj", "v_proj"}));
  EXPECT_TRUE(j["target_parameters"].is_null());
  EXPECT_TRUE(j["rank_pattern"].empty());
}

// A merged export of an MoE model: every expert's W_e += scale · B_e A_e (gate_up at its own scale),
// the attention as before; the merged base alone computes what base + adapter computes.
TEST(MoeExport, MergedWeightsEqualBasePlusAdapter) {
  for (const char* arch : {"qwen3_moe", "mixtral"}) {
    SCOPED_TRACE(arch);
    const std::string fixture = test::fixtures_dir() + "/moe/" + arch;
    const ModelConfig cfg = load_model_config(fixture + "/model");
    LoraOptions o;
    o.r = 4;
    o.alpha = 8;
    o.rslora = true;  // gate_up's scale 2·alpha/√(2r) differs from the others' alpha/√r
    const LoraLayout lay = make_lora_layout(cfg, o);
    const std::vector<float> p = random_adapter(lay, 9);
    ModelWeights merged = load_weights(fixture + "/model", cfg);
    merge_lora(merged, lay, p);
    LoraOptions none;
    none.targets = {"q_proj"};
    const LoraLayout no_adapter = make_lora_layout(cfg, none);
    const ReferenceModel adapted(cfg, load_weights(fixture + "/model", cfg), lay), base(cfg, merged, no_adapter);
    const json batch = test::read_json(fixture + "/batch.json");
    ASSERT_FALSE(batch["documents"].empty());
    for (const auto& d : batch["documents"]) {
      const Document doc{d["ids"].get<std::vector<int32_t>>(), d["mask"].get<std::vector<uint8_t>>(), {}};
      const MicroBatch mb = pack_documents({&doc});
      std::vector<float> want, got;
      adapted.forward(mb, p.data(), {}, nullptr, &want);
      base.forward(mb, nullptr, {false, false, 0}, nullptr, &got);
      // fp32, two summation orders (W·x + B·(A·x) against (W + B·A)·x): ~1e-6 of the logits' scale
      EXPECT_LE(test::scaled_error(got, want), 1e-5);
    }
  }
}

// PEFT itself loads each case to loom's logits (tools/check_moe_export.py).
TEST(MoeExport, PeftLoadsLoomsAdapters) {
  if (std::system((python() + " -c 'import torch, transformers, peft' >/dev/null 2>&1").c_str()) != 0)
    GTEST_SKIP() << "torch + transformers + peft are not installed for " << python() << " (set LOOM_PYTHON)";
  const std::string dir = test::fresh_temp_dir("moe_export_peft");
  std::filesystem::create_directories(dir);
  json manifest = {{"cases", json::array()}};
  for (const Case& c : kCases) {
    const std::string fixture = test::fixtures_dir() + "/moe/" + c.arch;
    const ModelConfig cfg = load_model_config(fixture + "/model");
    const LoraLayout lay = layout_of(cfg, c);
    const std::vector<float> p = random_adapter(lay, 5);
    const std::string adapter = cat(dir, "/", c.arch, "_", c.name);
    save_peft_adapter(adapter, lay, p, "");
    const ReferenceModel m(cfg, load_weights(fixture + "/model", cfg), lay);
    json ids = json::array(), logits = json::array();
    const json batch = test::read_json(fixture + "/batch.json");
    ASSERT_FALSE(batch["documents"].empty());
    for (const auto& d : batch["documents"]) {
      const Document doc{d["ids"].get<std::vector<int32_t>>(), d["mask"].get<std::vector<uint8_t>>(), {}};
      const MicroBatch mb = pack_documents({&doc});
      std::vector<float> out;
      m.forward(mb, p.data(), {}, nullptr, &out);
      json rows = json::array();
      for (int64_t t = 0; t < mb.T(); ++t) rows.push_back(std::vector<float>(out.begin() + t * cfg.V, out.begin() + (t + 1) * cfg.V));
      ids.push_back(doc.ids);
      logits.push_back(rows);
    }
    manifest["cases"].push_back({{"name", cat(c.arch, " ", c.name)}, {"base", fixture + "/model"},
                                 {"adapter", adapter}, {"ids", ids}, {"logits", logits}});
  }
  std::ofstream(dir + "/manifest.json") << manifest.dump();
  const test::ProgramResult r =
      test::run_program({"/usr/bin/env", python(), "tools/check_moe_export.py", dir + "/manifest.json"}, "", 600);
  std::printf("%s%s", r.out.c_str(), r.err.c_str());
  EXPECT_EQ(r.exit_code, 0) << r.err;
}

}  // namespace
}  // namespace loom
