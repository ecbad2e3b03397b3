// The programs as a user runs them (build/score, build/train): output format, exit codes, and
// error messages that name the line, file or key. `make test` builds the binaries first.
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <array>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>

#include "ops/error.h"
#include "models/safetensors.h"
#include "tests/test_util.h"

namespace fs = std::filesystem;

namespace loom {
namespace {

struct Outcome {
  int code = -1;
  std::string out;  // stdout and stderr together
};

Outcome run(const std::string& cmd) {
  Outcome r;
  FILE* p = popen((cmd + " 2>&1").c_str(), "r");
  if (!p) return r;
  std::array<char, 4096> buf;
  size_t n;
  while ((n = fread(buf.data(), 1, buf.size(), p)) > 0) r.out.append(buf.data(), n);
  const int status = pclose(p);
  r.code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return r;
}

bool have(const std::string& binary) {
  if (fs::exists(binary)) return true;
  std::printf("%s not built\n", binary.c_str());
  return false;
}

std::string write_temp(const std::string& name, const std::string& text) {
  const fs::path p = fs::temp_directory_path() / ("loom_cli_test_" + name);
  std::ofstream(p) << text;
  return p.string();
}

// NLL of tokens 1.. of a sequence from logits (T, V): what build/score must print.
double nll_from_logits(const std::vector<float>& logits, const std::vector<int>& ids, int V) {
  double sum = 0;
  for (size_t t = 0; t + 1 < ids.size(); ++t) {
    const float* z = &logits[t * V];
    double mx = z[0], s = 0;
    for (int j = 1; j < V; ++j) mx = std::max<double>(mx, z[j]);
    for (int j = 0; j < V; ++j) s += std::exp(z[j] - mx);
    sum += mx + std::log(s) - z[ids[t + 1]];
  }
  return sum / double(ids.size() - 1);
}

TEST(ScoreCli, NllMatchesHuggingFaceLogits) {
  if (!have("build/score")) GTEST_SKIP() << "build/score missing";
  const std::string fx = test::fixtures_dir() + "/hf/llama";
  std::ifstream bf(fx + "/batch.json");
  auto docs = nlohmann::json::parse(bf)["documents"];
  std::string input;
  for (const auto& d : docs) input += nlohmann::json{{"ids", d["ids"]}}.dump() + "\n";
  const std::string in = write_temp("score_in.jsonl", input);
  Outcome r = run("build/score --device cpu --model " + fx + "/model --adapter " + fx + "/adapter < " + in);
  ASSERT_EQ(r.code, 0) << r.out;
  Checkpoint exp = Checkpoint::open(fx + "/expected.safetensors");
  std::istringstream lines(r.out);
  std::string line;
  for (size_t i = 0; i < docs.size(); ++i) {
    ASSERT_TRUE(std::getline(lines, line)) << r.out;
    auto j = nlohmann::json::parse(line);
    auto ids = docs[i]["ids"].get<std::vector<int>>();
    if (ids.size() < 2) {
      EXPECT_TRUE(j["nll"].is_null());
      EXPECT_EQ(j["tokens"], 0);
      continue;
    }
    auto logits = exp.read_f32(cat("logits.", i), {int64_t(ids.size()), 64});
    const double want = nll_from_logits(logits, ids, 64);
    EXPECT_EQ(j["tokens"].get<int>(), int(ids.size()) - 1);
    EXPECT_NEAR(j["nll"].get<double>(), want, 1e-4 * want) << "line " << i + 1;
  }
}

TEST(ScoreCli, BadLinesAreNamed) {
  if (!have("build/score")) GTEST_SKIP() << "build/score missing";
  const std::string model = test::fixtures_dir() + "/hf/llama/model";
  Outcome bad_json = run("build/score --device cpu --model " + model + " < " +
                     write_temp("bad.jsonl", "{\"ids\": [1, 2]}\n{\"ids\": [1,\n"));
  EXPECT_EQ(bad_json.code, 1);
  EXPECT_NE(bad_json.out.find("stdin:2: invalid JSON"), std::string::npos) << bad_json.out;
  Outcome oov = run("build/score --device cpu --model " + model + " < " + write_temp("oov.jsonl", "{\"ids\": [1, 64]}\n"));
  EXPECT_EQ(oov.code, 1);
  EXPECT_NE(oov.out.find("stdin:1: id 64 is outside the model's vocabulary"), std::string::npos) << oov.out;
  Outcome missing = run("build/score --model /nonexistent/model < /dev/null");
  EXPECT_EQ(missing.code, 1);
  EXPECT_NE(missing.out.find("/nonexistent/model"), std::string::npos) << missing.out;
}

// FORMATS.md's test vectors through the CLI: special-token strings in the text are special, BOS only
// with --bos, a bad line named.
TEST(TokenizeCli, EncodesLinesAndNamesBadOnes) {
  if (!have("build/tokenize")) GTEST_SKIP() << "build/tokenize missing";
  const std::string tok = test::shared_dir() + "/tokenizers/";
  Outcome qwen = run("build/tokenize --tokenizer " + tok + "qwen3 < " +
                     write_temp("tok.jsonl", "{\"text\": \"Hello world<|im_end|>\"}\n{\"text\": \"\"}\n"));
  ASSERT_EQ(qwen.code, 0) << qwen.out;
  EXPECT_EQ(qwen.out, "{\"ids\":[9707,1879,151645]}\n{\"ids\":[]}\n");
  Outcome llama = run("build/tokenize --bos --tokenizer " + tok + "llama3 < " +
                      write_temp("tok2.jsonl", "{\"text\": \"Hello\"}\n"));
  EXPECT_EQ(llama.out, "{\"ids\":[128000,9906]}\n");
  Outcome bad = run("build/tokenize --tokenizer " + tok + "qwen3 < " +
                    write_temp("tok3.jsonl", "{\"text\": \"a\"}\n{\"text\": 5}\n"));
  EXPECT_EQ(bad.code, 1);
  EXPECT_NE(bad.out.find("stdin:2:"), std::string::npos) << bad.out;
}

TEST(TrainCli, BadConfigIsReportedWithFileAndKey) {
  if (!have("build/train")) GTEST_SKIP() << "build/train missing";
  const std::string cfg = write_temp("bad.yaml", "model:\n  preset: tiny\nlora:\n  rank: 8\n");
  Outcome r = run("build/train " + cfg);
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.out.find("lora.rank"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("did you mean 'lora.r'"), std::string::npos) << r.out;
}

// The README's quick start, shortened: the demo config trains on the CPU and the loss falls.
TEST(TrainCli, DemoConfigTrainsAndLossFalls) {
  if (!have("build/train")) GTEST_SKIP() << "build/train missing";
  const fs::path dir = fs::temp_directory_path() / "loom_cli_test_demo";
  fs::remove_all(dir);
  Outcome r = run("build/train configs/demo.yaml train.device=cpu train.steps=12 output.checkpoint_every=0 output.dir=" +
              dir.string());
  ASSERT_EQ(r.code, 0) << r.out;
  std::ifstream f(dir / "metrics.jsonl");
  std::vector<double> losses;
  for (std::string l; std::getline(f, l);) losses.push_back(nlohmann::json::parse(l)["loss"].get<double>());
  ASSERT_EQ(losses.size(), 12u);
  EXPECT_LT(losses.back(), 0.8 * losses.front()) << r.out;
  EXPECT_TRUE(fs::exists(dir / "adapter" / "adapter_model.safetensors"));
}

}  // namespace
}  // namespace loom
