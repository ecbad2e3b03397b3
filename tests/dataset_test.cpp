// Dataset preparation: record formats, masks, overlong and bad-line policies, thread-independent
// output, ids and masks against Hugging Face (tests/fixtures/templates), and the prepared cache.
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <map>
#include <mutex>
#include <nlohmann/json.hpp>
#include <sstream>

#include "data/dataset.h"
#include "data/jsonl.h"
#include "data/shards.h"
#include "ops/error.h"
#include "tests/test_util.h"

namespace {

namespace fs = std::filesystem;
using loom::ChatMessage;
using loom::ChatSegment;
using loom::DataOptions;
using loom::Document;
using nlohmann::json;

// A stand-in tokenizer with exact offsets: each template special string is one token, a run of
// letters/digits (with one leading space, as byte-level BPE words) is one token, any other byte is
// one token.
class WordTokenizer : public loom::Tokenizer {
 public:
  WordTokenizer() {
    for (const char* s : {"<|im_start|>", "<|im_end|>", "<think>", "</think>", "<|begin_of_text|>",
                          "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>", "<s>", "</s>", "[INST]",
                          "[/INST]"})
      id_of(s);
    bos_id_ = token_to_id("<s>");
    eos_id_ = token_to_id("</s>");
  }
  void encode_into(std::string_view text, std::vector<int32_t>& ids, std::vector<size_t>* starts) const override {
    for (size_t pos = 0; pos < text.size();) {
      const size_t len = piece_length(text, pos);
      ids.push_back(id_of(std::string(text.substr(pos, len))));
      if (starts) starts->push_back(pos);
      pos += len;
    }
  }
  std::string decode(const std::vector<int32_t>& ids) const override {
    std::lock_guard<std::mutex> lock(mu_);
    std::string s;
    for (int32_t id : ids) s += pieces_.at(size_t(id));
    return s;
  }
  int32_t vocab_size() const override { return int32_t(pieces_.size()); }
  int32_t token_to_id(std::string_view token) const override {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = ids_.find(std::string(token));
    return it == ids_.end() ? -1 : it->second;
  }

 private:
  static bool alnum(char c) { return std::isalnum(static_cast<unsigned char>(c)) != 0; }
  size_t piece_length(std::string_view text, size_t pos) const {
    {
      std::lock_guard<std::mutex> lock(mu_);
      for (size_t i = 0; i < kSpecials; ++i)
        if (text.substr(pos, pieces_[i].size()) == pieces_[i]) return pieces_[i].size();
    }
    size_t end = pos + (text[pos] == ' ' && pos + 1 < text.size() && alnum(text[pos + 1]) ? 1 : 0);
    while (end < text.size() && alnum(text[end])) ++end;
    return std::max<size_t>(end - pos, 1);
  }
  int32_t id_of(const std::string& piece) const {
    std::lock_guard<std::mutex> lock(mu_);
    auto [it, added] = ids_.emplace(piece, int32_t(pieces_.size()));
    if (added) pieces_.push_back(piece);
    return it->second;
  }
  static constexpr size_t kSpecials = 12;
  mutable std::mutex mu_;
  mutable std::map<std::string, int32_t> ids_;
  mutable std::vector<std::string> pieces_;
};

// Text of the tokens with mask == want (token 0 excluded: it is never a target).
std::string text_where(const loom::Tokenizer& tok, const Document& d, uint8_t want) {
  std::string s;
  for (size_t i = 1; i < d.ids.size(); ++i)
    if (d.mask[i] == want) s += tok.decode({d.ids[i]});
  return s;
}

std::string target_text(const std::vector<ChatSegment>& segs) {
  std::string s;
  for (const auto& seg : segs)
    if (seg.is_target) s += seg.text;
  return s;
}

// A JSONL file in a per-test temporary folder.
class Dataset : public testing::Test {
 protected:
  void SetUp() override {
    const auto* info = testing::UnitTest::GetInstance()->current_test_info();
    dir_ = fs::temp_directory_path() / ("loom_dataset_" + std::to_string(getpid()) + "_" + info->name());
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }

  DataOptions jsonl(const std::vector<std::string>& lines, const std::string& name = "data.jsonl") {
    DataOptions d;
    d.path = (dir_ / name).string();
    std::ofstream out(d.path);
    for (const auto& l : lines) out << l << "\n";
    d.template_name = "chatml";
    return d;
  }
  std::string build_error(const DataOptions& d, const loom::ChatTemplate* t) {
    try {
      loom::build_documents(d, tok_, t);
    } catch (const loom::Error& e) {
      return e.what();
    }
    return "";
  }

  fs::path dir_;
  WordTokenizer tok_;
  loom::ChatTemplate chatml_ = loom::chat_template_by_name("chatml");
};

std::string chat_line(const std::string& user, const std::string& answer) {
  return json{{"messages", {{{"role", "user"}, {"content", user}}, {{"role", "assistant"}, {"content", answer}}}}}
      .dump();
}

json load_json(const std::string& path) {
  std::ifstream in(path);
  EXPECT_TRUE(in) << "missing " << path;
  std::stringstream s;
  s << in.rdbuf();
  return json::parse(s.str());
}

}  // namespace

TEST(JsonlReader, NumbersLinesAndStripsLineEnds) {
  std::istringstream in("\xEF\xBB\xBF{\"a\":1}\r\n\n  \r\n{\"b\":2}");
  loom::JsonlReader reader(in, "x.jsonl");
  std::string line;
  ASSERT_TRUE(reader.next(line));
  EXPECT_EQ(line, "{\"a\":1}");
  EXPECT_EQ(reader.where(), "x.jsonl:1");
  ASSERT_TRUE(reader.next(line));  // the last line has no "\n"
  EXPECT_EQ(line, "{\"b\":2}");
  EXPECT_EQ(reader.where(), "x.jsonl:4");
  EXPECT_FALSE(reader.next(line));
  EXPECT_FALSE(reader.next(line));
}

TEST(JsonlReader, ReadsLinesUpToTheLimitAndNamesALongerOne) {
  const std::string longest(loom::kMaxJsonlLineBytes, 'a');
  std::istringstream in(longest + "\n" + longest + "\n" + longest + "a\n");
  loom::JsonlReader reader(in, "x.jsonl");
  std::string line;
  ASSERT_TRUE(reader.next(line));
  EXPECT_EQ(line.size(), loom::kMaxJsonlLineBytes);
  ASSERT_TRUE(reader.next(line));
  EXPECT_EQ(line.size(), loom::kMaxJsonlLineBytes);
  loom::test::expect_error([&] { reader.next(line); }, {"x.jsonl:3: the line is longer than 8 MiB"});
  std::istringstream last(longest);  // at the limit and without "\n"
  loom::JsonlReader at_end(last, "y.jsonl");
  ASSERT_TRUE(at_end.next(line));
  EXPECT_EQ(line.size(), loom::kMaxJsonlLineBytes);
  EXPECT_FALSE(at_end.next(line));
}

TEST_F(Dataset, MaskIsExactlyAssistantContentAndEndOfTurn) {
  const std::vector<ChatMessage> conv = {{"system", "Be brief.", ""}, {"user", "Hi there", ""},
                                         {"assistant", "Hello, you!", ""}, {"user", "Bye", ""},
                                         {"assistant", "See you 2morrow.", ""}};
  for (const auto& name : loom::chat_template_names()) {
    SCOPED_TRACE(name);
    const auto segs = loom::render_chat(loom::chat_template_by_name(name), conv);
    const Document d = loom::tokenize_segments(tok_, segs, false);
    ASSERT_EQ(d.ids.size(), d.mask.size());
    EXPECT_EQ(tok_.decode(d.ids), loom::segments_text(segs));
    EXPECT_EQ(text_where(tok_, d, 1), target_text(segs));
    EXPECT_EQ(d.mask[0], 0);
  }
}

TEST_F(Dataset, TokenCountsAsTargetWhenItStartsInsideATarget) {
  // " yes" is one token: a target when its leading space is target text, not when it is prompt text.
  const Document in = loom::tokenize_segments(tok_, {{"Q:", false}, {" yes", true}}, false);
  EXPECT_EQ(in.mask, (std::vector<uint8_t>{0, 0, 1}));
  const Document out = loom::tokenize_segments(tok_, {{"Q: ", false}, {"yes", true}}, false);
  EXPECT_EQ(out.mask, (std::vector<uint8_t>{0, 0, 0}));
}

TEST_F(Dataset, TrainOnAllTargetsEveryTokenButTheFirst) {
  const auto segs = loom::render_chat(chatml_, {{"user", "a b", ""}, {"assistant", "c", ""}});
  const Document d = loom::tokenize_segments(tok_, segs, true);
  ASSERT_GT(d.ids.size(), 3u);
  EXPECT_EQ(d.mask[0], 0);
  EXPECT_EQ(std::count(d.mask.begin(), d.mask.end(), 1), int64_t(d.ids.size()) - 1);
}

TEST_F(Dataset, TextRecordsGetBosEosAndFullMask) {
  const Document d = loom::tokenize_text(tok_, "plain words");
  EXPECT_EQ(tok_.decode(d.ids), "<s>plain words</s>");
  EXPECT_EQ(d.mask, (std::vector<uint8_t>{0, 1, 1, 1}));
}

TEST_F(Dataset, ParsesEveryFormat) {
  using loom::RecordFormat;
  const auto openai = loom::parse_record(
      R"({"messages":[{"role":"system","content":"s"},{"role":"user","content":"u"},)"
      R"({"role":"assistant","content":"a","reasoning_content":"r"}]})",
      RecordFormat::messages, "line 1");
  ASSERT_EQ(openai.messages.size(), 3u);
  EXPECT_EQ(openai.messages[2].reasoning, "r");
  const auto share = loom::parse_record(
      R"({"conversations":[{"from":"system","value":"s"},{"from":"human","value":"u"},{"from":"gpt","value":"a"}]})",
      RecordFormat::sharegpt, "line 2");
  ASSERT_EQ(share.messages.size(), 3u);
  EXPECT_EQ(share.messages[1].role, "user");
  EXPECT_EQ(share.messages[2].role, "assistant");
  const auto alpaca =
      loom::parse_record(R"({"instruction":"Sum","input":"1 2","output":"3"})", RecordFormat::alpaca, "line 3");
  ASSERT_EQ(alpaca.messages.size(), 2u);
  EXPECT_EQ(alpaca.messages[0].content, "Sum\n\n1 2");
  EXPECT_EQ(alpaca.messages[1].content, "3");
  EXPECT_EQ(loom::parse_record(R"({"instruction":"Hi","input":"","output":"Yo"})", RecordFormat::alpaca, "line 4")
                .messages[0]
                .content,
            "Hi");
  const auto text = loom::parse_record(R"({"text":"raw"})", RecordFormat::text, "line 5");
  EXPECT_TRUE(text.is_text);
  EXPECT_EQ(text.text, "raw");
}

TEST_F(Dataset, DetectsFormatFromKeys) {
  using loom::RecordFormat;
  EXPECT_EQ(loom::detect_record_format(R"({"messages":[]})", "f.jsonl:1"), RecordFormat::messages);
  EXPECT_EQ(loom::detect_record_format(R"({"conversations":[]})", "f.jsonl:1"), RecordFormat::sharegpt);
  EXPECT_EQ(loom::detect_record_format(R"({"instruction":"i","output":"o"})", "f.jsonl:1"), RecordFormat::alpaca);
  EXPECT_EQ(loom::detect_record_format(R"({"text":"t"})", "f.jsonl:1"), RecordFormat::text);
  try {
    loom::detect_record_format(R"({"prompt":"p","completion":"c"})", "f.jsonl:1");
    FAIL() << "unknown keys accepted";
  } catch (const loom::Error& e) {
    const std::string err = e.what();
    EXPECT_EQ(err.rfind("f.jsonl:1: cannot tell the record format from its keys (completion, prompt)", 0), 0u) << err;
  }
}

TEST_F(Dataset, RecordErrorsSayWhatIsWrong) {
  auto err = [](const std::string& line, loom::RecordFormat f) {
    try {
      loom::parse_record(line, f, "f.jsonl:7");
    } catch (const loom::Error& e) {
      return std::string(e.what());
    }
    return std::string();
  };
  using loom::RecordFormat;
  EXPECT_NE(err(R"({"messages":[{"role":"user","content":["x"]}]})", RecordFormat::messages)
                .find("f.jsonl:7: messages[0].content must be a string (found array)"),
            std::string::npos);
  EXPECT_NE(err(R"({"messages":[{"role":"tool","content":"x"}]})", RecordFormat::messages).find("\"tool\""),
            std::string::npos);
  EXPECT_NE(err(R"({"conversations":[{"from":"bot","value":"x"}]})", RecordFormat::sharegpt).find("human, gpt"),
            std::string::npos);
  EXPECT_NE(err(R"({"instruction":"x"})", RecordFormat::alpaca).find("no \"output\""), std::string::npos);
  EXPECT_NE(err(R"({"text": 5})", RecordFormat::text).find("must be a string"), std::string::npos);
  EXPECT_NE(err(R"([1, 2])", RecordFormat::text).find("found array"), std::string::npos);
  EXPECT_NE(err(R"({"messages": [)", RecordFormat::messages).find("f.jsonl:7: invalid JSON"), std::string::npos);
  EXPECT_NE(err(R"({"messages": []})", RecordFormat::messages).find("no messages"), std::string::npos);
}

TEST_F(Dataset, BadLineErrorNamesFileAndLine) {
  DataOptions d = jsonl({chat_line("a", "b"), "", "{oops", chat_line("c", "d")});
  const std::string err = build_error(d, &chatml_);
  EXPECT_EQ(err.rfind(d.path + ":3: invalid JSON", 0), 0u) << err;
  // Role order is checked per line too.
  DataOptions m = jsonl({chat_line("a", "b"),
                         json{{"messages", {{{"role", "user"}, {"content", "x"}}, {{"role", "user"}, {"content", "y"}}}}}
                             .dump()});
  const loom::ChatTemplate mistral = loom::chat_template_by_name("mistral");
  const std::string order = build_error(m, &mistral);
  EXPECT_EQ(order.rfind(m.path + ":2: chat template mistral needs", 0), 0u) << order;
}

TEST_F(Dataset, SkipsAndCountsBadLinesWhenAsked) {
  DataOptions d = jsonl({"not json", chat_line("a", "b"), R"({"messages": 3})", chat_line("c", "d")});
  d.on_bad_line = loom::OnBadLine::kSkip;
  const auto built = loom::build_documents(d, tok_, &chatml_);
  EXPECT_EQ(built.stats.records, 4);
  EXPECT_EQ(built.stats.bad_lines, 2);
  EXPECT_EQ(built.stats.documents, 2);
  EXPECT_EQ(built.docs.size(), 2u);
  EXPECT_EQ(built.format, loom::RecordFormat::messages);
}

TEST_F(Dataset, OverlongDocumentsAreTruncatedOrDroppedAndCounted) {
  std::string long_answer;
  for (int i = 0; i < 300; ++i) long_answer += "x ";
  DataOptions d = jsonl({chat_line("short", "ok"), chat_line("q", long_answer), chat_line("q", "fine")});
  const Document probe = loom::tokenize_segments(
      tok_, loom::render_chat(chatml_, {{"user", "short", ""}, {"assistant", "ok", ""}}), false);
  d.max_seq_len = int(probe.ids.size()) + 2;

  const auto truncated = loom::build_documents(d, tok_, &chatml_);
  EXPECT_EQ(truncated.stats.truncated, 1);
  EXPECT_EQ(truncated.stats.documents, 3);
  for (const auto& doc : truncated.docs) EXPECT_LE(doc.ids.size(), size_t(d.max_seq_len));

  d.overlong = loom::Overlong::kDrop;
  const auto dropped = loom::build_documents(d, tok_, &chatml_);
  EXPECT_EQ(dropped.stats.dropped_overlong, 1);
  EXPECT_EQ(dropped.stats.documents, 2);
  EXPECT_EQ(dropped.stats.truncated, 0);
}

TEST_F(Dataset, DocumentsWithoutTargetsAreDropped) {
  const std::string no_answer = json{{"messages", {{{"role", "user"}, {"content", "hello?"}}}}}.dump();
  std::string long_question;
  for (int i = 0; i < 200; ++i) long_question += "q ";
  DataOptions d = jsonl({no_answer, chat_line("a", "b"), chat_line(long_question, "late answer")});
  d.max_seq_len = 64;  // truncation cuts the third record's answer off entirely
  const auto built = loom::build_documents(d, tok_, &chatml_);
  EXPECT_EQ(built.stats.dropped_no_target, 2);
  EXPECT_EQ(built.stats.truncated, 0);
  EXPECT_EQ(built.stats.documents, 1);
}

TEST_F(Dataset, OutputOrderDoesNotDependOnThreads) {
  std::vector<std::string> lines;
  for (int i = 0; i < 700; ++i) lines.push_back(chat_line("n" + std::to_string(i), std::to_string(i * 7)));
  DataOptions d = jsonl(lines);
  loom::BuildOptions one, many;
  one.threads = 1;
  many.threads = 4;
  const auto a = loom::build_documents(d, tok_, &chatml_, one);
  const auto b = loom::build_documents(d, tok_, &chatml_, many);
  ASSERT_EQ(a.docs.size(), 700u);
  ASSERT_EQ(b.docs.size(), 700u);
  for (size_t i = 0; i < a.docs.size(); ++i) {
    EXPECT_EQ(a.docs[i].ids, b.docs[i].ids) << i;
    EXPECT_EQ(a.docs[i].mask, b.docs[i].mask) << i;
  }
  EXPECT_NE(tok_.decode(b.docs[699].ids).find("n699"), std::string::npos);
}

TEST_F(Dataset, ConversationsNeedATemplate) {
  DataOptions d = jsonl({chat_line("a", "b")});
  EXPECT_NE(build_error(d, nullptr).find("data.template is none"), std::string::npos);
  DataOptions t = jsonl({R"({"text":"just text"})"}, "plain.jsonl");
  const auto built = loom::build_documents(t, tok_, nullptr);
  EXPECT_EQ(built.stats.documents, 1);
  EXPECT_EQ(built.format, loom::RecordFormat::text);
}

// ---- with the real tokenizers (data/tokenizer.cpp) ----

TEST_F(Dataset, IdsAndMasksMatchHuggingFace) {
  int cases = 0;
  for (const std::string name : {"chatml", "qwen3", "llama3", "llama3.1", "mistral", "llama2"}) {
    const json fx = load_json(loom::test::fixtures_dir() + "/templates/" + name + ".json");
    const auto tok = loom::Tokenizer::load(loom::test::shared_dir() + "/tokenizers/" + fx["tokenizer"].get<std::string>());
    const loom::ChatTemplate t = loom::chat_template_by_name(name);
    for (const auto& c : fx["cases"]) {
      SCOPED_TRACE(name + " / " + c["name"].get<std::string>());
      std::vector<ChatMessage> msgs;
      for (const auto& m : c["messages"])
        msgs.push_back({m["role"].get<std::string>(), m["content"].get<std::string>(), m.value("reasoning_content", "")});
      const Document d = loom::tokenize_segments(*tok, loom::render_chat(t, msgs), false);
      EXPECT_EQ(d.ids, c["ids"].get<std::vector<int32_t>>());
      EXPECT_EQ(d.mask, c["mask"].get<std::vector<uint8_t>>());
      ++cases;
    }
  }
  EXPECT_GE(cases, 50);
}

TEST_F(Dataset, PreparedCacheIsReusedUntilSomethingChanges) {
  const std::string tokenizer = loom::test::shared_dir() + "/tokenizers/qwen3";
  DataOptions d = jsonl({chat_line("What is 2 plus 2?", "4."), chat_line("Hi", "Hello!")});
  d.template_name = "auto";
  loom::PrepareOptions quiet;
  quiet.progress = false;
  const std::string cache = (dir_ / "cache").string();
  const auto first = loom::prepare_dataset_cached(d, tokenizer, cache, quiet);
  EXPECT_FALSE(first.reused);
  EXPECT_EQ(first.stats.documents, 2);
  const auto again = loom::prepare_dataset_cached(d, tokenizer, cache, quiet);
  EXPECT_TRUE(again.reused);
  EXPECT_EQ(again.dir, first.dir);
  EXPECT_EQ(again.stats.tokens, first.stats.tokens);

  const auto docs = loom::load_prepared(first.dir);
  ASSERT_EQ(docs.size(), 2u);
  const auto tok = loom::Tokenizer::load(tokenizer);
  EXPECT_EQ(tok->decode(docs[1].ids),
            "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\nHello!<|im_end|>\n");
  const json manifest = json::parse(loom::read_manifest(first.dir));
  EXPECT_EQ(manifest["resolved"]["template"], "qwen3");
  EXPECT_EQ(manifest["counts"]["documents"], 2);

  d.train_on = loom::TrainOn::kAll;
  EXPECT_NE(loom::prepare_dataset_cached(d, tokenizer, cache, quiet).dir, first.dir);
  std::ofstream(d.path, std::ios::app) << chat_line("One more", "Sure.") << "\n";
  EXPECT_FALSE(loom::prepare_dataset_cached(d, tokenizer, cache, quiet).reused);
}

// The cache is loom's own: a damaged prepared.json there (counts of the wrong type, JSON nested
// past the limit) is prepared again, not an error the user must clean up by hand.
TEST_F(Dataset, DamagedCacheManifestIsPreparedAgain) {
  const std::string tokenizer = loom::test::shared_dir() + "/tokenizers/qwen3";
  DataOptions d = jsonl({chat_line("Hi", "Hello!")});
  d.template_name = "auto";
  loom::PrepareOptions quiet;
  quiet.progress = false;
  const std::string cache = (dir_ / "cache").string();
  const auto first = loom::prepare_dataset_cached(d, tokenizer, cache, quiet);
  const std::string manifest = (fs::path(first.dir) / loom::kManifestName).string();
  json m = json::parse(loom::read_manifest(first.dir));
  m["counts"]["tokens"] = "many";
  std::ofstream(manifest) << m.dump();
  const auto again = loom::prepare_dataset_cached(d, tokenizer, cache, quiet);
  EXPECT_FALSE(again.reused);
  EXPECT_EQ(again.stats.tokens, first.stats.tokens);
  std::ofstream(manifest) << std::string(100000, '[');
  EXPECT_FALSE(loom::prepare_dataset_cached(d, tokenizer, cache, quiet).reused);
  EXPECT_TRUE(loom::prepare_dataset_cached(d, tokenizer, cache, quiet).reused);
}

TEST_F(Dataset, DemoDataFitsTheDemoTokenizer) {
  DataOptions d;
  d.path = "data/demo/chats.jsonl";
  d.max_seq_len = 64;
  d.overlong = loom::Overlong::kDrop;
  const auto tok = loom::Tokenizer::load("data/demo/tokenizer.model");
  EXPECT_EQ(tok->vocab_size(), 512);
  const auto tmpl = loom::resolve_template(d, "data/demo/tokenizer.model", *tok);
  ASSERT_TRUE(tmpl.has_value());
  EXPECT_EQ(tmpl->name, "mistral");
  const auto built = loom::build_documents(d, *tok, &*tmpl);
  EXPECT_EQ(built.stats.dropped_overlong, 0);
  EXPECT_GE(built.stats.documents, 1000);
  EXPECT_GT(built.stats.target_tokens * 4, built.stats.tokens);  // answers are a real share of the text
  const std::string first = tok->decode(built.docs[0].ids);
  EXPECT_NE(first.find("[INST]"), std::string::npos) << first;
}
