#!/usr/bin/env python3
"""Writes loom's demo dataset: data/demo/chats.jsonl (short, learnable chats in OpenAI messages
format) and data/demo/tokenizer.model (a 512-piece sentencepiece BPE trained on them).

    python3 tools/make_demo_data.py [--out data/demo] [--count 1500] [--seed 1234]

Needs spm_train and spm_encode on PATH (Debian package `sentencepiece`, see tools/setup.sh).
Every answer follows a fixed pattern of its question (arithmetic, capitals, animal sounds,
counting, word reversal, next weekday), so the "tiny" preset can visibly learn it in about a
minute on a CPU. The tokenizer has Llama's special ids (unk 0, <s> 1, </s> 2, no pad), byte
fallback, and [INST] / [/INST] as single pieces, so the mistral chat template suits it; the script
checks that every conversation, rendered with that template, stays under MAX_TOKENS tokens.
"""
import argparse
import json
import os
import random
import subprocess

MAX_TOKENS = 60
VOCAB_SIZE = 512

CAPITALS = {
    "France": "Paris", "Germany": "Berlin", "Italy": "Rome", "Spain": "Madrid", "Japan": "Tokyo",
    "Egypt": "Cairo", "Canada": "Ottawa", "Peru": "Lima", "Kenya": "Nairobi", "Norway": "Oslo",
    "Greece": "Athens", "Poland": "Warsaw", "Chile": "Santiago", "Cuba": "Havana", "Ireland": "Dublin",
    "Portugal": "Lisbon", "Austria": "Vienna", "Sweden": "Stockholm", "Finland": "Helsinki", "India": "New Delhi",
}
SOUNDS = {
    "cow": "moo", "dog": "woof", "cat": "meow", "duck": "quack", "sheep": "baa", "pig": "oink",
    "owl": "hoot", "horse": "neigh", "lion": "roar", "frog": "croak", "bee": "buzz", "mouse": "squeak",
}
DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
WORDS = ["cat", "dog", "sun", "tree", "book", "lamp", "fish", "milk", "star", "road", "rain", "gold",
         "ship", "wolf", "bird", "cake", "door", "frog", "king", "moon", "rose", "salt", "wind", "yarn"]


def arithmetic(rng):
    op = rng.choice(["plus", "minus", "times"])
    if op == "times":
        a, b = rng.randint(2, 12), rng.randint(2, 12)
        c = a * b
    else:
        a, b = rng.randint(1, 50), rng.randint(1, 50)
        if op == "minus" and b > a:
            a, b = b, a
        c = a + b if op == "plus" else a - b
    return f"What is {a} {op} {b}?", f"{a} {op} {b} is {c}."


def capital(rng):
    country = rng.choice(sorted(CAPITALS))
    return f"What is the capital of {country}?", f"The capital of {country} is {CAPITALS[country]}."


def animal(rng):
    name = rng.choice(sorted(SOUNDS))
    return f"What sound does a {name} make?", f"A {name} says {SOUNDS[name]}."


def counting(rng):
    start = rng.randint(1, 20)
    end = start + rng.randint(2, 5)
    return f"Count from {start} to {end}.", ", ".join(str(i) for i in range(start, end + 1)) + "."


def reverse(rng):
    word = rng.choice(WORDS)
    return f"Reverse the word {word}.", f"{word} reversed is {word[::-1]}."


def weekday(rng):
    i = rng.randrange(7)
    return f"What day comes after {DAYS[i]}?", f"{DAYS[(i + 1) % 7]} comes after {DAYS[i]}."


TASKS = [arithmetic, arithmetic, capital, animal, counting, reverse, weekday]


def conversation(rng):
    """One exchange, or (about one in five) two short ones; counting answers are too long to pair."""
    first = rng.choice(TASKS)
    messages = exchange(first(rng))
    second = rng.choice(TASKS)
    if rng.random() < 0.2 and counting not in (first, second):
        messages += exchange(second(rng))
    return {"messages": messages}


def exchange(qa):
    return [{"role": "user", "content": qa[0]}, {"role": "assistant", "content": qa[1]}]


def train_tokenizer(chats, out_dir):
    # Fixed file names: spm_train records its input and prefix in the model, and temporary names
    # would make the model differ from run to run.
    corpus = os.path.join(out_dir, "corpus.txt")
    prefix = os.path.join(out_dir, "tokenizer")
    with open(corpus, "w", encoding="utf-8") as f:
        for chat in chats:
            for m in chat["messages"]:
                f.write(m["content"] + "\n")
    try:
        subprocess.run(
            ["spm_train", f"--input={corpus}", f"--model_prefix={prefix}", "--model_type=bpe",
             f"--vocab_size={VOCAB_SIZE}", "--byte_fallback=true", "--character_coverage=1.0",
             "--unk_id=0", "--bos_id=1", "--eos_id=2", "--pad_id=-1",
             "--user_defined_symbols=[INST],[/INST]", "--normalization_rule_name=identity",
             "--remove_extra_whitespaces=false", "--split_digits=true", "--num_threads=1", "--minloglevel=2"],
            check=True)
    finally:
        for leftover in (corpus, prefix + ".vocab"):
            if os.path.exists(leftover):
                os.remove(leftover)


def mistral_token_counts(chats, model):
    """Tokens of each chat rendered as <s>[INST] u [/INST]a</s>...: <s> and </s> are one token each."""
    bodies, eos = [], []
    for chat in chats:
        text = ""
        ms = chat["messages"]
        for u, a in zip(ms[0::2], ms[1::2]):
            text += f"[INST] {u['content']} [/INST]{a['content']}"
        bodies.append(text)
        eos.append(len(ms) // 2)
    out = subprocess.run(["spm_encode", f"--model={model}", "--output_format=id"], input="\n".join(bodies) + "\n",
                         capture_output=True, text=True, check=True).stdout.splitlines()
    return [1 + len(line.split()) + n for line, n in zip(out, eos)]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="data/demo")
    ap.add_argument("--count", type=int, default=1500)
    ap.add_argument("--seed", type=int, default=1234)
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    rng = random.Random(args.seed)
    chats = [conversation(rng) for _ in range(args.count)]
    path = os.path.join(args.out, "chats.jsonl")
    with open(path, "w", encoding="utf-8") as f:
        for chat in chats:
            f.write(json.dumps(chat) + "\n")
    train_tokenizer(chats, args.out)
    counts = mistral_token_counts(chats, os.path.join(args.out, "tokenizer.model"))
    longest = max(counts)
    assert longest < MAX_TOKENS, f"a conversation has {longest} tokens; keep them under {MAX_TOKENS}"
    print(f"wrote {path}: {len(chats)} conversations, {os.path.getsize(path)} bytes; "
          f"tokens per conversation (mistral template): mean {sum(counts) / len(counts):.1f}, max {longest}")


if __name__ == "__main__":
    main()
