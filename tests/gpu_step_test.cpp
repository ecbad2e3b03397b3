// The GPU training step against the fp32 reference path, on the HF parity fixtures of the four
// architectures, with NF4 and bf16 base weights: gradients of the first step, the loss of each of
// 20 AdamW steps, the final LoRA weights, and the per-token losses of the forward-only (scoring) path.
// Tolerances follow the flash-attention rule: the GPU may be at most kRule = 2 times as far from fp32
// as a plain bf16 implementation is. The yardstick ("bf16_baseline" in expected.json) is measured
// per fixture by tools/make_hf_fixtures.py --yardstick-only (torch 2.15.0 on a CPU, transformers
// 5.23.0, peft 0.21.2; the fixture records the versions, printed below): HF computing in loom's GPU
// precision (bf16 storage, fp32 accumulation, fp32 logits, loss, LoRA gradients and master weights)
// against HF in fp32, on the same data (the worse of two accumulation orders, fp32 and fp64 sums:
// the order decides which outputs near a bf16 tie round up, and over 20 steps that alone moves the
// step losses by up to 2x), and measured exactly as here:
//   token_loss_abs        max over tokens of |loss_t - loss_t(fp32)|, starting weights  (scoring)
//   grad_scaled           max over LoRA tensors of the tensor's scaled error, step-1 gradients
//   step_loss_rel         max over the 20 steps of |loss - loss(fp32)| / loss(fp32)
//   final_weights_scaled  max over LoRA tensors of the tensor's scaled error, after 20 steps
// Each LoRA tensor is compared against its own scale (tests/lora_compare.h): one max over the flat
// vector would let a wrong tensor hide behind the largest one. These tiny random models are harsher
// on bf16 than real ones, which is why the yardstick is measured rather than guessed. The NF4 cases
// have their own yardstick ("bf16_baseline_nf4"), measured the same way on the NF4 round trip of the
// base projections (build/nf4_roundtrip): both paths quantize the same bf16 weights, but the fixture's
// weights are bf16 values and their NF4 dequantization is not, so in nf4 mode the GPU's bf16
// dequantized weights carry one rounding the reference's fp32 ones lack, and the bf16 mode has no
// such rounding at all. Measured values are printed.
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <cmath>
#include <fstream>

#include "data/batch.h"
#include "ops/error.h"
#include "engine/backend.h"
#include "engine/objective.h"
#include "engine/optimizer.h"
#include "engine/preference.h"
#include "engine/step.h"
#include "models/cuda_model.h"
#include "models/lora.h"
#include "models/model_config.h"
#include "models/reference_model.h"
#include "models/weights.h"
#include "tests/gpu_scoring.h"
#include "tests/hf_fixture.h"
#include "tests/lora_compare.h"
#include "tests/test_util.h"

namespace loom {
namespace {

constexpr double kRule = 2.0;  // at most twice the error of bf16 in loom's precision (header comment)

// The fixture and its yardstick (see the header comment).
struct StepFixture : test::HfFixture, test::Yardstick {
  std::vector<MicroBatch> micro;
  int64_t n_targets = 0;
};

// quant: "bf16" or "nf4", the yardstick measured for that mode.
StepFixture load_setup(const std::string& arch, const std::string& quant) {
  StepFixture s;
  static_cast<test::HfFixture&>(s) = test::load_hf_fixture(arch);
  for (const auto& which : s.micro_batches) {
    s.micro.push_back(test::pack(s, which));
    s.n_targets += s.micro.back().n_targets();
  }
  test::read_yardstick(s.expected, quant, s);
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

Quant quant_of(const std::string& quant) { return quant == "nf4" ? Quant::kNf4 : Quant::kBf16; }

// The training backend the trainer builds (engine/cuda_backend.cpp), on the fixture.
std::unique_ptr<TrainBackend> make_gpu(const StepFixture& s, const std::string& quant, Recompute recompute,
                                       float dropout = 0, int token_budget = 64, bool step_graphs = false) {
  TrainConfig tc;
  tc.model.quant = quant_of(quant);
  tc.model.double_quant = true;
  tc.train = s.train;
  tc.train.recompute = recompute;
  tc.train.token_budget = token_budget;
  return make_cuda_backend(s.cfg, WeightSource::checkpoint(s.dir + "/model", s.cfg), with_dropout(s, dropout), s.lora,
                           tc, {}, CudaTuning{-1, step_graphs});
}

ReferenceModel make_cpu(const StepFixture& s, const std::string& quant, float dropout = 0) {
  ModelWeights w = load_weights(s.dir + "/model", s.cfg);
  if (quant == "nf4") apply_nf4_roundtrip(w, 64, true);
  return ReferenceModel(s.cfg, std::move(w), with_dropout(s, dropout));
}

// The fixture's 20 AdamW steps on both paths: step-1 gradients, every step's loss and the final
// LoRA weights within kRule times the yardstick, each LoRA tensor on its own.
// With step_graphs, every micro-batch runs padded to the token budget (64 tokens) as a replayed graph.
void expect_gpu_follows_reference(const std::string& arch, const std::string& quant, float dropout,
                                  bool step_graphs = false) {
  StepFixture s = load_setup(arch, quant);
  ReferenceModel cpu = make_cpu(s, quant, dropout);
  auto gpu = make_gpu(s, quant, Recompute::kSelective, dropout, 64, step_graphs);
  const std::string label = cat(arch, "/", quant, ", dropout ", dropout, step_graphs ? ", step graphs" : "");
  const float scale = 1.f / float(s.n_targets);
  std::vector<float> params = s.lora, grads(s.layout.total, 0.f);
  AdamW cpu_optimizer(s.train, s.layout.total);
  double worst_loss = 0;
  for (int step = 1; step <= s.steps; ++step) {
    double cpu_loss = 0;
    for (size_t i = 0; i < s.micro.size(); ++i) {
      const MicroBatch& mb = s.micro[i];
      const std::vector<float> w = sft_token_weights(mb, s.n_targets);
      cpu_loss += cpu.forward_backward(mb, params.data(), grads.data(), w.data(), {true, true, dropout_seed(step, i)})
                      .loss_sum *
                  scale;
      gpu->forward_backward(mb, w, dropout_seed(step, i), i + 1 == s.micro.size());
    }
    if (step == 1) {
      const test::TensorError eg = test::expect_lora_tensors_close(s.layout, gpu->lora_grads(), grads,
                                                                   kRule * s.base_grads, label + ", step-1 LoRA gradients");
      std::printf("[%s] step-1 LoRA gradients: worst tensor %s, scaled error %.4f (yardstick %.4f, tolerance %.4f)\n",
                  label.c_str(), eg.name.c_str(), eg.error, s.base_grads, kRule * s.base_grads);
    }
    cpu_optimizer.step(params.data(), grads.data(), s.lr);
    const double gpu_loss = gpu->end_step(s.lr).loss_sum * scale;
    const double rel = test::relative_error(gpu_loss, cpu_loss);
    EXPECT_LE(rel, kRule * s.base_step_loss) << label << ", step " << step << ": GPU loss " << gpu_loss
                                             << ", reference " << cpu_loss;
    worst_loss = test::max_keeping_nan(worst_loss, rel);
  }
  const test::TensorError ew = test::expect_lora_tensors_close(s.layout, gpu->lora_params(), params,
                                                               kRule * s.base_weights, label + ", final LoRA weights");
  std::printf("[%s] %d steps: worst step-loss rel error %.5f (yardstick %.5f, tolerance %.5f); final LoRA weights: "
              "worst tensor %s, scaled error %.4f (yardstick %.4f, tolerance %.4f); yardstick by %s\n",
              label.c_str(), s.steps, worst_loss, s.base_step_loss, kRule * s.base_step_loss, ew.name.c_str(), ew.error,
              s.base_weights, kRule * s.base_weights, s.measured_by.c_str());
}

using Case = std::tuple<std::string, std::string>;  // arch, quant
class GpuStep : public testing::TestWithParam<Case> {};

TEST_P(GpuStep, TwentyStepsFollowTheReference) {
  REQUIRE_GPU();
  const auto& [arch, quant] = GetParam();
  expect_gpu_follows_reference(arch, quant, 0.f);
}

// The same with the step graphs (CudaModelOptions::step_graphs): the padding adds ignored tokens only,
// so the run is the fixture's within the same rule (the bucket's GEMMs may sum in another order).
TEST_P(GpuStep, TwentyGraphedStepsFollowTheReference) {
  REQUIRE_GPU();
  const auto& [arch, quant] = GetParam();
  expect_gpu_follows_reference(arch, quant, 0.f, true);
}

// Both paths draw the same masks (ops/dropout.h), so with dropout the GPU stays as close to the
// reference as without. The yardstick is still the one measured without dropout (HF's masks come
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
  StepFixture s = load_setup("qwen3", "nf4");
  for (float dropout : {0.f, 0.1f}) {  // recomputing a projection regenerates its dropout mask
    std::vector<std::vector<float>> grads;
    std::vector<double> losses;
    for (Recompute policy : {Recompute::kNone, Recompute::kSelective, Recompute::kFull}) {
      auto gpu = make_gpu(s, "nf4", policy, dropout);
      for (size_t i = 0; i < s.micro.size(); ++i)
        gpu->forward_backward(s.micro[i], sft_token_weights(s.micro[i], s.n_targets), dropout_seed(1, i),
                              i + 1 == s.micro.size());
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

// The forward-only model (scoring): every token's loss as the reference's, within kRule times the
// yardstick's largest per-token error (a sum over tokens would let errors of opposite sign cancel).
TEST(GpuStepScore, TokenLossesMatchTheReferencePerToken) {
  REQUIRE_GPU();
  for (const char* arch : {"llama", "mistral", "qwen2", "qwen3"})
    for (const char* quant : {"bf16", "nf4"}) {
      StepFixture s = load_setup(arch, quant);
      ReferenceModel cpu = make_cpu(s, quant);
      auto gpu = test::make_fixture_scorer(s, quant_of(quant));
      const double tol = kRule * s.base_token_loss;
      const double worst = test::expect_token_losses_close(cpu, *gpu, s.micro, s.lora, tol, cat(arch, "/", quant));
      std::printf("[%s/%s] per-token losses: max abs error %.5f (yardstick %.5f, tolerance %.5f)\n", arch, quant,
                  worst, s.base_token_loss, tol);
    }
}

// An objective whose weights depend on the forward runs forward, then backward (the LM head's
// logits computed again): the same gradients and loss, bit for bit, as the fused pass SFT uses.
TEST(GpuStepObjective, ForwardThenBackwardIsTheFusedPassBitForBit) {
  REQUIRE_GPU();
  StepFixture s = load_setup("qwen3", "nf4");
  auto fused = make_gpu(s, "nf4", Recompute::kSelective, 0.1f);
  auto split = make_gpu(s, "nf4", Recompute::kSelective, 0.1f);
  for (size_t i = 0; i < s.micro.size(); ++i) {
    const MicroBatch& mb = s.micro[i];
    const std::vector<float> w = sft_token_weights(mb, s.n_targets);
    const bool last = i + 1 == s.micro.size();
    fused->forward_backward(mb, w, dropout_seed(1, i), last);
    split->forward(mb, dropout_seed(1, i));
    split->backward(w, last);
  }
  EXPECT_EQ(fused->lora_grads(), split->lora_grads());
  EXPECT_EQ(fused->end_step(s.lr).loss_sum, split->end_step(s.lr).loss_sum);
}

// Adapters switched off for a pass compute the base model: the same losses, bit for bit, as the
// adapters with B = 0 (their product adds an exact zero), and not those of the trained adapters.
TEST(GpuStepObjective, AdaptersOffIsTheBaseModel) {
  REQUIRE_GPU();
  for (const char* quant : {"bf16", "nf4"}) {
    SCOPED_TRACE(quant);
    StepFixture s = load_setup("llama", quant);
    auto gpu = make_gpu(s, quant, Recompute::kSelective);
    std::vector<float> trained = s.lora, zero_b = s.lora;
    for (float& x : trained) x += 0.01f;  // B != 0: the adapters change the output
    for (int l = 0; l < s.cfg.L; ++l)
      for (int t = 0; t < kNumTargets; ++t) {
        const LoraSlot& slot = s.layout.slot(l, LoraTarget(t));
        if (slot.enabled) std::fill_n(zero_b.begin() + slot.b_offset, size_t(slot.out) * s.layout.R, 0.f);
      }
    gpu->restore(trained, gpu->optimizer_state());
    const double on = gpu->loss_sum(s.micro, true), off = gpu->loss_sum(s.micro, false);
    gpu->restore(zero_b, gpu->optimizer_state());
    EXPECT_EQ(off, gpu->loss_sum(s.micro, true));
    EXPECT_NE(on, off);
  }
}

// Sigmoid DPO (β 0.1) on the DPO fixture's six pairs (tests/fixtures/dpo/<arch>), 20 AdamW steps on
// both paths through the trainer's step function: step-1 LoRA gradients, every step's loss and the
// final LoRA weights within kRule times the DPO yardstick ("dpo_bf16_baseline[_nf4]": TRL's DPO
// loss in loom's GPU precision against fp32, tools/make_dpo_fixtures.py --yardstick-only). DPO
// losses fall toward 0, so the step losses compare absolutely ("step_loss_abs").
void expect_gpu_dpo_follows_reference(const std::string& arch, const std::string& quant) {
  StepFixture s = load_setup(arch, quant);
  const std::string dir = test::fixtures_dir() + "/dpo/" + arch;
  const nlohmann::json e = test::read_json(dir + "/expected.json");
  const nlohmann::json& b = e.at(quant == "nf4" ? "dpo_bf16_baseline_nf4" : "dpo_bf16_baseline");
  std::vector<Document> docs;
  for (const auto& p : e["pairs"])
    for (const char* side : {"chosen", "rejected"})
      docs.push_back({p[side]["ids"].get<std::vector<int32_t>>(), p[side]["mask"].get<std::vector<uint8_t>>(), {}});
  std::vector<const Document*> ptrs;
  for (const Document& d : docs) ptrs.push_back(&d);
  Step step;
  step.micro.push_back(pack_documents(ptrs));
  step.global_docs = int64_t(docs.size() / 2);
  step.global_targets = step.micro[0].n_targets();
  ModelWeights w = load_weights(s.dir + "/model", s.cfg);
  if (quant == "nf4") apply_nf4_roundtrip(w, 64, true);
  auto cpu = make_cpu_backend(s.cfg, std::move(w), s.layout, s.lora, s.train);
  auto gpu = make_gpu(s, quant, Recompute::kSelective, 0.f, 256);  // the six pairs: 143–161 tokens
  const PreferenceOptions o{PreferenceLoss::kSigmoid, 0.1, 0.0, 0.1};
  PreferenceObjective cpu_dpo(o), gpu_dpo(o);
  const std::string label = cat(arch, "/", quant, " DPO");
  const float lr = float(b["lr"]);
  const int steps = b["steps"];
  double worst_loss = 0;
  for (int k = 1; k <= steps; ++k) {
    if (k == 1) {  // the step by hand, to read the gradients before the update
      for (auto* side : {&cpu_dpo, &gpu_dpo}) side->begin_step(step);
      const MicroBatch& mb = step.micro[0];
      const std::vector<float> cr = cpu->reference_losses(mb), gr = gpu->reference_losses(mb);
      cpu->backward(cpu_dpo.token_weights(mb, step, cpu->forward(mb, 0), cr), true);
      gpu->backward(gpu_dpo.token_weights(mb, step, gpu->forward(mb, 0), gr), true);
      const test::TensorError eg = test::expect_lora_tensors_close(
          s.layout, gpu->lora_grads(), cpu->lora_grads(), kRule * double(b["grad_scaled"]), label + " step-1 grads");
      std::printf("[%s] step-1 LoRA gradients: worst tensor %s, scaled error %.4f (yardstick %.4f)\n", label.c_str(),
                  eg.name.c_str(), eg.error, double(b["grad_scaled"]));
      cpu->end_step(lr);
      gpu->end_step(lr);
      const double cl = cpu_dpo.end_step(step, 0).loss, gl = gpu_dpo.end_step(step, 0).loss;
      EXPECT_LE(std::fabs(gl - cl), kRule * double(b["step_loss_abs"])) << label << " step 1: GPU " << gl
                                                                        << ", reference " << cl;
      worst_loss = test::max_keeping_nan(worst_loss, std::fabs(gl - cl));
      continue;
    }
    const double cl = run_step(*cpu, cpu_dpo, step, lr, [](size_t) { return uint64_t(0); }).loss;
    const double gl = run_step(*gpu, gpu_dpo, step, lr, [](size_t) { return uint64_t(0); }).loss;
    EXPECT_LE(std::fabs(gl - cl), kRule * double(b["step_loss_abs"])) << label << " step " << k << ": GPU " << gl
                                                                      << ", reference " << cl;
    worst_loss = test::max_keeping_nan(worst_loss, std::fabs(gl - cl));
  }
  const test::TensorError ew = test::expect_lora_tensors_close(s.layout, gpu->lora_params(), cpu->lora_params(),
                                                               kRule * double(b["final_weights_scaled"]),
                                                               label + " final LoRA weights");
  std::printf("[%s] %d steps: worst |step loss - reference| %.5f (yardstick %.5f); final weights: worst tensor %s, "
              "scaled error %.4f (yardstick %.4f)\n",
              label.c_str(), steps, worst_loss, double(b["step_loss_abs"]), ew.name.c_str(), ew.error,
              double(b["final_weights_scaled"]));
}

TEST(GpuStepDpo, TwentyStepsFollowTheReference) {
  REQUIRE_GPU();
  for (const char* arch : {"llama", "mistral", "qwen2", "qwen3"})
    for (const char* quant : {"bf16", "nf4"}) expect_gpu_dpo_follows_reference(arch, quant);
}

}  // namespace
}  // namespace loom
