// The model without an objective (models/reference_model.h, engine/objective.h): a forward gives
// per-token losses, the backward takes per-token weights from outside; adapters switch off per pass;
// LoRA dropout acts only in training passes. On the HF fixtures, fp32 reference path.
#include <gtest/gtest.h>

#include <cmath>

#include "engine/backend.h"
#include "engine/objective.h"
#include "engine/step.h"
#include "models/reference_model.h"
#include "tests/hf_fixture.h"
#include "tests/test_util.h"

namespace loom {
namespace {

MicroBatch all_docs(const test::HfFixture& f) {
  std::vector<int> which(f.docs.size());
  for (size_t i = 0; i < which.size(); ++i) which[i] = int(i);
  return test::pack(f, which);
}

LoraLayout without_adapters(const ModelConfig& mc) {
  LoraOptions none;
  none.targets.clear();
  return make_lora_layout(mc, none);
}

// Forward (kept) then backward is exactly the fused call: the same logits are computed again.
TEST(Objective, ForwardThenBackwardIsTheFusedCallBitForBit) {
  test::HfFixture f = test::load_hf_fixture("qwen3");
  LoraLayout layout = f.layout;
  layout.dropout = 0.1f;
  ReferenceModel m(f.cfg, load_weights(f.dir + "/model", f.cfg), layout);
  const MicroBatch mb = all_docs(f);
  const std::vector<float> w = sft_token_weights(mb, mb.n_targets());
  const PassOptions pass{true, true, 7};
  std::vector<float> fused(layout.total, 0.f), split(layout.total, 0.f);
  const double loss = m.forward_backward(mb, f.lora.data(), fused.data(), w.data(), pass).loss_sum;
  ReferencePass kept;
  EXPECT_EQ(m.forward(mb, f.lora.data(), pass, nullptr, nullptr, &kept).loss_sum, loss);
  m.backward(kept, w.data(), split.data());
  EXPECT_EQ(split, fused);
}

// The gradient is that of Σ w_t · loss_t: doubling every weight doubles every gradient exactly (a
// power of two scales without rounding), and the weights of two halves of the tokens give gradients
// that add up to the whole (to fp32 rounding of the sums: 1e-5 of the gradient's largest entry).
TEST(Objective, BackwardFollowsThePerTokenWeights) {
  test::HfFixture f = test::load_hf_fixture("llama");
  ReferenceModel m(f.cfg, load_weights(f.dir + "/model", f.cfg), f.layout);
  const MicroBatch mb = all_docs(f);
  const std::vector<float> w = sft_token_weights(mb, mb.n_targets());
  std::vector<float> twice = w, first = w, second = w;
  for (size_t t = 0; t < w.size(); ++t) {
    twice[t] = 2 * w[t];
    (t % 2 ? first : second)[t] = 0.f;
  }
  auto grads = [&](const std::vector<float>& weights) {
    std::vector<float> g(f.layout.total, 0.f);
    m.forward_backward(mb, f.lora.data(), g.data(), weights.data());
    return g;
  };
  const std::vector<float> g = grads(w), g2 = grads(twice), ga = grads(first), gb = grads(second);
  double largest = 0;
  for (size_t i = 0; i < g.size(); ++i) {
    EXPECT_EQ(g2[i], 2 * g[i]) << "LoRA parameter " << i;
    largest = std::max(largest, double(std::fabs(g[i])));
  }
  ASSERT_GT(largest, 0);
  for (size_t i = 0; i < g.size(); ++i)
    ASSERT_LE(std::fabs(double(ga[i]) + gb[i] - g[i]), 1e-5 * largest) << "LoRA parameter " << i;
}

// Adapters off: the base model, bit for bit (the model without LoRA), and not the adapted model.
TEST(Objective, AdaptersOffIsTheBaseModel) {
  test::HfFixture f = test::load_hf_fixture("mistral");
  ModelWeights w = load_weights(f.dir + "/model", f.cfg);
  const MicroBatch mb = all_docs(f);
  std::vector<float> off(mb.T()), base(mb.T()), on(mb.T());
  ReferenceModel adapted(f.cfg, w, f.layout);
  adapted.forward(mb, f.lora.data(), {false, false, 0}, off.data());
  adapted.forward(mb, f.lora.data(), {}, on.data());
  ReferenceModel(f.cfg, w, without_adapters(f.cfg)).forward(mb, nullptr, {}, base.data());
  EXPECT_EQ(off, base);
  EXPECT_NE(on, base) << "the fixture's adapter must change the losses for this test to mean anything";
}

// LoRA dropout only in training passes: evaluation and scoring see the adapter as PEFT in eval mode.
TEST(Objective, DropoutOnlyInTrainingPasses) {
  test::HfFixture f = test::load_hf_fixture("qwen2");
  ModelWeights w = load_weights(f.dir + "/model", f.cfg);
  LoraLayout with_dropout = f.layout;
  with_dropout.dropout = 0.3f;
  const MicroBatch mb = all_docs(f);
  std::vector<float> eval(mb.T()), plain(mb.T()), train(mb.T());
  ReferenceModel(f.cfg, w, with_dropout).forward(mb, f.lora.data(), {true, false, 5}, eval.data());
  ReferenceModel(f.cfg, w, f.layout).forward(mb, f.lora.data(), {}, plain.data());
  ReferenceModel(f.cfg, w, with_dropout).forward(mb, f.lora.data(), {true, true, 5}, train.data());
  EXPECT_EQ(eval, plain);
  EXPECT_NE(train, plain);
}

// The step function through the CPU backend: an objective that asks for the forward's losses (here
// SFT again, routed through forward, weights, backward) trains the same bits as the fused path.
class ForwardFirstSft : public SftObjective {
 public:
  bool needs_forward_losses() const override { return true; }
};

TEST(Objective, StepThroughForwardAndBackwardEqualsTheFusedStep) {
  test::HfFixture f = test::load_hf_fixture("llama");
  std::vector<Step> steps(1);
  for (const auto& which : f.micro_batches) {
    steps[0].micro.push_back(test::pack(f, which));
    steps[0].global_targets += steps[0].micro.back().n_targets();
  }
  auto run = [&](Objective& objective) {
    auto backend = make_cpu_backend(f.cfg, load_weights(f.dir + "/model", f.cfg), f.layout, f.lora, f.train);
    double loss = 0;
    for (int s = 0; s < 3; ++s) loss = run_step(*backend, objective, steps[0], 1e-2f, [](size_t i) { return i; }).loss;
    return std::make_pair(loss, backend->lora_params());
  };
  SftObjective sft;
  ForwardFirstSft forward_first;
  const auto fused = run(sft), split = run(forward_first);
  EXPECT_EQ(fused.first, split.first);
  EXPECT_EQ(fused.second, split.second);
}

}  // namespace
}  // namespace loom
