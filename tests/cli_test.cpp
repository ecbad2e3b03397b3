// The programs as a user runs them (build/score, build/train): output format, exit codes, and
// error messages that name the line, file or key. `make test` builds the binaries first.
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "data/chat_template.h"
#include "data/dataset.h"
#include "data/tokenizer.h"
#include "models/safetensors.h"
#include "ops/error.h"
#include "tests/hf_fixture.h"
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
  r.out = test::shell(cmd, &r.code);
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

// build/score --pairs on the DPO fixture's pairs (ids form): the policy (adapter) and reference
// (base) log-probs of each completion, the rewards and the sigmoid DPO loss are TRL's (fp32 torch,
// tools/make_dpo_fixtures.py) within 1e-5 relative (the logps sum fp32 token log-probs: ~1e-7 of
// |logp| each on both sides; the losses are printed from doubles).
TEST(ScoreCli, PairsGiveTrlsLogpsRewardsAndLoss) {
  if (!have("build/score")) GTEST_SKIP() << "build/score missing";
  const std::string fx = test::fixtures_dir() + "/dpo/llama";
  std::ifstream ef(fx + "/expected.json");
  const nlohmann::json e = nlohmann::json::parse(ef);
  std::string input;
  for (const auto& p : e["pairs"])
    input += nlohmann::json{{"prompt_ids", p["prompt_ids"]}, {"chosen_ids", p["chosen_ids"]},
                            {"rejected_ids", p["rejected_ids"]}}
                 .dump() +
             "\n";
  const std::string in = write_temp("score_pairs.jsonl", input);
  const std::string hf = test::fixtures_dir() + "/hf/llama";
  Outcome r = run("build/score --device cpu --pairs --beta 0.1 --model " + hf + "/model --adapter " + hf +
                  "/adapter < " + in);
  ASSERT_EQ(r.code, 0) << r.out;
  const auto& want = e["per_pair_logps"];
  std::istringstream lines(r.out);
  std::string line;
  for (size_t i = 0; i < e["pairs"].size(); ++i) {
    ASSERT_TRUE(std::getline(lines, line)) << r.out;
    const nlohmann::json j = nlohmann::json::parse(line);
    auto close = [&](const char* got, double expected) {
      EXPECT_LE(test::relative_error(j[got].get<double>(), expected), 1e-5) << "pair " << i << " " << got;
    };
    close("logps/chosen", want["policy_chosen"][i]);
    close("logps/rejected", want["policy_rejected"][i]);
    close("ref_logps/chosen", want["reference_chosen"][i]);
    close("ref_logps/rejected", want["reference_rejected"][i]);
    close("loss", want["sigmoid_loss_beta01"][i]);
    EXPECT_EQ(j["chosen_tokens"], want["chosen_tokens"][i]);
    EXPECT_EQ(j["rejected_tokens"], want["rejected_tokens"][i]);
    EXPECT_NEAR(j["rewards/margins"].get<double>(),
                j["rewards/chosen"].get<double>() - j["rewards/rejected"].get<double>(), 1e-12);
  }
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

// -log p of each token after the first, from --per-token "logprobs" read back as the floats written.
std::vector<float> losses_of(const nlohmann::json& line) {
  std::vector<float> out;
  for (const auto& v : line.at("logprobs")) out.push_back(-float(v.get<double>()));
  return out;
}

TEST(ScoreCli, PerTokenLogprobsMatchHuggingFaceLogits) {
  if (!have("build/score")) GTEST_SKIP() << "build/score missing";
  const std::string fx = test::fixtures_dir() + "/hf/llama";
  std::ifstream bf(fx + "/batch.json");
  auto docs = nlohmann::json::parse(bf)["documents"];
  std::string input;
  for (const auto& d : docs) input += nlohmann::json{{"ids", d["ids"]}}.dump() + "\n";
  const std::string in = write_temp("score_pt.jsonl", input);
  const std::string cmd = "build/score --device cpu --model " + fx + "/model --adapter " + fx + "/adapter";
  Outcome plain = run(cmd + " < " + in), per_token = run(cmd + " --per-token < " + in);
  ASSERT_EQ(per_token.code, 0) << per_token.out;
  Checkpoint exp = Checkpoint::open(fx + "/expected.safetensors");
  std::istringstream plain_lines(plain.out), lines(per_token.out);
  std::string plain_line, line;
  for (size_t i = 0; i < docs.size(); ++i) {
    ASSERT_TRUE(std::getline(lines, line) && std::getline(plain_lines, plain_line)) << per_token.out;
    const auto j = nlohmann::json::parse(line);
    const auto ids = docs[i]["ids"].get<std::vector<int>>();
    // The {"ids"} form's nll and tokens are what they are without --per-token, to the digit.
    EXPECT_EQ(line.substr(0, plain_line.size() - 1) + "}", plain_line) << "line " << i + 1;
    EXPECT_FALSE(j.contains("ids") || j.contains("targets"));  // the user gave the ids: all are targets
    const std::vector<float> losses = losses_of(j);
    ASSERT_EQ(losses.size(), ids.size() > 0 ? ids.size() - 1 : 0) << "line " << i + 1;
    if (ids.size() < 2) continue;
    const auto logits = exp.read_f32(cat("logits.", i), {int64_t(ids.size()), 64});
    double sum = 0;
    for (size_t t = 0; t + 1 < ids.size(); ++t) {
      const std::vector<float> row(logits.begin() + t * 64, logits.begin() + (t + 1) * 64);
      const double want = nll_from_logits(row, {ids[t], ids[t + 1]}, 64);
      // fp32 reference path against HF's fp32 logits: sums of the same terms in another order,
      // ~1e-6 relative; 1e-4 is the nll test's bound above.
      EXPECT_NEAR(losses[t], want, 1e-4 * std::max(want, 1.0)) << "line " << i + 1 << " token " << t + 1;
      sum += losses[t];
    }
    // nll is the mean of the same losses, summed in the same order in double.
    EXPECT_EQ(j["nll"].get<double>(), sum / double(ids.size() - 1)) << "line " << i + 1;
  }
}

// A model folder that can score text: the tiny llama fixture (V = 64) with a ChatML tokenizer of 35
// tokens, one per character of its alphabet plus <|endoftext|>, <|im_start|> and <|im_end|>.
std::string tiny_chat_model() {
  const fs::path dir = test::fresh_temp_dir("cli_test_chat_model");
  fs::create_directories(dir);
  const std::string fx = test::fixtures_dir() + "/hf/llama/model";
  fs::copy_file(fx + "/config.json", dir / "config.json");
  fs::copy_file(fx + "/model.safetensors", dir / "model.safetensors");
  nlohmann::json vocab = nlohmann::json::object(), added = nlohmann::json::array();
  for (char c : std::string("\n abcdefghijklmnopqrstuvwxyz.,?!")) vocab[std::string(1, c)] = vocab.size();
  for (const char* special : {"<|endoftext|>", "<|im_start|>", "<|im_end|>"}) {
    added.push_back({{"id", vocab.size()}, {"content", special}, {"special", true}});
    vocab[special] = vocab.size();
  }
  const nlohmann::json tokenizer = {
      {"added_tokens", added},  {"normalizer", nullptr}, {"pre_tokenizer", nullptr}, {"post_processor", nullptr},
      {"decoder", nullptr},     {"model", {{"type", "BPE"}, {"vocab", vocab}, {"merges", nlohmann::json::array()}}}};
  std::ofstream(dir / "tokenizer.json") << tokenizer.dump();
  const nlohmann::json config = {
      {"eos_token", "<|im_end|>"},
      {"pad_token", "<|endoftext|>"},
      {"chat_template",
       "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + "
       "'<|im_end|>' + '\\n'}}{% endfor %}"}};
  std::ofstream(dir / "tokenizer_config.json") << config.dump();
  return dir.string();
}

nlohmann::json chat(const std::string& user, const std::string& answer) {
  return {{"messages", {{{"role", "user"}, {"content", user}}, {{"role", "assistant"}, {"content", answer}}}}};
}

std::vector<nlohmann::json> output_lines(const Outcome& r) {
  std::vector<nlohmann::json> out;
  std::istringstream lines(r.out);
  for (std::string line; std::getline(lines, line);) out.push_back(nlohmann::json::parse(line));
  return out;
}

// Text and conversations are tokenized and masked as build/prepare does, and their log-probs are
// the ones the same ids score as {"ids"}.
TEST(ScoreCli, TextAndConversationsScoreTheirTargetsAsTrainingWould) {
  if (!have("build/score")) GTEST_SKIP() << "build/score missing";
  const std::string model = tiny_chat_model();
  const auto tok = Tokenizer::load(model);
  const ChatTemplate tmpl = resolve_chat_template("auto", read_chat_template_source(model), false);
  ASSERT_EQ(tmpl.name, "chatml");
  const Document text = tokenize_text(*tok, "hello world.");
  const std::vector<ChatMessage> messages = {{"user", "hi there?", ""}, {"assistant", "hello, friend.", ""}};
  const Document conversation = tokenize_segments(*tok, render_chat(tmpl, messages), false);
  const std::vector<nlohmann::json> inputs = {
      {{"text", "hello world."}},
      chat("hi there?", "hello, friend."),
      {{"conversations",
        {{{"from", "human"}, {"value", "hi there?"}}, {{"from", "gpt"}, {"value", "hello, friend."}}}}},
      {{"instruction", "hi there?"}, {"output", "hello, friend."}},
      {{"ids", text.ids}},
      {{"ids", conversation.ids}}};
  std::string input;
  for (const auto& j : inputs) input += j.dump() + "\n";
  const std::string in = write_temp("score_text.jsonl", input);
  const std::string cmd = "build/score --device cpu --per-token --model " + model;
  const std::vector<nlohmann::json> out = output_lines(run(cmd + " < " + in));
  ASSERT_EQ(out.size(), inputs.size()) << run(cmd + " < " + in).out;

  // Text: [BOS] text [EOS] (this tokenizer has no BOS), every token after the first a target.
  EXPECT_EQ(out[0]["ids"], text.ids);
  EXPECT_EQ(out[0]["targets"], std::vector<int>(text.ids.size() - 1, 1));
  EXPECT_EQ(out[0]["tokens"], text.ids.size() - 1);
  EXPECT_EQ(out[0]["logprobs"], out[4]["logprobs"]);
  EXPECT_EQ(out[0]["nll"], out[4]["nll"]);

  // A conversation: the response and its end of turn are the targets.
  EXPECT_EQ(out[1]["ids"], conversation.ids);
  const std::vector<uint8_t> targets(conversation.mask.begin() + 1, conversation.mask.end());
  EXPECT_EQ(out[1]["targets"], targets);
  const std::vector<float> losses = losses_of(out[1]);
  ASSERT_EQ(losses.size(), targets.size());
  double sum = 0;
  int n = 0;
  for (size_t i = 0; i < targets.size(); ++i)
    if (targets[i]) sum += losses[i], ++n;
  EXPECT_EQ(n, 16);  // "hello, friend." one token per character, then <|im_end|> and "\n"
  EXPECT_EQ(out[1]["tokens"], n);
  EXPECT_EQ(out[1]["nll"].get<double>(), sum / n);
  EXPECT_EQ(out[1]["logprobs"], out[5]["logprobs"]);
  EXPECT_EQ(out[2], out[1]);  // ShareGPT
  EXPECT_EQ(out[3], out[1]);  // Alpaca

  // --train-on all: every token after the first, as the {"ids"} form scores them.
  const std::vector<nlohmann::json> all = output_lines(run(cmd + " --train-on all < " + in));
  ASSERT_EQ(all.size(), inputs.size());
  EXPECT_EQ(all[1]["tokens"], conversation.ids.size() - 1);
  EXPECT_EQ(all[1]["nll"], out[5]["nll"]);
}

// Every error of build/score names what the user typed: the flag, or stdin:LINE.
TEST(ScoreCli, ErrorsNameTheFlagOrTheLine) {
  if (!have("build/score")) GTEST_SKIP() << "build/score missing";
  const std::string chat_model = tiny_chat_model();
  const std::string bare_model = test::fixtures_dir() + "/hf/llama/model";  // no tokenizer files
  const std::string qwen3 = test::shared_dir() + "/tokenizers/qwen3";
  const std::string text = write_temp("score_err_text.jsonl", "{\"text\": \"hi\"}\n");
  const std::string conversation = write_temp("score_err_chat.jsonl", chat("hi", "yo").dump() + "\n");
  const std::string ids = write_temp("score_err_ids.jsonl", "{\"ids\": [1, 2]}\n");
  struct Case {
    std::string args, input;
    std::vector<std::string> parts;
  };
  const std::vector<Case> cases = {
      {"--model /nonexistent/model", ids, {"error: --model /nonexistent/model: no such file"}},
      {"--model " + bare_model + "/config.json", ids, {"error: --model " + bare_model + "/config.json is a file"}},
      {"--model " + bare_model + " --adapter /nonexistent/adapter",
       ids,
       {"error: --adapter /nonexistent/adapter: no such file"}},
      {"--model " + bare_model + " --tokenizer /nonexistent/tok",
       ids,
       {"error: --tokenizer /nonexistent/tok: no such file"}},
      {"--model " + bare_model + " --template nope", ids, {"error: --template must be one of auto, none, chatml"}},
      {"--model " + bare_model + " --train-on some", ids, {"error: --train-on must be one of responses, all"}},
      {"--model " + bare_model + " --device tpu", ids, {"error: --device must be one of auto, cpu, cuda"}},
      {"--model " + bare_model + " --frobnicate", ids, {"error: unknown argument '--frobnicate'"}},
      {"--model " + bare_model, text, {"error: stdin:1: ", "the model folder has none", "pass --tokenizer PATH"}},
      {"--model " + bare_model + " --tokenizer " + qwen3,
       text,
       {"error: stdin:1: the tokenizer gave id ",
        "outside the model's vocabulary [0, 64); is --tokenizer the model's "
        "tokenizer?"}},
      {"--model " + chat_model + " --tokenizer " + qwen3,
       ids,
       {"error: --tokenizer <" + qwen3 + "/tokenizer.json, fnv1a64 ", "vocab 151669",
        "is not the tokenizer of --model " + chat_model + " <" + chat_model + "/tokenizer.json", "vocab 35",
        "leave --tokenizer out"}},
      {"--model " + chat_model + " --template none",
       conversation,
       {"error: stdin:1: a conversation needs a chat template, and --template is none", "or set --template"}},
      {"--model " + bare_model + " --tokenizer " + test::fixtures_dir() + "/tokenizer/tiny_unk_fused.json",
       conversation,
       {"error: stdin:1: --template is auto but the tokenizer has no chat template", "set --template to chatml"}},
      {"--model " + chat_model,
       write_temp("score_err_role.jsonl", "{\"messages\": [{\"role\": \"robot\", \"content\": \"x\"}]}\n"),
       {"error: stdin:1: messages[0].role is \"robot\""}},
      {"--model " + chat_model,
       write_temp("score_err_keys.jsonl", "{\"prompt\": \"x\"}\n"),
       {"error: stdin:1: cannot tell what to score from the keys (prompt)"}},
      {"--model " + chat_model,
       write_temp("score_err_ids_type.jsonl", "{\"ids\": \"1 2\"}\n"),
       {"error: stdin:1: \"ids\" must be a list of integers"}},
  };
  for (const Case& c : cases) {
    const Outcome r = run("build/score --device cpu " + c.args + " < " + c.input);
    EXPECT_EQ(r.code, 1) << c.args << "\n" << r.out;
    for (const std::string& part : c.parts)
      EXPECT_NE(r.out.find(part), std::string::npos) << "\"" << part << "\" missing for " << c.args << ":\n" << r.out;
    for (const char* key : {"model.path", "data.tokenizer", "data.template", "data.train_on"})
      EXPECT_EQ(r.out.find(key), std::string::npos) << "config key " << key << " in: " << r.out;
  }
}

// FORMATS.md's test vectors through the CLI: special-token strings in the text are special, special
// tokens added only with --special and only where the tokenizer's post-processor adds them, a bad
// line named.
TEST(TokenizeCli, EncodesLinesAndNamesBadOnes) {
  if (!have("build/tokenize")) GTEST_SKIP() << "build/tokenize missing";
  const std::string tok = test::shared_dir() + "/tokenizers/";
  Outcome qwen = run("build/tokenize --tokenizer " + tok + "qwen3 < " +
                     write_temp("tok.jsonl", "{\"text\": \"Hello world<|im_end|>\"}\n{\"text\": \"\"}\n"));
  ASSERT_EQ(qwen.code, 0) << qwen.out;
  EXPECT_EQ(qwen.out, "{\"ids\":[9707,1879,151645]}\n{\"ids\":[]}\n");
  // --special (and its older name --bos) adds what HF's add_special_tokens=True adds: nothing for
  // the shared Llama 3 file, whose post-processor is ByteLevel alone; <s> for Mistral.
  const std::string hello = write_temp("tok2.jsonl", "{\"text\": \"Hello\"}\n");
  EXPECT_EQ(run("build/tokenize --bos --tokenizer " + tok + "llama3 < " + hello).out, "{\"ids\":[9906]}\n");
  EXPECT_EQ(run("build/tokenize --special --tokenizer " + tok + "llama3 < " + hello).out, "{\"ids\":[9906]}\n");
  EXPECT_EQ(run("build/tokenize --special --tokenizer " + tok + "mistral < " + hello).out, "{\"ids\":[1,22557]}\n");
  Outcome missing = run("build/tokenize --tokenizer /nonexistent/tok.json < " + hello);
  EXPECT_EQ(missing.code, 1);
  EXPECT_NE(missing.out.find("error: --tokenizer /nonexistent/tok.json: no such file"), std::string::npos)
      << missing.out;
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
  const fs::path dir = test::fresh_temp_dir("cli_test_demo");
  Outcome r = run("build/train configs/demo.yaml train.device=cpu train.steps=12 output.checkpoint_every=0 output.dir=" +
              dir.string());
  ASSERT_EQ(r.code, 0) << r.out;
  std::ifstream f(dir / "metrics.jsonl");
  std::vector<double> losses, eval_losses;
  for (std::string l; std::getline(f, l);) {
    const nlohmann::json j = nlohmann::json::parse(l);
    if (j.contains("eval_loss")) eval_losses.push_back(j["eval_loss"].get<double>());
    else losses.push_back(j["loss"].get<double>());
  }
  ASSERT_EQ(losses.size(), 12u);
  EXPECT_LT(losses.back(), 0.8 * losses.front()) << r.out;
  // The demo holds 5% of its chats out and evaluates every 50 steps and at the end: once here.
  ASSERT_EQ(eval_losses.size(), 1u) << r.out;
  EXPECT_LT(eval_losses[0], losses.front()) << r.out;
  EXPECT_TRUE(fs::exists(dir / "adapter" / "adapter_model.safetensors"));
  // It samples its 4 prompts before the first step and after the last (sample_every 50 > 12 steps).
  std::ifstream samples(dir / "samples.jsonl");
  std::vector<int> steps;
  for (std::string l; std::getline(samples, l);) {
    const nlohmann::json j = nlohmann::json::parse(l);
    steps.push_back(j["step"].get<int>());
    EXPECT_NE(j["prompt"].get<std::string>().find("[INST]"), std::string::npos) << l;  // the chat template's
    EXPECT_TRUE(j["finish_reason"] == "eos" || j["finish_reason"] == "length") << l;
  }
  EXPECT_EQ(steps, (std::vector<int>{0, 0, 0, 0, 12, 12, 12, 12}));
  // The merged export is a model folder build/generate talks to, as the README's chat command does.
  ASSERT_TRUE(fs::exists(dir / "merged" / "config.json"));
  Outcome talk = run("printf 'What is 2 plus 2?\\n/reset\\nCount from 3 to 6.\\n/exit\\n' | build/generate --model " +
                     (dir / "merged").string() + " --chat --max-new-tokens 12 2>&1");
  EXPECT_EQ(talk.code, 0) << talk.out;
  Outcome batch = run("echo '{\"messages\": [{\"role\": \"user\", \"content\": \"What is 2 plus 2?\"}]}' | "
                      "build/generate --model " + (dir / "merged").string() + " --max-new-tokens 12 2>&1");
  ASSERT_EQ(batch.code, 0) << batch.out;
  const nlohmann::json line = nlohmann::json::parse(batch.out);
  EXPECT_LE(line["tokens"].get<int>(), 12);
  EXPECT_EQ(line["ids"].size(), line["tokens"].get<size_t>());
}

// build/generate on the llama fixture (no tokenizer: ids in, ids out) gives HF's greedy ids
// (tests/fixtures/generate/llama.json) with and without the adapter, applied unmerged (the CPU's
// default) and merged into the base weights: the CLI runs the engine's loop.
TEST(GenerateCli, GreedyIdsAreHuggingFacesWithAndWithoutTheAdapter) {
  if (!have("build/generate")) GTEST_SKIP() << "build/generate missing";
  const nlohmann::json fx = test::read_json(test::fixtures_dir() + "/generate/llama.json");
  std::string input;
  for (const auto& p : fx["prompts"]) input += nlohmann::json{{"ids", p}}.dump() + "\n";
  const std::string in = write_temp("generate_ids.jsonl", input);
  const std::string model = test::fixtures_dir() + "/hf/llama/model";
  const std::string adapter_flag = " --adapter " + test::fixtures_dir() + "/hf/llama/adapter";
  for (const std::string& how : {std::string(), adapter_flag, adapter_flag + " --lora merged"}) {
    const bool adapter = !how.empty();
    Outcome r = run("build/generate --model " + model + how + " --ignore-eos --max-new-tokens 40 --batch-size 2 < " + in);
    ASSERT_EQ(r.code, 0) << r.out;
    const std::vector<nlohmann::json> lines = output_lines(r);
    const auto& want = fx["greedy"][adapter ? "adapter" : "base"];
    ASSERT_EQ(lines.size(), want.size()) << r.out;
    for (size_t i = 0; i < lines.size(); ++i) {
      EXPECT_EQ(lines[i]["ids"], want[i]) << "prompt " << i << " with '" << how << "'";
      EXPECT_EQ(lines[i]["finish_reason"], "length");
      EXPECT_EQ(lines[i]["prompt_tokens"], fx["prompts"][i].size());
    }
  }
}

TEST(GenerateCli, ErrorsNameTheFlagOrTheLine) {
  if (!have("build/generate")) GTEST_SKIP() << "build/generate missing";
  const std::string model = test::fixtures_dir() + "/hf/llama/model";
  const std::string ids = write_temp("generate_bad.jsonl", "{\"ids\": [5, 6]}\n{\"ids\": [5, 64]}\n");
  const std::string garbage = write_temp("generate_garbage.jsonl", "{\"ids\": [5, 6]}\n{\"ids\": [5,\n");
  const std::string text = write_temp("generate_text.jsonl", "{\"prompt\": \"hello\"}\n");
  const std::string good = write_temp("generate_good.jsonl", "{\"ids\": [5, 6]}\n");
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"--model " + model + " < " + ids, "stdin:2: id 64 is outside the model's vocabulary [0, 64)"},
      {"--model " + model + " < " + garbage, "stdin:2:"},
      {"--model " + model + " < " + text, "stdin:1: text and conversations are tokenized with the model's tokenizer"},
      {"--model " + model + " --stop x < " + good, "stop strings need a tokenizer"},
      {"--model " + model + " --top-p 1.5 < " + good, "--top-p must be in (0, 1]"},
      {"--model " + model + " --temperature -1 < " + good, "--temperature"},
      {"--model " + model + " --max-new-tokens 0 < " + good, "--max-new-tokens expects an integer in [1, "},
      {"--model " + model + " --device tpu < " + good, "--device must be one of cpu, cuda"},
      {"--model " + model + " --greedy --temperature 0.7 < " + good, "--greedy and --temperature 0.7 contradict"},
      {"--model " + model + " --system hi < " + good, "--system is the system message of --chat"},
      {"--model " + model + " --chat", "the model folder has none"},
      {"--model " + model + " --bogus < " + good, "unknown argument '--bogus'"},
      {"< " + ids, "--model is required"},
  };
  for (const auto& [args, want] : cases) {
    Outcome r = run("build/generate " + args + " 2>&1");
    EXPECT_EQ(r.code, 1) << args << "\n" << r.out;
    EXPECT_NE(r.out.find(want), std::string::npos) << args << "\n" << r.out;
    EXPECT_EQ(run("build/generate " + args + " 2>/dev/null | cat").out, "") << "nothing generated: " << args;
  }
}

// The README's quick start run twice in a row: the second run finds the run complete, says so,
// trains nothing and exits 0, printing no loss for steps that did not run. A third with another
// train.lr is refused, naming the change and both ways on.
TEST(TrainCli, QuickStartRunTwiceSaysTheRunIsComplete) {
  if (!have("build/train")) GTEST_SKIP() << "build/train missing";
  const fs::path dir = test::fresh_temp_dir("cli_test_twice");
  const std::string cmd = "build/train configs/demo.yaml train.device=cpu train.steps=3 output.dir=" + dir.string();
  ASSERT_EQ(run(cmd).code, 0);
  const Outcome again = run(cmd);
  EXPECT_EQ(again.code, 0) << again.out;
  EXPECT_NE(again.out.find("run folder " + dir.string() + " is complete (3 of 3 steps, final loss "),
            std::string::npos) << again.out;
  EXPECT_NE(again.out.find("output.on_change=accept"), std::string::npos) << again.out;
  EXPECT_EQ(again.out.find("loss 0.0000"), std::string::npos) << again.out;
  EXPECT_EQ(again.out.find("done:"), std::string::npos) << again.out;
  const Outcome changed = run(cmd + " train.lr=0.001");
  EXPECT_EQ(changed.code, 1) << changed.out;
  EXPECT_NE(changed.out.find("train.lr: 0.003 -> 0.001"), std::string::npos) << changed.out;
  EXPECT_NE(changed.out.find("choose another output.dir"), std::string::npos) << changed.out;
}

// A kernel benchmark's flags are checked before it asks for a GPU: a bad one is named, exit 1.
TEST(BenchCli, GemvBenchNamesABadFlag) {
  if (!have("build/gemv_bench")) GTEST_SKIP() << "build/gemv_bench missing";
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"--call gate", "[--call q/k/v|o|gate/up|down] (found --call gate)"},
      {"--call", "(found --call)"},
      {"--bogus x", "(found --bogus)"},
  };
  for (const auto& [args, want] : cases) {
    Outcome r = run("build/gemv_bench " + args + " 2>&1");
    EXPECT_EQ(r.code, 1) << args << "\n" << r.out;
    EXPECT_NE(r.out.find(want), std::string::npos) << args << "\n" << r.out;
  }
}

}  // namespace
}  // namespace loom
