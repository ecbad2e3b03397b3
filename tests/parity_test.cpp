// The reference training step against Hugging Face transformers + peft, for the four
// architectures. Fixtures: tools/make_hf_fixtures.py (tests/fixtures/hf/<arch>/).
// Tolerance 1e-4 relative (the bar). Both sides compute in fp32 on bf16-exact weights, so
// the expected error is fp32 summation-order noise, ~1e-6; measured errors are printed.
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <cmath>
#include <fstream>

#include "data/batch.h"
#include "ops/error.h"
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

struct ParityFixture : HfFixture {
  std::unique_ptr<ReferenceModel> model;
};

ParityFixture load_fixture(const std::string& arch) {
  ParityFixture f;
  static_cast<HfFixture&>(f) = test::load_hf_fixture(arch);
  f.model = std::make_unique<ReferenceModel>(f.cfg, load_weights(f.dir + "/model", f.cfg), f.layout);
  return f;
}

std::vector<int> all_docs(const HfFixture& f) {
  std::vector<int> v(f.docs.size());
  for (size_t i = 0; i < v.size(); ++i) v[i] = int(i);
  return v;
}

std::string peft_grad_name(int layer, LoraTarget t, char ab) {
  return cat("grad.base_model.model.model.layers.", layer, ".", lora_module_path(t), ".lora_", ab, ".weight");
}

class HfParity : public testing::TestWithParam<std::string> {};

TEST_P(HfParity, LogitsMatchPerDocument) {
  ParityFixture f = load_fixture(GetParam());
  Checkpoint exp = Checkpoint::open(f.dir + "/expected.safetensors");
  double worst = 0;
  for (size_t i = 0; i < f.docs.size(); ++i) {
    MicroBatch mb = pack(f, {int(i)});
    std::vector<float> logits;
    f.model->forward(mb, f.lora.data(), {}, nullptr, &logits);
    auto want = exp.read_f32(cat("logits.", i), {mb.T(), f.cfg.V});
    worst = test::max_keeping_nan(worst, test::scaled_error(logits, want));
  }
  std::printf("[%s] logits max scaled error %.2e\n", GetParam().c_str(), worst);
  EXPECT_LE(worst, kTol);
}

TEST_P(HfParity, PackedLossAndLoraGradientsMatch) {
  ParityFixture f = load_fixture(GetParam());
  MicroBatch mb = pack(f, all_docs(f));
  const int64_t n = f.expected["n_targets"];
  ASSERT_EQ(mb.n_targets(), n);
  std::vector<float> grads(f.layout.total, 0.f);
  CrossEntropyOut ce = f.model->forward_backward(mb, f.lora.data(), grads.data(), sft_token_weights(mb, n).data());
  const double loss = ce.loss_sum / double(n), want = f.expected["loss"];
  std::printf("[%s] loss %.7f vs HF %.7f (rel %.2e)\n", GetParam().c_str(), loss, want, std::fabs(loss - want) / want);
  EXPECT_LE(std::fabs(loss - want) / want, kTol);

  Checkpoint exp = Checkpoint::open(f.dir + "/expected.safetensors");
  double worst = 0;
  for (int l = 0; l < f.cfg.L; ++l)
    for (int t = 0; t < kNumTargets; ++t) {
      const LoraSlot& s = f.layout.slot(l, LoraTarget(t));
      auto a = exp.read_f32(peft_grad_name(l, LoraTarget(t), 'A'), {f.layout.R, s.in});
      auto b = exp.read_f32(peft_grad_name(l, LoraTarget(t), 'B'), {s.out, f.layout.R});
      const double ea = test::scaled_error(&grads[s.a_offset], a.data(), a.size());
      const double eb = test::scaled_error(&grads[s.b_offset], b.data(), b.size());
      EXPECT_LE(ea, kTol) << "layer " << l << " " << kLoraTargetNames[t] << ".lora_A";
      EXPECT_LE(eb, kTol) << "layer " << l << " " << kLoraTargetNames[t] << ".lora_B";
      worst = test::max_keeping_nan(test::max_keeping_nan(worst, ea), eb);
    }
  std::printf("[%s] LoRA gradients max scaled error %.2e\n", GetParam().c_str(), worst);
}

// A packed buffer of several documents computes, token for token, what each document computes
// alone: same per-token losses bit for bit, hence the same loss.
TEST_P(HfParity, PackedBufferEqualsDocumentsOneByOne) {
  ParityFixture f = load_fixture(GetParam());
  MicroBatch packed = pack(f, all_docs(f));
  std::vector<float> packed_loss(packed.T());
  f.model->forward(packed, f.lora.data(), {}, packed_loss.data());
  for (size_t i = 0; i < f.docs.size(); ++i) {
    MicroBatch one = pack(f, {int(i)});
    std::vector<float> loss(one.T());
    f.model->forward(one, f.lora.data(), {}, loss.data());
    for (int64_t t = 0; t < one.T(); ++t)
      EXPECT_EQ(loss[t], packed_loss[packed.cu_seqlens[i] + t]) << "document " << i << " token " << t;
  }
}

TEST_P(HfParity, FiveAdamWStepsFollowHfLosses) {
  ParityFixture f = load_fixture(GetParam());
  const auto& e = f.expected;
  const TrainSection& t = f.train;
  const float lr = e["lr"];
  const int64_t n = e["n_targets"];
  std::vector<float> params = f.lora, grads(f.layout.total, 0.f);
  AdamW optimizer(t, f.layout.total);
  auto want = e["step_losses"].get<std::vector<double>>();
  for (size_t step = 0; step < want.size(); ++step) {
    double loss = 0;
    for (const auto& which : f.micro_batches) {
      const MicroBatch mb = pack(f, which);
      loss += f.model->forward_backward(mb, params.data(), grads.data(), sft_token_weights(mb, n).data()).loss_sum /
              double(n);
    }
    optimizer.step(params.data(), grads.data(), lr);
    std::printf("[%s] step %zu loss %.7f vs HF %.7f\n", GetParam().c_str(), step + 1, loss, want[step]);
    EXPECT_LE(std::fabs(loss - want[step]) / want[step], kTol) << "step " << step + 1;
  }
}

INSTANTIATE_TEST_SUITE_P(Architectures, HfParity, testing::Values("llama", "mistral", "qwen2", "qwen3"),
                         [](const auto& info) { return info.param; });

}  // namespace
}  // namespace loom
