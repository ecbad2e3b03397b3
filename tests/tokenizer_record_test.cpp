// Data checked against the model (data/tokenizer_record.h): prepared shards record the tokenizer
// and chat template they were made with, and training on them with another model's tokenizer or
// template is an error naming both; the case is Llama 3 shards fed to a Qwen3 model.
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <functional>
#include <nlohmann/json.hpp>

#include "data/dataset.h"
#include "data/shards.h"
#include "data/tokenizer_record.h"
#include "engine/training_data.h"
#include "ops/error.h"
#include "tests/test_util.h"

namespace loom {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;

std::string shared_tokenizer(const std::string& name) { return test::shared_dir() + "/tokenizers/" + name; }

std::string chat_line(const std::string& user, const std::string& answer) {
  return json{{"messages", {{{"role", "user"}, {"content", user}}, {{"role", "assistant"}, {"content", answer}}}}}
      .dump();
}

class PreparedData : public testing::Test {
 protected:
  void SetUp() override {
    const auto* info = testing::UnitTest::GetInstance()->current_test_info();
    dir_ = fs::temp_directory_path() / ("loom_tokrec_" + std::to_string(getpid()) + "_" + info->name());
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }

  std::string path(const std::string& name) const { return (dir_ / name).string(); }

  // data.jsonl with two conversations (or two text records).
  DataOptions chats(bool text = false) const {
    DataOptions d;
    d.path = path("data.jsonl");
    std::ofstream out(d.path);
    if (text)
      out << json{{"text", "Hello there."}}.dump() << "\n" << json{{"text", "Goodbye."}}.dump() << "\n";
    else
      out << chat_line("What is 2 plus 2?", "4.") << "\n" << chat_line("Hi", "Hello!") << "\n";
    return d;
  }

  // The data prepared into `name` with a shared tokenizer and data.template.
  std::string prepare(const std::string& tokenizer, const std::string& name, const std::string& tmpl = "auto",
                      bool text = false) const {
    DataOptions d = chats(text);
    d.template_name = tmpl;
    PrepareOptions quiet;
    quiet.progress = false;
    return prepare_to_dir(d, shared_tokenizer(tokenizer), path(name), quiet).dir;
  }

  // A model folder whose tokenizer files are the shared tokenizer's (no weights: the data check
  // reads only the tokenizer).
  std::string model_folder(const std::string& tokenizer) const {
    const fs::path m = dir_ / ("model-" + tokenizer);
    fs::create_directories(m);
    for (const char* f : {"tokenizer.json", "tokenizer_config.json"})
      fs::create_symlink(fs::absolute(shared_tokenizer(tokenizer) + "/" + f), m / f);
    return m.string();
  }

  static std::string check_error(const std::string& dir, const std::string& tokenizer, const std::string& tmpl) {
    return test::error_of([&] {
      check_prepared_tokenizer(dir, "data.path " + dir, ModelTokenizer{tokenizer, "model.path's tokenizer", tmpl},
                               "FIX");
    });
  }

  fs::path dir_;
};

TEST_F(PreparedData, ManifestRecordsTokenizerAndTemplate) {
  const std::string dir = prepare("llama3", "prepared");
  const json m = json::parse(read_manifest(dir));
  const std::string file = shared_tokenizer("llama3") + "/tokenizer.json";
  EXPECT_EQ(m["tokenizer"]["file"], file);
  EXPECT_EQ(m["tokenizer"]["fnv1a64"], hex64(fnv1a64_file(file, "tokenizer")));
  EXPECT_EQ(m["tokenizer"]["vocab_size"], 128256);
  EXPECT_EQ(m["tokenizer"]["bos"], 128000);  // <|begin_of_text|>
  EXPECT_EQ(m["tokenizer"]["eos"], 128001);  // <|end_of_text|> (its tokenizer_config.json)
  EXPECT_TRUE(m["tokenizer"]["pad"].is_null());
  EXPECT_EQ(m["template"]["name"], "llama3");
  EXPECT_EQ(m["template"]["end_of_turn"], 128009);  // <|eot_id|>
  EXPECT_EQ(m["template"]["source_fnv1a64"].get<std::string>().size(), 16u);
  const json text = json::parse(read_manifest(prepare("qwen3", "text", "auto", /*text=*/true)));
  EXPECT_TRUE(text["template"].is_null());  // text records are not rendered
  EXPECT_EQ(text["tokenizer"]["pad"], 151643);  // <|endoftext|>
}

// The case: shards of the Llama 3 tokenizer against a Qwen3 model's.
TEST_F(PreparedData, Llama3ShardsAgainstQwen3TokenizerAreRefusedNamingBoth) {
  const std::string dir = prepare("llama3", "prepared");
  const std::string err = check_error(dir, shared_tokenizer("qwen3"), "auto");
  for (const std::string& part :
       {"data.path " + dir + " was tokenized with <" + shared_tokenizer("llama3") + "/tokenizer.json, fnv1a64 ",
        std::string("vocab 128256, bos 128000, eos 128001, pad none>"),
        "but model.path's tokenizer is <" + shared_tokenizer("qwen3") + "/tokenizer.json, fnv1a64 ",
        std::string("vocab 151669, bos none, eos 151645, pad 151643>; FIX")})
    EXPECT_NE(err.find(part), std::string::npos) << "\"" << part << "\" missing from: " << err;
  EXPECT_EQ(check_error(dir, shared_tokenizer("llama3"), "auto"), "");  // its own tokenizer: accepted
}

TEST_F(PreparedData, AnotherTemplateIsRefusedUnlessDataTemplateNamesIt) {
  const std::string dir = prepare("qwen3", "prepared", "chatml");
  const std::string err = check_error(dir, shared_tokenizer("qwen3"), "auto");
  for (const char* part : {"was rendered with the chat template <chatml, end of turn 151645",
                           "but data.template auto gives <qwen3, end of turn 151645",
                           "set data.template: chatml to train on it as prepared, or FIX"})
    EXPECT_NE(err.find(part), std::string::npos) << "\"" << part << "\" missing from: " << err;
  EXPECT_EQ(check_error(dir, shared_tokenizer("qwen3"), "chatml"), "");
  EXPECT_EQ(check_error(dir, shared_tokenizer("qwen3"), "none"), "");  // no template to compare with
}

TEST_F(PreparedData, TextRecordsAreCheckedByTokenizerOnly) {
  const std::string dir = prepare("mistral", "prepared", "none", /*text=*/true);
  EXPECT_EQ(check_error(dir, shared_tokenizer("mistral"), "llama3"), "");
  EXPECT_NE(check_error(dir, shared_tokenizer("llama3"), "auto").find("vocab 32000, bos 1, eos 2"), std::string::npos);
}

// prepared.json of the previous loom: "tokenizer" was the file's path, and only the identity's
// hash of the tokenizer files said which tokenizer it was.
TEST_F(PreparedData, EarlierLoomPreparationIsCheckedByItsTokenizerHash) {
  const std::string dir = prepare("llama3", "prepared");
  json m = json::parse(read_manifest(dir));
  m["tokenizer"] = shared_tokenizer("llama3") + "/tokenizer.json";
  m.erase("template");
  std::ofstream(fs::path(dir) / kManifestName) << m.dump();
  EXPECT_EQ(check_error(dir, shared_tokenizer("llama3"), "auto"), "");  // accepted, with a note
  const std::string err = check_error(dir, shared_tokenizer("qwen3"), "auto");
  for (const std::string& part :
       {"was prepared by an earlier loom with the tokenizer " + shared_tokenizer("llama3") + "/tokenizer.json",
        "but model.path's tokenizer is " + shared_tokenizer("qwen3") + "/tokenizer.json", std::string("; FIX")})
    EXPECT_NE(err.find(part), std::string::npos) << "\"" << part << "\" missing from: " << err;
}

// Every field of the records, given the wrong type, is an error naming its key path; a folder
// written without any record (write_prepared directly) is accepted.
TEST_F(PreparedData, DamagedRecordsAreNamed) {
  const std::string dir = prepare("qwen3", "prepared");
  const json good = json::parse(read_manifest(dir));
  const std::string manifest = (fs::path(dir) / kManifestName).string();
  int cases = 0;
  for (const char* record : {"tokenizer", "template"})
    for (const auto& item : good[record].items()) {
      // A wrong type for every field; ids and counts also below their range and fractional.
      std::vector<json> bad = {item.value().is_string() ? json(5) : json("x")};
      if (!item.value().is_string()) bad.insert(bad.end(), {json(-1), json(1.5)});
      for (const json& value : bad) {
        json m = good;
        m[record][item.key()] = value;
        std::ofstream(manifest) << m.dump();
        const std::string err = check_error(dir, shared_tokenizer("qwen3"), "auto");
        const std::string key = std::string(record) + "." + item.key();
        EXPECT_NE(err.find(manifest + ": " + key), std::string::npos) << key << " = " << value.dump() << ": " << err;
        ++cases;
      }
    }
  EXPECT_GE(cases, 20);
  json m = good;
  m["tokenizer"] = 5;
  std::ofstream(manifest) << m.dump();
  EXPECT_NE(check_error(dir, shared_tokenizer("qwen3"), "auto").find(manifest + ": tokenizer must be an object"),
            std::string::npos);
  const std::string bare = path("bare");
  write_prepared(bare, load_prepared(dir), "{}");
  EXPECT_EQ(check_error(bare, shared_tokenizer("qwen3"), "auto"), "");  // nothing to compare: a note only
}

// ---- training: engine/training_data.cpp, both data.path forms ----

TrainConfig run_config(const std::string& model_path, const std::string& data_path, const std::string& out) {
  TrainConfig cfg;
  cfg.model.path = model_path;
  cfg.data.path = data_path;
  cfg.output.dir = out;
  return cfg;
}

ModelConfig vocab_of(int64_t V) {
  ModelConfig mc;
  mc.V = V;
  return mc;
}

TEST_F(PreparedData, TrainingOnLlama3ShardsWithAQwen3ModelIsAnError) {
  const std::string shards = prepare("llama3", "prepared");
  const std::string qwen3 = model_folder("qwen3");
  // Every Llama 3 id is below Qwen3's 151936 embedding rows: the vocabulary check alone passes.
  const std::string err = test::error_of(
      [&] { load_run_documents(run_config(qwen3, shards, path("run")), vocab_of(151936)); });
  for (const std::string& part :
       {"data.path " + shards + " was tokenized with <" + shared_tokenizer("llama3") + "/tokenizer.json",
        std::string("vocab 128256"), "but model.path's tokenizer is <" + qwen3 + "/tokenizer.json",
        std::string("vocab 151669"),
        "re-run build/prepare --data " + path("data.jsonl") + " --tokenizer " + qwen3 + " --out " + shards,
        std::string("or point data.path at the JSONL file")})
    EXPECT_NE(err.find(part), std::string::npos) << "\"" << part << "\" missing from: " << err;
  // The model the shards were made for trains on them.
  EXPECT_EQ(load_run_documents(run_config(model_folder("llama3"), shards, path("run")), vocab_of(128256)).train.size(),
            2u);
}

TEST_F(PreparedData, JsonlPreparedWithAnotherDataTokenizerIsAnError) {
  TrainConfig cfg = run_config(model_folder("qwen3"), chats().path, path("run"));
  cfg.data.tokenizer = shared_tokenizer("llama3");
  const std::string err = test::error_of([&] { load_run_documents(cfg, vocab_of(151936)); });
  for (const std::string& part : {"data.path " + cfg.data.path + " (prepared with data.tokenizer into ",
                                  std::string("vocab 128256"), std::string("but model.path's tokenizer is <"),
                                  std::string("; remove data.tokenizer to prepare it with model.path's tokenizer")})
    EXPECT_NE(err.find(part), std::string::npos) << "\"" << part << "\" missing from: " << err;
  cfg.data.tokenizer = shared_tokenizer("qwen3");  // a copy of the model's own: the same tokenizer
  EXPECT_EQ(load_run_documents(cfg, vocab_of(151936)).train.size(), 2u);
}

}  // namespace
}  // namespace loom
