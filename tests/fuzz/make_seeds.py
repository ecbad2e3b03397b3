#!/usr/bin/env python3
"""Seed corpora for the fuzz targets of `make fuzz`, made from the repository's real files.

    python3 tests/fuzz/make_seeds.py OUT_DIR      (run from the repository root)

Writes OUT_DIR/<target>/<name> for the targets safetensors, model_config, tokenizer, train_config
and jsonl (whose tokenizer is OUT_DIR/tokenizer/qwen3_shrunk.json: a real one, fast to run). Real files are shrunk where they are large (safetensors data, 10 MB tokenizers) so that
libFuzzer mutates small inputs that still carry every structure of the originals. Standard library
only; deterministic.
"""
import glob
import json
import os
import struct
import sys

SHARED_TOKENIZERS = "../shared/tokenizers"


def write(out_dir, target, name, data):
    folder = os.path.join(out_dir, target)
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, name), "wb") as f:
        f.write(data if isinstance(data, bytes) else data.encode())


def seed_name(path):
    return path.replace("/", "_").replace("..", "")


# ---------------------------------------------------------------- safetensors

def safetensors_bytes(header, data):
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # writers pad the header to 8 bytes
    return struct.pack("<Q", len(text)) + text + data


def shrunk_safetensors(path, max_dim=2):
    """The file with every tensor cut to at most max_dim per dimension (names, dtypes, metadata kept)."""
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    out_header, out_data = {}, b""
    for name, info in header.items():
        if name == "__metadata__":
            out_header[name] = info
            continue
        begin, end = info["data_offsets"]
        shape = [min(d, max_dim) for d in info["shape"]]
        numel = 1
        for d in shape:
            numel *= d
        full = 1
        for d in info["shape"]:
            full *= d
        elem = (end - begin) // full if full else 0
        chunk = data[begin:begin + numel * elem]
        out_header[name] = {"dtype": info["dtype"], "shape": shape,
                            "data_offsets": [len(out_data), len(out_data) + len(chunk)]}
        out_data += chunk
    return safetensors_bytes(out_header, out_data)


def safetensors_seeds(out_dir):
    for path in sorted(glob.glob("tests/fixtures/**/*.safetensors", recursive=True)):
        write(out_dir, "safetensors", seed_name(path), shrunk_safetensors(path))
    # Every dtype loom converts, a zero-size tensor and metadata only.
    write(out_dir, "safetensors", "dtypes", safetensors_bytes(
        {"__metadata__": {"format": "pt"},
         "a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
         "b": {"dtype": "F16", "shape": [1, 2], "data_offsets": [8, 12]},
         "c": {"dtype": "BF16", "shape": [2, 1], "data_offsets": [12, 16]},
         "d": {"dtype": "U8", "shape": [3], "data_offsets": [16, 19]},
         "e": {"dtype": "I64", "shape": [0, 5], "data_offsets": [19, 19]}},
        struct.pack("<2f", 1.5, -2.0) + b"\x00\x3c\x00\xbc" + b"\x80\x3f\x00\xc0" + b"xyz"))
    write(out_dir, "safetensors", "metadata_only", safetensors_bytes({"__metadata__": {"format": "pt"}}, b""))


# ---------------------------------------------------------------- config.json

def model_config_seeds(out_dir):
    paths = sorted(glob.glob("tests/fixtures/configs/*.json") + glob.glob("tests/fixtures/**/config.json", recursive=True))
    for path in paths:
        with open(path, "rb") as f:
            write(out_dir, "model_config", seed_name(path), f.read())


# ---------------------------------------------------------------- tokenizer.json

def remap_ids(node, mapping):
    """Post-processor special_tokens carry ids; point them at the renumbered added tokens."""
    if isinstance(node, dict):
        return {k: ([mapping.get(i, i) for i in v] if k == "ids" and isinstance(v, list) else remap_ids(v, mapping))
                for k, v in node.items()}
    if isinstance(node, list):
        return [remap_ids(v, mapping) for v in node]
    return node


def shrunk_tokenizer(path, keep=1000):
    """The tokenizer with its first `keep` vocabulary ids, the merges among them, and the added
    tokens renumbered right after them (normalizer, pre-tokenizer, decoder kept as they are)."""
    with open(path, encoding="utf-8") as f:
        j = json.load(f)
    model = j["model"]
    vocab = {tok: i for tok, i in model["vocab"].items() if i < keep}
    merges = []
    for m in model.get("merges", []):
        a, b = m.split(" ", 1) if isinstance(m, str) else m
        if a in vocab and b in vocab and a + b in vocab:
            merges.append(m)
    model["vocab"], model["merges"] = vocab, merges
    mapping = {}
    for n, tok in enumerate(j.get("added_tokens", [])):
        if tok["id"] >= keep:
            mapping[tok["id"]] = keep + n
            tok["id"] = keep + n
    j["post_processor"] = remap_ids(j.get("post_processor"), mapping)
    return json.dumps(j, ensure_ascii=False)


def tokenizer_seeds(out_dir):
    for path in sorted(glob.glob(SHARED_TOKENIZERS + "/*/tokenizer.json")):
        family = os.path.basename(os.path.dirname(path))
        write(out_dir, "tokenizer", family + "_shrunk.json", shrunk_tokenizer(path))
    for path in sorted(glob.glob("tests/fixtures/tokenizer/*.json")):
        with open(path, "rb") as f:
            write(out_dir, "tokenizer", seed_name(path), f.read())


# ---------------------------------------------------------------- YAML config

def train_config_seeds(out_dir):
    for path in sorted(glob.glob("configs/*.yaml")):
        with open(path, "rb") as f:
            text = f.read()
        write(out_dir, "train_config", seed_name(path), text)
        # With overrides after a NUL, as train_config_fuzz.cpp reads them.
        write(out_dir, "train_config", seed_name(path) + "+overrides",
              text + b"\0train.lr=1e-4\0lora.r=8\0data.format=alpaca\0output.keep_checkpoints=1")


# ---------------------------------------------------------------- JSONL

def jsonl_options(fmt, template, train_on_responses, truncate, stop_on_bad, max_seq_len):
    """The 7 bytes jsonl_fuzz.cpp's FuzzedDataProvider reads from the end of its input, in file order
    (it consumes the last byte first; max_seq_len = 1 + ((F << 8) | G) % 4096 from bytes G, F)."""
    v = max_seq_len - 1
    return bytes([v & 0xFF, v >> 8, int(stop_on_bad), int(truncate), int(train_on_responses), template, fmt])


def conversations():
    """Conversations of the chat-template fixtures."""
    out = []
    for path in sorted(glob.glob("tests/fixtures/templates/*.json")):
        with open(path, encoding="utf-8") as f:
            out += [case["messages"] for case in json.load(f)["cases"]]
    return out


def as_format(messages, fmt):
    if fmt == "messages":
        return {"messages": messages}
    if fmt == "sharegpt":
        role = {"user": "human", "assistant": "gpt", "system": "system"}
        return {"conversations": [{"from": role.get(m["role"], m["role"]), "value": m["content"]} for m in messages]}
    user = next((m["content"] for m in messages if m["role"] == "user"), "")
    answer = next((m["content"] for m in messages if m["role"] == "assistant"), "")
    if fmt == "alpaca":
        return {"instruction": user, "input": "", "output": answer}
    return {"text": user + "\n" + answer}


def jsonl_seeds(out_dir):
    formats = ["messages", "sharegpt", "alpaca", "text"]  # indices 1..4 of jsonl_fuzz.cpp's formats
    convs = conversations()
    for fi, fmt in enumerate(formats):
        lines = [json.dumps(as_format(m, fmt), ensure_ascii=False) for m in convs[fi::2][:6]]
        for template in range(7):
            body = ("\n".join(lines) + "\n").encode()
            write(out_dir, "jsonl", f"{fmt}_t{template}",
                  body + jsonl_options(1 + fi, template, True, template % 2 == 0, template < 4, 64 << (template % 4)))
    with open("data/demo/chats.jsonl", "rb") as f:
        demo = b"".join(f.readlines()[:8])
    write(out_dir, "jsonl", "demo", demo + jsonl_options(0, 0, True, True, True, 2048))
    write(out_dir, "jsonl", "demo_bad_line",
          demo + b"{\"messages\": 3}\n\n\xef\xbb\xbf{}\r\n" + jsonl_options(0, 1, False, False, False, 16))


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    out_dir = sys.argv[1]
    safetensors_seeds(out_dir)
    model_config_seeds(out_dir)
    tokenizer_seeds(out_dir)
    train_config_seeds(out_dir)
    jsonl_seeds(out_dir)


if __name__ == "__main__":
    main()
