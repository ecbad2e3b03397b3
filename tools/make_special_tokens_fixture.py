#!/usr/bin/env python3
"""Writes tests/fixtures/tokenizer/special_tokens.json: the ids HF gives with add_special_tokens=True
for the shared tokenizers and for variants of them, so tests/tokenizer_test.cpp can check what
loom's encode(text, add_special_tokens=true) (build/tokenize --special) adds, id for id.

    pip install tokenizers
    python3 tools/make_special_tokens_fixture.py [--shared ../shared] [--out tests/fixtures/tokenizer]

Each case: {"name", "tokenizer" (a folder of ../shared/tokenizers), "patch" (null, or the name of a
change below that the C++ test makes too), "config" (the tokenizer_config.json fields used, or null:
the folder's own for an unpatched file, none for a patched one), "ids": one list per TEXTS entry}.

The reference is tokenizers.Tokenizer.encode(text, add_special_tokens=True), which applies the
file's post_processor. transformers 5 (TokenizersBackend.update_post_processor) replaces that
post-processor by "[bos] $A [eos]" when tokenizer_config.json sets add_bos_token or add_eos_token;
for the "config" cases this script builds that TemplateProcessing the way transformers does and
encodes through it. On the shared files the two agree: Llama 3's post-processor is ByteLevel alone
and its tokenizer_config.json sets neither key (no BOS), Mistral's sets add_bos_token and its file
adds <s>, Qwen3's sets add_bos_token: false and its file adds nothing.

A Sequence holding two processors that add tokens is left out: tokenizers hands the second one the
first one's pieces, not the text (a Sequence of two templates drops the text), and loom refuses it.
"""
import argparse
import json
import os

from tokenizers import Tokenizer, processors

TEXTS = [
    "Hi",
    "Hello world",
    "",
    " leading space and trailing space ",
    "<s> and <|im_end|> and <|begin_of_text|> written in the text",
    "naïve café, 你好",
]


def template(single, special_tokens):
    return {"type": "TemplateProcessing", "single": single, "pair": single, "special_tokens": special_tokens}


def special(name):
    return {"SpecialToken": {"id": name, "type_id": 0}}


SEQ_A = {"Sequence": {"id": "A", "type_id": 0}}


def entry(name, ids, tokens):
    return {"id": name, "ids": ids, "tokens": tokens}


# The change each patch makes to a shared tokenizer.json (tests/tokenizer_test.cpp repeats them).
def patch_llama3_meta(j):
    # The layout of Meta's own Llama 3 repositories: ByteLevel, then "<|begin_of_text|> $A".
    j["post_processor"] = {
        "type": "Sequence",
        "processors": [
            {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": False, "use_regex": True},
            template([special("<|begin_of_text|>"), SEQ_A],
                     {"<|begin_of_text|>": entry("<|begin_of_text|>", [128000], ["<|begin_of_text|>"])}),
        ],
    }


def patch_mistral_bos_eos(j):
    j["post_processor"] = template([special("<s>"), SEQ_A, special("</s>")],
                                   {"<s>": entry("<s>", [1], ["<s>"]), "</s>": entry("</s>", [2], ["</s>"])})


def patch_mistral_two_ids(j):
    # One special token name that stands for two ids.
    j["post_processor"] = template([special("[X]"), SEQ_A], {"[X]": entry("[X]", [1, 2], ["<s>", "</s>"])})


def patch_qwen3_roberta(j):
    j["post_processor"] = {"type": "RobertaProcessing", "sep": ["<|im_end|>", 151645], "cls": ["<|im_start|>", 151644],
                           "trim_offsets": True, "add_prefix_space": False}


def patch_qwen3_bert(j):
    j["post_processor"] = {"type": "BertProcessing", "sep": ["<|endoftext|>", 151643], "cls": ["<|im_start|>", 151644]}


PATCHES = {
    "llama3_meta": patch_llama3_meta,
    "mistral_bos_eos": patch_mistral_bos_eos,
    "mistral_two_ids": patch_mistral_two_ids,
    "qwen3_roberta": patch_qwen3_roberta,
    "qwen3_bert": patch_qwen3_bert,
}

# (name, shared tokenizer, patch, tokenizer_config fields replacing the folder's, or None)
CASES = [
    ("llama3", "llama3", None, None),
    ("mistral", "mistral", None, None),
    ("qwen3", "qwen3", None, None),
    ("llama3_meta", "llama3", "llama3_meta", None),
    ("mistral_bos_eos", "mistral", "mistral_bos_eos", None),
    ("mistral_two_ids", "mistral", "mistral_two_ids", None),
    ("qwen3_roberta", "qwen3", "qwen3_roberta", None),
    ("qwen3_bert", "qwen3", "qwen3_bert", None),
    # tokenizer_config.json's add_*_token replace the post-processor (transformers 5).
    ("llama3_config_add_bos", "llama3", None, {"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>",
                                               "add_bos_token": True}),
    ("mistral_config_add_eos", "mistral", None, {"bos_token": "<s>", "eos_token": "</s>", "add_bos_token": False,
                                                 "add_eos_token": True}),
    ("llama3_meta_config_no_bos", "llama3", "llama3_meta", {"bos_token": "<|begin_of_text|>",
                                                            "eos_token": "<|end_of_text|>", "add_bos_token": False}),
]


def transformers_post_processor(tok, config):
    """TokenizersBackend.update_post_processor: "[bos:0] $A:0 [eos:0]" from add_bos_token/add_eos_token."""
    bos, eos = config.get("bos_token"), config.get("eos_token")
    add_bos = bool(config.get("add_bos_token")) and bos is not None
    add_eos = bool(config.get("add_eos_token")) and eos is not None
    single = f"{(bos + ':0 ') if add_bos else ''}$A:0{(' ' + eos + ':0') if add_eos else ''}"
    specials = []
    if add_bos:
        specials.append((bos, tok.token_to_id(bos)))
    if add_eos:
        specials.append((eos, tok.token_to_id(eos)))
    return processors.TemplateProcessing(single=single, pair=single + " $B:1", special_tokens=specials)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shared", default="../shared")
    ap.add_argument("--out", default="tests/fixtures/tokenizer")
    args = ap.parse_args()
    out = {"texts": TEXTS, "cases": []}
    for name, shared, patch, config in CASES:
        with open(os.path.join(args.shared, "tokenizers", shared, "tokenizer.json"), encoding="utf-8") as f:
            j = json.load(f)
        if patch:
            PATCHES[patch](j)
        tok = Tokenizer.from_str(json.dumps(j))
        if config is not None and ("add_bos_token" in config or "add_eos_token" in config):
            tok.post_processor = transformers_post_processor(tok, config)
        ids = [tok.encode(t, add_special_tokens=True).ids for t in TEXTS]
        out["cases"].append({"name": name, "tokenizer": shared, "patch": patch, "config": config, "ids": ids})
        print(f"{name}: {ids[0]}")
    with open(os.path.join(args.out, "special_tokens.json"), "w", encoding="utf-8") as f:
        json.dump(out, f, ensure_ascii=False, indent=1)


if __name__ == "__main__":
    main()
