#!/usr/bin/env python3
"""Writes tests/fixtures/export/<kind>/{tokenizer.json, tokenizer_config.json}: three small tokenizers
(291 to 322 tokens) with the structure of the real families they stand for, for exporting the tiny
models of tests/fixtures/hf as GGUF with a real tokenizer and running them in llama.cpp
(tests/export_test.cpp gives those models an embedding of the tokenizer's size; tools/check_export.py).
The shared files in ../shared/tokenizers hold 128k-151k tokens, far more than these models need.
  llama3   byte-level BPE (all 256 byte characters), Llama 3's split regex, ignore_merges, BOS added
           by a TemplateProcessing post-processor (llama.cpp pre-tokenizer "llama-bpe")
  qwen     byte-level BPE, Qwen2's split regex, NFC, no BOS (llama.cpp "qwen2")
  mistral  Metaspace-style BPE (Prepend/Replace normalizer) with byte fallback (<0x00>..<0xFF>), BOS
           added (llama.cpp's sentencepiece-style "llama" tokenizer), its merges derived from the
           vocab as transformers converts a sentencepiece model (every split of each piece)
Merges cover a few common English pieces ("the", "and", "in", ...), so text tokenizes into a mix of
merged pieces and single characters. Pure Python (json only): python3 tools/make_export_fixtures.py
"""
import json
import os

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures", "export")

LLAMA3_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
                r"\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
               r"\s*[\r\n]+|\s+(?!\S)|\s+")

LETTERS = [chr(c) for c in range(ord("a"), ord("z") + 1)]
PUNCT = [".", ",", "!", "?"]
# Merges in rank order, written with "_" for the word-start symbol (Ġ or ▁); each result's parts
# exist before it.
MERGES = ["_ t", "h e", "_t he", "i n", "e r", "a n", "o n", "_ a", "r e", "e n", "a t", "o u", "e d", "_ s",
          "i s", "_ w", "o r", "_ o", "i t", "_ c", "n d", "_a nd", "_ i", "_i n", "_ b", "l l", "_ h", "_ f",
          "_o f", "_ m", "_ d", "_ l"]

LLAMA3_TEMPLATE = ("{{ bos_token }}{% for message in messages %}{{ '<|start_header_id|>' + message['role'] + "
                   "'<|end_header_id|>\n\n' + message['content'] | trim + '<|eot_id|>' }}{% endfor %}"
                   "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}")
CHATML_TEMPLATE = ("{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + "
                   "'<|im_end|>\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
MISTRAL_TEMPLATE = ("{{ bos_token }}{% for message in messages %}{% if message['role'] == 'user' %}"
                    "{{ '[INST] ' + message['content'] + ' [/INST]' }}{% else %}{{ message['content'] + eos_token }}"
                    "{% endif %}{% endfor %}")


def added(token_id, content):
    return {"id": token_id, "content": content, "single_word": False, "lstrip": False, "rstrip": False,
            "normalized": False, "special": True}


def build_vocab(specials, base_tokens, word_start):
    """specials first, then the base symbols, then the results of MERGES."""
    vocab = {t: i for i, t in enumerate(specials + base_tokens)}
    assert len(vocab) == len(specials) + len(base_tokens)
    merges = []
    for m in MERGES:
        left, right = (part.replace("_", word_start) for part in m.split(" "))
        assert left in vocab and right in vocab, m
        vocab[left + right] = len(vocab)
        merges.append([left, right])
    return vocab, merges


def sentencepiece_merges(vocab, first_piece):
    """The merges transformers' sentencepiece converter derives from a vocab: for each piece from
    first_piece on, in score (here: id) order, every split into two pieces of the vocab, sorted by
    their ids. Merging by these ranks is merging by piece score, what sentencepiece and llama.cpp do."""
    merges = []
    for piece, piece_id in sorted(vocab.items(), key=lambda kv: kv[1]):
        if piece_id < first_piece:
            continue
        splits = [(piece[:k], piece[k:]) for k in range(1, len(piece)) if piece[:k] in vocab and piece[k:] in vocab]
        merges += [list(pair) for pair in sorted(splits, key=lambda lr: (vocab[lr[0]], vocab[lr[1]]))]
    return merges


def gpt2_byte_chars():
    """The GPT-2 byte map's characters of bytes 0..255 (tokenizers' bytes_char)."""
    printable = set(range(0x21, 0x7F)) | set(range(0xA1, 0xAD)) | set(range(0xAE, 0x100))
    chars, extra = [], 0
    for b in range(256):
        if b in printable:
            chars.append(chr(b))
        else:
            chars.append(chr(256 + extra))
            extra += 1
    return chars


def byte_level(specials, regex, post_processor, ignore_merges, normalizer):
    base = gpt2_byte_chars()  # every byte has its character, as loom and HF require of byte-level BPE
    vocab, merges = build_vocab(specials, base, "\u0120")
    return {
        "version": "1.0", "truncation": None, "padding": None,
        "added_tokens": [added(i, s) for i, s in enumerate(specials)],
        "normalizer": normalizer,
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": regex}, "behavior": "Isolated", "invert": False},
            {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False}]},
        "post_processor": post_processor,
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                  "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False,
                  "ignore_merges": ignore_merges, "vocab": vocab, "merges": merges},
    }


def llama3():
    specials = ["<|finetune_right_pad_id|>", "<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>",
                "<|end_header_id|>", "<|eot_id|>"]
    post = {"type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": "<|begin_of_text|>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [{"SpecialToken": {"id": "<|begin_of_text|>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                     {"SpecialToken": {"id": "<|begin_of_text|>", "type_id": 1}}, {"Sequence": {"id": "B", "type_id": 1}}],
            "special_tokens": {"<|begin_of_text|>": {"id": "<|begin_of_text|>", "ids": [1],
                                                   "tokens": ["<|begin_of_text|>"]}}}
    tok = byte_level(specials, LLAMA3_REGEX, post, True, None)
    config = {"bos_token": "<|begin_of_text|>", "eos_token": "<|end_of_text|>", "clean_up_tokenization_spaces": True,
              "model_max_length": 64, "tokenizer_class": "PreTrainedTokenizerFast", "chat_template": LLAMA3_TEMPLATE}
    return tok, config


def qwen():
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    post = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False}
    tok = byte_level(specials, QWEN2_REGEX, post, False, {"type": "NFC"})
    config = {"add_bos_token": False, "add_prefix_space": False, "bos_token": None, "eos_token": "<|im_end|>",
              "pad_token": "<|endoftext|>", "unk_token": None, "clean_up_tokenization_spaces": False,
              "model_max_length": 64, "tokenizer_class": "PreTrainedTokenizerFast", "chat_template": CHATML_TEMPLATE}
    return tok, config


def mistral():
    specials = ["<unk>", "<s>", "</s>"]
    base = ["<0x%02X>" % b for b in range(256)] + ["\u2581"] + LETTERS + PUNCT
    vocab, _ = build_vocab(specials, base, "\u2581")
    merges = sentencepiece_merges(vocab, len(specials) + len(base))
    tok = {
        "version": "1.0", "truncation": None, "padding": None,
        "added_tokens": [added(i, s) for i, s in enumerate(specials)],
        "normalizer": {"type": "Sequence", "normalizers": [
            {"type": "Prepend", "prepend": "\u2581"},
            {"type": "Replace", "pattern": {"String": " "}, "content": "\u2581"}]},
        "pre_tokenizer": None,
        "post_processor": {"type": "TemplateProcessing",
                           "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
                           "pair": [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                                    {"SpecialToken": {"id": "<s>", "type_id": 1}}, {"Sequence": {"id": "B", "type_id": 1}}],
                           "special_tokens": {"<s>": {"id": "<s>", "ids": [1], "tokens": ["<s>"]}}},
        "decoder": {"type": "Sequence", "decoders": [
            {"type": "Replace", "pattern": {"String": "\u2581"}, "content": " "}, {"type": "ByteFallback"},
            {"type": "Fuse"}, {"type": "Strip", "content": " ", "start": 1, "stop": 0}]},
        "model": {"type": "BPE", "dropout": None, "unk_token": "<unk>", "continuing_subword_prefix": None,
                  "end_of_word_suffix": None, "fuse_unk": True, "byte_fallback": True, "ignore_merges": False,
                  "vocab": vocab, "merges": merges},
    }
    config = {"add_bos_token": True, "add_eos_token": False, "bos_token": "<s>", "eos_token": "</s>",
              "unk_token": "<unk>", "pad_token": None, "clean_up_tokenization_spaces": False, "model_max_length": 64,
              "tokenizer_class": "PreTrainedTokenizerFast", "chat_template": MISTRAL_TEMPLATE}
    return tok, config


def main():
    for name, make in [("llama3", llama3), ("qwen", qwen), ("mistral", mistral)]:
        folder = os.path.join(ROOT, name)
        os.makedirs(folder, exist_ok=True)
        tok, config = make()
        for file, content in [("tokenizer.json", tok), ("tokenizer_config.json", config)]:
            with open(os.path.join(folder, file), "w", encoding="utf-8") as f:
                json.dump(content, f, ensure_ascii=False, indent=1)
                f.write("\n")
        print("wrote", folder)


if __name__ == "__main__":
    main()
