// Preference pairs (data/preference_data.h): the JSONL forms and their tokens (standard: BOS,
// prompt, completion, EOS; conversational: the chat template's generation prompt, then the
// assistant turn), the pair document (masks, segments, packing into two sequences), truncation and
// its counts, errors naming FILE:LINE and the key, and preparation into shards like SFT data (the
// demo pairs of tools/make_preference_demo.py).
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <tuple>

#include "data/dataset.h"
#include "data/preference_data.h"
#include "data/shards.h"
#include "ops/cross_entropy.h"
#include "ops/error.h"
#include "tests/test_util.h"

namespace loom {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

constexpr const char* kDemoTokenizer = "data/demo/tokenizer.model";

std::vector<int32_t> concat(std::vector<int32_t> a, const std::vector<int32_t>& b) {
  a.insert(a.end(), b.begin(), b.end());
  return a;
}

json user(const std::string& s) { return {{"role", "user"}, {"content", s}}; }
json assistant(const std::string& s) { return {{"role", "assistant"}, {"content", s}}; }

PairTokens tokens_of(const Tokenizer& tok, const ChatTemplate* tmpl, const json& record) {
  return tokenize_pair(tok, tmpl, parse_preference_record(record, "f.jsonl:1"));
}

std::string parse_error(const std::string& line) {
  return test::error_of([&] { parse_preference_record(json::parse(line), "f.jsonl:3"); });
}

// ---------------------------------------------------------------- tokens

// Standard form: what the tokenizer adds before a text (BOS <s> = 1 for the demo tokenizer), the
// prompt, then each completion and EOS (</s> = 2).
TEST(PreferenceData, StandardPairIsBosPromptThenCompletionAndEos) {
  const auto tok = Tokenizer::load(kDemoTokenizer);
  ASSERT_EQ(tok->special_ids().before, std::vector<int32_t>{1});
  ASSERT_EQ(tok->eos_id(), 2);
  const PairTokens t =
      tokens_of(*tok, nullptr, {{"prompt", "What is 2 plus 2?"}, {"chosen", "2 plus 2 is 4."}, {"rejected", "A cow says moo."}});
  EXPECT_EQ(t.prompt, concat({1}, tok->encode("What is 2 plus 2?")));
  EXPECT_EQ(t.chosen, concat(tok->encode("2 plus 2 is 4."), {2}));
  EXPECT_EQ(t.rejected, concat(tok->encode("A cow says moo."), {2}));
}

// Conversational form, per family: the prompt is the rendering with the generation prompt, and
// each sequence is the whole conversation's tokens, ids and mask those of SFT on that conversation.
TEST(PreferenceData, ConversationalSequenceIsTheSftDocumentOfTheConversation) {
  struct Case {
    const char* tmpl;
    std::string tokenizer, prompt, chosen;
  };
  const std::string shared = test::shared_dir() + "/tokenizers/";
  const std::vector<Case> cases = {
      {"mistral", kDemoTokenizer, "<s>[INST] What is 2 plus 2? [/INST]", "2 plus 2 is 4.</s>"},
      {"chatml", shared + "qwen3",
       "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n"
       "<|im_start|>user\nWhat is 2 plus 2?<|im_end|>\n<|im_start|>assistant\n",
       "2 plus 2 is 4.<|im_end|>\n"},
      {"qwen3", shared + "qwen3", "<|im_start|>user\nWhat is 2 plus 2?<|im_end|>\n<|im_start|>assistant\n",
       "<think>\n\n</think>\n\n2 plus 2 is 4.<|im_end|>\n"},
      {"llama3", shared + "llama3",
       "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nWhat is 2 plus 2?<|eot_id|>"
       "<|start_header_id|>assistant<|end_header_id|>\n\n",
       "2 plus 2 is 4.<|eot_id|>"},
      {"llama2", shared + "mistral", "<s>[INST] What is 2 plus 2? [/INST]", " 2 plus 2 is 4. </s>"},
  };
  const std::vector<ChatMessage> prompt = {{"user", "What is 2 plus 2?", ""}};
  const json record = {{"prompt", {user("What is 2 plus 2?")}}, {"chosen", {assistant("2 plus 2 is 4.")}},
                       {"rejected", {assistant("Paris.")}}};
  for (const Case& c : cases) {
    SCOPED_TRACE(c.tmpl);
    const auto tok = Tokenizer::load(c.tokenizer);
    const ChatTemplate tmpl = chat_template_by_name(c.tmpl);
    const PairTokens t = tokens_of(*tok, &tmpl, record);
    EXPECT_EQ(t.prompt, tok->encode(c.prompt));
    EXPECT_EQ(concat(t.prompt, t.chosen), tok->encode(c.prompt + c.chosen));
    const PairDocument pair = pair_document(t, DataOptions{});
    ASSERT_EQ(pair.fate, PairFate::kKept);
    const std::vector<int32_t> lengths = pair.doc.segments;
    for (const auto& [reply, begin, end] :
         {std::tuple{"2 plus 2 is 4.", size_t(0), size_t(lengths[0])},
          std::tuple{"Paris.", size_t(lengths[0]), pair.doc.ids.size()}}) {
      std::vector<ChatMessage> conversation = prompt;
      conversation.push_back({"assistant", reply, ""});
      const Document sft = tokenize_segments(*tok, render_chat(tmpl, conversation), false);
      EXPECT_EQ(std::vector<int32_t>(pair.doc.ids.begin() + ptrdiff_t(begin), pair.doc.ids.begin() + ptrdiff_t(end)),
                sft.ids)
          << reply;
      EXPECT_EQ(std::vector<uint8_t>(pair.doc.mask.begin() + ptrdiff_t(begin), pair.doc.mask.begin() + ptrdiff_t(end)),
                sft.mask)
          << reply;
    }
  }
}

// Without "prompt", conversations that share their first messages: those are the prompt.
TEST(PreferenceData, ImplicitPromptIsTheSharedMessages) {
  const auto tok = Tokenizer::load(kDemoTokenizer);
  const ChatTemplate mistral = chat_template_by_name("mistral");
  const json explicit_form = {{"prompt", {user("Hi"), assistant("Hello."), user("What is 2 plus 2?")}},
                              {"chosen", {assistant("4.")}},
                              {"rejected", {assistant("5.")}}};
  const json implicit_form = {
      {"chosen", {user("Hi"), assistant("Hello."), user("What is 2 plus 2?"), assistant("4.")}},
      {"rejected", {user("Hi"), assistant("Hello."), user("What is 2 plus 2?"), assistant("5.")}}};
  const PairTokens a = tokens_of(*tok, &mistral, explicit_form), b = tokens_of(*tok, &mistral, implicit_form);
  EXPECT_EQ(a.prompt, b.prompt);
  EXPECT_EQ(a.chosen, b.chosen);
  EXPECT_EQ(a.rejected, b.rejected);
  // Conversations that differ from their first message share no prompt.
  EXPECT_EQ(parse_error(R"({"chosen": [{"role": "user", "content": "a"}], "rejected": [{"role": "user", "content": "b"}]})"),
            "f.jsonl:3: without \"prompt\", the messages chosen and rejected share (the prompt) must end with a user "
            "message (the question that chosen and rejected answer); it has none");
}

// ---------------------------------------------------------------- the document

TEST(PreferenceData, PairDocumentMasksTheCompletionsAndPacksToTwoSequences) {
  DataOptions data;
  const PairDocument p = pair_document({{10, 11, 12}, {20, 21}, {30, 31, 32, 33}}, data);
  ASSERT_EQ(p.fate, PairFate::kKept);
  EXPECT_FALSE(p.truncated);
  EXPECT_EQ(p.doc.ids, (std::vector<int32_t>{10, 11, 12, 20, 21, 10, 11, 12, 30, 31, 32, 33}));
  EXPECT_EQ(p.doc.mask, (std::vector<uint8_t>{0, 0, 0, 1, 1, 0, 0, 0, 1, 1, 1, 1}));
  EXPECT_EQ(p.doc.segments, (std::vector<int32_t>{5, 7}));
  const MicroBatch mb = pack_documents({&p.doc});
  EXPECT_EQ(mb.cu_seqlens, (std::vector<int32_t>{0, 5, 12}));
  EXPECT_EQ(mb.positions, (std::vector<int32_t>{0, 1, 2, 3, 4, 0, 1, 2, 3, 4, 5, 6}));
  const int32_t x = kIgnoreIndex;
  // The prompt's last token predicts the completion's first; the chosen sequence's last token
  // predicts nothing (not the rejected sequence's first token).
  EXPECT_EQ(mb.targets, (std::vector<int32_t>{x, x, 20, 21, x, x, x, 30, 31, 32, 33, x}));
  EXPECT_EQ(document_targets(p.doc), 6);
}

// An empty prompt (a string pair without BOS) leaves the completion's first token untrained: it
// starts its sequence. A one-token completion then has no target and the pair is dropped.
TEST(PreferenceData, ACompletionAtPositionZeroIsNotATarget) {
  DataOptions data;
  const PairDocument p = pair_document({{}, {20, 21}, {30, 31, 32}}, data);
  ASSERT_EQ(p.fate, PairFate::kKept);
  EXPECT_EQ(p.doc.mask, (std::vector<uint8_t>{0, 1, 0, 1, 1}));
  EXPECT_EQ(document_targets(p.doc), 3);
  EXPECT_EQ(pair_document({{}, {20}, {30, 31}}, data).fate, PairFate::kNoTarget);
  EXPECT_EQ(pair_document({{}, {20, 21}, {30}}, data).fate, PairFate::kNoTarget);
  EXPECT_EQ(pair_document({{1}, {}, {30}}, data).fate, PairFate::kNoTarget) << "an empty completion";
}

// 1. max_prompt_len keeps the prompt's end; 2. a sequence over max_seq_len cuts the completions'
// ends (truncate), drops the pair (drop), or drops it when the prompt alone fills max_seq_len.
TEST(PreferenceData, TruncationKeepsThePromptEndThenCutsCompletions) {
  DataOptions data;
  data.max_seq_len = 6;
  data.max_prompt_len = 2;
  const PairTokens t{{10, 11, 12, 13}, {20, 21, 22, 23, 24, 25}, {30}};
  PairDocument p = pair_document(t, data);
  ASSERT_EQ(p.fate, PairFate::kKept);
  EXPECT_TRUE(p.truncated);
  EXPECT_EQ(p.doc.ids, (std::vector<int32_t>{12, 13, 20, 21, 22, 23, 12, 13, 30}));
  EXPECT_EQ(p.doc.segments, (std::vector<int32_t>{6, 3}));

  data.max_prompt_len = 0;  // the prompt keeps its 4 tokens: 2 left for each completion
  p = pair_document(t, data);
  EXPECT_EQ(p.doc.ids, (std::vector<int32_t>{10, 11, 12, 13, 20, 21, 10, 11, 12, 13, 30}));

  data.max_prompt_len = 2;
  p = pair_document({{10, 11}, {20}, {30}}, data);
  EXPECT_FALSE(p.truncated) << "nothing was cut";

  data.overlong = Overlong::kDrop;
  EXPECT_EQ(pair_document(t, data).fate, PairFate::kOverlong);
  EXPECT_EQ(pair_document({{10}, {20, 21, 22, 23, 24}, {30}}, data).fate, PairFate::kKept) << "6 tokens fit";

  data.overlong = Overlong::kTruncate;
  data.max_prompt_len = 0;
  EXPECT_EQ(pair_document({{10, 11, 12, 13, 14, 15}, {20}, {30}}, data).fate, PairFate::kLongPrompt);
  EXPECT_EQ(pair_document({{10, 11, 12, 13, 14}, {20, 21}, {30}}, data).doc.ids,
            (std::vector<int32_t>{10, 11, 12, 13, 14, 20, 10, 11, 12, 13, 14, 30}))
      << "one completion token left: kept";
}

// ---------------------------------------------------------------- errors

TEST(PreferenceData, BadRecordsNameTheLineAndTheKey) {
  EXPECT_EQ(parse_error(R"({"prompt": "p", "chosen": "c"})"),
            "f.jsonl:3: rejected is missing; a preference pair has \"prompt\", \"chosen\" and \"rejected\"");
  EXPECT_EQ(parse_error(R"({"prompt": "p", "chosen": 5, "rejected": "r"})"),
            "f.jsonl:3: chosen must be a string (standard form) or a list of messages (conversational form), found 5");
  EXPECT_EQ(parse_error(R"({"prompt": 7, "chosen": "c", "rejected": "r"})"), "f.jsonl:3: prompt must be a string, found 7");
  EXPECT_EQ(parse_error(R"({"prompt": "p", "chosen": "c", "rejected": ["r"]})"),
            "f.jsonl:3: rejected must be a string, found [\"r\"]");
  EXPECT_EQ(parse_error(R"({"chosen": "c", "rejected": "r"})"),
            "f.jsonl:3: prompt is missing; a pair of strings needs \"prompt\" (an implicit prompt is read from "
            "conversations only: chosen and rejected as message lists)");
  const std::string p = R"("prompt": [{"role": "user", "content": "q"}])";
  EXPECT_EQ(parse_error("{" + p + R"(, "chosen": [{"role": "assistant"}], "rejected": []})"),
            "f.jsonl:3: chosen[0].content is missing; it must be a string");
  EXPECT_EQ(parse_error("{" + p + R"(, "chosen": [{"role": "assistant", "content": "a"}], "rejected": "r"})"),
            "f.jsonl:3: rejected must be a list, found \"r\"");
  EXPECT_EQ(parse_error("{" + p + R"(, "chosen": [{"role": "assistant", "content": "a"}], "rejected": []})"),
            "f.jsonl:3: rejected has no message; it must hold the assistant's answer");
  EXPECT_EQ(parse_error("{" + p + R"(, "chosen": [{"role": "user", "content": "a"}], "rejected": [{"role": "assistant", "content": "b"}]})"),
            "f.jsonl:3: chosen[0].role is \"user\"; chosen holds the assistant's answer (role assistant)");
  EXPECT_EQ(parse_error(R"({"prompt": [{"role": "bot", "content": "q"}], "chosen": [], "rejected": []})"),
            "f.jsonl:3: prompt[0].role is \"bot\"; expected system, user or assistant");
  EXPECT_EQ(parse_error(R"({"prompt": [{"role": "system", "content": "s"}], "chosen": [{"role": "assistant", "content": "a"}], "rejected": [{"role": "assistant", "content": "b"}]})"),
            "f.jsonl:3: prompt must end with a user message (the question that chosen and rejected answer); its "
            "last message is system");
  EXPECT_EQ(parse_error(R"({"prompt": [5], "chosen": [], "rejected": []})"),
            "f.jsonl:3: prompt[0] must be an object {role, content}, found 5");
}

class PreferenceFiles : public test::TempDirTest {
 protected:
  DataOptions jsonl(const std::vector<std::string>& lines) {
    DataOptions d;
    d.path = (fs::path(dir_) / "pairs.jsonl").string();
    std::ofstream out(d.path);
    for (const auto& l : lines) out << l << "\n";
    return d;
  }
};

std::string standard_line(const std::string& prompt, const std::string& chosen, const std::string& rejected) {
  return json{{"prompt", prompt}, {"chosen", chosen}, {"rejected", rejected}}.dump();
}

// In a file, a bad line names FILE:LINE (or is counted under on_bad_line: skip); a conversational
// pair needs a template, a string pair does not.
TEST_F(PreferenceFiles, LinesAreCheckedOneByOne) {
  const auto tok = Tokenizer::load(kDemoTokenizer);
  const std::string conversational =
      json{{"prompt", {user("q")}}, {"chosen", {assistant("a")}}, {"rejected", {assistant("b")}}}.dump();
  DataOptions d = jsonl({standard_line("q", "a", "b"), R"({"prompt": "q", "chosen": "a", "rejected": 1})",
                         conversational});
  d.format = DataFormat::kPairs;
  EXPECT_EQ(test::error_of([&] { build_documents(d, *tok, nullptr); }),
            d.path + ":2: rejected must be a string, found 1");
  d.on_bad_line = OnBadLine::kSkip;
  const ChatTemplate mistral = chat_template_by_name("mistral");
  const BuiltDataset built = build_documents(d, *tok, &mistral);
  EXPECT_EQ(built.format, RecordFormat::pairs);
  EXPECT_EQ(built.stats.bad_lines, 1);
  EXPECT_EQ(built.stats.documents, 2);
  const BuiltDataset no_template = build_documents(d, *tok, nullptr);
  EXPECT_EQ(no_template.stats.documents, 1) << "the string pair";
  EXPECT_EQ(no_template.stats.bad_lines, 2) << "the conversational pair without a template";
  d.on_bad_line = OnBadLine::kError;
  d.path = jsonl({conversational}).path;
  EXPECT_EQ(test::error_of([&] { build_documents(d, *tok, nullptr); }),
            d.path + ":1: a conversational pair needs a chat template: data.template is none");
}

// Counts per reason; documents are pairs, tokens both sequences.
TEST_F(PreferenceFiles, DropsAreCountedUnderTheirReason) {
  const auto tok = Tokenizer::load(kDemoTokenizer);
  const std::string long_text(200, 'x');
  DataOptions d = jsonl({standard_line("What is 2 plus 2?", "4.", "5."), standard_line(long_text, "4.", "5."),
                         standard_line("q", long_text, "5.")});
  d.max_seq_len = 40;
  BuiltDataset built = build_documents(d, *tok, nullptr);
  EXPECT_EQ(built.stats.records, 3);
  EXPECT_EQ(built.stats.documents, 2);
  EXPECT_EQ(built.stats.dropped_long_prompt, 1);
  EXPECT_EQ(built.stats.truncated, 1);
  EXPECT_EQ(built.docs[1].segments[0], 40);
  int64_t tokens = 0;
  for (const Document& doc : built.docs) tokens += int64_t(doc.ids.size());
  EXPECT_EQ(built.stats.tokens, tokens);
  EXPECT_NE(format_stats(built.stats).find("1 pairs whose prompt fills max_seq_len"), std::string::npos)
      << format_stats(built.stats);
  d.overlong = Overlong::kDrop;
  built = build_documents(d, *tok, nullptr);
  EXPECT_EQ(built.stats.documents, 1);
  EXPECT_EQ(built.stats.dropped_overlong, 2);
  EXPECT_EQ(built.stats.dropped_long_prompt, 0);
}

// data.format auto reads a pair file as pairs; preparation caches it into shards that load back
// as pair documents, and max_prompt_len is part of what the cache is keyed on.
TEST_F(PreferenceFiles, PairsArePreparedOnceAndCached) {
  DataOptions d = jsonl({standard_line("What is 2 plus 2?", "2 plus 2 is 4.", "A cow says moo."),
                         standard_line("Reverse the word sun.", "sun reversed is nus.", "Friday.")});
  PrepareOptions quiet;
  quiet.progress = false;
  const std::string cache = (fs::path(dir_) / "cache").string();
  const PrepareResult first = prepare_dataset_cached(d, kDemoTokenizer, cache, quiet);
  EXPECT_FALSE(first.reused);
  EXPECT_EQ(first.stats.documents, 2);
  const std::vector<Document> docs = load_prepared(first.dir);
  ASSERT_EQ(docs.size(), 2u);
  const auto tok = Tokenizer::load(kDemoTokenizer);
  const PairTokens t = tokens_of(*tok, nullptr, json::parse(standard_line("What is 2 plus 2?", "2 plus 2 is 4.", "A cow says moo.")));
  const PairDocument want = pair_document(t, d);
  EXPECT_EQ(docs[0].ids, want.doc.ids);
  EXPECT_EQ(docs[0].mask, want.doc.mask);
  EXPECT_EQ(docs[0].segments, want.doc.segments);
  EXPECT_EQ(json::parse(read_manifest(first.dir))["resolved"]["format"], "pairs");
  EXPECT_TRUE(prepare_dataset_cached(d, kDemoTokenizer, cache, quiet).reused);
  d.max_prompt_len = 4;
  EXPECT_FALSE(prepare_dataset_cached(d, kDemoTokenizer, cache, quiet).reused);
}

// The demo's preference set (tools/make_preference_demo.py): 600 conversational pairs, prepared
// with the demo tokenizer and the mistral template into pair documents.
TEST(PreferenceData, DemoPairsPrepareWithTheDemoTokenizer) {
  DataOptions d;
  d.path = "data/demo/pairs.jsonl";
  d.template_name = "mistral";
  d.max_seq_len = 128;
  d.overlong = Overlong::kDrop;
  const auto tok = Tokenizer::load(kDemoTokenizer);
  const auto tmpl = resolve_template(d, kDemoTokenizer, *tok);
  const BuiltDataset built = build_documents(d, *tok, &*tmpl);
  EXPECT_EQ(built.format, RecordFormat::pairs);
  EXPECT_EQ(built.stats.records, 600);
  EXPECT_EQ(built.stats.documents, 600) << format_stats(built.stats);
  for (const Document& doc : built.docs) {
    ASSERT_EQ(doc.segments.size(), 2u);
    check_packable(doc, "demo pair", 2 * d.max_seq_len);
    const size_t chosen_end = size_t(doc.segments[0]);
    EXPECT_EQ(doc.ids[0], 1) << "each sequence starts with <s>";
    EXPECT_EQ(doc.ids[chosen_end], 1);
    EXPECT_EQ(doc.ids[chosen_end - 1], 2) << "the chosen answer ends with </s>";
    EXPECT_EQ(doc.ids.back(), 2);
    size_t prompt = 0;
    while (doc.mask[prompt] == 0) ++prompt;
    EXPECT_EQ(std::vector<int32_t>(doc.ids.begin(), doc.ids.begin() + ptrdiff_t(prompt)),
              std::vector<int32_t>(doc.ids.begin() + ptrdiff_t(chosen_end),
                                   doc.ids.begin() + ptrdiff_t(chosen_end + prompt)))
        << "both sequences start with the same prompt";
    EXPECT_EQ(doc.ids[prompt - 1], tok->token_to_id("[/INST]")) << "the prompt ends with the user turn";
  }
  const std::string first = tok->decode(std::vector<int32_t>(built.docs[0].ids.begin(),
                                                             built.docs[0].ids.begin() + built.docs[0].segments[0]));
  EXPECT_NE(first.find("What is 2 times 12? [/INST]2 times 12 is 24."), std::string::npos) << first;
}

}  // namespace
}  // namespace loom
