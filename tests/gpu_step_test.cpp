// The GPU training step against the fp32 reference path, on the HF parity fixtures of the four
// architectures, with NF4 and bf16 base weights: gradients of the first step, the loss of each of
// 20 AdamW steps, and the final LoRA weights.
// Tolerances: the GPU stores every activation in bf16 (8 mantissa bits: 2^-9 ≈ 2e-3 relative per
// rounding) with fp32 accumulation; a loss passes through ~10 roundings per layer (norm, projections,
// rope, attention, residual), so ~1e-2 relative on per-token logits, far less on their mean:
// loss ≤ 1e-2. Gradients are products of such quantities: ≤ 5e-2 of the tensor's scale. AdamW
// divides by √v, so its updates inherit the gradients' relative error: final weights ≤ 5e-2.
// Measured values are printed.
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <cmath>
#include <fstream>

#include "data/batch.h"
#include "engine/error.h"
#include "engine/optimizer.h"
#include "models/cuda_model.h"
#include "models/lora.h"
#include "models/model_config.h"
#include "models/reference_model.h"
#include "models/weights.h"
#include "tests/test_util.h"

namespace loom {
namespace {

constexpr double kLossTol = 1e-2, kGradTol = 5e-2, kWeightTol = 5e-2;
constexpr int kSteps = 20;

struct StepFixture {
  std::string dir;
  ModelConfig cfg;
  LoraLayout layout;
  std::vector<float> lora;
  std::vector<MicroBatch> micro;
  int64_t n_targets = 0;
  TrainSection train;
  float lr = 0;
};

StepFixture load_setup(const std::string& arch) {
  StepFixture s;
  s.dir = test::fixtures_dir() + "/hf/" + arch;
  s.cfg = load_model_config(s.dir + "/model");
  s.layout = make_lora_layout(s.cfg, read_peft_lora_section(s.dir + "/adapter"));
  s.lora = load_peft_adapter(s.dir + "/adapter", s.layout);
  std::ifstream bf(s.dir + "/batch.json"), ef(s.dir + "/expected.json");
  nlohmann::json batch = nlohmann::json::parse(bf), e = nlohmann::json::parse(ef);
  std::vector<Document> docs;
  for (const auto& d : batch["documents"])
    docs.push_back({d["ids"].get<std::vector<int32_t>>(), d["mask"].get<std::vector<uint8_t>>()});
  for (const auto& which : batch["micro_batches"]) {
    std::vector<const Document*> p;
    for (int i : which) p.push_back(&docs[i]);
    s.micro.push_back(pack_documents(p));
    s.n_targets += s.micro.back().n_targets();
  }
  s.train.beta1 = e["beta1"];
  s.train.beta2 = e["beta2"];
  s.train.eps = e["eps"];
  s.train.weight_decay = e["weight_decay"];
  s.train.max_grad_norm = e["max_grad_norm"];
  s.lr = e["lr"];
  return s;
}

double scaled_error(const std::vector<float>& a, const std::vector<float>& b) {
  double num = 0, den = 0;
  for (size_t i = 0; i < b.size(); ++i) {
    num = std::max(num, std::fabs(double(a[i]) - b[i]));
    den = std::max(den, std::fabs(double(b[i])));
  }
  return num / std::max(den, 1e-30);
}

std::unique_ptr<CudaModel> make_gpu(const StepFixture& s, const std::string& quant, const std::string& recompute) {
  CudaModelOptions opt;
  opt.quant = quant;
  opt.double_quant = true;
  opt.recompute = recompute;
  opt.token_budget = 64;
  opt.train = s.train;
  opt.print_plan = false;
  return std::make_unique<CudaModel>(s.cfg, WeightSource::checkpoint(s.dir + "/model", s.cfg), s.layout, s.lora, opt);
}

ReferenceModel make_cpu(const StepFixture& s, const std::string& quant) {
  ModelWeights w = load_weights(s.dir + "/model", s.cfg);
  if (quant == "nf4") apply_nf4_roundtrip(w, 64, true);
  return ReferenceModel(s.cfg, std::move(w), s.layout);
}

using Case = std::tuple<std::string, std::string>;  // arch, quant
class GpuStep : public testing::TestWithParam<Case> {};

TEST_P(GpuStep, TwentyStepsFollowTheReference) {
  REQUIRE_GPU();
  const auto& [arch, quant] = GetParam();
  StepFixture s = load_setup(arch);
  ReferenceModel cpu = make_cpu(s, quant);
  auto gpu = make_gpu(s, quant, "selective");
  const float scale = 1.f / float(s.n_targets);
  std::vector<float> params = s.lora, grads(s.layout.total, 0.f);
  OptimizerState st;
  double worst_loss = 0;
  for (int step = 1; step <= kSteps; ++step) {
    double cpu_loss = 0;
    for (const MicroBatch& mb : s.micro) {
      cpu_loss += cpu.run(mb, params.data(), grads.data(), scale).loss_sum * scale;
      gpu->forward_backward(mb, scale);
    }
    if (step == 1) {
      const double eg = scaled_error(gpu->lora_grads(), grads);
      std::printf("[%s/%s] step-1 LoRA gradients: max scaled error %.2e\n", arch.c_str(), quant.c_str(), eg);
      EXPECT_LE(eg, kGradTol);
    }
    optimizer_step(params, grads, st, s.train, s.lr);
    const double gpu_loss = gpu->end_step(s.lr).loss_sum * scale;
    const double rel = std::fabs(gpu_loss - cpu_loss) / cpu_loss;
    worst_loss = std::max(worst_loss, rel);
    EXPECT_LE(rel, kLossTol) << "step " << step << ": gpu " << gpu_loss << " cpu " << cpu_loss;
  }
  const double ew = scaled_error(gpu->lora_params(), params);
  std::printf("[%s/%s] %d steps: worst loss rel error %.2e, final LoRA weights max scaled error %.2e\n", arch.c_str(),
              quant.c_str(), kSteps, worst_loss, ew);
  EXPECT_LE(ew, kWeightTol);
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
  std::vector<std::vector<float>> grads;
  std::vector<double> losses;
  for (const char* policy : {"none", "selective", "full"}) {
    auto gpu = make_gpu(s, "nf4", policy);
    for (const MicroBatch& mb : s.micro) gpu->forward_backward(mb, scale);
    grads.push_back(gpu->lora_grads());
    losses.push_back(gpu->end_step(s.lr).loss_sum);
  }
  EXPECT_EQ(losses[0], losses[1]);
  EXPECT_EQ(losses[0], losses[2]);
  EXPECT_EQ(grads[0], grads[1]);
  EXPECT_EQ(grads[0], grads[2]);
}

// Per-token losses of the forward-only path equal the reference's (scoring).
TEST(GpuStepScore, TokenLossesMatchTheReference) {
  REQUIRE_GPU();
  StepFixture s = load_setup("llama");
  ReferenceModel cpu = make_cpu(s, "bf16");
  auto gpu = make_gpu(s, "bf16", "none");
  for (const MicroBatch& mb : s.micro) {
    std::vector<float> want(mb.T());
    cpu.run(mb, s.lora.data(), nullptr, 1.f, want.data());
    std::vector<float> got = gpu->token_losses(mb);
    test::expect_close(got, want, kLossTol * 3, "token losses", 0.1);
  }
}

}  // namespace
}  // namespace loom
