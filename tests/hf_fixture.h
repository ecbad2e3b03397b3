// The Hugging Face fixtures of tests/fixtures/hf/<arch>/ (tools/make_hf_fixtures.py), as the
// parity and GPU-step tests read them.
#pragma once
#include <nlohmann/json.hpp>

#include <fstream>
#include <string>
#include <vector>

#include "data/batch.h"
#include "engine/config.h"
#include "models/lora.h"
#include "models/model_config.h"
#include "tests/test_util.h"

namespace loom::test {

struct HfFixture {
  std::string dir;
  ModelConfig cfg;
  LoraLayout layout;
  std::vector<float> lora;                        // the adapter's starting weights
  std::vector<Document> docs;
  std::vector<std::vector<int>> micro_batches;    // document indices of each micro-batch of a step
  nlohmann::json expected;                        // expected.json
  TrainSection train;                             // the fixture's AdamW and clipping settings
};

inline nlohmann::json read_json(const std::string& path) {
  std::ifstream f(path);
  return nlohmann::json::parse(f);
}

// A fixture's bf16 yardstick for its GPU run (expected.json "bf16_baseline" / "bf16_baseline_nf4"):
// HF computing in loom's GPU precision against HF fp32 over the same lr and steps
// (tools/make_hf_fixtures.py; tools/make_moe_fixtures.py --yardstick-only), and who measured it.
struct Yardstick {
  float lr = 0;
  int steps = 0;
  double base_token_loss = 0, base_grads = 0, base_step_loss = 0, base_weights = 0;
  std::string measured_by;  // "torch X, transformers Y, peft Z"
};

// quant: "bf16" or "nf4", the yardstick measured for that mode.
inline void read_yardstick(const nlohmann::json& expected, const std::string& quant, Yardstick& y) {
  const auto& b = expected.at(quant == "nf4" ? "bf16_baseline_nf4" : "bf16_baseline");
  y.lr = b["lr"];
  y.steps = b["steps"];
  y.base_token_loss = b["token_loss_abs"];
  y.base_grads = b["grad_scaled"];
  y.base_step_loss = b["step_loss_rel"];
  y.base_weights = b["final_weights_scaled"];
  y.measured_by = "torch " + b["torch"].get<std::string>() + ", transformers " + b["transformers"].get<std::string>() +
                  ", peft " + b["peft"].get<std::string>();
}

inline HfFixture load_hf_fixture(const std::string& arch) {
  HfFixture f;
  f.dir = fixtures_dir() + "/hf/" + arch;
  f.cfg = load_model_config(f.dir + "/model");
  f.layout = make_lora_layout(f.cfg, read_peft_lora_options(f.dir + "/adapter"));
  f.lora = load_peft_adapter(f.dir + "/adapter", f.layout);
  const nlohmann::json batch = read_json(f.dir + "/batch.json");
  for (const auto& d : batch["documents"])
    f.docs.push_back({d["ids"].get<std::vector<int32_t>>(), d["mask"].get<std::vector<uint8_t>>(), {}});
  f.micro_batches = batch["micro_batches"].get<std::vector<std::vector<int>>>();
  f.expected = read_json(f.dir + "/expected.json");
  f.train.beta1 = f.expected["beta1"];
  f.train.beta2 = f.expected["beta2"];
  f.train.eps = f.expected["eps"];
  f.train.weight_decay = f.expected["weight_decay"];
  f.train.max_grad_norm = f.expected["max_grad_norm"];
  return f;
}

inline MicroBatch pack(const HfFixture& f, const std::vector<int>& which) {
  std::vector<const Document*> d;
  for (int i : which) d.push_back(&f.docs[i]);
  return pack_documents(d);
}

}  // namespace loom::test
