// The documents of a run (engine/training_data.h): data.eval_path as a JSONL file (prepared like
// data.path into its own cache folder) or as prepared shards, data.eval_split out of the training
// data, and no eval data without either.
#include <filesystem>
#include <fstream>

#include "data/shards.h"
#include "engine/training_data.h"
#include "ops/error.h"
#include "tests/test_util.h"

namespace loom {
namespace {

namespace fs = std::filesystem;

using Content = std::pair<std::vector<int32_t>, std::vector<uint8_t>>;
std::vector<Content> contents(const std::vector<Document>& docs) {
  std::vector<Content> c;
  for (const Document& d : docs) c.push_back({d.ids, d.mask});
  return c;
}

// The demo tokenizer has 512 pieces (data/demo/README.md).
ModelConfig demo_vocab(int64_t V = 512) {
  ModelConfig mc;
  mc.V = V;
  return mc;
}

class RunData : public testing::Test {
 protected:
  void SetUp() override {
    dir_ = test::fresh_temp_dir(testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }

  // Lines [begin, end) of the demo conversations as DIR/name.
  std::string demo_lines(const std::string& name, int begin, int end) const {
    std::ifstream in("data/demo/chats.jsonl");
    const std::string path = dir_ + "/" + name;
    std::ofstream out(path);
    std::string line;
    for (int i = 0; i < end && std::getline(in, line); ++i)
      if (i >= begin) out << line << "\n";
    return path;
  }

  // A run on the demo tokenizer and template; the preset model has no tokenizer of its own.
  TrainConfig run(const std::vector<std::string>& extra) const {
    std::vector<std::string> o = {"model.preset=tiny", "data.tokenizer=data/demo/tokenizer.model",
                                  "data.template=mistral", "data.max_seq_len=128", "train.token_budget=1024",
                                  "output.dir=" + dir_ + "/run"};
    o.insert(o.end(), extra.begin(), extra.end());
    return parse_config("", "test", o);
  }

  std::string dir_;
};

TEST_F(RunData, EvalPathJsonlIsPreparedLikeTheTrainingData) {
  const std::string train = demo_lines("train.jsonl", 0, 20), eval = demo_lines("eval.jsonl", 20, 26);
  const RunDocuments docs = load_run_documents(run({"data.path=" + train, "data.eval_path=" + eval}), demo_vocab());
  EXPECT_EQ(docs.train.size(), 20u);
  ASSERT_EQ(docs.eval.size(), 6u);
  // The same file as training data gives the same documents: same tokenizer, template and settings.
  EXPECT_EQ(contents(docs.eval), contents(load_run_documents(run({"data.path=" + eval}), demo_vocab()).train));
  // Prepared into <data cache>/eval, beside the training data's preparation.
  const fs::path cache = dir_ + "/run/data/eval";
  ASSERT_TRUE(fs::is_directory(cache));
  EXPECT_EQ(std::distance(fs::directory_iterator(cache), fs::directory_iterator()), 1);
}

TEST_F(RunData, EvalPathFolderOfPreparedShards) {
  const std::string train = demo_lines("train.jsonl", 0, 10);
  const std::vector<Document> held = {Document{{1, 7, 9, 2}, {0, 1, 1, 1}}, Document{{1, 5, 2}, {0, 0, 1}}};
  write_prepared(dir_ + "/eval-shards", held, "{}");
  const RunDocuments docs =
      load_run_documents(run({"data.path=" + train, "data.eval_path=" + dir_ + "/eval-shards"}), demo_vocab());
  EXPECT_EQ(docs.train.size(), 10u);
  EXPECT_EQ(contents(docs.eval), contents(held));
}

TEST_F(RunData, EvalIdsAreCheckedAgainstTheVocabulary) {
  // Training shards with small ids pass a 20-id vocabulary; the eval JSONL's ids do not.
  write_prepared(dir_ + "/train-shards", {Document{{1, 7, 9, 2}, {0, 1, 1, 1}}}, "{}");
  const std::string eval = demo_lines("eval.jsonl", 0, 3);
  test::expect_error(
      [&] { load_run_documents(run({"data.path=" + dir_ + "/train-shards", "data.eval_path=" + eval}), demo_vocab(20)); },
      {dir_ + "/run/data/eval/", "outside the model's vocabulary (20)"});
}

TEST_F(RunData, EvalSplitHoldsOutOfTheTrainingData) {
  const std::string data = demo_lines("data.jsonl", 0, 40);
  const std::vector<Document> all = load_run_documents(run({"data.path=" + data}), demo_vocab()).train;
  const RunDocuments docs = load_run_documents(run({"data.path=" + data, "data.eval_split=0.25"}), demo_vocab());
  EXPECT_EQ(docs.eval.size(), 10u);
  EXPECT_EQ(docs.train.size(), 30u);
  EXPECT_EQ(contents(load_run_documents(run({"data.path=" + data, "data.eval_split=0.25"}), demo_vocab()).train),
            contents(docs.train));
  std::vector<Content> rejoined = contents(docs.train), want = contents(all);
  for (const Content& c : contents(docs.eval)) rejoined.push_back(c);
  std::sort(rejoined.begin(), rejoined.end());
  std::sort(want.begin(), want.end());
  EXPECT_EQ(rejoined, want);
}

TEST_F(RunData, SyntheticDataSplitsToo) {
  const RunDocuments docs =
      load_run_documents(run({"data.synthetic=sft-alpaca", "data.synthetic_docs=50", "data.eval_split=5"}),
                         demo_vocab());
  EXPECT_EQ(docs.train.size(), 45u);
  EXPECT_EQ(docs.eval.size(), 5u);
}

TEST_F(RunData, NoEvalDataWithoutEvalKeys) {
  const RunDocuments docs = load_run_documents(run({"data.path=" + demo_lines("data.jsonl", 0, 5)}), demo_vocab());
  EXPECT_EQ(docs.train.size(), 5u);
  EXPECT_TRUE(docs.eval.empty());
}

// Lines [begin, end) of the demo preference pairs (tools/make_preference_demo.py) as DIR/name.
std::string demo_pairs(const std::string& dir, int begin, int end) {
  std::ifstream in("data/demo/pairs.jsonl");
  const std::string path = dir + "/pairs.jsonl";
  std::ofstream out(path);
  std::string line;
  for (int i = 0; i < end && std::getline(in, line); ++i)
    if (i >= begin) out << line << "\n";
  return path;
}

// A DPO or ORPO run loads pair documents (held out by eval_split like any others); each objective
// refuses the other's data, naming the source and the document.
TEST_F(RunData, PreferenceObjectivesTrainOnPairs) {
  const std::string pairs = demo_pairs(dir_, 0, 40);
  const RunDocuments docs =
      load_run_documents(run({"data.path=" + pairs, "train.objective=dpo", "data.eval_split=4"}), demo_vocab());
  ASSERT_EQ(docs.train.size(), 36u);
  ASSERT_EQ(docs.eval.size(), 4u);
  for (const std::vector<Document>* set : {&docs.train, &docs.eval})
    for (const Document& d : *set) EXPECT_EQ(d.segments.size(), 2u);
  EXPECT_EQ(load_run_documents(run({"data.path=" + pairs, "train.objective=orpo", "data.format=pairs"}), demo_vocab())
                .train.size(),
            40u);
  test::expect_error([&] { load_run_documents(run({"data.path=" + pairs}), demo_vocab()); },
                     {"data.path " + pairs + ": document 0 is a preference pair", "train.objective sft"});
  const std::string chats = demo_lines("chats.jsonl", 0, 5);
  test::expect_error([&] { load_run_documents(run({"data.path=" + chats, "train.objective=dpo"}), demo_vocab()); },
                     {"data.path " + chats + ": document 0 holds 1 sequence(s), but train.objective dpo trains on "
                      "preference pairs"});
  test::expect_error(
      [&] {
        load_run_documents(run({"data.path=" + pairs, "train.objective=dpo", "data.eval_path=" + chats}), demo_vocab());
      },
      {"data.eval_path " + chats + ": document 0 holds 1 sequence(s)"});
  test::expect_error(
      [&] {
        load_run_documents(run({"data.synthetic=sft-alpaca", "data.synthetic_docs=8", "train.objective=orpo"}),
                           demo_vocab());
      },
      {"data.synthetic sft-alpaca: document 0 holds 1 sequence(s), but train.objective orpo"});
}

}  // namespace
}  // namespace loom
