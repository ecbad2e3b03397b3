// train.offload: activations (models/cuda_model.h) keeps each layer's input in pinned host memory
// between the forward and the backward instead of on the device. Only where those inputs live
// changes, so three AdamW steps must give the same losses, gradients and weights bit for bit as the
// same run with the inputs on the device. The `tiny` preset has 4 layers and the device keeps 2
// slots of inputs, so the backward of layers 0 and 1 reads inputs copied back from the host (a wrong
// layer, slot or missing wait changes the bits), over micro-batches of different lengths. Also how
// train.offload auto decides (no GPU needed).
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <vector>

#include "data/batch.h"
#include "engine/backend.h"
#include "engine/config.h"
#include "engine/objective.h"
#include "models/lora.h"
#include "models/model_config.h"
#include "models/weights.h"
#include "ops/random.h"
#include "tests/test_util.h"

namespace loom {
namespace {

// Documents of random ids, every token after the first a target.
std::vector<Document> random_documents(const std::vector<int>& lengths, int vocab, uint64_t seed) {
  std::vector<Document> docs;
  uint64_t counter = 0;
  for (int n : lengths) {
    Document d;
    for (int i = 0; i < n; ++i) {
      d.ids.push_back(int32_t(mix64(seed + counter++) % uint64_t(vocab)));
      d.mask.push_back(i > 0);
    }
    docs.push_back(d);
  }
  return docs;
}

struct ThreeSteps {
  std::vector<double> losses;             // per step
  std::vector<float> last_grads, weights;  // step 3's gradients, the weights after it
};

ThreeSteps train_three_steps(Offload offload) {
  const ModelConfig cfg = preset_model_config("tiny");
  LoraOptions lo;
  lo.r = 8;
  lo.alpha = 16.f;
  lo.targets = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"};
  const LoraLayout layout = make_lora_layout(cfg, lo);
  TrainConfig tc;
  tc.model.quant = Quant::kNf4;
  tc.train.recompute = Recompute::kFull;
  tc.train.offload = offload;
  tc.train.token_budget = 256;
  auto gpu = make_cuda_backend(cfg, WeightSource::random(cfg, 7), layout, lora_init(layout, 11), tc);
  const std::vector<Document> docs = random_documents({200, 31, 17, 256, 5, 90}, cfg.V, 3);
  const std::vector<MicroBatch> micro = {pack_documents({&docs[0], &docs[1], &docs[2]}),
                                         pack_documents({&docs[3]}), pack_documents({&docs[4], &docs[5]})};
  int64_t targets = 0;
  for (const MicroBatch& mb : micro) targets += mb.n_targets();
  ThreeSteps run;
  for (int step = 1; step <= 3; ++step) {
    for (size_t i = 0; i < micro.size(); ++i)
      gpu->forward_backward(micro[i], sft_token_weights(micro[i], targets), 0, i + 1 == micro.size());
    if (step == 3) run.last_grads = gpu->lora_grads();
    run.losses.push_back(gpu->end_step(1e-3f).loss_sum);
  }
  run.weights = gpu->lora_params();
  return run;
}

TEST(GpuOffload, LayerInputsInHostMemoryGiveIdenticalSteps) {
  REQUIRE_GPU();
  const ThreeSteps device = train_three_steps(Offload::kNone), host = train_three_steps(Offload::kActivations);
  ASSERT_EQ(device.losses.size(), 3u);
  for (double loss : device.losses) ASSERT_TRUE(std::isfinite(loss));
  EXPECT_EQ(host.losses, device.losses);
  ASSERT_FALSE(device.last_grads.empty());
  EXPECT_EQ(host.last_grads, device.last_grads);
  EXPECT_EQ(host.weights, device.weights);
}

// The setting is refused where it cannot apply, naming the key to change.
TEST(GpuOffload, NeedsRecomputeFull) {
  REQUIRE_GPU();
  const ModelConfig cfg = preset_model_config("tiny");
  const LoraLayout layout = make_lora_layout(cfg, LoraOptions{});
  TrainConfig tc;
  tc.train.recompute = Recompute::kSelective;
  tc.train.offload = Offload::kActivations;
  test::expect_error([&] { make_cuda_backend(cfg, WeightSource::random(cfg, 7), layout, lora_init(layout, 1), tc); },
                     {"train.offload: activations needs train.recompute: full (found selective)"});
}

// train.offload auto: the inputs stay on the device when that plan fits (and always without recompute
// full), move to the host only when that alone fits, and none / activations are never second-guessed.
// The plans are stand-ins here: which of them fits is what the test varies.
TEST(Offload, AutoMovesTheInputsOnlyWhenThatAloneFits) {
  const auto fits_when = [](bool device, bool host) {
    return [=](Offload o) { return o == Offload::kNone ? device : host; };
  };
  EXPECT_EQ(choose_offload(Offload::kAuto, Recompute::kFull, fits_when(true, true)), Offload::kNone);
  EXPECT_EQ(choose_offload(Offload::kAuto, Recompute::kFull, fits_when(false, true)), Offload::kActivations);
  EXPECT_EQ(choose_offload(Offload::kAuto, Recompute::kFull, fits_when(false, false)), Offload::kNone);
  EXPECT_EQ(choose_offload(Offload::kAuto, Recompute::kSelective, fits_when(false, true)), Offload::kNone);
  EXPECT_EQ(choose_offload(Offload::kNone, Recompute::kFull, fits_when(false, true)), Offload::kNone);
  EXPECT_EQ(choose_offload(Offload::kActivations, Recompute::kFull, fits_when(true, true)), Offload::kActivations);
}

}  // namespace
}  // namespace loom
