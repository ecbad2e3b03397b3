// engine/config: YAML -> TrainConfig, overrides, every error class with its message shape,
// validation that reports everything at once, the to_yaml round trip, and the shipped configs/.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <functional>
#include <tuple>

#include "engine/config.h"
#include "ops/error.h"
#include "tests/test_util.h"

namespace loom {
namespace {

// The smallest valid config: everything else at its default.
const char* const kMinimal =
    "model:\n"
    "  preset: tiny\n"
    "data:\n"
    "  synthetic: sft-alpaca\n";

using test::error_of;

std::string parse_error(const std::string& yaml, const std::vector<std::string>& overrides = {}) {
  return error_of([&] { parse_config(yaml, "x.yaml", overrides); });
}

// Member-by-member equality, written out so that it does not depend on the field table it tests.
bool same(const TrainConfig& a, const TrainConfig& b) {
  auto model = [](const ModelOptions& m) { return std::tie(m.path, m.preset, m.quant, m.double_quant, m.init_seed); };
  auto lora = [](const LoraOptions& l) {
    return std::tie(l.r, l.alpha, l.dropout, l.rslora, l.targets, l.init_from);
  };
  auto data = [](const DataOptions& d) {
    return std::tie(d.path, d.synthetic, d.synthetic_docs, d.format, d.tokenizer, d.template_name, d.train_on,
                    d.max_seq_len, d.max_prompt_len, d.overlong, d.on_bad_line, d.cache_dir, d.eval_path,
                    d.eval_split);
  };
  auto train = [](const TrainSection& t) {
    return std::tie(t.device, t.objective, t.token_budget, t.global_batch, t.steps, t.epochs, t.lr, t.schedule,
                    t.warmup_steps, t.min_lr_ratio, t.weight_decay, t.beta1, t.beta2, t.eps, t.max_grad_norm,
                    t.recompute, t.seed, t.log_every, t.eval_every, t.early_stopping_patience);
  };
  auto dpo = [](const DpoSection& d) {
    return std::tie(d.beta, d.loss_type, d.label_smoothing);
  };
  auto output = [](const OutputSection& o) {
    return std::tie(o.dir, o.checkpoint_every, o.keep_checkpoints, o.export_format, o.gguf_type, o.resume, o.on_change,
                    o.keep_best);
  };
  return model(a.model) == model(b.model) && lora(a.lora) == lora(b.lora) && data(a.data) == data(b.data) &&
         train(a.train) == train(b.train) && dpo(a.dpo) == dpo(b.dpo) && a.orpo.lambda == b.orpo.lambda &&
         output(a.output) == output(b.output) && a.source == b.source;
}

TEST(Config, UnsetKeysKeepTheStructDefaults) {
  TrainConfig cfg = parse_config(kMinimal, "x.yaml");
  TrainConfig want;
  want.model.preset = "tiny";
  want.data.synthetic = "sft-alpaca";
  want.source = "x.yaml";
  EXPECT_TRUE(same(cfg, want)) << to_yaml(cfg);
  EXPECT_TRUE(same(parse_config(std::string(kMinimal) + "lora:\ntrain: ~\n", "x.yaml"), want)) << "empty sections";
}

TEST(Config, ReadsEveryKindOfValueAndTheRenamedKeys) {
  TrainConfig cfg = parse_config(
      "model: {path: /models/Qwen3-0.6B, quant: bf16, double_quant: false}\n"
      "lora: {r: 32, alpha: 64, dropout: 0.05, rslora: yes, targets: [q_proj, v_proj]}\n"
      "data: {path: chats.jsonl, template: qwen3, tokenizer:}\n"
      "train: {lr: 3e-3, eps: 1e-6, steps: 7}\n"
      "output: {export: merged, resume: runs/a/checkpoints/step-4}\n",
      "x.yaml");
  EXPECT_EQ(cfg.model.path, "/models/Qwen3-0.6B");
  EXPECT_EQ(cfg.model.quant, Quant::kBf16);
  EXPECT_FALSE(cfg.model.double_quant);
  EXPECT_EQ(cfg.lora.r, 32);
  EXPECT_EQ(cfg.lora.alpha, 64.f);
  EXPECT_EQ(cfg.lora.dropout, 0.05f);
  EXPECT_TRUE(cfg.lora.rslora);
  EXPECT_EQ(cfg.lora.targets, (std::vector<std::string>{"q_proj", "v_proj"}));
  EXPECT_EQ(cfg.data.template_name, "qwen3");
  EXPECT_EQ(cfg.data.tokenizer, "");
  EXPECT_EQ(cfg.train.lr, 3e-3f);
  EXPECT_EQ(cfg.train.eps, 1e-6f);
  EXPECT_EQ(cfg.train.steps, 7);
  EXPECT_EQ(cfg.output.export_format, ExportFormat::kMerged);
  EXPECT_EQ(cfg.output.resume, "runs/a/checkpoints/step-4");
}

TEST(Config, OverridesApplyAfterTheFileInOrder) {
  TrainConfig cfg = parse_config(std::string(kMinimal) + "lora:\n  r: 8\n", "x.yaml",
                                 {"lora.r=4", "lora.r=12", "lora.targets=[q_proj,v_proj]", "train.lr=1e-4",
                                  "lora.rslora=true", "data.template=mistral", "output.export=none"});
  EXPECT_EQ(cfg.lora.r, 12);
  EXPECT_EQ(cfg.lora.targets, (std::vector<std::string>{"q_proj", "v_proj"}));
  EXPECT_EQ(cfg.train.lr, 1e-4f);
  EXPECT_TRUE(cfg.lora.rslora);
  EXPECT_EQ(cfg.data.template_name, "mistral");
  EXPECT_EQ(cfg.output.export_format, ExportFormat::kNone);
}

TEST(Config, OneNameIsAOneItemList) {
  EXPECT_EQ(parse_config(kMinimal, "x.yaml", {"lora.targets=all-linear"}).lora.targets,
            std::vector<std::string>{"all-linear"});
  EXPECT_EQ(parse_config(std::string(kMinimal) + "lora:\n  targets: q_proj\n", "x.yaml").lora.targets,
            std::vector<std::string>{"q_proj"});
}

TEST(Config, OverrideCanSwitchBetweenExclusiveKeys) {
  TrainConfig cfg = parse_config(kMinimal, "x.yaml", {"model.preset=", "model.path=/models/m"});
  EXPECT_EQ(cfg.model.preset, "");
  EXPECT_EQ(cfg.model.path, "/models/m");
}

TEST(Config, MalformedOverrideNamesTheCommandLine) {
  const char* want = "command line: lorar=8: expected section.key=value (e.g. lora.r=8 or lora.targets=[q_proj,v_proj])";
  EXPECT_EQ(parse_error(kMinimal, {"lorar=8"}), want);
  EXPECT_NE(parse_error(kMinimal, {"lora.r"}).find("command line: lora.r: expected section.key=value"),
            std::string::npos);
  EXPECT_NE(parse_error(kMinimal, {"lora.targets=[q_proj"}).find("command line: lora.targets=[q_proj: invalid YAML: "),
            std::string::npos);
}

TEST(Config, OverrideWithUnknownKeyNamesTheCommandLine) {
  EXPECT_EQ(parse_error(kMinimal, {"lora.rank=8"}),
            "command line: lora.rank=8: unknown key 'lora.rank'; did you mean 'lora.r'?");
  EXPECT_EQ(parse_error(kMinimal, {"lroa.r=8"}), "command line: lroa.r=8: unknown section 'lroa'; did you mean 'lora'?");
  EXPECT_EQ(parse_error(kMinimal, {"lora.r=sixteen"}),
            "command line: lora.r=sixteen: lora.r: expected an integer, found 'sixteen'");
}

TEST(Config, UnknownKeySuggestsTheNearestWithFileAndLine) {
  std::string yaml = std::string(kMinimal) + "lora:\n  alpha: 16\n  rank: 8\n";
  EXPECT_EQ(parse_error(yaml), "x.yaml:7: unknown key 'lora.rank'; did you mean 'lora.r'?");
  EXPECT_EQ(parse_error(std::string(kMinimal) + "train:\n  warmup: 10\n"),
            "x.yaml:6: unknown key 'train.warmup'; did you mean 'train.warmup_steps'?");
}

TEST(Config, KeyInTheWrongSectionSuggestsItsSection) {
  EXPECT_EQ(parse_error(std::string(kMinimal) + "lora:\n  lr: 1e-4\n"),
            "x.yaml:6: unknown key 'lora.lr'; did you mean 'train.lr'?");
}

TEST(Config, UnknownKeyWithNothingCloseListsTheSectionKeys) {
  EXPECT_EQ(parse_error(std::string(kMinimal) + "lora:\n  foo: 1\n"),
            "x.yaml:6: unknown key 'lora.foo'; lora has: r, alpha, dropout, rslora, targets, init_from");
}

TEST(Config, UnknownSectionSuggestsTheNearest) {
  EXPECT_EQ(parse_error(std::string(kMinimal) + "trian:\n  lr: 1e-4\n"),
            "x.yaml:5: unknown section 'trian'; did you mean 'train'?");
  EXPECT_EQ(parse_error(std::string(kMinimal) + "optimizer:\n  lr: 1e-4\n"),
            "x.yaml:5: unknown section 'optimizer'; sections are: model, lora, data, train, dpo, orpo, output");
}

TEST(Config, TypeErrorsNameLineKeyExpectedTypeAndFoundValue) {
  std::string head = std::string(kMinimal) + "lora:\n";
  EXPECT_EQ(parse_error(head + "  r: sixteen\n"), "x.yaml:6: lora.r: expected an integer, found 'sixteen'");
  EXPECT_EQ(parse_error(head + "  r: 8.5\n"), "x.yaml:6: lora.r: expected an integer, found '8.5'");
  EXPECT_EQ(parse_error(head + "  alpha: [1]\n"), "x.yaml:6: lora.alpha: expected a number, found a list");
  EXPECT_EQ(parse_error(head + "  rslora: maybe\n"), "x.yaml:6: lora.rslora: expected true or false, found 'maybe'");
  EXPECT_EQ(parse_error(head + "  r:\n"), "x.yaml:6: lora.r: expected an integer, found nothing");
  EXPECT_EQ(parse_error(head + "  targets: {q: 1}\n"),
            "x.yaml:6: lora.targets: expected a list of strings, found a mapping");
  EXPECT_EQ(parse_error(head + "  targets: [q_proj, [v_proj]]\n"),
            "x.yaml:6: lora.targets: expected a list of strings, found a list as item 2");
  EXPECT_EQ(parse_error(std::string(kMinimal) + "output:\n  dir: [a, b]\n"),
            "x.yaml:6: output.dir: expected a string, found a list");
}

TEST(Config, SectionThatIsNotAMappingIsAnError) {
  EXPECT_EQ(parse_error(std::string(kMinimal) + "lora: 8\n"), "x.yaml:5: lora: expected a mapping of keys, found '8'");
  EXPECT_EQ(parse_error("- model\n"),
            "x.yaml:1: expected a mapping of sections (model, lora, data, train, dpo, orpo, output), found a list");
}

TEST(Config, DuplicateKeyIsAnError) {
  EXPECT_EQ(parse_error(std::string(kMinimal) + "lora:\n  r: 8\n  r: 16\n"),
            "x.yaml:7: duplicate key 'lora.r' (first set on line 6); keep one");
}

TEST(Config, BrokenYamlGivesLineColumnAndReason) {
  std::string msg = parse_error("lora:\n  targets: [q_proj\n  r: 8\n");
  EXPECT_EQ(msg.rfind("x.yaml:", 0), 0u) << msg;
  EXPECT_NE(msg.find(": invalid YAML: "), std::string::npos) << msg;
  EXPECT_NE(msg.find("end of sequence flow not found"), std::string::npos) << msg;
  EXPECT_EQ(parse_error("a: [b\nc: d"), "x.yaml:2:2: invalid YAML: end of sequence flow not found");
}

TEST(Config, MissingFileSaysSoWithThePath) {
  EXPECT_EQ(error_of([] { load_config("configs/no-such-config.yaml"); }),
            "config configs/no-such-config.yaml: no such file");
  EXPECT_EQ(error_of([] { load_config("configs"); }), "config configs is a folder; give a regular file");
}

TEST(Config, LoadConfigNamesTheFileInMessages) {
  std::string path = testing::TempDir() + "loom_config_test.yaml";
  std::ofstream(path) << kMinimal << "lora:\n  r: 0\n";
  EXPECT_EQ(error_of([&] { load_config(path); }), path + ":6: lora.r must be in [1, 4096] (found 0)");
  std::ofstream(path) << kMinimal;
  EXPECT_EQ(load_config(path, {"lora.r=4"}).source, path);
  std::filesystem::remove(path);
}

// One broken value per row: the override that breaks it and the exact line validate() gives.
TEST(Config, EveryValidationRuleNamesItsKeyAndTheValueFound) {
  const std::vector<std::pair<std::vector<std::string>, std::string>> cases = {
      {{"model.quant=int8"}, "model.quant must be one of nf4, bf16 (found 'int8')"},
      {{"model.quant=nf-4"}, "model.quant must be one of nf4, bf16 (found 'nf-4'; did you mean 'nf4'?)"},
      {{"model.path=/m"},
       "set exactly one of model.path or model.preset (an HF folder, or a preset with random weights such as "
       "tiny); found both: model.path = '/m', model.preset = 'tiny'"},
      {{"model.preset="},
       "set exactly one of model.path or model.preset (an HF folder, or a preset with random weights such as "
       "tiny); found neither"},
      {{"data.synthetic=", "data.path=a.jsonl", "data.synthetic=sft-alpaca"},
       "set exactly one of data.path or data.synthetic (a JSONL file or prepared folder, or the synthetic "
       "workload sft-alpaca); found both: data.path = 'a.jsonl', data.synthetic = 'sft-alpaca'"},
      {{"data.synthetic=alpaca"}, "data.synthetic must be one of sft-alpaca (found 'alpaca')"},
      {{"lora.targets=[]"},
       "lora.targets must list at least one of q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj, "
       "or be [all-linear] (found an empty list)"},
      {{"lora.targets=[q_proj,qkv_proj]"},
       "lora.targets: 'qkv_proj' is not a projection; use q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, "
       "down_proj or all-linear (did you mean 'q_proj'?)"},
      {{"lora.targets=[all-linear,q_proj]"},
       "lora.targets: all-linear means every projection; use it alone, as [all-linear]"},
      {{"lora.targets=[q_proj,q_proj]"}, "lora.targets lists 'q_proj' twice; keep one"},
      {{"train.device=gpu"}, "train.device must be one of auto, cpu, cuda (found 'gpu')"},
      {{"data.format=csv"}, "data.format must be one of auto, messages, sharegpt, alpaca, text, pairs (found 'csv')"},
      {{"data.template=chatlm"},
       "data.template must be one of auto, chatml, qwen3, llama3, llama3.1, mistral, llama2, none (found 'chatlm'; "
       "did you mean 'chatml'?)"},
      {{"data.train_on=prompts"}, "data.train_on must be one of responses, all (found 'prompts')"},
      {{"data.overlong=split"}, "data.overlong must be one of truncate, drop (found 'split')"},
      {{"data.on_bad_line=warn"}, "data.on_bad_line must be one of error, skip (found 'warn')"},
      {{"train.schedule=cosin"},
       "train.schedule must be one of cosine, linear, constant (found 'cosin'; did you mean 'cosine'?)"},
      {{"train.recompute=partial"}, "train.recompute must be one of none, selective, full (found 'partial')"},
      {{"output.export=onnx"}, "output.export must be one of peft, merged, gguf, none (found 'onnx')"},
      {{"output.gguf_type=q4_0"}, "output.gguf_type must be one of q8_0, f16, bf16 (found 'q4_0'; did you mean 'q8_0'?)"},
      {{"output.resume="}, "output.resume must be auto, last_intact, never or a checkpoint folder (found '')"},
      {{"data.max_seq_len=4096", "train.token_budget=2048"},
       "data.max_seq_len (4096) must be <= train.token_budget (2048) so that every sequence fits in one "
       "micro-batch; lower data.max_seq_len or raise train.token_budget"},
      {{"output.dir="}, "output.dir must name the run folder (found an empty string)"},
  };
  for (const auto& [overrides, want] : cases) EXPECT_EQ(parse_error(kMinimal, overrides), "x.yaml: " + want);
}

// Every numeric key of the original sections, with its stated range and a value just outside each
// end: the override is refused as it is read, naming the command line, the key and the range.
TEST(Config, EveryNumericKeyStatesItsRange) {
  struct Row {
    const char* key;
    const char* range;
    const char* below;
    const char* above;
  };
  const Row rows[] = {
      {"model.init_seed", "in [0, 2147483647]", "-1", "2147483648"},
      {"lora.r", "in [1, 4096]", "0", "4097"},
      {"lora.alpha", "in (0, 65536]", "0", "65537"},
      {"lora.dropout", "in [0, 1)", "-0.1", "1"},
      {"data.synthetic_docs", "in [1, 1000000]", "0", "1000001"},
      {"data.max_seq_len", "in [1, 1048576]", "0", "1048577"},
      {"train.token_budget", "in [1, 1048576]", "0", "1048577"},
      {"train.global_batch", "in [1, 1048576]", "0", "1048577"},
      {"train.steps", "in [0, 100000000] (0 = as many as train.epochs gives)", "-1", "100000001"},
      {"train.epochs", "in [1, 1000]", "0", "1001"},
      {"train.lr", "in (0, 1]", "0", "1.5"},
      {"train.warmup_steps", "in [0, 100000000]", "-5", "100000001"},
      {"train.min_lr_ratio", "in [0, 1]", "-0.1", "1.5"},
      {"train.weight_decay", "in [0, 1]", "-0.01", "1.01"},
      {"train.beta1", "in [0, 1)", "-0.5", "1"},
      {"train.beta2", "in [0, 1)", "-0.5", "1"},
      {"train.eps", "in (0, 1]", "0", "2"},
      {"train.max_grad_norm", "in [0, 1000000] (0 disables clipping)", "-1", "1e7"},
      {"train.seed", "in [0, 2147483647]", "-1", "2147483648"},
      {"train.log_every", "in [1, 100000000]", "0", "100000001"},
      {"output.checkpoint_every", "in [0, 100000000] (0 = only the final checkpoint)", "-1", "100000001"},
      {"output.keep_checkpoints", "in [1, 1000]", "0", "1001"},
      {"data.eval_split", "in [0, 1000000000] (0 = none; below 1 a fraction of the documents, from 1 a count of them)",
       "-0.5", "1e10"},
      {"train.eval_every", "in [0, 100000000] (0 = only at the end)", "-1", "100000001"},
      {"train.early_stopping_patience", "in [0, 100000000] (0 = off)", "-1", "100000001"},
      {"data.max_prompt_len", "in [0, 1048576] (0 = only data.max_seq_len limits it)", "-1", "1048577"},
      {"dpo.beta", "in (0, 100]", "0", "100.5"},
      {"dpo.label_smoothing", "in [0, 0.5)", "-0.1", "0.5"},
      {"orpo.lambda", "in (0, 100]", "0", "101"},
  };
  for (const Row& r : rows)
    for (const char* bad : {r.below, r.above}) {
      const std::string override_text = cat(r.key, '=', bad);
      EXPECT_EQ(parse_error(kMinimal, {override_text}),
                cat("command line: ", override_text, ": ", r.key, " must be ", r.range, " (found ", bad, ")"));
    }
}

TEST(Config, NumbersThatOverflowOrAreNotFiniteAreRefusedAsWritten) {
  EXPECT_EQ(parse_error(std::string(kMinimal) + "train:\n  lr: 1e39\n"), "x.yaml:6: train.lr must be in (0, 1] (found 1e39)");
  EXPECT_EQ(parse_error(std::string(kMinimal) + "train:\n  eps: 1e-50\n"),
            "x.yaml:6: train.eps must be in (0, 1] (found 1e-50)") << "underflows float to 0";
  EXPECT_EQ(parse_error(std::string(kMinimal) + "train:\n  max_grad_norm: .nan\n"),
            "x.yaml:6: train.max_grad_norm must be in [0, 1000000] (0 disables clipping) (found .nan)");
  EXPECT_EQ(parse_error(kMinimal, {"train.weight_decay=inf"}),
            "command line: train.weight_decay=inf: train.weight_decay must be in [0, 1] (found inf)");
  EXPECT_EQ(parse_error(kMinimal, {"lora.r=99999999999999999999999"}),
            "command line: lora.r=99999999999999999999999: lora.r must be in [1, 4096] (found 99999999999999999999999)");
}

// Values built in code (not read from YAML) are range-checked by validate() itself.
TEST(Config, ValidateChecksTheRangesOfAConfigBuiltInCode) {
  TrainConfig c = parse_config(kMinimal, "x.yaml");
  c.lora.r = 0;
  c.train.lr = NAN;
  c.train.eps = INFINITY;
  EXPECT_EQ(validate(c), (std::vector<std::string>{"x.yaml: lora.r must be in [1, 4096] (found 0)",
                                                   "x.yaml: train.lr must be in (0, 1] (found nan)",
                                                   "x.yaml: train.eps must be in (0, 1] (found inf)"}));
}

TEST(Config, ASecondDocumentIsAnError) {
  EXPECT_EQ(parse_error("model:\n  preset: tiny\n---\ndata:\n  synthetic: sft-alpaca\n"),
            "x.yaml:3: a second YAML document starts here; a config is one document: remove the '---' line and "
            "merge what follows it into the first");
  EXPECT_EQ(parse_error(std::string("---\n") + kMinimal), "") << "a '---' before the only document is fine";
}

// yaml-cpp's LoadAll never consumes a stray flow token: "," yielded empty documents until memory ran out
// (found by make fuzz).
TEST(Config, AStrayFlowTokenEndsInsteadOfLoopingForever) {
  for (const std::string text : {",", ", x", "--- ,", "model:\n  preset: tiny\n,\n"})
    EXPECT_NE(parse_error(text).find("invalid YAML"), std::string::npos) << "text: " << text << "\n" << parse_error(text);
  EXPECT_NE(parse_error(kMinimal, {"train.lr=,"}).find("invalid YAML"), std::string::npos);
}

TEST(Config, DeepNestingIsACleanError) {
  for (const std::string& deep : {"a: " + std::string(100000, '['), std::string("a:\n") + [] {
         std::string s;
         for (int i = 0; i < 100000; ++i) s += "- ";
         return s + "x\n";
       }()}) {
    const std::string msg = parse_error(deep);
    EXPECT_EQ(msg.rfind("x.yaml:", 0), 0u) << msg.substr(0, 200);
    EXPECT_NE(msg.find(": invalid YAML: nested too deep; a config nests at most 3 levels (section, key, list)"),
              std::string::npos)
        << msg.substr(0, 200);
  }
}

// yaml-cpp alone would read `dir: "runs/x` to the end of the file: dir = 'runs/x export: none '.
TEST(Config, AnUnclosedQuoteIsAnError) {
  const char* want =
      "x.yaml:6: output.dir: a quote opened in the value is never closed (the rest of the file would be read into "
      "it); close the quote";
  EXPECT_EQ(parse_error(std::string(kMinimal) + "output:\n  dir: \"runs/x\n  export: none\n"), want);
  EXPECT_EQ(parse_error(std::string(kMinimal) + "output:\n  dir: 'runs/x\n  export: none\n"), want);
  EXPECT_EQ(parse_error(kMinimal, {"output.dir=\"runs/x"}), "command line: output.dir=\"runs/x: invalid YAML: illegal EOF in scalar");
  TrainConfig c = parse_config(std::string(kMinimal) + "output:\n  dir: 'it''s \"here\"'\n  resume: \"a\\\"b\"\n", "x.yaml");
  EXPECT_EQ(c.output.dir, "it's \"here\"");
  EXPECT_EQ(c.output.resume, "a\"b");
}

TEST(Config, BinaryOrNonUtf8TextIsAnError) {
  EXPECT_EQ(parse_error("model:\n  preset: t\xffiny\n"),
            "x.yaml:2:12: byte 0xff, which is not UTF-8; a config is YAML text (is this the right file?)");
  EXPECT_EQ(parse_error(std::string("model:\0\n", 8)),
            "x.yaml:1:7: a NUL byte; a config is YAML text (is this the right file?)");
  EXPECT_EQ(parse_error(kMinimal, {"output.dir=runs/\xc3"}),
            "command line: output.dir=runs/\xc3: the value holds byte 0xc3, which is not UTF-8");
  EXPECT_EQ(parse_error(std::string(kMaxConfigBytes + 1, '#')),
            "x.yaml is 1048577 bytes; a config is at most 1048576 (is this the right file?)");
}

TEST(Config, AKeyThatIsNotANameIsAnError) {
  EXPECT_EQ(parse_error(std::string(kMinimal) + "? [a, b]\n: 1\n"),
            "x.yaml:5: keys are names such as lora or r; found a list as a key");
  EXPECT_EQ(parse_error(std::string(kMinimal) + "lora:\n  {r: 1}: 2\n"),
            "x.yaml:6: keys are names such as lora or r; found a mapping as a key");
}

TEST(Config, ValidValuesAtTheEdgesPass) {
  EXPECT_EQ(parse_error(kMinimal, {"lora.dropout=0", "train.min_lr_ratio=1", "train.beta1=0", "train.steps=0",
                                   "output.checkpoint_every=0", "lora.targets=[all-linear]", "output.resume=never",
                                   "data.max_seq_len=16384", "train.max_grad_norm=0", "lora.r=4096",
                                   "train.lr=1", "train.lr=2e-4", "lora.alpha=65536", "train.eps=1e-38",
                                   "train.seed=0", "train.seed=2147483647", "train.steps=100000000"}),
            "");
}

TEST(Config, AllProblemsAreReportedTogether) {
  std::string yaml =
      "model:\n"
      "  preset: tiny\n"
      "lora:\n"
      "  r: 0\n"
      "  rank: 8\n"
      "  alpha: lots\n"
      "train:\n"
      "  lr: -1\n";
  std::string msg = parse_error(yaml, {"output.dir="});
  EXPECT_EQ(msg,
            "6 problems in x.yaml:\n"
            "  x.yaml:4: lora.r must be in [1, 4096] (found 0)\n"
            "  x.yaml:5: unknown key 'lora.rank'; did you mean 'lora.r'?\n"
            "  x.yaml:6: lora.alpha: expected a number, found 'lots'\n"
            "  x.yaml:8: train.lr must be in (0, 1] (found -1)\n"
            "  x.yaml: set exactly one of data.path or data.synthetic (a JSONL file or prepared folder, or the "
            "synthetic workload sft-alpaca); found neither\n"
            "  x.yaml: output.dir must name the run folder (found an empty string)");
}

TEST(Config, ProblemsBeyondTwentyAreCounted) {
  std::string yaml = std::string(kMinimal) + "lora:\n";
  for (int i = 0; i < 100; ++i) yaml += cat("  unknown_", i, ": 1\n");
  const std::string msg = parse_error(yaml);
  EXPECT_EQ(msg.rfind("100 problems in x.yaml:\n  x.yaml:6: unknown key 'lora.unknown_0'", 0), 0u) << msg;
  EXPECT_NE(msg.find("x.yaml:25: unknown key 'lora.unknown_19'"), std::string::npos) << msg;
  EXPECT_EQ(msg.find("unknown_20"), std::string::npos) << msg;
  EXPECT_EQ(msg.substr(msg.size() - 18), "\n  ... and 80 more") << msg;
}

TEST(Config, ValidateOfADefaultConfigAsksForModelAndData) {
  std::vector<std::string> problems = validate(TrainConfig{});
  ASSERT_EQ(problems.size(), 2u);
  EXPECT_EQ(problems[0].rfind("config: set exactly one of model.path or model.preset", 0), 0u) << problems[0];
  EXPECT_EQ(problems[1].rfind("config: set exactly one of data.path or data.synthetic", 0), 0u) << problems[1];
}

TEST(Config, ToYamlRoundTripsExactly) {
  TrainConfig c;
  c.source = "x.yaml";
  c.model.path = "/models/My Model: v2";
  c.model.double_quant = false;
  c.model.init_seed = 3;
  c.lora.r = 7;
  c.lora.alpha = 1.f / 3.f;
  c.lora.dropout = 0.1f;
  c.lora.targets = {"q_proj", "down_proj"};
  c.data.path = "data/\"quoted\" \\ back.jsonl";
  c.data.tokenizer = "null";
  c.data.cache_dir = "~";
  c.data.template_name = "llama3";
  c.train.lr = 3e-3f;
  c.train.eps = 1e-8f;
  c.train.beta2 = 0.95f;
  c.train.min_lr_ratio = 0.123456789f;
  c.train.max_grad_norm = 0.f;
  c.output.dir = "-runs/x";
  c.output.export_format = ExportFormat::kMerged;
  c.output.resume = "#not a comment";
  ASSERT_EQ(validate(c), std::vector<std::string>{});
  std::string yaml = to_yaml(c);
  TrainConfig back = parse_config(yaml, "x.yaml");
  EXPECT_TRUE(same(back, c)) << yaml << "\nreads back as\n" << to_yaml(back);
  EXPECT_EQ(to_yaml(back), yaml);
  back.source = "elsewhere.yaml";
  EXPECT_EQ(to_yaml(back), yaml) << "the text depends on the values only";
}

TEST(Config, ToYamlWritesEverySectionAndKey) {
  std::string yaml = to_yaml(parse_config(kMinimal, "x.yaml"));
  EXPECT_EQ(yaml.rfind("model:\n", 0), 0u) << yaml;
  for (const char* line : { "\nlora:\n", "\ndata:\n", "\ntrain:\n", "\ndpo:\n", "\norpo:\n", "\noutput:\n",
                           "  preset: tiny\n", "  objective: sft\n", "  beta: 0.1\n", "  loss_type: sigmoid\n",
                           "  label_smoothing: 0\n", "  lambda: 0.1\n",
                           "  init_from: \"\"\n", "  max_prompt_len: 0\n",
                           "  template: auto\n", "  export: peft\n", "  lr: 0.0002\n", "  cache_dir: \"\"\n",
                           "  eval_path: \"\"\n", "  eval_split: 0\n", "  eval_every: 0\n",
                           "  early_stopping_patience: 0\n", "  keep_best: false\n", "  quant: nf4\n",
                           "  gguf_type: q8_0\n", "  on_change: refuse\n",
                           "  targets: [q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj]\n"})
    EXPECT_NE(yaml.find(line), std::string::npos) << "missing '" << line << "' in\n" << yaml;
}

TEST(Config, EveryShippedConfigParsesAndValidates) {
  std::vector<std::string> files;
  for (const auto& entry : std::filesystem::directory_iterator("configs"))
    if (entry.path().extension() == ".yaml") files.push_back(entry.path().string());
  EXPECT_GE(files.size(), 6u) << "demo, bench-sft-alpaca and one per model family";
  for (const std::string& path : files) {
    SCOPED_TRACE(path);
    EXPECT_EQ(error_of([&] { load_config(path); }), "");
    std::ifstream in(path);
    std::string first;
    std::getline(in, first);
    EXPECT_EQ(first.rfind("# build/train " + path, 0), 0u) << "first line: " << first;
  }
}

TEST(Config, DemoConfigHasTheEmbeddedDefaults) {
  TrainConfig c = load_config("configs/demo.yaml");
  EXPECT_EQ(c.model.preset, "tiny");
  EXPECT_EQ(c.model.quant, Quant::kNf4);
  EXPECT_EQ(c.lora.r, 16);
  EXPECT_EQ(c.lora.alpha, 32.f);
  EXPECT_EQ(c.lora.targets.size(), 7u);
  EXPECT_EQ(c.data.path, "data/demo/chats.jsonl");
  EXPECT_EQ(c.data.template_name, "mistral");
  EXPECT_EQ(c.train.token_budget, 1024);
  EXPECT_EQ(c.train.steps, 200);
  EXPECT_EQ(c.output.dir, "runs/demo");
}

// A resumed run compares its config with the run folder's record: keys that change what is trained
// are listed (old -> new, as to_yaml writes them); those that only change logging, saving, export,
// device or recompute are not.
TEST(Config, TrainingChangesListTheKeysThatChangeWhatIsTrained) {
  const TrainConfig was = parse_config(kMinimal, "x.yaml", {"train.lr=0.0002"});
  const TrainConfig now = parse_config(kMinimal, "y.yaml",
                                       {"train.lr=0.001", "lora.targets=[q_proj]", "train.log_every=5",
                                        "output.checkpoint_every=7", "train.device=cpu", "train.recompute=full",
                                        "output.export=merged", "output.dir=elsewhere", "output.on_change=accept"});
  const std::vector<ConfigChange> changes = training_changes(was, now);
  ASSERT_EQ(changes.size(), 2u);
  EXPECT_EQ(cat(changes[0].key, ": ", changes[0].before, " -> ", changes[0].after),
            "lora.targets: [q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj] -> [q_proj]");
  EXPECT_EQ(cat(changes[1].key, ": ", changes[1].before, " -> ", changes[1].after), "train.lr: 0.0002 -> 0.001");
  EXPECT_TRUE(training_changes(was, was).empty());
}

TEST(Config, OnChangeIsRefuseOrAccept) {
  EXPECT_EQ(parse_config(kMinimal, "x.yaml").output.on_change, OnChange::kRefuse);
  EXPECT_EQ(parse_config(kMinimal, "x.yaml", {"output.on_change=accept"}).output.on_change, OnChange::kAccept);
  EXPECT_NE(parse_error(kMinimal, {"output.on_change=acept"})
                .find("output.on_change must be one of refuse, accept (found 'acept'; did you mean 'accept'?)"),
            std::string::npos);
}

// Every choice key is read into its enum once; code compares enums, and to_yaml writes the names back.
TEST(Config, ChoicesAreReadIntoTheirEnumsAndWrittenBackAsNames) {
  const std::vector<std::string> overrides = {
      "model.quant=bf16",      "data.format=sharegpt",  "data.train_on=all",       "data.overlong=drop",
      "data.on_bad_line=skip", "train.device=cpu",      "train.schedule=linear",   "train.recompute=full",
      "output.export=gguf",    "output.gguf_type=bf16", "output.on_change=accept"};
  const TrainConfig c = parse_config(kMinimal, "x.yaml", overrides);
  EXPECT_EQ(c.model.quant, Quant::kBf16);
  EXPECT_EQ(c.data.format, DataFormat::kSharegpt);
  EXPECT_EQ(c.data.train_on, TrainOn::kAll);
  EXPECT_EQ(c.data.overlong, Overlong::kDrop);
  EXPECT_EQ(c.data.on_bad_line, OnBadLine::kSkip);
  EXPECT_EQ(c.train.device, Device::kCpu);
  EXPECT_EQ(c.train.schedule, Schedule::kLinear);
  EXPECT_EQ(c.train.recompute, Recompute::kFull);
  EXPECT_EQ(c.output.export_format, ExportFormat::kGguf);
  EXPECT_EQ(c.output.gguf_type, GgufType::kBf16);
  EXPECT_EQ(c.output.on_change, OnChange::kAccept);
  const std::string yaml = to_yaml(c);
  for (const std::string& o : overrides) {
    const std::string key = o.substr(o.find('.') + 1, o.find('=') - o.find('.') - 1);
    const std::string line = cat("  ", key, ": ", o.substr(o.find('=') + 1), "\n");
    EXPECT_NE(yaml.find(line), std::string::npos) << "missing '" << line << "' in\n" << yaml;
  }
  TrainConfig back = parse_config(yaml, "x.yaml");
  EXPECT_TRUE(same(back, c)) << yaml;
}

// A wrong choice is reported once the whole config is read: a later value for the key replaces it,
// and a wrong value after a right one is still an error.
TEST(Config, TheLastValueOfAChoiceKeyCounts) {
  const std::string gpu = std::string(kMinimal) + "train:\n  device: gpu\n";
  EXPECT_EQ(parse_config(gpu, "x.yaml", {"train.device=cpu"}).train.device, Device::kCpu);
  EXPECT_EQ(parse_error(std::string(kMinimal) + "train:\n  device: cpu\n", {"train.device=tpu"}),
            "x.yaml: train.device must be one of auto, cpu, cuda (found 'tpu')");
  EXPECT_EQ(parse_error(kMinimal, {"train.device="}), "x.yaml: train.device must be one of auto, cpu, cuda (found '')");
  EXPECT_EQ(parse_error(kMinimal, {"train.device=[cpu]"}),
            "command line: train.device=[cpu]: train.device: expected a string, found a list");
}

// data.eval_split: 0 (none), a fraction in (0, 1), or a whole count from 1; anything else names the key.
TEST(Config, EvalSplitIsAFractionOrAWholeCount) {
  EXPECT_EQ(parse_config(kMinimal, "x.yaml").data.eval_split, 0.0);
  for (const auto& [text, value] : std::vector<std::pair<std::string, double>>{
           {"0.1", 0.1}, {"0.999", 0.999}, {"1e-3", 1e-3}, {"1", 1}, {"250", 250}, {"1e9", 1e9}})
    EXPECT_EQ(parse_config(kMinimal, "x.yaml", {"data.eval_split=" + text}).data.eval_split, value) << text;
  for (const std::string text : {"2.5", "1.0001", "999999999.5"})
    EXPECT_EQ(parse_error(kMinimal, {"data.eval_split=" + text}),
              cat("x.yaml: data.eval_split must be a fraction in (0, 1) or a whole count of documents (found ", text,
                  ")"));
  const std::string range =
      "in [0, 1000000000] (0 = none; below 1 a fraction of the documents, from 1 a count of them)";
  for (const std::string text : {"-1", "-0.001", "inf", ".nan", "1e300", "1e400"})
    EXPECT_EQ(parse_error(kMinimal, {"data.eval_split=" + text}),
              cat("command line: data.eval_split=", text, ": data.eval_split must be ", range, " (found ", text, ")"));
  EXPECT_EQ(parse_error(kMinimal, {"data.eval_split=some"}),
            "command line: data.eval_split=some: data.eval_split: expected a number, found 'some'");
  TrainConfig built = parse_config(kMinimal, "x.yaml");
  built.data.eval_split = -INFINITY;
  EXPECT_EQ(validate(built), std::vector<std::string>{"x.yaml: data.eval_split must be " + range + " (found -inf)"});
}

TEST(Config, EvalPathAndEvalSplitExcludeEachOther) {
  EXPECT_EQ(parse_error(kMinimal, {"data.eval_path=held out.jsonl", "data.eval_split=0.1"}),
            "x.yaml: set at most one of data.eval_path or data.eval_split (held-out documents come from a file or "
            "from the training data); found both: data.eval_path = 'held out.jsonl', data.eval_split = 0.1");
  EXPECT_EQ(parse_config(kMinimal, "x.yaml", {"data.eval_path=held.jsonl"}).data.eval_path, "held.jsonl");
  EXPECT_EQ(parse_error(kMinimal, {"data.eval_path=held.jsonl", "data.eval_split=0.1", "data.eval_split=0"}), "")
      << "eval_split 0 is no split";
}

// train.eval_every, train.early_stopping_patience and output.keep_best act on the eval loss: without
// eval data they are an error naming each key set and the two ways to give eval data.
TEST(Config, KeysThatWatchTheEvalLossNeedEvalData) {
  const std::string ways =
      " eval data: set data.eval_path (a JSONL file or a folder of prepared shards held out for evaluation) or "
      "data.eval_split (a fraction or a count of the training documents to hold out)";
  EXPECT_EQ(parse_error(kMinimal, {"train.eval_every=50"}), "x.yaml: train.eval_every = 50 needs" + ways);
  EXPECT_EQ(parse_error(kMinimal, {"train.early_stopping_patience=3"}),
            "x.yaml: train.early_stopping_patience = 3 needs" + ways);
  EXPECT_EQ(parse_error(kMinimal, {"output.keep_best=true"}), "x.yaml: output.keep_best = true needs" + ways);
  const std::vector<std::string> all = {"train.eval_every=50", "train.early_stopping_patience=3",
                                        "output.keep_best=yes"};
  EXPECT_EQ(parse_error(kMinimal, all),
            "x.yaml: train.eval_every = 50, train.early_stopping_patience = 3, output.keep_best = true need" + ways);
  for (const std::string eval : {"data.eval_split=0.05", "data.eval_split=12", "data.eval_path=held.jsonl"}) {
    std::vector<std::string> with = all;
    with.push_back(eval);
    EXPECT_EQ(parse_error(kMinimal, with), "") << eval;
  }
  EXPECT_EQ(parse_error(kMinimal, {"train.eval_every=0", "train.early_stopping_patience=0", "output.keep_best=false"}),
            "")
      << "the defaults watch nothing";
}

TEST(Config, ToYamlRoundTripsTheEvalKeys) {
  for (const std::vector<std::string>& eval :
       {std::vector<std::string>{"data.eval_split=0.123456789012345"}, {"data.eval_split=1000000000"},
        {"data.eval_path=held out/\"eval\".jsonl"}}) {
    std::vector<std::string> overrides = eval;
    for (const char* o : {"train.eval_every=25", "train.early_stopping_patience=4", "output.keep_best=true"})
      overrides.push_back(o);
    const TrainConfig c = parse_config(kMinimal, "x.yaml", overrides);
    const std::string yaml = to_yaml(c);
    const TrainConfig back = parse_config(yaml, "x.yaml");
    EXPECT_TRUE(same(back, c)) << yaml << "\nreads back as\n" << to_yaml(back);
    EXPECT_EQ(to_yaml(back), yaml);
  }
  TrainConfig third;
  third.model.preset = "tiny";
  third.data.synthetic = "sft-alpaca";
  third.data.eval_split = 1.0 / 3.0;
  third.source = "x.yaml";
  EXPECT_EQ(parse_config(to_yaml(third), "x.yaml").data.eval_split, 1.0 / 3.0) << "every bit of a double";
}

// data.eval_split takes documents out of training and early stopping decides how long it trains:
// both are listed. Where eval documents come from, how often they are evaluated and whether the best
// checkpoint is kept only watch the run: a resume may change them.
TEST(Config, TrainingChangesListTheEvalSplitAndPatienceOnly) {
  const TrainConfig was = parse_config(kMinimal, "x.yaml", {"data.eval_split=0.1"});
  const TrainConfig now = parse_config(kMinimal, "y.yaml",
                                       {"data.eval_split=0.2", "train.early_stopping_patience=3",
                                        "train.eval_every=10", "output.keep_best=true"});
  const std::vector<ConfigChange> changes = training_changes(was, now);
  ASSERT_EQ(changes.size(), 2u);
  EXPECT_EQ(cat(changes[0].key, ": ", changes[0].before, " -> ", changes[0].after), "data.eval_split: 0.1 -> 0.2");
  EXPECT_EQ(cat(changes[1].key, ": ", changes[1].before, " -> ", changes[1].after),
            "train.early_stopping_patience: 0 -> 3");
  EXPECT_TRUE(training_changes(parse_config(kMinimal, "x.yaml", {"data.eval_path=a.jsonl", "train.eval_every=5"}),
                               parse_config(kMinimal, "x.yaml",
                                            {"data.eval_path=b.jsonl", "train.eval_every=50", "output.keep_best=true"}))
                  .empty());
}

}  // namespace
}  // namespace loom

namespace loom {
namespace {

// The preference keys: read, written back, and round-tripped; TRL's DPOConfig defaults.
TEST(Config, ReadsTheObjectiveAndItsSections) {
  const TrainConfig d = parse_config(kMinimal, "x.yaml");
  EXPECT_EQ(d.train.objective, ObjectiveKind::kSft);
  EXPECT_EQ(d.dpo.beta, 0.1);
  EXPECT_EQ(d.dpo.loss_type, DpoLossType::kSigmoid);
  EXPECT_EQ(d.dpo.label_smoothing, 0.0);
  EXPECT_EQ(d.orpo.lambda, 0.1);
  EXPECT_EQ(d.lora.init_from, "");
  EXPECT_EQ(d.data.max_prompt_len, 0);
  const TrainConfig c = parse_config(std::string(kMinimal) +
                                         "train: {objective: dpo}\n"
                                         "dpo: {beta: 0.25, loss_type: robust, label_smoothing: 0.1}\n"
                                         "orpo: {lambda: 0.5}\n"
                                         "lora: {init_from: runs/demo/final}\n",
                                     "x.yaml", {"data.max_prompt_len=384"});
  EXPECT_EQ(c.train.objective, ObjectiveKind::kDpo);
  EXPECT_EQ(c.dpo.beta, 0.25);
  EXPECT_EQ(c.dpo.loss_type, DpoLossType::kRobust);
  EXPECT_EQ(c.dpo.label_smoothing, 0.1);
  EXPECT_EQ(c.orpo.lambda, 0.5);
  EXPECT_EQ(c.lora.init_from, "runs/demo/final");
  EXPECT_EQ(c.data.max_prompt_len, 384);
  const std::string yaml = to_yaml(c);
  for (const char* line : {"  objective: dpo\n", "  loss_type: robust\n",
                           "  lambda: 0.5\n", "  init_from: runs/demo/final\n", "  max_prompt_len: 384\n"})
    EXPECT_NE(yaml.find(line), std::string::npos) << "missing '" << line << "' in\n" << yaml;
  const TrainConfig back = parse_config(yaml, "x.yaml");
  EXPECT_TRUE(same(back, c)) << yaml << "\nreads back as\n" << to_yaml(back);
  EXPECT_EQ(parse_config(kMinimal, "x.yaml", {"train.objective=orpo"}).train.objective, ObjectiveKind::kOrpo);
  EXPECT_EQ(parse_error(kMinimal, {"train.objective=ppo"}), "x.yaml: train.objective must be one of sft, dpo, orpo (found 'ppo')");
  EXPECT_EQ(parse_error(kMinimal, {"dpo.loss_type=sigmod"}),
            "x.yaml: dpo.loss_type must be one of sigmoid, ipo, robust, hinge (found 'sigmod'; did you mean 'sigmoid'?)");
}

// One broken combination per row, with the exact line validate() gives.
TEST(Config, PreferenceRulesNameTheirKeys) {
  const std::vector<std::pair<std::vector<std::string>, std::string>> cases = {
      {{"train.objective=dpo", "data.format=messages"},
       "train.objective dpo trains on preference pairs: data.format must be pairs (or auto), found messages"},
      {{"train.objective=orpo", "data.format=text"},
       "train.objective orpo trains on preference pairs: data.format must be pairs (or auto), found text"},
      {{"train.objective=dpo", "data.max_seq_len=1024", "train.token_budget=2047"},
       "train.objective dpo: a pair holds two sequences of up to data.max_seq_len (1024) tokens in one "
       "micro-batch, so train.token_budget (2047) must be >= 2048; raise train.token_budget or lower "
       "data.max_seq_len"},
      {{"dpo.loss_type=ipo", "dpo.label_smoothing=0.1"},
       "dpo.label_smoothing (0.1) applies to dpo.loss_type sigmoid and robust only, not ipo; set it to 0 or "
       "change dpo.loss_type"},
      {{"dpo.loss_type=hinge", "dpo.label_smoothing=0.2"},
       "dpo.label_smoothing (0.2) applies to dpo.loss_type sigmoid and robust only, not hinge; set it to 0 or "
       "change dpo.loss_type"},
  };
  for (const auto& [overrides, want] : cases) EXPECT_EQ(parse_error(kMinimal, overrides), "x.yaml: " + want);
  for (const std::vector<std::string>& fine :
       {std::vector<std::string>{"train.objective=dpo", "data.format=pairs", "data.max_seq_len=1024",
                                 "train.token_budget=2048"},
        {"train.objective=orpo"}, {"dpo.loss_type=robust", "dpo.label_smoothing=0.3"},
        {"dpo.label_smoothing=0.49"}, {"data.format=messages", "dpo.loss_type=hinge"}})
    EXPECT_EQ(parse_error(kMinimal, fine), "") << fine[0];
}

// train.offload: activations holds what recompute full keeps, in host memory: other policies are
// refused with the key to change; moving the inputs changes nothing that is trained.
TEST(Config, OffloadNeedsRecomputeFull) {
  EXPECT_NE(parse_error(kMinimal, {"train.offload=activations", "train.recompute=selective"})
                .find("train.offload: activations moves each layer's input to host memory, which is what recompute "
                      "full keeps; set train.recompute: full (found selective) or train.offload: none"),
            std::string::npos);
  EXPECT_NE(parse_error(kMinimal, {"train.offload=layers"}).find("train.offload"), std::string::npos);
  const TrainConfig c = parse_config(kMinimal, "x.yaml", {"train.offload=activations", "train.recompute=full"});
  EXPECT_EQ(c.train.offload, Offload::kActivations);
  EXPECT_EQ(parse_config(kMinimal, "x.yaml").train.offload, Offload::kAuto);  // the default: auto, any recompute
  EXPECT_EQ(parse_error(kMinimal, {"train.offload=auto", "train.recompute=selective"}), "");
  EXPECT_TRUE(training_changes(parse_config(kMinimal, "x.yaml", {"train.recompute=full"}), c).empty());
}

// train.mlp_tile: whole pieces of 1024 rows, and only where recompute full rebuilds the MLP; the tile
// changes the order of sums, not what is trained (a resume may change it).
TEST(Config, MlpTileIsAMultipleOf1024UnderRecomputeFull) {
  EXPECT_NE(parse_error(kMinimal, {"train.mlp_tile=3000", "train.recompute=full"})
                .find("train.mlp_tile (3000) must be a multiple of 1024 rows, or 0 (auto); try 2048"),
            std::string::npos);
  EXPECT_NE(parse_error(kMinimal, {"train.mlp_tile=512", "train.recompute=full"}).find("; try 1024"),
            std::string::npos);
  EXPECT_NE(parse_error(kMinimal, {"train.mlp_tile=4096"})
                .find("train.mlp_tile 4096 needs train.recompute: full (found selective)"),
            std::string::npos);
  EXPECT_NE(parse_error(kMinimal, {"train.mlp_tile=-1024"}).find("train.mlp_tile"), std::string::npos);
  const TrainConfig c = parse_config(kMinimal, "x.yaml", {"train.mlp_tile=8192", "train.recompute=full"});
  EXPECT_EQ(c.train.mlp_tile, 8192);
  EXPECT_EQ(parse_config(kMinimal, "x.yaml").train.mlp_tile, 0);  // auto
  EXPECT_TRUE(training_changes(parse_config(kMinimal, "x.yaml", {"train.recompute=full"}), c).empty());
}

// Samples need prompts, on either device; the sampling keys change nothing that is trained.
TEST(Config, SamplesNeedPrompts) {
  EXPECT_NE(parse_error(kMinimal, {"train.sample_every=10"})
                .find("train.sample_every = 10 needs train.sample_prompts: a list of prompt texts, or a .jsonl file"),
            std::string::npos);
  EXPECT_EQ(parse_error(kMinimal, {"train.sample_every=10", "train.sample_prompts=[hi]", "train.device=cuda"}), "");
  const TrainConfig c = parse_config(kMinimal, "x.yaml", {"train.sample_every=10", "train.sample_prompts=[a, b c]"});
  EXPECT_EQ(c.train.sample_prompts, (std::vector<std::string>{"a", "b c"}));
  EXPECT_TRUE(training_changes(parse_config(kMinimal, "x.yaml"), c).empty());
}

// Every new key changes what is trained: a resume that changes one is refused without on_change.
TEST(Config, TrainingChangesListThePreferenceKeys) {
  const TrainConfig was = parse_config(kMinimal, "x.yaml");
  const TrainConfig now = parse_config(
      kMinimal, "y.yaml",
      {"train.objective=dpo", "dpo.beta=0.2", "dpo.loss_type=robust", "dpo.label_smoothing=0.1",
       "orpo.lambda=0.3", "lora.init_from=a", "data.max_prompt_len=64"});
  std::vector<std::string> keys;
  for (const ConfigChange& c : training_changes(was, now)) keys.push_back(c.key);
  EXPECT_EQ(keys, (std::vector<std::string>{"lora.init_from", "data.max_prompt_len", "train.objective", "dpo.beta",
                                            "dpo.loss_type", "dpo.label_smoothing",
                                            "orpo.lambda"}));
}

// lora.init_from is checked before anything loads, like model.path.
TEST(Config, InitFromMustBeAnAdapterFolder) {
  const std::string dir = test::fresh_temp_dir("config_init_from");
  const std::string out = "output.dir=" + dir + "/run";
  EXPECT_NE(error_of([&] { check_paths(parse_config(kMinimal, "x.yaml", {out, "lora.init_from=" + dir + "/none"})); })
                .find("lora.init_from: '" + dir + "/none' is not a folder (expected a PEFT adapter folder"),
            std::string::npos);
  std::filesystem::create_directories(dir + "/adapter");
  EXPECT_NE(error_of([&] { check_paths(parse_config(kMinimal, "x.yaml", {out, "lora.init_from=" + dir + "/adapter"})); })
                .find("lora.init_from: adapter config"),
            std::string::npos);
  std::ofstream(dir + "/adapter/adapter_config.json") << "{}";
  EXPECT_EQ(error_of([&] { check_paths(parse_config(kMinimal, "x.yaml", {out, "lora.init_from=" + dir + "/adapter"})); }),
            "");
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace loom
