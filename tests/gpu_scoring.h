// The forward-only GPU model (ModelMode::kForward, as build/score runs it) on an HF fixture, and the
// per-token comparison of its losses with the fp32 reference's, shared by the dense and the MoE GPU
// tests (tests/gpu_step_test.cpp, tests/gpu_moe_step_test.cpp).
#pragma once
#include <gtest/gtest.h>

#include <memory>
#include <string>
#include <vector>

#include "data/batch.h"
#include "models/cuda_model.h"
#include "models/reference_model.h"
#include "models/weights.h"
#include "tests/hf_fixture.h"
#include "tests/test_util.h"

namespace loom::test {

// The fixture's model and adapter loaded into a scoring model of 64 tokens per micro-batch.
inline std::unique_ptr<CudaModel> make_fixture_scorer(const HfFixture& s, Quant quant) {
  CudaModelOptions opt;
  opt.mode = ModelMode::kForward;
  opt.quant = quant;
  opt.token_budget = 64;
  opt.print_plan = false;
  auto m = std::make_unique<CudaModel>(s.cfg, s.layout, opt);
  m->load(WeightSource::checkpoint(s.dir + "/model", s.cfg), s.lora);
  return m;
}

// Every token's loss of `gpu` on each micro-batch within `tol` (absolute; NaN fails) of the reference's
// with the adapter `lora`; `label` names the case in failures. Returns the largest error; `gpu_losses`,
// when given, receives every GPU token loss, micro-batch after micro-batch.
inline double expect_token_losses_close(const ReferenceModel& cpu, CudaModel& gpu, const std::vector<MicroBatch>& micro,
                                        const std::vector<float>& lora, double tol, const std::string& label,
                                        std::vector<float>* gpu_losses = nullptr) {
  double worst = 0;
  for (size_t i = 0; i < micro.size(); ++i) {
    const MicroBatch& mb = micro[i];
    std::vector<float> want(size_t(mb.T()));
    cpu.forward(mb, lora.data(), {}, want.data());
    gpu.forward(mb, {});
    const std::vector<float> got = gpu.token_losses();
    if (gpu_losses) gpu_losses->insert(gpu_losses->end(), got.begin(), got.end());
    EXPECT_EQ(got.size(), want.size()) << label << " micro-batch " << i;
    if (got.size() != want.size()) return worst;
    for (size_t t = 0; t < got.size(); ++t) {
      const double err = absolute_error(got[t], want[t]);
      EXPECT_LE(err, tol) << label << ", micro-batch " << i << ", token " << t << ": GPU loss " << got[t]
                          << ", reference " << want[t];
      worst = max_keeping_nan(worst, err);
    }
  }
  return worst;
}

}  // namespace loom::test
