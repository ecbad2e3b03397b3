#!/usr/bin/env python3
"""Writes tests/fixtures/rope/rope.json: what transformers computes for rotary embeddings.

For each rope configuration loom supports (default, llama3 with two factors, linear) it records
the fp32 inv_freq that transformers' LlamaRotaryEmbedding holds, and for each configuration the
output of LlamaRotaryEmbedding.forward + apply_rotary_pos_emb on a small random input at a few
positions (including large ones, where fp32 angle rounding matters). Floats are written as
their exact float32 bit patterns (uint32), so the C++ test compares bits, not decimal strings.

Runs on a CPU in a second:  python3 tools/make_rope_fixture.py  (torch, transformers)
"""
import json
import os

import numpy as np
import torch
import transformers
from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding, apply_rotary_pos_emb

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures", "rope")
NH = 2
POSITIONS = [0, 1, 2, 7, 100, 1000, 4095, 8191, 32767, 131071]

# name -> (head_dim, rope_parameters as a config.json would give them)
CONFIGS = {
    "default_theta1e4_d64": (64, dict(rope_type="default", rope_theta=10000.0)),
    "llama3_theta5e5_d128_f8": (128, dict(rope_type="llama3", rope_theta=500000.0, factor=8.0,
                                          low_freq_factor=1.0, high_freq_factor=4.0,
                                          original_max_position_embeddings=8192)),
    "llama3_theta5e5_d128_f32": (128, dict(rope_type="llama3", rope_theta=500000.0, factor=32.0,
                                           low_freq_factor=1.0, high_freq_factor=4.0,
                                           original_max_position_embeddings=8192)),
    "linear_theta1e4_d64_f2": (64, dict(rope_type="linear", rope_theta=10000.0, factor=2.0)),
}


def bits(t):
    return t.detach().contiguous().numpy().astype(np.float32).view(np.uint32).ravel().tolist()


def record(name, head_dim, rope_parameters, seed):
    config = transformers.LlamaConfig(hidden_size=head_dim * NH, num_attention_heads=NH, head_dim=head_dim,
                                      num_key_value_heads=NH, max_position_embeddings=131072,
                                      rope_parameters=dict(rope_parameters))
    rotary = LlamaRotaryEmbedding(config)
    torch.manual_seed(seed)
    T = len(POSITIONS)
    x = torch.rand(1, NH, T, head_dim, dtype=torch.float32) * 2 - 1  # HF layout (B, heads, T, D)
    pos = torch.tensor([POSITIONS], dtype=torch.int64)
    cos, sin = rotary(x, pos)
    rotated, _ = apply_rotary_pos_emb(x, x, cos, sin)
    to_loom = lambda t: t[0].transpose(0, 1)  # loom layout (T, NH, D)
    params = {k: v for k, v in rope_parameters.items()}
    return dict(name=name, head_dim=head_dim, rope=params, inv_freq_bits=bits(rotary.inv_freq),
                heads=NH, positions=POSITIONS, x_bits=bits(to_loom(x)), rotated_bits=bits(to_loom(rotated)))


def main():
    os.makedirs(OUT, exist_ok=True)
    cases = [record(name, d, p, seed) for seed, (name, (d, p)) in enumerate(CONFIGS.items())]
    doc = dict(generator="tools/make_rope_fixture.py", torch=torch.__version__,
               transformers=transformers.__version__, cases=cases)
    path = os.path.join(OUT, "rope.json")
    with open(path, "w") as f:
        json.dump(doc, f, separators=(",", ":"))
    print(f"wrote {path} ({os.path.getsize(path)} bytes)")


if __name__ == "__main__":
    main()
