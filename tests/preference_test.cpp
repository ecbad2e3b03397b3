// Preference objectives (engine/preference.h) through the models and the step, CPU reference path:
// the adapter at zero gives every pair ln 2 and zero rewards; losses, TRL's metrics and LoRA
// gradients against TRL on the four fixture architectures; five AdamW steps; the backward's token
// weights are the gradient of the mean pair loss (finite differences on the LoRA weights).
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <cmath>

#include "engine/backend.h"
#include "engine/preference.h"
#include "engine/step.h"
#include "models/reference_model.h"
#include "models/safetensors.h"
#include "tests/hf_fixture.h"
#include "tests/test_util.h"

namespace loom {
namespace {

// A DPO fixture (tools/make_dpo_fixtures.py: TRL 1.16's DPOTrainer / ORPOTrainer losses in fp32 on
// the HF fixture models and adapters, the reference = the base with the adapter off).
struct PairFixture {
  test::HfFixture hf;
  nlohmann::json expected;
  Step step;  // the six pairs in one micro-batch: sequence 2k chosen, 2k + 1 rejected
  std::string dir;
};

Document document_of(const nlohmann::json& j) {
  return {j["ids"].get<std::vector<int32_t>>(), j["mask"].get<std::vector<uint8_t>>(), {}};
}

PairFixture load_pairs(const std::string& arch) {
  PairFixture f;
  f.hf = test::load_hf_fixture(arch);
  f.dir = test::fixtures_dir() + "/dpo/" + arch;
  f.expected = test::read_json(f.dir + "/expected.json");
  std::vector<Document> docs;
  for (const auto& p : f.expected["pairs"]) {
    docs.push_back(document_of(p["chosen"]));
    docs.push_back(document_of(p["rejected"]));
  }
  std::vector<const Document*> ptrs;
  for (const Document& d : docs) ptrs.push_back(&d);
  f.step.micro.push_back(pack_documents(ptrs));
  f.step.global_docs = int64_t(docs.size() / 2);
  f.step.global_targets = f.step.micro.back().n_targets();
  return f;
}

PreferenceOptions options_of(const nlohmann::json& c) {
  const std::string type = c["loss_type"];
  PreferenceOptions o;
  o.loss = type == "sigmoid" ? PreferenceLoss::kSigmoid
           : type == "ipo"   ? PreferenceLoss::kIpo
           : type == "robust" ? PreferenceLoss::kRobust
           : type == "hinge" ? PreferenceLoss::kHinge
                             : PreferenceLoss::kOrpo;
  if (c.contains("beta") && c["beta"].is_number()) o.beta = c["beta"];
  if (c.contains("label_smoothing") && c["label_smoothing"].is_number()) o.label_smoothing = c["label_smoothing"];
  if (c.contains("orpo_lambda") && c["orpo_lambda"].is_number()) o.orpo_lambda = c["orpo_lambda"];
  return o;
}

std::vector<float> zero_b(const test::HfFixture& f) {
  std::vector<float> p = f.lora;
  for (int l = 0; l < f.cfg.L; ++l)
    for (int t = 0; t < kNumTargets; ++t) {
      const LoraSlot& slot = f.layout.slot(l, LoraTarget(t));
      if (slot.enabled) std::fill_n(p.begin() + slot.b_offset, size_t(slot.out) * f.layout.R, 0.f);
    }
  return p;
}

// With B = 0 the policy is the reference bit for bit: every sigmoid pair loss is ln 2 and every
// reward 0, exactly (the check).
TEST(Preference, ZeroAdapterGivesLn2AndZeroRewards) {
  for (const char* arch : {"llama", "qwen3"}) {
    PairFixture f = load_pairs(arch);
    auto backend =
        make_cpu_backend(f.hf.cfg, load_weights(f.hf.dir + "/model", f.hf.cfg), f.hf.layout, zero_b(f.hf), f.hf.train);
    PreferenceObjective dpo({PreferenceLoss::kSigmoid, 0.1, 0.0, 0.1});
    const StepOutcome r = run_step(*backend, dpo, f.step, 0.f, [](size_t) { return uint64_t(0); });
    EXPECT_EQ(r.loss, std::log(2.0)) << arch;
    for (const auto& [name, value] : r.metrics) {
      if (name.rfind("rewards/", 0) == 0 && name != "rewards/accuracies") {
        EXPECT_EQ(value, 0.0) << arch << " " << name;
      }
    }
  }
}

// Every case of the fixture through the objective and the reference model: the loss, TRL's metrics
// and the LoRA gradients within the 1e-4 (relative for the loss and metrics, scaled per
// tensor for the gradients; measured figures printed). ORPO: TRL 1.16 puts the chosen prompt's
// tokens into its NLL, loom the completion's alone (engine/preference.h), so its loss, nll_loss and
// gradients differ by design; its odds-ratio metrics and rewards are compared.
TEST(Preference, LossesMetricsAndGradientsMatchTrl) {
  for (const char* arch : {"llama", "mistral", "qwen2", "qwen3"}) {
    PairFixture f = load_pairs(arch);
    ReferenceModel m(f.hf.cfg, load_weights(f.hf.dir + "/model", f.hf.cfg), f.hf.layout);
    const MicroBatch& mb = f.step.micro[0];
    std::vector<float> policy(mb.T()), reference(mb.T());
    ReferencePass kept;
    m.forward(mb, f.hf.lora.data(), {}, policy.data(), nullptr, &kept);
    m.forward(mb, f.hf.lora.data(), {false, false, 0}, reference.data());
    Checkpoint grads = Checkpoint::open(f.dir + "/expected.safetensors");
    double worst_loss = 0, worst_grad = 0;
    for (const auto& c : f.expected["cases"]) {
      const std::string name = c["name"];
      SCOPED_TRACE(std::string(arch) + " " + name);
      PreferenceObjective objective(options_of(c));
      const bool orpo = c["loss_type"] == "orpo";
      objective.begin_step(f.step);
      const std::vector<float> w = objective.token_weights(mb, f.step, policy, reference);
      const ObjectiveFigures got = objective.end_step(f.step, 0);
      if (!orpo) {
        const double rel = test::relative_error(got.loss, double(c["loss"]));
        EXPECT_LE(rel, 1e-4) << "loss " << got.loss << " vs TRL " << double(c["loss"]);
        worst_loss = test::max_keeping_nan(worst_loss, rel);
      }
      for (const auto& [metric, value] : got.metrics) {
        if (orpo && metric == "nll_loss") continue;
        ASSERT_TRUE(c["metrics"].contains(metric)) << metric;
        const double want = c["metrics"][metric];
        // Rewards near 0 compare absolutely: 1e-4 of the metric's scale (|logps| ~ 30 in these fixtures).
        EXPECT_LE(std::fabs(value - want), 1e-4 * std::max(1.0, std::fabs(want))) << metric << " " << value
                                                                                  << " vs TRL " << want;
      }
      if (orpo || !c.value("grads", false)) continue;
      std::vector<float> g(f.hf.layout.total, 0.f);
      m.backward(kept, w.data(), g.data());
      for (int l = 0; l < f.hf.cfg.L; ++l)
        for (int t = 0; t < kNumTargets; ++t) {
          const LoraSlot& slot = f.hf.layout.slot(l, LoraTarget(t));
          if (!slot.enabled) continue;
          for (char ab : {'A', 'B'}) {
            const std::string key = cat("grad.", name, ".base_model.model.model.layers.", l, ".",
                                        lora_module_path(LoraTarget(t)), ".lora_", ab, ".weight");
            const std::vector<float> want =
                grads.read_f32(key, ab == 'A' ? std::vector<int64_t>{f.hf.layout.R, slot.in}
                                              : std::vector<int64_t>{slot.out, f.hf.layout.R});
            const double e =
                test::scaled_error(&g[ab == 'A' ? slot.a_offset : slot.b_offset], want.data(), want.size());
            EXPECT_LE(e, 1e-4) << key;
            worst_grad = test::max_keeping_nan(worst_grad, e);
          }
        }
    }
    std::printf("[%s] vs TRL %s: worst loss rel error %.2e, worst LoRA gradient scaled error %.2e\n", arch,
                f.expected["trl"].get<std::string>().c_str(), worst_loss, worst_grad);
  }
}

// Five AdamW steps of sigmoid DPO through the step function and the CPU backend: TRL's losses within
// 1e-4 of the first step's loss. Both sides carry fp32 rounding in the summed log-probs (~1e-6 of
// |logp| ≈ 30), and AdamW's first steps move each weight by about lr·sign(g), so gradient elements
// near zero can step differently: the weights drift apart by ~1e-5, and by step 5, when the loss has
// fallen 7–20×, that is ~1e-4 of the loss's own (small) value (measured: qwen2 step 5, 6.1e-6
// absolute, 2.0e-4 of 0.031) but stays ~1e-5 of the problem's scale, the loss the run started from.
TEST(Preference, FiveAdamWStepsFollowTrl) {
  for (const char* arch : {"llama", "mistral", "qwen2", "qwen3"}) {
    PairFixture f = load_pairs(arch);
    const auto& s = f.expected["steps"];
    TrainSection t = f.hf.train;
    auto backend = make_cpu_backend(f.hf.cfg, load_weights(f.hf.dir + "/model", f.hf.cfg), f.hf.layout, f.hf.lora, t);
    PreferenceObjective dpo(options_of(s));
    const std::vector<double> want = s["losses"];
    double worst = 0;
    for (size_t k = 0; k < want.size(); ++k) {
      const double loss =
          run_step(*backend, dpo, f.step, float(f.expected["lr"]), [](size_t) { return uint64_t(0); }).loss;
      const double err = std::fabs(loss - want[k]) / want[0];
      worst = test::max_keeping_nan(worst, err);
      EXPECT_LE(err, 1e-4) << arch << " step " << k + 1 << ": " << loss << " vs TRL " << want[k];
    }
    std::printf("[%s] 5 DPO steps: worst |loss - TRL| / first loss %.2e\n", arch, worst);
  }
}

// The mean pair loss of the policy with LoRA weights p (adapters on) against the reference (off).
double mean_pair_loss(const ReferenceModel& m, const MicroBatch& mb, const std::vector<float>& p,
                      PreferenceObjective& objective, const Step& step) {
  std::vector<float> policy(mb.T()), reference(mb.T());
  m.forward(mb, p.data(), {}, policy.data());
  m.forward(mb, p.data(), {false, false, 0}, reference.data());
  objective.begin_step(step);
  objective.token_weights(mb, step, policy, reference);
  return objective.end_step(step, 0).loss;
}

// The backward with the objective's token weights is the gradient of the mean pair loss, for every
// loss type: central differences (h = 1e-2 on fp32 weights of magnitude ~0.1–1; the loss is
// computed in fp32 per token and summed in double, so the difference quotient carries ~1e-5 of
// rounding) within 2e-3 of the largest gradient entry checked, on the 24 entries of largest
// gradient.
TEST(Preference, TokenWeightsAreTheGradientOfTheMeanPairLoss) {
  PairFixture pf = load_pairs("qwen2");
  const test::HfFixture& f = pf.hf;
  ReferenceModel m(f.cfg, load_weights(f.dir + "/model", f.cfg), f.layout);
  const Step& step = pf.step;
  const MicroBatch& mb = step.micro[0];
  for (PreferenceLoss loss : {PreferenceLoss::kSigmoid, PreferenceLoss::kIpo, PreferenceLoss::kRobust,
                              PreferenceLoss::kHinge, PreferenceLoss::kOrpo}) {
    SCOPED_TRACE(int(loss));
    PreferenceObjective objective({loss, 0.5, loss == PreferenceLoss::kRobust ? 0.1 : 0.0, 0.3});
    std::vector<float> policy(mb.T()), reference(mb.T());
    ReferencePass kept;
    m.forward(mb, f.lora.data(), {}, policy.data(), nullptr, &kept);
    m.forward(mb, f.lora.data(), {false, false, 0}, reference.data());
    objective.begin_step(step);
    const std::vector<float> w = objective.token_weights(mb, step, policy, reference);
    std::vector<float> grad(f.layout.total, 0.f);
    m.backward(kept, w.data(), grad.data());
    std::vector<size_t> order(grad.size());
    for (size_t i = 0; i < order.size(); ++i) order[i] = i;
    std::partial_sort(order.begin(), order.begin() + 24, order.end(),
                      [&](size_t a, size_t b) { return std::fabs(grad[a]) > std::fabs(grad[b]); });
    const double largest = std::fabs(grad[order[0]]);
    ASSERT_GT(largest, 0);
    for (int k = 0; k < 24; ++k) {
      const size_t i = order[k];
      std::vector<float> plus = f.lora, minus = f.lora;
      const float h = 1e-3f;
      plus[i] += h;
      minus[i] -= h;
      const double fd = (mean_pair_loss(m, mb, plus, objective, step) - mean_pair_loss(m, mb, minus, objective, step)) /
                        (double(plus[i]) - double(minus[i]));
      EXPECT_NEAR(grad[i], fd, 2e-3 * largest) << "LoRA parameter " << i;
    }
  }
}

}  // namespace
}  // namespace loom
