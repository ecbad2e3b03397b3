#!/usr/bin/env python3
"""Writes tests/fixtures/tokenizer/decode_<name>.json: id sequences and what transformers'
tokenizer.decode gives for them, with skip_special_tokens True and False. tests/token_stream_test.cpp
checks loom's Tokenizer::decode(ids, skip_special_tokens) against them, and streams the same ids.

    /tmp/h5venv/bin/python tools/make_decode_fixture.py [--shared ../shared] [--out tests/fixtures/tokenizer]

Needs transformers 5 (with sentencepiece and protobuf for the .model files). Tokenizers:
  qwen3, llama3, mistral   AutoTokenizer on <shared>/tokenizers/<name> (byte-level BPE; Metaspace
                           with byte fallback)
  demo                     LlamaTokenizer on data/demo/tokenizer.model (sentencepiece, byte fallback)
  sp_bpe                   LlamaTokenizer on tests/fixtures/tokenizer/sp_bpe.model (a control and a
                           user-defined symbol)

Each file: {"tokenizer": where loom loads it from, "cases": [{"ids", "skip", "keep", "text"?}]}
with skip / keep = decode(ids, skip_special_tokens=True / False). Cases:
  text           ids of a text (encode, add_special_tokens=False); "text" is stored so the C++ test
                 can encode and stream it with loom's own encoder
  continuation   the ids of a text from token k on, as generation decodes its new tokens (k also
                 inside a character split over tokens)
  specials       a text's ids with special and added tokens put in
  random         random ids: any id below the vocabulary size plus a few past it (HF decodes
                 those as nothing), byte-fallback pieces and special tokens more often, so that
                 broken UTF-8 (U+FFFD) and byte runs cut short are common
"""
import argparse
import json
import os
import random
import shutil
import tempfile

from transformers import AutoTokenizer, LlamaTokenizer

TEXTS = [
    "Hello world",
    " leading space and trailing space ",
    "  two leading spaces",
    "line one\nline two\n\n  indented\ttab\r\nend\n",
    "Emoji: 😀 👍🏽 👨‍👩‍👧‍👦 🇫🇷 ❤️",
    "中文：你好，世界！日本語のテキスト。한국어 문장.",
    "Combining: e\u0301 a\u0308 n\u0303 A\u030a; stacked e\u0301\u0301\u0301",
    "Accents: café naïve Straße Ærø Łódź São Paulo ñandú",
    "Symbols € £ ¥ ₹ ∑ ∫ √ ≠ ≤ → ⇒ 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 𝄞",
    "Rare CJK and scripts: 龘 鱻 𠜎 𪚥 ᚠᚢᚦ ꦗꦮ",
    "def f(x):\n    return {'a': x ** 2}  # note\n",
    "What is 17 plus 25? 17 plus 25 is 42.",
    "",
    " ",
    "\n",
]

# Texts whose continuations are stored: token positions k of ids[k:].
CONTINUED = [0, 4, 5, 8, 9]


def load(name, shared, root, scratch):
    """(transformers tokenizer, the path loom loads) for one fixture name."""
    if name in ("qwen3", "llama3", "mistral"):
        path = os.path.join(shared, "tokenizers", name)
        return AutoTokenizer.from_pretrained(path), "tokenizers/" + name
    model = {"demo": "data/demo/tokenizer.model", "sp_bpe": "tests/fixtures/tokenizer/sp_bpe.model"}[name]
    # LlamaTokenizer reads a folder's tokenizer.model: one per tokenizer in a scratch folder.
    folder = os.path.join(scratch, name)
    os.makedirs(folder)
    shutil.copy(os.path.join(root, model), os.path.join(folder, "tokenizer.model"))
    return LlamaTokenizer.from_pretrained(folder), model


def byte_pieces(tok):
    vocab = tok.get_vocab()
    return [vocab[p] for p in (f"<0x{b:02X}>" for b in range(256)) if p in vocab]


def cases_for(tok, rng):
    def case(ids, text=None):
        c = {"ids": ids, "skip": tok.decode(ids, skip_special_tokens=True),
             "keep": tok.decode(ids, skip_special_tokens=False)}
        if text is not None:
            c["text"] = text
        return c

    out = []
    encoded = [tok.encode(t, add_special_tokens=False) for t in TEXTS]
    for text, ids in zip(TEXTS, encoded):
        out.append(case(ids, text))
    for i in CONTINUED:
        ids = encoded[i]
        for k in sorted({1, len(ids) // 3, len(ids) // 2, len(ids) - 1}):
            if 0 < k < len(ids):
                out.append(case(ids[k:]))
    added = sorted(tok.added_tokens_decoder)
    for i in (0, 1, 4, 5, 6):
        ids = list(encoded[i])
        for _ in range(3):
            ids.insert(rng.randrange(len(ids) + 1), rng.choice(added))
        out.append(case(ids))
    vocab, bytes_, specials = len(tok), byte_pieces(tok), tok.all_special_ids + added
    for _ in range(40):
        ids = []
        for _ in range(rng.randrange(1, 13)):
            r = rng.random()
            if r < 0.3 and bytes_:
                ids.append(rng.choice(bytes_))
            elif r < 0.4:
                ids.append(rng.choice(specials))
            elif r < 0.43:
                ids.append(vocab + rng.randrange(3))
            else:
                ids.append(rng.randrange(vocab))
        out.append(case(ids))
    return out


def main():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shared", default=os.path.join(root, "..", "shared"))
    ap.add_argument("--out", default=os.path.join(root, "tests", "fixtures", "tokenizer"))
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        for seed, name in enumerate(["qwen3", "llama3", "mistral", "demo", "sp_bpe"]):
            tok, where = load(name, args.shared, root, scratch)
            cases = cases_for(tok, random.Random(1000 + seed))
            path = os.path.join(args.out, f"decode_{name}.json")
            with open(path, "w", encoding="utf-8") as f:  # one case a line: diffs stay readable
                rows = ",\n".join(json.dumps(c, ensure_ascii=False) for c in cases)
                f.write(f'{{"tokenizer": {json.dumps(where)}, "cases": [\n{rows}\n]}}\n')
            print(f"{path}: {len(cases)} cases")


if __name__ == "__main__":
    main()
