#!/usr/bin/env python3
"""Writes tests/fixtures/tokenizer/: a varied text corpus and, per tokenizer, the ids the reference
libraries give for every case. tests/tokenizer_test.cpp checks loom's tokenizers id for id.

    python3 tools/make_tokenizer_fixture.py [--shared ../shared] [--out tests/fixtures/tokenizer]

Files (JSON lines; line i of every <name>.jsonl belongs to line i of corpus.jsonl):
  corpus.jsonl       {"text": ...}: several scripts (CJK, Arabic, Hindi, Russian, Greek, Thai, ...),
                     emoji with ZWJ sequences and skin tones, code, digit and whitespace runs, \\r\\n,
                     special-token strings inside text, combining characters NFC changes, the empty
                     string, random mixes of all of these, and one ~100 KB text.
  <name>.jsonl       {"ids": [...], "starts": [...], "decoded": "..."}: ids from
                     tokenizers.Tokenizer.encode(text, add_special_tokens=False); starts = byte
                     offset in the UTF-8 text where each token starts (from HF's offsets);
                     decoded = decode(ids, skip_special_tokens=False), only when it differs from
                     the text. Texts over 4 KB (the long one) get {"n": count, "fnv1a64": hash of
                     the ids} instead. Variants patch the shared tokenizer.json
                     as VARIANTS below says (the C++ test applies the same patches) and cover only
                     the handwritten cases (the first lines of the corpus).
  tiny_<name>.json   small hand-made BPE files (TINY below) for options the shared files do not
                     use, with tiny_<name>.jsonl over the handwritten cases
  sp_train.txt       the text the sentencepiece model is trained on (written by this script)
  sp_bpe.model       spm_train --model_type=bpe, 1000 pieces, byte fallback, one user-defined and
                     one control symbol
  sp_bpe.jsonl       ids from the `sentencepiece` package: control and unknown pieces in the text
                     are cut out first (leftmost-longest) and the text between them encoded
                     segment by segment (what loom's SpTokenizer does, see data/sp_tokenizer.h);
                     decoded = runs of ordinary ids through sentencepiece, control ids as their text.
"""
import argparse
import json
import os
import random
import subprocess

import sentencepiece as spm
from tokenizers import Tokenizer

LONG_TEXT_BYTES = 100_000
HASHED_ABOVE_BYTES = 4096

# --------------------------------------------------------------------------- corpus

PROSE = [
    "The quick brown fox jumps over the lazy dog.",
    "It was the best of times, it was the worst of times; it was the age of wisdom.",
    "Fine-tuning a 7B model with LoRA needs far less memory than full training.",
    "She said: \"I'm not sure we'll make it before 5 p.m., but let's try.\"",
    "Prices rose 3.7% in Q3 2024, compared with 2.1% a year earlier.",
    "Don't panic! The answer is 42 -- and the question? Nobody knows.",
    "Packing documents back to back avoids wasting compute on padding tokens.",
    "In 1969, Apollo 11 landed on the Moon; Neil Armstrong stepped out at 02:56 UTC.",
    "Email me at jane.doe+test@example.com or visit https://example.org/path?q=1&r=2#frag.",
    "We'd've gone, but they're late and you've seen how it's been; I'll wait.",
    "RMSNorm scales each row by the inverse root mean square of its values.",
    "The gradient of the loss with respect to the logits is softmax minus one-hot.",
    "Attention is all you need, said the paper; the rest is engineering.",
    "A pangram: Sphinx of black quartz, judge my vow.",
    "Tokenizers split text into pieces, then merge characters into subwords.",
    "The meeting moved from Tuesday to Thursday (again), at 10:30 sharp.",
]

SCRIPTS = [
    "你好，世界！今天天气很好，我们去公园散步吧。",
    "机器学习模型需要大量的训练数据。大语言模型的参数量达到了数千亿。",
    "日本語のテキストです。ひらがな、カタカナ、漢字を含みます。東京は大きい都市です。",
    "한국어 문장입니다. 안녕하세요, 만나서 반갑습니다!",
    "مرحبا بالعالم! هذه جملة باللغة العربية مع أرقام ١٢٣٤٥ و 678.",
    "नमस्ते दुनिया! यह हिंदी में एक वाक्य है। क्षत्रिय, ज्ञान, श्री।",
    "Привет, мир! Это предложение на русском языке. Ёжик в тумане.",
    "Γειά σου Κόσμε! Αυτή είναι μια πρόταση στα ελληνικά. Ψυχή, ωραίος.",
    "สวัสดีชาวโลก ภาษาไทยไม่มีการเว้นวรรคระหว่างคำ",
    "Xin chào thế giới! Tiếng Việt có rất nhiều dấu thanh: ả, ẫ, ự, ỹ.",
    "שלום עולם! זהו משפט בעברית.",
    "Grüße aus Köln: Äpfel, Öl und Übermut; die Straße ist groß.",
    "Ça va? Très bien, merci. L'été dernier, nous sommes allés à Besançon.",
    "¿Dónde está la biblioteca? ¡Está allí, señor!",
    "İstanbul'da ılık bir gün; Iğdır ve Şişli.",
    "Ἐν ἀρχῇ ἦν ὁ λόγος, καὶ ὁ λόγος ἦν πρὸς τὸν θεόν.",
    "ქართული ენა, Հայերեն լեզու, ᏣᎳᎩ ᎦᏬᏂᎯᏍᏗ",
    "ትግርኛ ኣማርኛ ፊደል ፡ ፩፪፫",
    "ᠮᠣᠩᠭᠣᠯ\u180eᠪᠢᠴᠢᠭ mongolian vowel separator",
]

EMOJI = [
    "I love this! 😀😃😄 🎉🎉",
    "Thumbs: 👍 👍🏻 👍🏽 👍🏿 and waves 👋🏼",
    "Family: 👨‍👩‍👧‍👦 couple: 👩‍❤️‍👨 rainbow flag: 🏳️‍🌈 pirate: 🏴‍☠️",
    "Flags: 🇯🇵 🇺🇸 🇩🇪 🇧🇷 keycaps: 1️⃣ #️⃣ *️⃣",
    "Mixed: café☕️ and pizza🍕 at 12:00🕛",
    "🧑🏽‍💻 writes code; 🧑‍🚀 flies; ❤️ ♥ ☺️ ✌🏾",
]

CODE = [
    "def fib(n):\n    if n < 2:\n        return n\n    return fib(n - 1) + fib(n - 2)\n",
    "for (int i = 0; i < n; ++i) {\n\tsum += a[i] * b[i];\n}\n",
    "#include <vector>\nint main() { std::vector<int> v{1, 2, 3}; return v.size() == 3 ? 0 : 1; }\n",
    "const add = (a, b) => a + b;\nconsole.log(`sum: ${add(2, 3)}`);\n",
    "fn main() {\n    let xs: Vec<u32> = (0..10).map(|x| x * x).collect();\n    println!(\"{:?}\", xs);\n}\n",
    "SELECT name, COUNT(*) AS n FROM users WHERE age >= 18 GROUP BY name ORDER BY n DESC;",
    "{\"model\": \"qwen3\", \"lr\": 2e-4, \"layers\": [0, 1, 2], \"ok\": true, \"none\": null}",
    "<div class=\"x\"><a href='/a?b=c&amp;d'>link</a></div>",
    "#!/bin/bash\nset -euo pipefail\nfor f in *.txt; do wc -l \"$f\"; done | sort -n\n",
    "    indented with spaces\n\t\tand tabs\n  \t mixed\n",
    "x=1;y=2;z=x+y;print(z)  # comment with trailing spaces   \n",
    "if (a && b || !c) { return a->b.c[0]::d; } // ops: <<= >>= != == ** // ...",
    "lambda x: {k: v for k, v in x.items() if v is not None}",
]

NUMBERS = [
    "1234567890123456789012345678901234567890",
    "3.14159265358979323846264338327950288419716939937510",
    "Call +1 (555) 123-4567 or 0044 20 7946 0958.",
    "0000000 007 0.0001 1e10 1,000,000 12:34:56 2024-01-31",
    "١٢٣٤٥٦٧٨٩٠ ०१२३४५६७८९ ๐๑๒๓๔๕ 一二三 ⅠⅡⅢ ½ ² ₃",
    "v1.2.3-rc.4+build.5678",
]

WHITESPACE = [
    "",
    " ",
    "  ",
    "    ",
    "\t",
    "\t\t\t",
    "\n",
    "\n\n\n",
    "\r\n",
    "a  b   c    d",
    "   leading and trailing   ",
    "line1\r\nline2\rline3\nline4\n\rline5",
    " \n \n\t\n ",
    "end with newline\n",
    "word\u00a0nbsp\u3000ideographic\u2028line sep\u2029para\u0085nel",
    "zero\u200bwidth\u200cnon\u200djoiner\ufeffbom",
    "x \t \t y",
    "\n\n  \n  x",
]

SPECIAL_STRINGS = [
    "<|im_start|>system\nYou are helpful.<|im_end|>\n<|im_start|>user\nHi!<|im_end|>\n<|im_start|>assistant\n",
    "<|im_start|>assistant\n<think>\n\n</think>\n\nHello<|im_end|>",
    "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nWhat is 2+2?<|eot_id|>",
    "<|start_header_id|>assistant<|end_header_id|>\n\n4<|eot_id|><|end_of_text|>",
    "<s>[INST] What is the capital of France? [/INST] Paris.</s>",
    "<s>[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\nHi [/INST]",
    "Hello <s>.",
    "text</s>more</s> </s>",
    "<s><s></s></s>",
    "partial <|im_start and <|im_end| and <s and </s > and <<s>>",
    "<|endoftext|>after end<|endoftext|>",
    "<|reserved_special_token_5|> <|finetune_right_pad_id|> <|python_tag|>",
    "<unk> and <0x41> and ▁ literal and ▁▁x",
    "<|im_start|><|im_start|><|im_end|>",
    " <|im_start|> spaced <|im_end|> ",
    "<|im_start|>user\nx<|im_end|>",
    "<think>reasoning</think>answer <tool_call>{}</tool_call>",
    "[INST] no bos [/INST]",
    "sentencepiece symbols: <ctrl>control<ctrl> and user-defined <sep>x<sep>",
]

COMBINING = [
    "e\u0301 vs \u00e9",
    "A\u030a vs \u00c5 vs \u212b",
    "n\u0303o\u0308 a\u0300",
    "q\u0307\u0323 reorders to q\u0323\u0307",
    "\u1100\u1161\u11a8 jamo compose",
    "Vie\u0323\u0302t Nam",
    "\ufb01 ligature and \u2126 ohm and \u212a kelvin",
    "\u0065\u0301\u0301\u0301 stacked",
    "\u0301 leading mark",
    "Z\u0351\u036b\u0343\u036a\u0302\u036b\u033d\u034f\u0334\u0319\u0324\u031e\u0349\u035a\u032f\u031e\u0320\u034dA\u036b\u0357\u0334\u0362\u0335\u031c\u0330\u0354L\u0368\u0367\u0369\u0358\u0320G\u0311\u0357\u030e\u0305\u035b\u0341\u0334\u033b\u0348\u034d\u0354\u0339O\u0342\u030c\u030c\u0358\u0328\u0335\u0339\u033b\u031d\u0333!",
    "\u0915\u094d\u0937 \u0915\u093c",
]

CONTRACTIONS = [
    "I'm you're he's we've they'd she'll it's",
    "I'M YOU'RE HE'S WE'VE THEY'D SHE'LL IT'S DON'T",
    "It'S We'Ll They'Ve I'D",
    "'s 't 're 've 'm 'll 'd",
    "'\u017f and '\u017ft and \u2019s curly",
    "rock'n'roll o'clock y'all",
]

ODD = [
    "a\u0000b",
    "\u0001\u0002\u007f\u0080\u009f",
    "\ufffd replacement char",
    "\U0001e030\U0001e031 cyrillic modifiers (Unicode 15)",
    "\U0002ebf0\U0002ebf1 CJK extension I (Unicode 15.1)",
    "\U00010d40\U00010d41 Garay digits and \U00016d40 Kirat Rai (Unicode 16)",
    "\U0001f9cc\U0001fae8\U0001faef newer emoji",
    "\U00020000\U0002a6d6 CJK extension B",
    "\U000e0001\U000e0041 tag characters",
    "\ue000\uf8ff private use",
    "~!@#$%^&*()_+`-=[]\\{}|;':\",./<>?",
    "......!!!!????----____====",
    "a" * 300,
    "ab" * 200,
    "\u4e00" * 100,
    "😀" * 50,
    " " * 100 + "x",
    "\n" * 50,
    "x" + "\t" * 30 + "y",
]

SP_TRAIN = PROSE + SCRIPTS[:3] + SCRIPTS[6:8] + SCRIPTS[11:14] + CODE[:4]


def random_mixes(rng, pool, count):
    seps = [" ", "", "\n", "\t", "  ", "\r\n", " \n", ". "]
    out = []
    for _ in range(count):
        parts = [rng.choice(pool) for _ in range(rng.randint(2, 6))]
        text = ""
        for p in parts:
            if rng.random() < 0.3:  # a random slice, so cuts land inside words and tokens
                a = rng.randint(0, len(p))
                p = p[a : a + rng.randint(1, 40)]
            text += p + rng.choice(seps)
        out.append(text)
    return out


def long_text(rng, pool):
    pieces = []
    size = 0
    while size < LONG_TEXT_BYTES:
        p = rng.choice(pool) + rng.choice([" ", "\n", "\n\n", " "])
        pieces.append(p)
        size += len(p.encode("utf-8"))
    return "".join(pieces)


HANDWRITTEN = PROSE + SCRIPTS + EMOJI + CODE + NUMBERS + WHITESPACE + SPECIAL_STRINGS + COMBINING + CONTRACTIONS + ODD


def build_corpus():
    """The handwritten cases first (variants use only those), then random mixes, then the long text."""
    rng = random.Random(1234)
    pool = [s for s in HANDWRITTEN if s]
    mixes = random_mixes(rng, pool, 200)
    english_heavy = PROSE * 6 + CODE * 2 + SCRIPTS + EMOJI + NUMBERS + CONTRACTIONS
    return HANDWRITTEN + mixes + [long_text(rng, english_heavy)]


# --------------------------------------------------------------------------- tokenizers


def patch_mistral_metaspace_first(j):
    """What transformers writes for a non-legacy Llama tokenizer: no normalizer, Metaspace first."""
    j["normalizer"] = None
    j["pre_tokenizer"] = {"type": "Metaspace", "replacement": "\u2581", "prepend_scheme": "first", "split": False}


def patch_mistral_metaspace_split(j):
    """Older conversions: Metaspace (always, split) and a Metaspace decoder."""
    j["normalizer"] = None
    j["pre_tokenizer"] = {"type": "Metaspace", "replacement": "\u2581", "prepend_scheme": "always", "split": True}
    j["decoder"] = {
        "type": "Sequence",
        "decoders": [
            {"type": "Metaspace", "replacement": "\u2581", "prepend_scheme": "always", "split": True},
            {"type": "ByteFallback"},
            {"type": "Fuse"},
        ],
    }


def patch_qwen3_gpt2(j):
    """GPT-2 style: ByteLevel alone, with its own regex and a prefix space."""
    j["pre_tokenizer"] = {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True}


def patch_qwen3_added_flags(j):
    """Added-token flags the shipped files leave off: lstrip, rstrip, single_word, normalized."""
    for t in j["added_tokens"]:
        if t["content"] == "<|im_start|>":
            t["lstrip"] = True
        if t["content"] == "<|im_end|>":
            t["rstrip"] = True
        if t["content"] == "<think>":
            t["single_word"] = True
        if t["content"] == "</think>":
            t["normalized"] = True
    j["added_tokens"].append(
        {"id": 151669, "content": "\u212b", "single_word": False, "lstrip": False, "rstrip": False, "normalized": True, "special": False}
    )
    j["added_tokens"].append(
        {"id": 151670, "content": "world", "single_word": True, "lstrip": True, "rstrip": True, "normalized": False, "special": False}
    )


def tiny_tokenizer(unk_token, fuse_unk, ignore_merges):
    """A small hand-made BPE file for model options the shared files leave off: unk handling
    (fused, unfused, dropped when unk_token is null), ignore_merges without byte level, a String
    Split, string merges with a "#version" line, and no decoder (tokens joined by spaces)."""
    chars = [chr(c) for c in range(0x20, 0x7F)]
    vocab = {"<unk>": 0}
    for c in chars + ["th", "the", "in", "an", "and", "er", "hello", "wo", "wor", "ld", "world"]:
        vocab.setdefault(c, len(vocab))
    merges = ["#version: 0.2", "t h", "th e", "i n", "a n", "an d", "e r", "w o", "wo r", "l d", "wor ld"]
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [
            {"id": 0, "content": "<unk>", "single_word": False, "lstrip": False, "rstrip": False, "normalized": False, "special": True}
        ],
        "normalizer": None,
        "pre_tokenizer": {"type": "Split", "pattern": {"String": " "}, "behavior": "MergedWithNext", "invert": False},
        "post_processor": None,
        "decoder": None,
        "model": {
            "type": "BPE",
            "dropout": None,
            "unk_token": unk_token,
            "continuing_subword_prefix": None,
            "end_of_word_suffix": None,
            "fuse_unk": fuse_unk,
            "byte_fallback": False,
            "ignore_merges": ignore_merges,
            "vocab": vocab,
            "merges": merges,
        },
    }


# Written as tiny_<name>.json beside their expectations.
TINY = {
    "unk_fused": tiny_tokenizer("<unk>", True, False),
    "unk_unfused": tiny_tokenizer("<unk>", False, True),
    "unk_dropped": tiny_tokenizer(None, False, False),
}

# (fixture name, shared tokenizer, patch or None)
VARIANTS = [
    ("qwen3", "qwen3", None),
    ("llama3", "llama3", None),
    ("mistral", "mistral", None),
    ("mistral_metaspace_first", "mistral", patch_mistral_metaspace_first),
    ("mistral_metaspace_split", "mistral", patch_mistral_metaspace_split),
    ("qwen3_gpt2", "qwen3", patch_qwen3_gpt2),
    ("qwen3_added_flags", "qwen3", patch_qwen3_added_flags),
]


def byte_starts(text, char_offsets):
    cumulative = [0]
    for ch in text:
        cumulative.append(cumulative[-1] + len(ch.encode("utf-8")))
    return [cumulative[start] for start, _ in char_offsets]


def fnv1a64(ids):
    """FNV-1a over the ids as little-endian int32 bytes (tests/tokenizer_test.cpp computes the same)."""
    h = 0xCBF29CE484222325
    for i in ids:
        for b in (i & 0xFFFFFFFF).to_bytes(4, "little"):
            h = ((h ^ b) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return h


def record(text, ids, starts, decoded):
    if len(text.encode("utf-8")) > HASHED_ABOVE_BYTES:
        # The long text: its ids as a count and a hash (as a string: JSON readers differ on u64).
        assert decoded == text, "the long text must round-trip; keep special strings out of it"
        return {"n": len(ids), "fnv1a64": str(fnv1a64(ids))}
    r = {"ids": ids, "starts": starts}
    if decoded != text:
        r["decoded"] = decoded
    return r


def hf_expectations(tok, corpus):
    out = []
    for text in corpus:
        enc = tok.encode(text, add_special_tokens=False)
        decoded = tok.decode(enc.ids, skip_special_tokens=False)
        out.append(record(text, enc.ids, byte_starts(text, enc.offsets), decoded))
    return out


# --------------------------------------------------------------------------- sentencepiece


def train_sentencepiece(out_dir):
    rng = random.Random(99)
    lines = []
    size = 0
    while size < 60_000:
        line = " ".join(rng.choice(SP_TRAIN).replace("\n", " ") for _ in range(rng.randint(1, 3)))
        lines.append(line)
        size += len(line.encode("utf-8")) + 1
    train_path = os.path.join(out_dir, "sp_train.txt")
    with open(train_path, "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    prefix = os.path.join(out_dir, "sp_bpe")
    subprocess.run(
        [
            "spm_train",
            f"--input={train_path}",
            f"--model_prefix={prefix}",
            "--model_type=bpe",
            "--vocab_size=1000",
            "--byte_fallback=true",
            "--character_coverage=0.9995",
            "--user_defined_symbols=<sep>",
            "--control_symbols=<ctrl>",
            "--normalization_rule_name=identity",
            "--remove_extra_whitespaces=false",
            "--num_threads=1",
            "--minloglevel=2",
        ],
        check=True,
    )
    os.remove(prefix + ".vocab")
    return prefix + ".model"


def sp_specials(sp):
    return {sp.id_to_piece(i): i for i in range(sp.get_piece_size()) if sp.is_control(i) or sp.is_unknown(i)}


def split_specials(text, specials):
    """Leftmost-longest cut of the special pieces: [(begin, end, id or None)]."""
    out, plain, i = [], 0, 0
    while i < len(text):
        best = max((s for s in specials if text.startswith(s, i)), key=len, default=None)
        if best is None:
            i += 1
            continue
        if plain < i:
            out.append((plain, i, None))
        out.append((i, i + len(best), specials[best]))
        i = plain = i + len(best)
    if plain < len(text):
        out.append((plain, len(text), None))
    return out


def sp_expectations(sp, corpus):
    specials = sp_specials(sp)
    out = []
    for text in corpus:
        ids, starts, decoded, run = [], [], "", []
        for begin, end, sid in split_specials(text, specials):
            byte_begin = len(text[:begin].encode("utf-8"))
            if sid is not None:
                ids.append(sid)
                starts.append(byte_begin)
                decoded += sp.decode(run) + text[begin:end]
                run = []
                continue
            segment = text[begin:end]
            for p in sp.encode(segment, out_type="immutable_proto").pieces:  # begin: in characters
                ids.append(p.id)
                starts.append(byte_begin + len(segment[: p.begin].encode("utf-8")))
                run.append(p.id)
        decoded += sp.decode(run)
        out.append(record(text, ids, starts, decoded))
    return out


# --------------------------------------------------------------------------- main


def write_jsonl(path, rows):
    with open(path, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False, separators=(",", ":")) + "\n")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shared", default="../shared")
    ap.add_argument("--out", default="tests/fixtures/tokenizer")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)

    corpus = build_corpus()
    write_jsonl(os.path.join(args.out, "corpus.jsonl"), [{"text": t} for t in corpus])
    print(f"corpus: {len(corpus)} cases, {sum(len(t.encode('utf-8')) for t in corpus)} bytes")

    for name, shared, patch in VARIANTS:
        with open(os.path.join(args.shared, "tokenizers", shared, "tokenizer.json"), encoding="utf-8") as f:
            j = json.load(f)
        cases = corpus
        if patch:
            patch(j)
            cases = corpus[: len(HANDWRITTEN)]
        tok = Tokenizer.from_str(json.dumps(j))
        write_jsonl(os.path.join(args.out, name + ".jsonl"), hf_expectations(tok, cases))
        print(f"{name}: {len(cases)} cases")

    for name, j in TINY.items():
        path = os.path.join(args.out, f"tiny_{name}.json")
        with open(path, "w", encoding="utf-8") as f:
            json.dump(j, f, ensure_ascii=False)
        cases = corpus[: len(HANDWRITTEN)]
        write_jsonl(os.path.join(args.out, f"tiny_{name}.jsonl"), hf_expectations(Tokenizer.from_file(path), cases))
        print(f"tiny_{name}: {len(cases)} cases")

    model = train_sentencepiece(args.out)
    sp = spm.SentencePieceProcessor(model_file=model)
    write_jsonl(os.path.join(args.out, "sp_bpe.jsonl"), sp_expectations(sp, corpus))
    print(f"sp_bpe: {sp.get_piece_size()} pieces")


if __name__ == "__main__":
    main()
