// Chat templates: rendered text against Hugging Face's apply_chat_template
// (tests/fixtures/templates/*.json, written by tools/make_template_fixture.py), target segments,
// role checks and template detection.
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "data/chat_template.h"
#include "ops/error.h"
#include "tests/test_util.h"

namespace {

using loom::ChatMessage;
using loom::ChatSegment;
using nlohmann::json;

json load_fixture(const std::string& name) {
  const std::string path = loom::test::fixtures_dir() + "/templates/" + name + ".json";
  std::ifstream in(path);
  EXPECT_TRUE(in) << "missing " << path << "; run python3 tools/make_template_fixture.py";
  std::stringstream s;
  s << in.rdbuf();
  return json::parse(s.str());
}

std::vector<ChatMessage> messages_of(const json& fixture_case) {
  std::vector<ChatMessage> out;
  for (const auto& m : fixture_case["messages"])
    out.push_back({m["role"].get<std::string>(), m["content"].get<std::string>(), m.value("reasoning_content", "")});
  return out;
}

std::string target_text(const std::vector<ChatSegment>& segs) {
  std::string s;
  for (const auto& seg : segs)
    if (seg.is_target) s += seg.text;
  return s;
}

std::string error_of(const loom::ChatTemplate& t, const std::vector<ChatMessage>& msgs) {
  return loom::test::error_of([&] { loom::render_chat(t, msgs); });
}

const char* kFixtureTemplates[] = {"chatml", "qwen3", "llama3", "llama3.1", "mistral", "llama2"};

}  // namespace

TEST(ChatTemplate, RendersLikeHuggingFace) {
  int cases = 0;
  for (const char* name : kFixtureTemplates) {
    const json fx = load_fixture(name);
    const loom::ChatTemplate t = loom::chat_template_by_name(name);
    for (const auto& c : fx["cases"]) {
      SCOPED_TRACE(std::string(name) + " / " + c["name"].get<std::string>());
      EXPECT_EQ(loom::segments_text(loom::render_chat(t, messages_of(c))), c["text"].get<std::string>());
      ++cases;
    }
  }
  EXPECT_GE(cases, 50);
}

// add_generation_prompt's text per family, as the Jinja of tools/make_template_fixture.py (and the
// shipped qwen3 and llama3 templates) append it; mistral v0.1 and llama2 append nothing.
TEST(ChatTemplate, GenerationPromptIsTheNextAssistantHeader) {
  const std::vector<ChatMessage> q = {{"user", "Hi", ""}};
  const std::vector<std::pair<const char*, std::string>> want = {
      {"chatml", "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n"
                 "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"},
      {"qwen3", "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"},
      {"llama3", "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"
                 "<|start_header_id|>assistant<|end_header_id|>\n\n"},
      {"mistral", "<s>[INST] Hi [/INST]"},
      {"llama2", "<s>[INST] Hi [/INST]"},
  };
  for (const auto& [name, text] : want)
    EXPECT_EQ(loom::render_generation_prompt(loom::chat_template_by_name(name), q), text) << name;
}

// On every Hugging Face fixture conversation that ends with a user question and its answer: the
// prompt rendered with the generation prompt is the start of HF's rendering, and what follows is
// exactly the answer's target text (what DPO's completion and SFT's last turn train).
TEST(ChatTemplate, GenerationPromptThenTheAnswerIsTheWholeConversation) {
  int cases = 0;
  for (const char* name : kFixtureTemplates) {
    const json fx = load_fixture(name);
    const loom::ChatTemplate t = loom::chat_template_by_name(name);
    for (const auto& c : fx["cases"]) {
      const std::vector<ChatMessage> msgs = messages_of(c);
      if (msgs.size() < 2 || msgs.back().role != "assistant" || msgs[msgs.size() - 2].role != "user") continue;
      SCOPED_TRACE(std::string(name) + " / " + c["name"].get<std::string>());
      const std::string hf = c["text"].get<std::string>();
      const std::string prompt =
          loom::render_generation_prompt(t, std::vector<ChatMessage>(msgs.begin(), msgs.end() - 1));
      ASSERT_EQ(hf.compare(0, prompt.size(), prompt), 0) << prompt;
      const std::vector<ChatSegment> segs = loom::render_chat(t, msgs);
      ASSERT_TRUE(segs.back().is_target);
      EXPECT_EQ(hf.substr(prompt.size()), segs.back().text);
      ++cases;
    }
  }
  EXPECT_GE(cases, 30);
}

TEST(ChatTemplate, ChatmlTargetsContentImEndAndNewline) {
  const auto segs = loom::render_chat(loom::chat_template_by_name("chatml"),
                                      {{"user", "Hi", ""}, {"assistant", "Hello", ""}, {"user", "Bye", ""},
                                       {"assistant", "Ciao", ""}});
  EXPECT_EQ(target_text(segs), "Hello<|im_end|>\nCiao<|im_end|>\n");
  EXPECT_FALSE(segs.front().is_target);
}

TEST(ChatTemplate, Qwen3TargetsIncludeThinkBlockOfLastTurnOnly) {
  const auto segs = loom::render_chat(loom::chat_template_by_name("qwen3"),
                                      {{"user", "2+2?", ""},
                                       {"assistant", "<think>\nadd\n</think>\n\n4", ""},
                                       {"user", "3+3?", ""},
                                       {"assistant", "6", "three and three"}});
  EXPECT_EQ(target_text(segs), "4<|im_end|>\n<think>\nthree and three\n</think>\n\n6<|im_end|>\n");
}

TEST(ChatTemplate, Llama3TargetsStrippedContentAndEot) {
  const auto segs = loom::render_chat(loom::chat_template_by_name("llama3"),
                                      {{"user", "Hi", ""}, {"assistant", "\u3000 Hello \xc2\xa0\n", ""}});
  EXPECT_EQ(target_text(segs), "Hello<|eot_id|>");
  EXPECT_EQ(loom::segments_text(segs).rfind("<|begin_of_text|>", 0), 0u);
}

TEST(ChatTemplate, MistralAndLlama2TargetsEndWithEos) {
  const std::vector<ChatMessage> msgs = {{"user", "Hi", ""}, {"assistant", " Hello ", ""}};
  EXPECT_EQ(target_text(loom::render_chat(loom::chat_template_by_name("mistral"), msgs)), " Hello </s>");
  EXPECT_EQ(target_text(loom::render_chat(loom::chat_template_by_name("llama2"), msgs)), " Hello </s>");
}

TEST(ChatTemplate, AlternationErrorsNameTheMessage) {
  const std::vector<ChatMessage> two_users = {{"system", "s", ""}, {"user", "a", ""}, {"user", "b", ""}};
  for (const char* name : {"mistral", "llama2"}) {
    const std::string err = error_of(loom::chat_template_by_name(name), two_users);
    EXPECT_NE(err.find("message 3 is 'user', expected 'assistant'"), std::string::npos) << err;
    EXPECT_NE(err.find(name), std::string::npos) << err;
  }
  const std::string starts_with_assistant =
      error_of(loom::chat_template_by_name("mistral"), {{"assistant", "a", ""}, {"user", "b", ""}});
  EXPECT_NE(starts_with_assistant.find("message 1 is 'assistant', expected 'user'"), std::string::npos);
  EXPECT_EQ(error_of(loom::chat_template_by_name("chatml"), two_users), "");
}

TEST(ChatTemplate, RejectsUnknownRoleAndEmptyConversation) {
  EXPECT_NE(error_of(loom::chat_template_by_name("chatml"), {{"tool", "x", ""}}).find("role 'tool'"),
            std::string::npos);
  EXPECT_NE(error_of(loom::chat_template_by_name("llama3"), {}).find("at least one message"), std::string::npos);
}

TEST(ChatTemplate, DetectsSharedTokenizerTemplates) {
  const std::string tok = loom::test::shared_dir() + "/tokenizers/";
  const auto qwen3 = loom::resolve_chat_template("auto", loom::read_chat_template_source(tok + "qwen3"), false);
  EXPECT_EQ(qwen3.name, "qwen3");
  EXPECT_EQ(qwen3.default_system, "");
  const auto llama3 =
      loom::resolve_chat_template("auto", loom::read_chat_template_source(tok + "llama3/tokenizer.json"), false);
  EXPECT_EQ(llama3.name, "llama3");
  EXPECT_FALSE(llama3.llama31_system);
  // The mistral folder ships no chat template: auto needs [INST]/[/INST] tokens or a name.
  const std::string mistral = loom::read_chat_template_source(tok + "mistral");
  EXPECT_EQ(mistral, "");
  EXPECT_THROW(loom::resolve_chat_template("auto", mistral, false), loom::Error);
  EXPECT_EQ(loom::resolve_chat_template("auto", mistral, true).name, "mistral");
}

TEST(ChatTemplate, DetectionUsesDistinctiveSubstrings) {
  auto detect = [](const std::string& s) { return loom::detect_chat_template(s); };
  const auto qwen25 = detect("{{'<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful "
                             "assistant.<|im_end|>'}}");
  EXPECT_EQ(qwen25.name, "chatml");
  EXPECT_EQ(qwen25.default_system, "You are Qwen, created by Alibaba Cloud. You are a helpful assistant.");
  EXPECT_EQ(detect("<|im_start|>system\nYou are a helpful assistant.").default_system, "You are a helpful assistant.");
  EXPECT_EQ(detect("{{ '<|im_start|>' + role }}").default_system, "");
  EXPECT_TRUE(detect("<|start_header_id|>system ... Cutting Knowledge Date: December 2023").llama31_system);
  EXPECT_EQ(detect("'[INST] ' + content + ' [/INST]' <<SYS>>").name, "llama2");
  EXPECT_EQ(detect("'[INST] ' + content + ' [/INST]'").name, "mistral");
  EXPECT_THROW(detect("\"[INST] \" + content + \"[/INST]\""), loom::Error);  // v0.3 spacing
  EXPECT_THROW(detect("{{ message.content }}"), loom::Error);
}

TEST(ChatTemplate, NamedTemplateTakesModelSpecificsFromItsJinja) {
  const auto l31 = loom::resolve_chat_template("llama3", "<|start_header_id|> Cutting Knowledge Date", false);
  EXPECT_TRUE(l31.llama31_system);
  EXPECT_EQ(loom::resolve_chat_template("chatml", "", false).default_system,
            "You are Qwen, created by Alibaba Cloud. You are a helpful assistant.");
  EXPECT_EQ(loom::resolve_chat_template("chatml", "<|im_start|>{{ m }}", false).default_system, "");
  try {
    loom::chat_template_by_name("vicuna");
    FAIL() << "unknown name accepted";
  } catch (const loom::Error& e) {
    EXPECT_NE(std::string(e.what()).find("chatml, qwen3, llama3"), std::string::npos) << e.what();
  }
}
