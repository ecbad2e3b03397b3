#!/usr/bin/env python3
"""Writes tests/fixtures/templates/<template>.json: conversations rendered by Hugging Face
transformers' apply_chat_template (the Jinja reference loom's C++ templates must match), with HF's
token ids of the rendered text and the response-only mask HF's offsets give.

    python3 tools/make_template_fixture.py [--shared ../shared] [--out tests/fixtures/templates]

Templates and where their Jinja comes from:
  qwen3     shared/tokenizers/qwen3/tokenizer_config.json (as shipped)
  llama3    shared/tokenizers/llama3/tokenizer_config.json (Llama 3.0; it appends the assistant
            header even without add_generation_prompt, FORMATS.md §6, so that tail is cut here)
  chatml    Qwen2.5-Instruct's template, tool branches left out, written below from the public
            tokenizer_config.json of Qwen/Qwen2.5-7B-Instruct; ids from the qwen3 tokenizer
  llama3.1  Llama-3.1-Instruct's template, tool branches left out, written below from the public
            tokenizer_config.json of meta-llama/Llama-3.1-8B-Instruct; ids from the llama3 tokenizer
  mistral   shared/tokenizers/mistral has no chat_template: the Mistral-7B-Instruct-v0.1 template
            written below, extended as later Mistral revisions do with an optional first system
            message put in front of the first user message followed by a blank line
  llama2    meta-llama/Llama-2-7b-chat-hf's template (no default system prompt), written below;
            ids from the mistral tokenizer (same Llama-2-style sentencepiece BPE, other vocabulary)

Mask: a token is a target iff its first character lies in a response span: from the end of a
response header (<|im_start|>assistant\\n, <|start_header_id|>assistant<|end_header_id|>\\n\\n,
[/INST]) through the end of the next end-of-turn text (<|im_end|> plus its "\\n", <|eot_id|>,
</s>), the spans unsloth's train_on_responses_only trains (FORMATS.md §6). The first token is never
a target.
"""
import argparse
import json
import os

from transformers import AutoTokenizer

CHATML_QWEN25 = (
    "{%- if messages[0]['role'] == 'system' %}"
    "{{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}"
    "{%- else %}"
    "{{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- for message in messages %}"
    "{%- if (message.role == 'user') or (message.role == 'system' and not loop.first) or (message.role == 'assistant') %}"
    "{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)

LLAMA31 = (
    "{{- bos_token }}"
    "{%- if not date_string is defined %}{%- set date_string = '26 Jul 2024' %}{%- endif %}"
    "{%- if messages[0]['role'] == 'system' %}"
    "{%- set system_message = messages[0]['content']|trim %}{%- set messages = messages[1:] %}"
    "{%- else %}{%- set system_message = '' %}{%- endif %}"
    "{{- '<|start_header_id|>system<|end_header_id|>\\n\\n' }}"
    "{{- 'Cutting Knowledge Date: December 2023\\n' }}"
    "{{- 'Today Date: ' + date_string + '\\n\\n' }}"
    "{{- system_message }}{{- '<|eot_id|>' }}"
    "{%- for message in messages %}"
    "{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + message['content'] | trim + '<|eot_id|>' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{%- endif %}"
)

MISTRAL_V01 = (
    "{%- if messages[0]['role'] == 'system' %}"
    "{%- set system_message = messages[0]['content'] %}{%- set loop_messages = messages[1:] %}"
    "{%- else %}{%- set loop_messages = messages %}{%- endif %}"
    "{{- bos_token }}"
    "{%- for message in loop_messages %}"
    "{%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{- raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
    "{%- endif %}"
    "{%- if message['role'] == 'user' %}"
    "{%- if loop.first and system_message is defined %}"
    "{{- '[INST] ' + system_message + '\\n\\n' + message['content'] + ' [/INST]' }}"
    "{%- else %}{{- '[INST] ' + message['content'] + ' [/INST]' }}{%- endif %}"
    "{%- elif message['role'] == 'assistant' %}{{- message['content'] + eos_token }}"
    "{%- else %}{{- raise_exception('Only user and assistant roles are supported!') }}{%- endif %}"
    "{%- endfor %}"
)

LLAMA2 = (
    "{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}"
    "{% set system_message = messages[0]['content'] %}"
    "{% else %}{% set loop_messages = messages %}{% set system_message = false %}{% endif %}"
    "{% for message in loop_messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if loop.index0 == 0 and system_message != false %}"
    "{% set content = '<<SYS>>\\n' + system_message + '\\n<</SYS>>\\n\\n' + message['content'] %}"
    "{% else %}{% set content = message['content'] %}{% endif %}"
    "{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ ' '  + content.strip() + ' ' + eos_token }}{% endif %}"
    "{% endfor %}"
)

# name -> (tokenizer folder, Jinja override or None, response header, end-of-turn text, generation tail to cut)
TEMPLATES = {
    "chatml": ("qwen3", CHATML_QWEN25, "<|im_start|>assistant\n", "<|im_end|>\n", ""),
    "qwen3": ("qwen3", None, "<|im_start|>assistant\n", "<|im_end|>\n", ""),
    "llama3": ("llama3", None, "<|start_header_id|>assistant<|end_header_id|>\n\n", "<|eot_id|>",
               "<|start_header_id|>assistant<|end_header_id|>\n\n"),
    "llama3.1": ("llama3", LLAMA31, "<|start_header_id|>assistant<|end_header_id|>\n\n", "<|eot_id|>", ""),
    "mistral": ("mistral", MISTRAL_V01, "[/INST]", "</s>", ""),
    "llama2": ("mistral", LLAMA2, "[/INST]", "</s>", ""),
}


def msg(role, content, **extra):
    return dict(role=role, content=content, **extra)


# Conversations every template renders (user/assistant alternate, so mistral and llama2 accept all).
COMMON = {
    "single_turn": [msg("user", "What is 17 plus 25?"), msg("assistant", "17 plus 25 is 42.")],
    "with_system": [msg("system", "You are a terse calculator."), msg("user", "What is 3 times 4?"),
                    msg("assistant", "12")],
    "multi_turn": [msg("system", "Answer briefly."), msg("user", "Name a primary colour."),
                   msg("assistant", "Red."), msg("user", "Another one?"), msg("assistant", "Blue.")],
    "unicode": [msg("user", "Translate 'cat' into French, Japanese and emoji."),
                msg("assistant", "chat · 猫 · 🐈 — naïve café déjà vu")],
    "empty_assistant": [msg("user", "Say nothing."), msg("assistant", "")],
    "whitespace_and_newlines": [msg("user", "  List two fruits:\n"),
                                msg("assistant", "\n- apple\n- pear\n\n  ")],
    "ends_with_user": [msg("user", "Hi"), msg("assistant", "Hello!"), msg("user", "Bye")],
}

# Reasoning in history: only qwen3 gives it meaning; the others render the text as it is.
REASONING = {
    "reasoning_in_history": [
        msg("user", "What is 2+2?"),
        msg("assistant", "<think>\nAdd two and two.\n</think>\n\n4"),
        msg("user", "And 3+3?"),
        msg("assistant", "<think>\nThree plus three.\n</think>\n\n6"),
    ],
    "reasoning_field": [
        msg("user", "Capital of France?"),
        msg("assistant", "Paris.", reasoning_content="The user asks a geography question."),
    ],
    "assistant_after_last_user": [
        msg("user", "Count to two."), msg("assistant", "One."), msg("assistant", "Two."),
    ],
    "system_in_middle": [
        msg("user", "Hi"), msg("assistant", "Hello."), msg("system", "Be formal now."),
        msg("user", "Goodbye"), msg("assistant", "Farewell."),
    ],
}


def cases_for(name):
    cases = dict(COMMON)
    if name in ("chatml", "qwen3", "llama3", "llama3.1"):
        cases.update(REASONING)
    return cases


def response_spans(text, header, end):
    spans, pos = [], 0
    while True:
        h = text.find(header, pos)
        if h < 0:
            return spans
        start = h + len(header)
        e = text.find(end, start)
        stop = len(text) if e < 0 else e + len(end)
        spans.append((start, stop))
        pos = stop


def target_mask(offsets, spans):
    mask = [int(any(a <= s < b for a, b in spans)) for s, _ in offsets]
    if mask:
        mask[0] = 0
    return mask


def render(tok, messages, jinja, tail):
    text = tok.apply_chat_template(messages, tokenize=False, chat_template=jinja)
    if tail and text.endswith(tail):
        text = text[: -len(tail)]
    return text


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shared", default="../shared")
    ap.add_argument("--out", default="tests/fixtures/templates")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    for name, (folder, jinja, header, end, tail) in TEMPLATES.items():
        tok = AutoTokenizer.from_pretrained(os.path.join(args.shared, "tokenizers", folder))
        out_cases = []
        for case, messages in cases_for(name).items():
            text = render(tok, messages, jinja, tail)
            enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
            out_cases.append({
                "name": case,
                "messages": messages,
                "text": text,
                "ids": enc["input_ids"],
                "mask": target_mask(enc["offset_mapping"], response_spans(text, header, end)),
            })
        path = os.path.join(args.out, name + ".json")
        with open(path, "w", encoding="utf-8") as f:
            json.dump({"template": name, "tokenizer": folder, "cases": out_cases}, f, ensure_ascii=False, indent=1)
            f.write("\n")
        print(f"wrote {path}: {len(out_cases)} cases")


if __name__ == "__main__":
    main()
