// The mixture-of-experts reference path against transformers 5.23 + peft 0.21.2 (issue 16):
// Qwen3MoeForCausalLM (a dense layer through mlp_only_layers, norm_topk_prob false) and
// MixtralForCausalLM (sliding window), with LoRA on the attention and on every expert. Fixtures:
// tools/make_moe_fixtures.py (tests/fixtures/moe/<arch>/, README there).
// Tolerance 1e-4 relative to the largest reference value (the bar, and parity_test's): both
// sides compute in fp32 on bf16-exact weights, so the expected error is fp32 summation-order noise,
// ~1e-6 (measured errors are printed). Routing is no source of error: the fixture keeps every token's
// K-th and (K+1)-th router logits at least 1e-2 apart, ~10^4 times that noise.
// Micro-batch 1 of each fixture sends every token to one expert, micro-batch 2 none to another: the
// loss, gradient and step checks sum over all three.
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <cmath>
#include <cstdio>

#include "data/batch.h"
#include "engine/objective.h"
#include "engine/optimizer.h"
#include "models/lora.h"
#include "models/model_config.h"
#include "models/reference_model.h"
#include "models/safetensors.h"
#include "models/weights.h"
#include "tests/hf_fixture.h"
#include "tests/test_util.h"

namespace loom {
namespace {

constexpr double kTol = 1e-4;

using test::HfFixture;
using test::pack;

struct MoeFixture : HfFixture {
  ModelWeights weights;
};

MoeFixture load_moe_fixture(const std::string& arch, const std::string& adapter = "adapter") {
  MoeFixture f;
  f.dir = test::fixtures_dir() + "/moe/" + arch;
  f.cfg = load_model_config(f.dir + "/model");
  f.layout = make_lora_layout(f.cfg, read_peft_lora_options(f.dir + "/" + adapter));
  f.lora = load_peft_adapter(f.dir + "/" + adapter, f.layout);
  const nlohmann::json batch = test::read_json(f.dir + "/batch.json");
  for (const auto& d : batch["documents"])
    f.docs.push_back({d["ids"].get<std::vector<int32_t>>(), d["mask"].get<std::vector<uint8_t>>(), {}});
  f.micro_batches = batch["micro_batches"].get<std::vector<std::vector<int>>>();
  f.expected = test::read_json(f.dir + "/expected.json");
  f.train.beta1 = f.expected["beta1"];
  f.train.beta2 = f.expected["beta2"];
  f.train.eps = f.expected["eps"];
  f.train.weight_decay = f.expected["weight_decay"];
  f.train.max_grad_norm = f.expected["max_grad_norm"];
  f.weights = load_weights(f.dir + "/model", f.cfg);
  return f;
}

// The model of the fixture; with_aux false: output_router_logits off (the cross-entropy alone).
ReferenceModel model_of(const MoeFixture& f, bool with_aux = true) {
  ModelConfig cfg = f.cfg;
  cfg.output_router_logits = with_aux;
  return ReferenceModel(cfg, f.weights, f.layout);
}

// The gradients of the fixture's objective over its three micro-batches: each micro-batch's
// cross-entropy weighted 1 / (the batch's targets), plus, with the aux loss on, coef · its aux.
// ce_weight 0 leaves the aux loss's gradient alone.
std::vector<float> batch_gradients(const MoeFixture& f, const ReferenceModel& m, float ce_weight = 1) {
  const int64_t n = f.expected["n_targets"];
  std::vector<float> grads(size_t(f.layout.total), 0.f);
  for (const auto& which : f.micro_batches) {
    const MicroBatch mb = pack(f, which);
    std::vector<float> w = sft_token_weights(mb, n);
    for (float& x : w) x *= ce_weight;
    m.forward_backward(mb, f.lora.data(), grads.data(), w.data());
  }
  return grads;
}

// Scaled error of every tensor of a gradient saved in PEFT's form against expected.safetensors'
// `prefix`.<key>; the worst one.
double worst_against_peft(const MoeFixture& f, const std::vector<float>& grads, const std::string& prefix,
                          double scale = 1) {
  const std::string dir = test::fresh_temp_dir("moe_reference_grads");
  save_peft_adapter(dir, f.layout, grads, "");
  const Checkpoint got = Checkpoint::open(dir + "/adapter_model.safetensors"), want = Checkpoint::open(f.dir + "/expected.safetensors");
  double worst = 0;
  for (const std::string& name : got.names()) {
    const std::vector<int64_t>& shape = got.get(name).shape;
    std::vector<float> g = got.read_f32(name, shape);
    for (float& x : g) x = float(x * scale);
    const double err = test::scaled_error(g, want.read_f32(prefix + "." + name, shape));
    EXPECT_LE(err, kTol) << name;
    worst = test::max_keeping_nan(worst, err);
  }
  return worst;
}

class MoeParity : public testing::TestWithParam<std::string> {};

// Logits of each document alone, and every sparse layer's router logits, against HF's.
TEST_P(MoeParity, LogitsAndRouterLogitsMatchPerDocument) {
  const MoeFixture f = load_moe_fixture(GetParam());
  const ReferenceModel m = model_of(f);
  const Checkpoint exp = Checkpoint::open(f.dir + "/expected.safetensors");
  double worst = 0, worst_router = 0;
  for (size_t i = 0; i < f.docs.size(); ++i) {
    const MicroBatch mb = pack(f, {int(i)});
    std::vector<float> logits;
    ReferencePass kept;
    m.forward(mb, f.lora.data(), {}, nullptr, &logits, &kept);
    worst = test::max_keeping_nan(worst, test::scaled_error(logits, exp.read_f32(cat("logits.", i), {mb.T(), f.cfg.V})));
    for (int l = 0; l < f.cfg.L; ++l) {
      if (!f.cfg.is_moe_layer(l)) continue;
      const auto want = exp.read_f32(cat("router_logits.", i, ".", l), {mb.T(), f.cfg.num_experts});
      worst_router = test::max_keeping_nan(worst_router, test::scaled_error(kept.acts[size_t(l)].router_logits, want));
    }
  }
  std::printf("[%s] logits max scaled error %.2e, router logits %.2e\n", GetParam().c_str(), worst, worst_router);
  EXPECT_LE(worst, kTol);
  EXPECT_LE(worst_router, kTol);
}

// Each micro-batch's routing at the starting weights: the tokens each expert receives in each sparse
// layer are HF's, exactly (all of micro-batch 1 on the hot expert, none of micro-batch 2 on the cold one).
TEST_P(MoeParity, ExpertLoadsAreHfs) {
  const MoeFixture f = load_moe_fixture(GetParam());
  const ReferenceModel m = model_of(f);
  const int hot = f.expected["hot_expert"], cold = f.expected["cold_expert"];
  for (size_t k = 0; k < f.micro_batches.size(); ++k) {
    const MicroBatch mb = pack(f, f.micro_batches[k]);
    ReferencePass kept;
    m.forward(mb, f.lora.data(), {}, nullptr, nullptr, &kept);
    for (int l = 0; l < f.cfg.L; ++l) {
      if (!f.cfg.is_moe_layer(l)) continue;
      std::vector<int> load(size_t(f.cfg.num_experts), 0);
      for (int32_t e : kept.acts[size_t(l)].route_experts) ++load[size_t(e)];
      EXPECT_EQ(load, f.expected["expert_load"][k][std::to_string(l)].get<std::vector<int>>())
          << "micro-batch " << k << " layer " << l;
      if (k == 1) {
        EXPECT_EQ(load[size_t(hot)], mb.T()) << "the hot micro-batch, layer " << l;
      }
      if (k == 2) {
        EXPECT_EQ(load[size_t(cold)], 0) << "the cold micro-batch, layer " << l;
      }
    }
  }
}

// The loss and each micro-batch's load-balancing loss, and the objective HF's Trainer minimises.
TEST_P(MoeParity, LossAndAuxLossesMatch) {
  const MoeFixture f = load_moe_fixture(GetParam());
  const ReferenceModel m = model_of(f);
  const int64_t n = f.expected["n_targets"];
  const auto want_aux = f.expected["aux_losses"].get<std::vector<double>>();
  double loss = 0, objective = 0;
  for (size_t k = 0; k < f.micro_batches.size(); ++k) {
    ReferencePass kept;
    const double ce = m.forward(pack(f, f.micro_batches[k]), f.lora.data(), {}, nullptr, nullptr, &kept).loss_sum;
    loss += ce / double(n);
    objective += ce / double(n) + m.aux_coef() * kept.aux_loss;
    std::printf("[%s] micro-batch %zu aux %.7f vs HF %.7f\n", GetParam().c_str(), k, kept.aux_loss, want_aux[k]);
    EXPECT_LE(test::relative_error(kept.aux_loss, want_aux[k]), kTol) << "micro-batch " << k;
  }
  EXPECT_FLOAT_EQ(m.aux_coef(), float(f.expected["aux_coef"].get<double>()));
  std::printf("[%s] loss %.7f vs HF %.7f, objective %.7f vs %.7f\n", GetParam().c_str(), loss,
              f.expected["loss"].get<double>(), objective, f.expected["objective"].get<double>());
  EXPECT_LE(test::relative_error(loss, f.expected["loss"]), kTol);
  EXPECT_LE(test::relative_error(objective, f.expected["objective"]), kTol);
}

// LoRA gradients of the cross-entropy alone, of the aux loss alone (unscaled, as the fixture records
// it), and of their sum as training takes it: attention and expert adapters, in PEFT's layout.
TEST_P(MoeParity, LoraGradientsMatchIncludingExpertsAndAuxLoss) {
  const MoeFixture f = load_moe_fixture(GetParam());
  const double ce = worst_against_peft(f, batch_gradients(f, model_of(f, false)), "grad");
  const ReferenceModel with_aux = model_of(f);
  const double aux = worst_against_peft(f, batch_gradients(f, with_aux, 0), "aux_grad", 1.0 / with_aux.aux_coef());
  // Both together, against grad + coef · aux_grad summed here in fp32.
  const std::vector<float> total = batch_gradients(f, with_aux);
  const std::string dir = test::fresh_temp_dir("moe_reference_total");
  save_peft_adapter(dir, f.layout, total, "");
  const Checkpoint got = Checkpoint::open(dir + "/adapter_model.safetensors"), want = Checkpoint::open(f.dir + "/expected.safetensors");
  double worst_total = 0;
  for (const std::string& name : got.names()) {
    const std::vector<int64_t>& shape = got.get(name).shape;
    std::vector<float> sum = want.read_f32("grad." + name, shape);
    const std::vector<float> a = want.read_f32("aux_grad." + name, shape);
    for (size_t i = 0; i < sum.size(); ++i) sum[i] += with_aux.aux_coef() * a[i];
    worst_total = test::max_keeping_nan(worst_total, test::scaled_error(got.read_f32(name, shape), sum));
  }
  std::printf("[%s] LoRA gradients max scaled error: cross-entropy %.2e, aux %.2e, total %.2e\n", GetParam().c_str(),
              ce, aux, worst_total);
  EXPECT_LE(worst_total, kTol);
}

// The transformers-4 adapter (one LoRA per expert and projection) loads as PeftModel.from_pretrained
// converts it: the same logits, and gradients that are the per-expert blocks of the fused ones.
TEST_P(MoeParity, PerExpertAdapterMatches) {
  const MoeFixture f = load_moe_fixture(GetParam(), "adapter_per_expert");
  const ReferenceModel m = model_of(f, false);
  const Checkpoint exp = Checkpoint::open(f.dir + "/expected.safetensors");
  double worst = 0;
  for (size_t i = 0; i < f.docs.size(); ++i) {
    const MicroBatch mb = pack(f, {int(i)});
    std::vector<float> logits;
    m.forward(mb, f.lora.data(), {}, nullptr, &logits);
    worst = test::max_keeping_nan(
        worst, test::scaled_error(logits, exp.read_f32(cat("logits_per_expert.", i), {mb.T(), f.cfg.V})));
  }
  EXPECT_LE(worst, kTol);
  const std::vector<float> g = batch_gradients(f, m);
  const bool mixtral = f.cfg.arch == "mixtral";
  const char* names[3] = {mixtral ? "w1" : "gate_proj", mixtral ? "w3" : "up_proj", mixtral ? "w2" : "down_proj"};
  const int64_t r = f.layout.R, FE = f.cfg.expert_F, C = f.cfg.C;
  double worst_grad = 0;
  auto check = [&](const std::string& key, const std::vector<float>& got, std::vector<int64_t> shape) {
    const double err = test::scaled_error(got, exp.read_f32("grad_per_expert." + key, shape));
    EXPECT_LE(err, kTol) << key;
    worst_grad = test::max_keeping_nan(worst_grad, err);
  };
  for (int l = 0; l < f.cfg.L; ++l) {
    if (!f.cfg.is_moe_layer(l)) continue;
    for (int e = 0; e < f.cfg.num_experts; ++e) {
      const std::string key = cat("base_model.model.model.layers.", l, mixtral ? ".block_sparse_moe" : ".mlp",
                                  ".experts.", e, ".");
      const LoraSlot& gu = f.layout.expert_slot(l, e, kExpertGateUp);
      const LoraSlot& down = f.layout.expert_slot(l, e, kExpertDown);
      for (int half = 0; half < 2; ++half) {  // gate: A rows 0..r-1, B block (0, 0); up: A rows r.., B block (FE, r)
        const float* a = &g[size_t(gu.a_offset + half * r * C)];
        check(key + names[half] + ".lora_A.weight", std::vector<float>(a, a + r * C), {r, C});
        std::vector<float> b(size_t(FE * r));
        for (int64_t o = 0; o < FE; ++o)
          for (int64_t j = 0; j < r; ++j) b[size_t(o * r + j)] = g[size_t(gu.b_offset + (half * FE + o) * 2 * r + half * r + j)];
        check(key + names[half] + ".lora_B.weight", b, {FE, r});
      }
      check(key + names[2] + ".lora_A.weight", {&g[size_t(down.a_offset)], &g[size_t(down.a_offset + r * FE)]}, {r, FE});
      check(key + names[2] + ".lora_B.weight", {&g[size_t(down.b_offset)], &g[size_t(down.b_offset + C * r)]}, {C, r});
    }
  }
  std::printf("[%s] per-expert adapter: logits %.2e, expert gradients %.2e\n", GetParam().c_str(), worst, worst_grad);
}

// Five AdamW steps (global normalisation, clipping, as loom's step) follow HF's objectives, with the
// aux loss as the config turns it on and without it.
TEST_P(MoeParity, FiveAdamWStepsFollowHf) {
  const MoeFixture f = load_moe_fixture(GetParam());
  const int64_t n = f.expected["n_targets"];
  const float lr = f.expected["lr"];
  for (const bool with_aux : {true, false}) {
    SCOPED_TRACE(with_aux ? "with the aux loss" : "cross-entropy only");
    const ReferenceModel m = model_of(f, with_aux);
    std::vector<float> params = f.lora, grads(size_t(f.layout.total), 0.f);
    AdamW optimizer(f.train, f.layout.total);
    const auto want = f.expected[with_aux ? "step_objectives" : "step_losses_ce_only"].get<std::vector<double>>();
    for (size_t step = 0; step < want.size(); ++step) {
      double objective = 0;
      for (const auto& which : f.micro_batches) {
        const MicroBatch mb = pack(f, which);
        ReferencePass kept;
        objective += m.forward(mb, params.data(), {true, true, 0}, nullptr, nullptr, &kept).loss_sum / double(n);
        objective += m.aux_coef() * kept.aux_loss;
        m.backward(kept, sft_token_weights(mb, n).data(), grads.data());
      }
      optimizer.step(params.data(), grads.data(), lr);
      std::printf("[%s%s] step %zu objective %.7f vs HF %.7f\n", GetParam().c_str(), with_aux ? "" : ", CE only",
                  step + 1, objective, want[step]);
      EXPECT_LE(test::relative_error(objective, want[step]), kTol) << "step " << step + 1;
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Architectures, MoeParity, testing::Values("qwen3_moe", "mixtral"),
                         [](const auto& info) { return info.param; });

}  // namespace
}  // namespace loom
