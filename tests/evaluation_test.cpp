// Evaluation during training (engine/evaluation.h) on the CPU reference path: the eval loss is
// Hugging Face's loss of the same documents, build/score's NLL of the held-out documents with the
// adapter of that step, and drives output.keep_best and train.early_stopping_patience, also across
// a resume.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include <filesystem>
#include <fstream>

#include "engine/backend.h"
#include "engine/checkpoint.h"
#include "engine/evaluation.h"
#include "engine/trainer.h"
#include "engine/training_data.h"
#include "models/model_source.h"
#include "tests/hf_fixture.h"
#include "tests/test_util.h"

namespace fs = std::filesystem;

namespace loom {
namespace {

// The eval loss of the fixture's documents with its adapter is HF's fp32 loss of them (expected.json
// "loss": transformers + peft, the packed batch): the bound, 1e-4 relative (measured below;
// the HF parity tests hold the same forward to 1e-6).
TEST(Evaluation, EvalLossIsHfLossOnTheFixtures) {
  for (const char* arch : {"llama", "mistral", "qwen2", "qwen3"}) {
    test::HfFixture f = test::load_hf_fixture(arch);
    TrainConfig cfg;
    cfg.train.token_budget = 4096;  // every fixture document fits
    auto backend = make_cpu_backend(f.cfg, load_weights(f.dir + "/model", f.cfg), f.layout, f.lora, f.train);
    Evaluator evaluator(cfg, f.docs, 0, 1, {});
    SftObjective sft;
    const EvalMetrics m = evaluator.evaluate(*backend, sft, 1);
    const double want = f.expected["loss"];
    const double rel = test::relative_error(m.loss, want);
    std::printf("[%s] eval loss %.9f vs HF %.9f (rel %.2e)\n", arch, m.loss, want, rel);
    EXPECT_LE(rel, 1e-4) << arch;
    EXPECT_EQ(m.targets, int64_t(f.expected["n_targets"])) << arch;
  }
}


// A run on the llama fixture's model with a held-out split of synthetic documents.
TrainConfig fixture_run(const std::string& dir, std::vector<std::string> extra = {}) {
  std::vector<std::string> o = {"model.path=tests/fixtures/hf/llama/model", "model.quant=bf16",
                                "data.synthetic=sft-alpaca", "data.synthetic_docs=24", "data.max_seq_len=48",
                                "data.eval_split=5", "train.token_budget=128", "train.global_batch=4",
                                "train.steps=6", "train.lr=1e-2", "train.device=cpu", "train.eval_every=3",
                                "lora.r=4", "output.checkpoint_every=3", "output.dir=" + dir};
  o.insert(o.end(), extra.begin(), extra.end());
  return parse_config("", "test", o);
}

struct EvalLine {
  int64_t step;
  double loss;
  int64_t targets;
};

std::vector<EvalLine> eval_lines(const std::string& run) {
  std::vector<EvalLine> out;
  std::ifstream f(run + "/metrics.jsonl");
  for (std::string l; std::getline(f, l);) {
    const nlohmann::json j = nlohmann::json::parse(l);
    if (j.contains("eval_loss")) out.push_back({j["step"], j["eval_loss"], j["eval_targets"]});
  }
  return out;
}

// build/score --per-token on the held-out documents (as {"ids"}) with an adapter: the NLL of their
// target tokens (the documents' own masks), weighted by tokens.
double score_nll(const std::string& model, const std::string& adapter, const std::vector<Document>& docs,
                 const std::string& dir, int64_t* targets) {
  const std::string in = dir + "/eval.jsonl", out = dir + "/scored.jsonl";
  {
    std::ofstream f(in);
    for (const Document& d : docs) f << nlohmann::json{{"ids", d.ids}}.dump() << "\n";
  }
  int code = 0;
  const std::string log = test::shell(
      "build/score --device cpu --per-token --model " + model + " --adapter " + adapter + " < " + in + " > " + out, &code);
  EXPECT_EQ(code, 0) << log;
  std::ifstream f(out);
  double sum = 0;
  *targets = 0;
  size_t i = 0;
  for (std::string l; std::getline(f, l); ++i) {
    const std::vector<double> logprobs = nlohmann::json::parse(l).at("logprobs");
    const Document& d = docs.at(i);
    EXPECT_EQ(logprobs.size() + 1, d.ids.size()) << "document " << i;
    for (size_t t = 1; t < d.ids.size(); ++t)
      if (d.mask[t]) {
        sum -= logprobs[t - 1];
        ++*targets;
      }
  }
  EXPECT_EQ(i, docs.size());
  return sum / double(*targets);
}

// The eval loss logged at a step is build/score's NLL of the held-out documents with the adapter of
// that step's checkpoint. build/score prints each log-probability to 9 significant digits and the
// run sums fp32 losses in another order: 1e-6 relative (measured below).
TEST(Evaluation, EvalLossIsBuildScoresNllWithTheStepsAdapter) {
  if (!fs::exists("build/score")) GTEST_SKIP() << "build/score missing";
  const std::string dir = test::fresh_temp_dir("eval_score");
  const TrainConfig cfg = fixture_run(dir + "/run");
  train(cfg);
  const std::vector<EvalLine> evals = eval_lines(cfg.output.dir);
  ASSERT_EQ(evals.size(), 2u);  // steps 3 and 6
  const RunDocuments docs = load_run_documents(cfg, resolve_model_config(cfg.model));
  ASSERT_EQ(docs.eval.size(), 5u);
  for (const EvalLine& e : evals) {
    int64_t targets = 0;
    const std::string adapter = cat(cfg.output.dir, "/checkpoints/step-00000", e.step, "/adapter");
    const double nll = score_nll(cfg.model.path, adapter, docs.eval, dir, &targets);
    const double rel = test::relative_error(e.loss, nll);
    std::printf("step %lld: eval loss %.9f, build/score %.9f (rel %.2e)\n", static_cast<long long>(e.step), e.loss,
                nll, rel);
    EXPECT_LE(rel, 1e-6) << "step " << e.step;
    EXPECT_EQ(e.targets, targets) << "step " << e.step;
  }
  EXPECT_NE(evals[0].loss, evals[1].loss) << "training must move the eval loss";
}

// No held-out document is trained on: the training documents are the rest, none equal to one held out.
TEST(Evaluation, HeldOutDocumentsAreNotTrainedOn) {
  const std::string dir = test::fresh_temp_dir("eval_split");
  const TrainConfig cfg = fixture_run(dir, {"data.synthetic_docs=40", "data.eval_split=0.25"});
  const RunDocuments docs = load_run_documents(cfg, resolve_model_config(cfg.model));
  EXPECT_EQ(docs.eval.size(), 10u);
  EXPECT_EQ(docs.train.size(), 30u);
  for (const Document& e : docs.eval)
    for (const Document& t : docs.train) ASSERT_FALSE(e.ids == t.ids && e.mask == t.mask);
}

// output.keep_best: the checkpoint of the lowest eval loss survives keep_checkpoints = 1, and is the
// adapter the run exports. At lr 0.2 the eval loss is lowest after step 1 and never comes back.
TEST(Evaluation, KeepBestKeepsAndExportsTheBestCheckpoint) {
  const std::string dir = test::fresh_temp_dir("eval_best");
  const TrainConfig cfg = fixture_run(dir, {"train.eval_every=1", "output.keep_best=true",
                                            "output.keep_checkpoints=1", "output.checkpoint_every=0",
                                            "train.lr=2e-1"});
  train(cfg);
  const std::vector<EvalLine> evals = eval_lines(dir);
  ASSERT_EQ(evals.size(), 6u);
  EvalLine best = evals[0];
  for (const EvalLine& e : evals)
    if (e.loss < best.loss) best = e;
  ASSERT_LT(best.step, 6) << "the test needs its best evaluation before the last step";
  const LoraLayout layout = make_lora_layout(resolve_model_config(cfg.model), cfg.lora);
  const std::string best_dir = cat(dir, "/checkpoints/step-00000", best.step);
  ASSERT_TRUE(fs::exists(best_dir)) << "best step " << best.step;
  EXPECT_EQ(load_peft_adapter(dir + "/adapter", layout), load_checkpoint(best_dir, layout).params);
  EXPECT_TRUE(fs::exists(dir + "/checkpoints/step-000006"));
  EXPECT_EQ(list_checkpoints(dir).size(), 2u);  // the best and the newest
}

// train.early_stopping_patience: a resumed run whose log holds an unbeatable eval loss stops at its
// first evaluation, saves that step, and a rerun finds the run complete.
TEST(Evaluation, EarlyStoppingStopsAndStaysStoppedAcrossARerun) {
  const std::string dir = test::fresh_temp_dir("eval_early");
  const TrainConfig first = fixture_run(dir, {"train.eval_every=1"});
  train(first);
  // Keep steps 1..3 and make step 1's eval loss unbeatable.
  std::vector<std::string> kept;
  {
    std::ifstream f(dir + "/metrics.jsonl");
    for (std::string l; std::getline(f, l);) {
      nlohmann::json j = nlohmann::json::parse(l);
      if (j["step"].get<int>() > 3) continue;
      if (j.contains("eval_loss") && j["step"] == 1) j["eval_loss"] = 1e-3;
      kept.push_back(j.dump());
    }
  }
  fs::remove_all(dir + "/checkpoints/step-000006");
  {
    std::ofstream f(dir + "/metrics.jsonl");
    for (const std::string& l : kept) f << l << "\n";
  }
  const TrainConfig patient = fixture_run(dir, {"train.eval_every=1", "train.early_stopping_patience=2",
                                                "output.on_change=accept"});
  const TrainSummary s = train(patient);
  ASSERT_TRUE(s.stopped_early_at.has_value());
  EXPECT_EQ(*s.stopped_early_at, 4);
  EXPECT_EQ(s.last_step, 4);
  EXPECT_TRUE(fs::exists(dir + "/checkpoints/step-000004"));
  const TrainSummary again = train(patient);
  EXPECT_TRUE(again.complete);
  EXPECT_EQ(again.stopped_early_at, std::optional<int64_t>(4));
  EXPECT_NE(completion_note(again).find("stopped early at step 4"), std::string::npos) << completion_note(again);
}

}  // namespace
}  // namespace loom
