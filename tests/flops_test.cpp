// engine/flops: BENCHMARK.md's FLOPs per token on real presets (counted by hand below), the mean
// number of attended keys on packed micro-batches, MFU, and (GPU only) the device ceilings.
#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "data/batch.h"
#include "ops/error.h"
#include "engine/flops.h"
#include "models/model_config.h"
#include "tests/test_util.h"

namespace loom {
namespace {

// Documents of the given lengths packed into one micro-batch (cu_seqlens = running starts).
MicroBatch packed(const std::vector<int>& lengths) {
  std::vector<Document> docs(lengths.size());
  std::vector<const Document*> ptrs;
  for (size_t i = 0; i < lengths.size(); ++i) {
    docs[i].ids.assign(size_t(lengths[i]), 7);
    docs[i].mask.assign(size_t(lengths[i]), 1);
    ptrs.push_back(&docs[i]);
  }
  return pack_documents(ptrs);
}

TEST(Flops, MixtureOfExpertsCountsTheActiveParameters) {
  // qwen3-30b-a3b: C 2048, L 48, H 32, KVH 4, D 128, 128 experts of width 768, 8 per token, V 151936.
  // Per layer: q 2048·4096 = 8,388,608; k + v 2·2048·512 = 2,097,152; o 8,388,608; router
  //   128·2048 = 262,144; 8 experts · 3·2048·768 = 37,748,736; sum 56,885,248.
  // P = 48 · 56,885,248 + 151936·2048 (LM head) = 2,730,491,904 + 311,164,928 = 3,041,656,832.
  const ModelConfig cfg = preset_model_config("qwen3-30b-a3b");
  EXPECT_EQ(flops_per_token(cfg, 0.0), 4.0 * 3041656832.0);
  EXPECT_EQ(forward_flops_per_token(cfg, 0.0), 2.0 * 3041656832.0);
  EXPECT_GT(cfg.matmul_params(), 9.0 * 3041656832.0);  // every expert: what MFU must not count
}

TEST(Flops, Llama31_8bMatchesHandCount) {
  // llama-3.1-8b: C 4096, F 14336, L 32, H 32, KVH 8, D 128, V 128256.
  // Per layer: q 4096·4096 = 16,777,216; k + v 2·4096·1024 = 8,388,608; o 16,777,216;
  //   gate + up + down 3·4096·14336 = 176,160,768; sum 218,103,808.
  // P = 32 · 218,103,808 + 128256·4096 (LM head) = 6,979,321,856 + 525,336,576 = 7,504,658,432.
  // 4·P = 30,018,633,728; attention 12·32·32·128 = 1,572,864 per key, ×120 keys = 188,743,680.
  const ModelConfig cfg = preset_model_config("llama-3.1-8b");
  EXPECT_EQ(flops_per_token(cfg, 0.0), 30018633728.0);
  EXPECT_EQ(flops_per_token(cfg, 120.0), 30207377408.0);
  // A forward alone: 2·P = 15,009,316,864; 4·32·32·128 = 524,288 per key, ×120 = 62,914,560.
  EXPECT_EQ(forward_flops_per_token(cfg, 0.0), 15009316864.0);
  EXPECT_EQ(forward_flops_per_token(cfg, 120.0), 15072231424.0);
}

TEST(Flops, TiedLmHeadStillCountsAsMatmul) {
  // qwen3-0.6b (tied embeddings): C 1024, F 3072, L 28, H 16, KVH 8, D 128, V 151936.
  // Per layer: q 1024·2048 = 2,097,152; k + v 2·1024·1024 = 2,097,152; o 2,097,152;
  //   gate + up + down 3·1024·3072 = 9,437,184; sum 15,728,640.
  // P = 28 · 15,728,640 + 151936·1024 = 440,401,920 + 155,582,464 = 595,984,384; 4·P = 2,383,937,536.
  // Attention 12·28·16·128 = 688,128 per key, ×100 keys = 68,812,800.
  const ModelConfig cfg = preset_model_config("qwen3-0.6b");
  EXPECT_EQ(flops_per_token(cfg, 0.0), 2383937536.0);
  EXPECT_EQ(flops_per_token(cfg, 100.0), 2452750336.0);
}

TEST(MeanAttendedKeys, CausalWithinEachDocument) {
  // Documents 1, 2, 3: keys 1 + (1+2) + (1+2+3) = 10 over 6 queries. As one document of 6 it
  // would be 21/6: keys never cross a document boundary.
  EXPECT_DOUBLE_EQ(mean_attended_keys({packed({1, 2, 3})}), 10.0 / 6.0);
}

TEST(MeanAttendedKeys, PoolsTokensAcrossMicroBatches) {
  // [4] gives 10 keys / 4 tokens, [1, 1] gives 2 / 2: pooled 12 / 6 = 2 (a mean of the two
  // micro-batch means would be 1.75).
  EXPECT_DOUBLE_EQ(mean_attended_keys({packed({4}), packed({1, 1})}), 2.0);
}

TEST(MeanAttendedKeys, SlidingWindowCapsKeys) {
  // Length 5, window 2: 1 + 2 + 2 + 2 + 2 = 9 keys. A window >= the length changes nothing (15).
  const std::vector<MicroBatch> micro = {packed({5})};
  EXPECT_DOUBLE_EQ(mean_attended_keys(micro, 2), 9.0 / 5.0);
  EXPECT_DOUBLE_EQ(mean_attended_keys(micro, 5), 3.0);
  EXPECT_DOUBLE_EQ(mean_attended_keys(micro, 0), 3.0);
}

TEST(MeanAttendedKeys, ModelAveragesItsLayerWindows) {
  // Two layers, full attention (3 keys per query on length 5) and window 2 (1.8): mean 2.4.
  ModelConfig cfg = preset_model_config("tiny");
  cfg.L = 2;
  cfg.window = {0, 2};
  EXPECT_DOUBLE_EQ(mean_attended_keys(cfg, {packed({5})}), 2.4);
  cfg.window = {0, 2, 0};  // a window per layer or none at all
  EXPECT_THROW(mean_attended_keys(cfg, {packed({5})}), Error);
}

TEST(MeanAttendedKeys, NoTokensGiveZero) { EXPECT_EQ(mean_attended_keys(std::vector<MicroBatch>{}), 0.0); }

TEST(Mfu, AchievedOverPeak) {
  // 2,000 tok/s × 1e11 FLOPs = 2e14 FLOP/s on a 400 TFLOP/s device: 0.5.
  EXPECT_DOUBLE_EQ(mfu(2000, 1e11, 400), 0.5);
  EXPECT_THROW(mfu(2000, 1e11, 0), Error);
}

TEST(DeviceCeilings, MeasuredOnTheDevice) {
  REQUIRE_GPU();
  const double tflops = measure_matmul_tflops();
  const double tbps = measure_copy_tbps();
  EXPECT_TRUE(std::isfinite(tflops) && tflops > 0) << tflops;
  EXPECT_TRUE(std::isfinite(tbps) && tbps > 0) << tbps;
}

}  // namespace
}  // namespace loom
