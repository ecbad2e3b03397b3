#!/usr/bin/env python3
"""Writes data/demo/pairs.jsonl, the preference pairs of loom's DPO demo, from the demo chats
(data/demo/chats.jsonl, tools/make_demo_data.py). Standard library only; deterministic.

    python3 tools/make_preference_demo.py [--chats data/demo/chats.jsonl] [--out data/demo/pairs.jsonl]
                                          [--count 600] [--seed 4321]

Each of the first COUNT chats gives one pair in TRL's conversational form:
  prompt   = the conversation up to its last assistant turn (it ends with the user's question)
  chosen   = [the chat's own last assistant message]
  rejected = [the last assistant message of another chat, drawn with random.Random(seed), whose
              text differs from the chosen one]

Why the preference is learnable: every demo answer follows a fixed pattern of its question ("What
is 17 plus 25?" -> "17 plus 25 is 42."), so the chosen answer repeats the question's words and
numbers while the rejected one answers some other question ("The capital of Peru is Lima."). A
model that reads the prompt can tell them apart on every pair, and the rejected answers are
fluent demo answers, so the pair is decided by fitting the question, not by grammar: DPO's
rewards/accuracies can approach 1 and rewards/margins rise as the policy moves probability from
the mismatched answer to the matching one.
"""
import argparse
import json
import random


def last_exchange(chat, line):
    """(prompt messages, the last assistant message) of one chat."""
    messages = chat["messages"]
    if len(messages) < 2 or messages[-1]["role"] != "assistant" or messages[-2]["role"] != "user":
        raise SystemExit(f"chat {line} does not end with a user question and its answer")
    return messages[:-1], messages[-1]


def make_pairs(chats, count, seed):
    rng = random.Random(seed)
    exchanges = [last_exchange(chat, i + 1) for i, chat in enumerate(chats)]
    pairs = []
    for i, (prompt, answer) in enumerate(exchanges[:count]):
        while True:  # another chat's answer, with another text
            j = rng.randrange(len(exchanges))
            other = exchanges[j][1]
            if j != i and other["content"] != answer["content"]:
                break
        pairs.append({
            "prompt": prompt,
            "chosen": [{"role": "assistant", "content": answer["content"]}],
            "rejected": [{"role": "assistant", "content": other["content"]}],
        })
    return pairs


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--chats", default="data/demo/chats.jsonl")
    ap.add_argument("--out", default="data/demo/pairs.jsonl")
    ap.add_argument("--count", type=int, default=600)
    ap.add_argument("--seed", type=int, default=4321)
    args = ap.parse_args()
    with open(args.chats, encoding="utf-8") as f:
        chats = [json.loads(line) for line in f if line.strip()]
    if args.count > len(chats):
        raise SystemExit(f"--count {args.count}: {args.chats} has only {len(chats)} chats")
    pairs = make_pairs(chats, args.count, args.seed)
    with open(args.out, "w", encoding="utf-8", newline="\n") as f:
        for p in pairs:
            f.write(json.dumps(p, ensure_ascii=False) + "\n")
    print(f"wrote {len(pairs)} pairs to {args.out}")


if __name__ == "__main__":
    main()
