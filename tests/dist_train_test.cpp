// One run, many ranks: `mpirun -np N build/train` trains what one process trains — the same loss and
// the same gradient norm at every step, the same eval losses and the same LoRA weights at the end, up
// to the summation order of the all-reduces. The gradient norm is what catches a wrong reduction: averaging
// instead of summing the ranks' gradients scales every gradient alike, which AdamW's update (and so
// the loss and the weights) barely feels, but the norm moves by the factor of the number of ranks.
// CPU reference path (always; CI) and CUDA path (skips below 2 GPUs).
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>

#include "engine/config.h"
#include "ops/error.h"
#include "models/lora.h"
#include "models/model_config.h"
#include "tests/test_util.h"

namespace fs = std::filesystem;

namespace loom {
namespace {

struct Result {
  int code = -1;
  std::string output;
  std::vector<double> losses, grad_norms;  // per step, from metrics.jsonl (NaN where not a number)
  std::vector<double> margins, logps;      // per step: rewards/margins, logps/chosen (preference runs)
  std::vector<double> eval_losses;         // per evaluation
  std::vector<int64_t> eval_targets;
  std::vector<float> adapter;
};


const std::vector<std::string> kRun = {"model.preset=tiny",       "model.quant=nf4",         "data.synthetic=sft-alpaca",
                                       "data.synthetic_docs=40",  "data.max_seq_len=48",     "train.token_budget=96",
                                       "train.global_batch=10",   "train.steps=20",          "train.lr=1e-2",
                                       "train.warmup_steps=2",    "lora.r=4",                "output.export=peft"};

// The loss and grad norm of every step line, the eval loss and targets of every eval line; a null
// or missing value becomes NaN, so that every comparison of it fails.
void read_metrics(const std::string& path, Result& r) {
  auto number = [](const nlohmann::json& j, const char* key) {
    return j.contains(key) && j[key].is_number() ? j[key].get<double>() : double(NAN);
  };
  std::ifstream f(path);
  for (std::string l; std::getline(f, l);) {
    const nlohmann::json j = nlohmann::json::parse(l);
    if (j.contains("eval_loss")) {
      r.eval_losses.push_back(number(j, "eval_loss"));
      r.eval_targets.push_back(j.value("eval_targets", int64_t(-1)));
      continue;
    }
    r.losses.push_back(number(j, "loss"));
    if (j.contains("rewards/margins")) r.margins.push_back(number(j, "rewards/margins"));
    if (j.contains("logps/chosen")) r.logps.push_back(number(j, "logps/chosen"));
    r.grad_norms.push_back(number(j, "grad_norm"));
  }
}

// `ranks` processes under mpirun (timeout: a hang fails the test instead of blocking it).
// model: the config of the trained model (the adapter's layout), when extra names another than the preset.
Result train_with(int ranks, const std::string& device, const std::string& dir,
                  const std::vector<std::string>& extra = {}, const ModelConfig& model = preset_model_config("tiny")) {
  fs::remove_all(dir);
  // No binding (Open MPI would pin each of 2 ranks to one core); the ranks split the cores between
  // them (dist_init).
  std::string cmd = "timeout 300 ";
  if (ranks > 1) cmd += cat("mpirun --allow-run-as-root --oversubscribe --bind-to none -np ", ranks, " -x NCCL_NVLS_ENABLE=0 ");
  const std::string cfg = dir + ".yaml";  // every setting comes from the overrides below
  std::ofstream(cfg) << "# dist_train_test\n";
  cmd += "build/train " + cfg;
  for (const auto& o : kRun) cmd += " " + o;
  for (const auto& o : extra) cmd += " " + o;
  cmd += " train.device=" + device + " output.dir=" + dir;
  Result r;
  r.output = test::shell(cmd, &r.code);
  read_metrics(dir + "/metrics.jsonl", r);
  if (r.code == 0) {
    TrainConfig c = parse_config("", "test", kRun);
    r.adapter = load_peft_adapter(dir + "/adapter", make_lora_layout(model, c.lora));
  }
  return r;
}

// How far two runs are apart: the worst relative difference of the step losses and of the step
// gradient norms (NaN kept), and the final LoRA weights' scaled difference.
struct Distance {
  double loss = 0, grad_norm = 0, weights = 0;
};

Distance distance(const Result& one, const Result& other) {
  Distance d;
  for (size_t i = 0; i < one.losses.size() && i < other.losses.size(); ++i) {
    d.loss = test::max_keeping_nan(d.loss, test::relative_error(other.losses[i], one.losses[i]));
    d.grad_norm = test::max_keeping_nan(d.grad_norm, test::relative_error(other.grad_norms[i], one.grad_norms[i]));
  }
  d.weights = test::scaled_error(other.adapter, one.adapter);
  return d;
}

void expect_same_training(const Result& one, const Result& many, int ranks, const Distance& tol) {
  ASSERT_EQ(one.code, 0) << one.output;
  ASSERT_EQ(many.code, 0) << many.output;
  ASSERT_EQ(many.losses.size(), one.losses.size()) << many.output;
  ASSERT_FALSE(one.losses.empty()) << one.output;
  for (size_t i = 0; i < one.losses.size(); ++i) {
    EXPECT_LE(test::relative_error(many.losses[i], one.losses[i]), tol.loss)
        << "step " << i + 1 << ": loss with " << ranks << " ranks " << many.losses[i] << ", 1 rank " << one.losses[i];
    EXPECT_LE(test::relative_error(many.grad_norms[i], one.grad_norms[i]), tol.grad_norm)
        << "step " << i + 1 << ": grad norm with " << ranks << " ranks " << many.grad_norms[i] << ", 1 rank "
        << one.grad_norms[i];
  }
  const Distance d = distance(one, many);
  std::printf("%d ranks vs 1: worst step-loss rel difference %.2e (tolerance %.1e), worst grad-norm rel difference "
              "%.2e (tolerance %.1e), final LoRA weights max scaled difference %.2e (tolerance %.1e)\n",
              ranks, d.loss, tol.loss, d.grad_norm, tol.grad_norm, d.weights, tol.weights);
  EXPECT_LE(d.weights, tol.weights);
}

// A fresh folder of this process for a test's runs; the runs are <folder>/run<ranks>.
std::string runs_base(const std::string& name) {
  const std::string dir = test::fresh_temp_dir(name);
  fs::create_directories(dir);
  return dir + "/run";
}

bool mpirun_available() {
  int code = 0;
  test::shell("command -v mpirun", &code);
  return code == 0 && fs::exists("build/train");
}

// CPU: per-token math is identical however documents are packed (HfParity.PackedBufferEquals...),
// so the only difference is the order in which gradient contributions are summed (fp32, ~1e-7
// relative). Losses: 1e-6 (measured 5.9e-8 over 20 steps). Weights: AdamW's first steps move each
// weight by about lr·sign(g), so an element whose gradient is near zero can move differently on
// summation noise alone; over 20 steps at lr 1e-2 that stays far below 1e-3 of the largest weight
// (measured 9.0e-5 for 2 ranks, 3.5e-5 for 3). Grad norms: summation order again, through weights
// that differ that little: 1e-5 (measured 2.1e-7 for 2 and 3 ranks); a reduction off by any factor
// fails it by far (averaging 2 ranks halves the norm: 0.5).
// The runs evaluate too (data.eval_split, train.eval_every): the held-out documents are the same on
// any number of ranks (a function of their content), each rank evaluates its share of the same eval
// micro-batches and the sums meet in one all-reduce, so N ranks give the eval loss of 1 up to the
// weights' own difference: the step losses' tolerance, 1e-6 (measured 1.2e-8 for 2 ranks, 2.0e-8
// for 3); a rank that skipped its share, or counted another's, moves it by that share (> 10%).
TEST(DistTrain, TwoAndThreeCpuRanksTrainAndEvaluateWhatOneDoes) {
  if (!mpirun_available()) GTEST_SKIP() << "mpirun or build/train missing";
  const std::string base = runs_base("dist_train");
  const std::vector<std::string> eval = {"data.eval_split=6", "train.eval_every=5"};
  Result one = train_with(1, "cpu", base + "1", eval);
  ASSERT_EQ(one.eval_losses.size(), 4u) << one.output;  // steps 5, 10, 15, 20
  for (int ranks : {2, 3}) {
    Result many = train_with(ranks, "cpu", cat(base, ranks), eval);
    expect_same_training(one, many, ranks, {1e-6, 1e-5, 1e-3});
    ASSERT_EQ(many.eval_losses.size(), one.eval_losses.size()) << many.output;
    double worst = 0;
    for (size_t i = 0; i < one.eval_losses.size(); ++i) {
      EXPECT_EQ(many.eval_targets[i], one.eval_targets[i]) << "evaluation " << i + 1 << " with " << ranks << " ranks";
      const double d = test::relative_error(many.eval_losses[i], one.eval_losses[i]);
      EXPECT_LE(d, 1e-6) << "evaluation " << i + 1 << ": " << many.eval_losses[i] << " with " << ranks
                         << " ranks, 1 rank " << one.eval_losses[i];
      worst = test::max_keeping_nan(worst, d);
    }
    std::printf("%d ranks vs 1: eval losses worst rel difference %.2e (tolerance 1e-6)\n", ranks, worst);
  }
}

// A mixture-of-experts model (the Qwen3-MoE fixture: routing, experts, a dense layer) trains on 2
// and 3 ranks what it trains on 1, with the same tolerances as above: a token's loss does not depend
// on what is packed beside it. With the load-balancing loss off: HF's aux loss is a function of the
// whole micro-batch (its tokens' mean routing), and the ranks pack other micro-batches than one rank
// does (data/dataloader.h), so with output_router_logits on N ranks train another objective than 1,
// as DDP does against gradient accumulation in HF.
TEST(DistTrain, TwoAndThreeCpuRanksTrainAnMoeAsOneDoes) {
  if (!mpirun_available()) GTEST_SKIP() << "mpirun or build/train missing";
  const std::string base = runs_base("dist_moe");
  const std::string model = base + "model";
  fs::copy(fs::absolute(test::fixtures_dir() + "/moe/qwen3_moe/model"), model);
  nlohmann::json config = nlohmann::json::parse(std::ifstream(model + "/config.json"));
  config["output_router_logits"] = false;
  std::ofstream(model + "/config.json") << config.dump(2);
  const std::vector<std::string> moe = {"model.preset=", "model.path=" + model, "train.steps=10"};
  const ModelConfig cfg = load_model_config(model);
  Result one = train_with(1, "cpu", base + "1", moe, cfg);
  for (int ranks : {2, 3}) expect_same_training(one, train_with(ranks, "cpu", cat(base, ranks), moe, cfg), ranks, {1e-6, 1e-5, 1e-3});
}

// DPO on N ranks is DPO on 1: a pair is one document, so it never straddles ranks; the pair losses,
// their gradients' weights and TRL's metrics are sums over the pairs of the global batch, gathered
// in the all-reduces. Only summation order differs, as for SFT above: the same tolerances. A margin
// is β times a difference of differences of summed log-probs (|logp| ~ 10–40 here), so the weights'
// drift reaches it amplified: compared against the scale of what it is made of, β·|logps/chosen|,
// within the step losses' 1e-6 (measured below).
// The demo's preference pairs, 10 DPO steps of 8 pairs (the reference computed in each step).
const std::vector<std::string> kDpoRun = {
    "data.synthetic=",          "data.path=data/demo/pairs.jsonl", "data.format=pairs",
    "data.tokenizer=data/demo/tokenizer.model", "data.template=mistral", "data.max_seq_len=64",
    "train.token_budget=128",   "train.objective=dpo",             "train.steps=10",
    "train.global_batch=8",     "dpo.precompute_reference=false"};

std::vector<std::string> with(std::vector<std::string> run, const std::string& override) {
  run.push_back(override);
  return run;
}

TEST(DistTrain, TwoAndThreeCpuRanksTrainDpoAsOneDoes) {
  if (!mpirun_available()) GTEST_SKIP() << "mpirun or build/train missing";
  const std::string base = runs_base("dist_dpo");
  const std::vector<std::string>& dpo = kDpoRun;
  Result one = train_with(1, "cpu", base + "1", dpo);
  ASSERT_EQ(one.code, 0) << one.output;
  ASSERT_EQ(one.margins.size(), 10u) << one.output;
  for (int ranks : {2, 3}) {
    Result many = train_with(ranks, "cpu", cat(base, ranks), dpo);
    expect_same_training(one, many, ranks, {1e-6, 1e-5, 1e-3});
    ASSERT_EQ(many.margins.size(), one.margins.size()) << many.output;
    double worst = 0;
    for (size_t i = 0; i < one.margins.size(); ++i) {
      const double d = std::fabs(many.margins[i] - one.margins[i]) / (0.1 * std::fabs(one.logps[i]));  // dpo.beta 0.1
      EXPECT_LE(d, 1e-6) << "step " << i + 1 << " rewards/margins with " << ranks << " ranks";
      worst = test::max_keeping_nan(worst, d);
    }
    std::printf("%d ranks vs 1 (DPO): rewards/margins worst difference %.2e of beta·|logps/chosen|\n", ranks, worst);
  }
}

// dpo.precompute_reference=true computes, before the first step, the reference log-probs each step's
// reference pass computes: the same per-token losses (a CPU token's loss does not depend on what is
// packed beside it) summed in the same order, so one rank trains bit for bit the same run. With 3
// ranks each scores a third of the table and the sum fills it (one non-zero term per entry: exact),
// and the run is the 3-rank run with the reference computed in the step, bit for bit.
TEST(DistTrain, PrecomputedReferenceTrainsWhatTheStepsReferenceTrains) {
  if (!mpirun_available()) GTEST_SKIP() << "mpirun or build/train missing";
  const std::string base = runs_base("dist_dpo_precompute");
  // The table covers the whole data set: 40 of the demo's 600 pairs keep the test short.
  const std::string pairs = base + "pairs.jsonl";
  int code = 0;
  test::shell(cat("head -n 40 data/demo/pairs.jsonl > ", pairs), &code);
  ASSERT_EQ(code, 0);
  const std::vector<std::string> run = with(kDpoRun, "data.path=" + pairs);
  for (int ranks : {1, 3}) {
    Result in_step = train_with(ranks, "cpu", cat(base, ranks, "step"), run);
    Result before = train_with(ranks, "cpu", cat(base, ranks, "before"), with(run, "dpo.precompute_reference=true"));
    ASSERT_EQ(in_step.code, 0) << in_step.output;
    ASSERT_EQ(before.code, 0) << before.output;
    EXPECT_NE(before.output.find("dpo.precompute_reference: reference log-probs of "), std::string::npos)
        << before.output;
    ASSERT_EQ(in_step.losses.size(), 10u) << in_step.output;
    EXPECT_EQ(before.losses, in_step.losses) << ranks << " rank(s)";
    EXPECT_EQ(before.margins, in_step.margins) << ranks << " rank(s)";
    EXPECT_EQ(before.grad_norms, in_step.grad_norms) << ranks << " rank(s)";
    EXPECT_EQ(before.adapter, in_step.adapter) << ranks << " rank(s)";
  }
}

// CUDA: each rank packs its share of the documents into different micro-batches, so cuBLASLt may
// pick other kernels and bf16 activations round differently; AdamW then turns gradient noise on
// near-zero elements into different signs of the first updates (B starts at 0). The yardstick is
// what repacking alone does on ONE GPU (the same run with 1 and 3 documents per micro-batch instead
// of 2, the larger difference), on each measure (step losses, step grad norms, final weights): N
// ranks may differ from 1 rank at most twice as much.
TEST(DistTrain, TwoAndFourGpuRanksTrainWhatOneTrains) {
  REQUIRE_GPU();
  const int gpus = cuda_device_count();
  if (gpus < 2) GTEST_SKIP() << "needs 2 GPUs, found " << gpus;
  if (!mpirun_available()) GTEST_SKIP() << "mpirun or build/train missing";
  const std::string base = runs_base("dist_train_gpu");
  Result one = train_with(1, "cuda", base + "1");
  ASSERT_EQ(one.code, 0) << one.output;
  Distance yardstick;
  for (int budget : {48, 144}) {
    Result repacked = train_with(1, "cuda", cat(base, "1r", budget), {cat("train.token_budget=", budget)});
    ASSERT_EQ(repacked.code, 0) << repacked.output;
    ASSERT_EQ(repacked.losses.size(), one.losses.size());
    const Distance d = distance(one, repacked);
    std::printf("repacked into %d-token micro-batches on 1 GPU: worst step-loss rel difference %.2e, worst grad-norm "
                "rel difference %.2e, final weights %.2e\n",
                budget, d.loss, d.grad_norm, d.weights);
    yardstick.loss = test::max_keeping_nan(yardstick.loss, d.loss);
    yardstick.grad_norm = test::max_keeping_nan(yardstick.grad_norm, d.grad_norm);
    yardstick.weights = test::max_keeping_nan(yardstick.weights, d.weights);
  }
  const Distance tol{2 * yardstick.loss, 2 * yardstick.grad_norm, 2 * yardstick.weights};
  for (int ranks : {2, 4}) {
    if (ranks > gpus) break;
    expect_same_training(one, train_with(ranks, "cuda", cat(base, ranks)), ranks, tol);
  }
}

}  // namespace
}  // namespace loom
