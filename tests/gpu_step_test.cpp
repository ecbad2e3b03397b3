// The GPU training step against the fp32 reference path, on the HF parity fixtures of the four
// architectures, with NF4 and bf16 base weights: gradients of the first step, the loss of each of
// 20 AdamW steps, and the final LoRA weights.
// Tolerances follow the flash-attention rule: the GPU may be at most twice as far from fp32 as a
// plain bf16 implementation is. tools/make_hf_fixtures.py measures that yardstick per fixture
// ("bf16_baseline" in expected.json: HF computing in bf16 with fp32 master LoRA weights, against
// HF in fp32, same data, same 20 steps at lr 1e-3). These tiny random models are harsher on bf16
// than real ones (a few large logits dominate a max-error metric), which is why the yardstick is
// measured rather than guessed. Measured values are printed.
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <cmath>
#include <fstream>

#include "data/batch.h"
#include "ops/error.h"
#include "engine/optimizer.h"
#include "models/cuda_model.h"
#include "models/lora.h"
#include "models/model_config.h"
#include "models/reference_model.h"
#include "models/weights.h"
#include "tests/hf_fixture.h"
#include "tests/test_util.h"

namespace loom {
namespace {

constexpr double kRule = 2.0;  // at most twice the error of plain bf16

struct StepFixture : test::HfFixture {
  std::vector<MicroBatch> micro;
  int64_t n_targets = 0;
  float lr = 0;
  int steps = 0;
  // Errors of HF in bf16 vs fp32 on this fixture (see the header comment).
  double base_loss = 0, base_grads = 0, base_step_loss = 0, base_weights = 0;
};

StepFixture load_setup(const std::string& arch) {
  StepFixture s;
  static_cast<test::HfFixture&>(s) = test::load_hf_fixture(arch);
  for (const auto& which : s.micro_batches) {
    s.micro.push_back(test::pack(s, which));
    s.n_targets += s.micro.back().n_targets();
  }
  const auto& b = s.expected["bf16_baseline"];
  s.lr = b["lr"];
  s.steps = b["steps"];
  s.base_loss = b["loss_rel"];
  s.base_grads = b["grad_scaled"];
  s.base_step_loss = b["step_loss_rel"];
  s.base_weights = b["final_weights_scaled"];
  return s;
}

// LoRA dropout p on both paths (0: off, as in the fixtures).
LoraLayout with_dropout(const StepFixture& s, float p) {
  LoraLayout layout = s.layout;
  layout.dropout = p;
  return layout;
}

// The dropout masks of a step's micro-batch: any pure function of (step, micro-batch) that both paths share.
uint64_t dropout_seed(int step, size_t micro) { return uint64_t(step) * 7919 + micro; }

std::unique_ptr<CudaModel> make_gpu(const StepFixture& s, const std::string& quant, const std::string& recompute,
                                    float dropout = 0) {
  CudaModelOptions opt;
  opt.quant = quant;
  opt.double_quant = true;
  opt.recompute = recompute;
  opt.token_budget = 64;
  opt.train = s.train;
  opt.print_plan = false;
  return std::make_unique<CudaModel>(s.cfg, WeightSource::checkpoint(s.dir + "/model", s.cfg), with_dropout(s, dropout),
                                     s.lora, opt);
}

ReferenceModel make_cpu(const StepFixture& s, const std::string& quant, float dropout = 0) {
  ModelWeights w = load_weights(s.dir + "/model", s.cfg);
  if (quant == "nf4") apply_nf4_roundtrip(w, 64, true);
  return ReferenceModel(s.cfg, std::move(w), with_dropout(s, dropout));
}

// The fixture's 20 AdamW steps on both paths: step-1 gradients, every step's loss and the final
// LoRA weights within kRule times HF's own bf16 error.
void expect_gpu_follows_reference(const std::string& arch, const std::string& quant, float dropout) {
  StepFixture s = load_setup(arch);
  ReferenceModel cpu = make_cpu(s, quant, dropout);
  auto gpu = make_gpu(s, quant, "selective", dropout);
  const float scale = 1.f / float(s.n_targets);
  std::vector<float> params = s.lora, grads(s.layout.total, 0.f);
  OptimizerState st;
  double worst_loss = 0;
  for (int step = 1; step <= s.steps; ++step) {
    double cpu_loss = 0;
    for (size_t i = 0; i < s.micro.size(); ++i) {
      const MicroBatch& mb = s.micro[i];
      cpu_loss += cpu.run(mb, params.data(), grads.data(), scale, nullptr, nullptr, dropout_seed(step, i)).loss_sum * scale;
      gpu->forward_backward(mb, scale, dropout_seed(step, i), i + 1 == s.micro.size());
    }
    if (step == 1) {
      const double eg = test::scaled_error(gpu->lora_grads(), grads);
      std::printf("[%s/%s, dropout %.2f] step-1 LoRA gradients: max scaled error %.3f (plain bf16: %.3f)\n",
                  arch.c_str(), quant.c_str(), dropout, eg, s.base_grads);
      EXPECT_LE(eg, kRule * s.base_grads);
    }
    optimizer_step(params, grads, st, s.train, s.lr);
    const double gpu_loss = gpu->end_step(s.lr).loss_sum * scale;
    worst_loss = std::max(worst_loss, std::fabs(gpu_loss - cpu_loss) / cpu_loss);
  }
  const double ew = test::scaled_error(gpu->lora_params(), params);
  std::printf("[%s/%s, dropout %.2f] %d steps: worst step-loss rel error %.4f (plain bf16: %.4f), final LoRA "
              "weights %.4f (plain bf16: %.4f)\n",
              arch.c_str(), quant.c_str(), dropout, s.steps, worst_loss, s.base_step_loss, ew, s.base_weights);
  EXPECT_LE(worst_loss, kRule * s.base_step_loss);
  EXPECT_LE(ew, kRule * s.base_weights);
}

using Case = std::tuple<std::string, std::string>;  // arch, quant
class GpuStep : public testing::TestWithParam<Case> {};

TEST_P(GpuStep, TwentyStepsFollowTheReference) {
  REQUIRE_GPU();
  const auto& [arch, quant] = GetParam();
  expect_gpu_follows_reference(arch, quant, 0.f);
}

// Both paths draw the same masks (ops/dropout.h), so with dropout the GPU stays as close to the
// reference as without. The yardstick is still HF's bf16 error without dropout (HF's masks come
// from torch's generator and cannot be matched).
TEST(GpuStepDropout, TwentyStepsFollowTheReference) {
  REQUIRE_GPU();
  for (const char* arch : {"llama", "qwen3"}) expect_gpu_follows_reference(arch, "nf4", 0.1f);
}

INSTANTIATE_TEST_SUITE_P(ArchAndQuant, GpuStep,
                         testing::Combine(testing::Values("llama", "mistral", "qwen2", "qwen3"),
                                          testing::Values("nf4", "bf16")),
                         [](const auto& info) { return std::get<0>(info.param) + "_" + std::get<1>(info.param); });

// The recompute policies change what is stored, not what is computed: identical losses and grads.
TEST(GpuStepRecompute, PoliciesGiveIdenticalResults) {
  REQUIRE_GPU();
  StepFixture s = load_setup("qwen3");
  const float scale = 1.f / float(s.n_targets);
  for (float dropout : {0.f, 0.1f}) {  // recomputing a projection regenerates its dropout mask
    std::vector<std::vector<float>> grads;
    std::vector<double> losses;
    for (const char* policy : {"none", "selective", "full"}) {
      auto gpu = make_gpu(s, "nf4", policy, dropout);
      for (size_t i = 0; i < s.micro.size(); ++i)
        gpu->forward_backward(s.micro[i], scale, dropout_seed(1, i), i + 1 == s.micro.size());
      grads.push_back(gpu->lora_grads());
      losses.push_back(gpu->end_step(s.lr).loss_sum);
    }
    SCOPED_TRACE(cat("dropout ", dropout));
    EXPECT_EQ(losses[0], losses[1]);
    EXPECT_EQ(losses[0], losses[2]);
    EXPECT_EQ(grads[0], grads[1]);
    EXPECT_EQ(grads[0], grads[2]);
  }
}

// The forward-only path (scoring): the mean loss as the reference's, within the rule.
TEST(GpuStepScore, ForwardLossMatchesTheReference) {
  REQUIRE_GPU();
  StepFixture s = load_setup("llama");
  ReferenceModel cpu = make_cpu(s, "bf16");
  auto gpu = make_gpu(s, "bf16", "none");
  double want = 0, got = 0;
  for (const MicroBatch& mb : s.micro) {
    std::vector<float> ref(mb.T());
    cpu.run(mb, s.lora.data(), nullptr, 1.f, ref.data());
    for (float x : ref) want += x;
    for (float x : gpu->token_losses(mb)) got += x;
  }
  const double rel = std::fabs(got - want) / want;
  std::printf("[llama/bf16] forward loss rel error %.5f (plain bf16: %.5f)\n", rel, s.base_loss);
  EXPECT_LE(rel, kRule * s.base_loss);
}

}  // namespace
}  // namespace loom
