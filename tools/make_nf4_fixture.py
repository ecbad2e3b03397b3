#!/usr/bin/env python3
"""Writes tests/fixtures/nf4/: what bitsandbytes (CPU) produces for NF4, for tests/nf4_test.cpp and
tests/bnb_checkpoint_test.cpp.

  python3 tools/make_nf4_fixture.py            (from the repository root; needs torch, bitsandbytes,
                                                transformers, safetensors; runs on the CPU)

Per case, tests/fixtures/nf4/<case>/ holds raw little-endian arrays:
  input.bf16 | input.f32   the weight as given to bitsandbytes (bf16 bits, or fp32 for the tie case)
  codes.u8                 quantize_4bit's packed bytes ((n+1)/2)
  absmax.f32               per-block absmax (not nested)
  absmax_q.u8, nested_absmax.f32   double quantization (nested)
  scales.f32               the per-block scale bitsandbytes dequantizes with (nested resolved + offset)
  dequant.f32              dequantize_4bit to fp32 (left out of the large case)
manifest.json lists the cases (shape, blocksize, nesting, nested_offset as fp32 bits) and the
library versions; dynamic_map.f32 = create_dynamic_map(), nf4_table.f32 = get_4bit_type("nf4").

bnb_llama_tiny/ is a real transformers save_pretrained of a 1-layer LlamaForCausalLM loaded with
BitsAndBytesConfig(load_in_4bit, nf4, double quant); bnb_llama_tiny_plain/ the same without double
quant; bnb_llama_tiny_source.safetensors the bf16 linear weights it was quantized from;
bnb_llama_tiny_dequant.safetensors bitsandbytes' fp32 dequantization of two of them.

Note: bitsandbytes 0.50.2's AVX-512 CPU dequantize_4bit kernel indexes absmax as (row, col / blocksize),
which is wrong when cols % blocksize != 0 (e.g. 48x80 with blocksize 64). dequant.f32 is therefore
computed with bitsandbytes' own reference path (backends/default/ops.py _dequantize_4bit_compute);
where the native kernel is right, the generator asserts that both agree.
"""
import json
import os
import shutil
import tempfile

import numpy as np
import torch

import bitsandbytes
import bitsandbytes.functional as F
import safetensors
import transformers
from bitsandbytes.backends.default.ops import _dequantize_4bit_compute
from safetensors.torch import save_file

OUT = os.path.join("tests", "fixtures", "nf4")


def write(path, array):
    np.ascontiguousarray(array).tofile(path)


def bnb_scales(state):
    """The fp32 per-block scales bitsandbytes' dequantize_4bit multiplies by."""
    if not state.nested:
        return state.absmax.float()
    absmax = F.dequantize_blockwise(state.absmax, state.state2)
    absmax += state.offset
    return absmax.float()


def reference_dequant(packed, state, scales):
    code = F.get_4bit_type("nf4", device="cpu")
    return _dequantize_4bit_compute(packed.reshape(-1), scales, code, state.blocksize, state.shape, torch.float32)


def native_dequant(packed, state):
    state32 = F.QuantState(absmax=state.absmax, shape=state.shape, code=state.code, blocksize=state.blocksize,
                           quant_type=state.quant_type, dtype=torch.float32, offset=state.offset, state2=state.state2)
    return F.dequantize_4bit(packed, state32)


def write_case(name, w, blocksize, nested, dequant=True):
    folder = os.path.join(OUT, name)
    os.makedirs(folder, exist_ok=True)
    rows, cols = w.shape
    if w.dtype == torch.bfloat16:
        write(os.path.join(folder, "input.bf16"), w.view(torch.int16).numpy().astype("<u2"))
    else:
        write(os.path.join(folder, "input.f32"), w.numpy().astype("<f4"))
    packed, state = F.quantize_4bit(w, blocksize=blocksize, quant_type="nf4", compress_statistics=nested)
    write(os.path.join(folder, "codes.u8"), packed.reshape(-1).numpy())
    if nested:
        write(os.path.join(folder, "absmax_q.u8"), state.absmax.numpy())
        write(os.path.join(folder, "nested_absmax.f32"), state.state2.absmax.numpy().astype("<f4"))
        assert torch.equal(state.state2.code, F.create_dynamic_map())
    else:
        write(os.path.join(folder, "absmax.f32"), state.absmax.numpy().astype("<f4"))
    scales = bnb_scales(state)
    write(os.path.join(folder, "scales.f32"), scales.numpy().astype("<f4"))
    entry = {"name": name, "rows": rows, "cols": cols, "blocksize": blocksize, "nested": nested,
             "input_dtype": "bfloat16" if w.dtype == torch.bfloat16 else "float32", "dequant": dequant}
    if dequant:
        out = reference_dequant(packed, state, scales)
        native_ok = bool(torch.equal(out, native_dequant(packed, state)))
        assert native_ok or cols % blocksize != 0, name
        entry["native_cpu_dequant_matches"] = native_ok
        write(os.path.join(folder, "dequant.f32"), out.reshape(-1).numpy().astype("<f4"))
    if nested:
        offset = np.float32(state.offset.item())
        entry["nested_offset"] = float(offset)
        entry["nested_offset_bits"] = int(offset.view(np.uint32))
        entry["nested_blocksize"] = state.state2.blocksize
    return entry


def weights(rows, cols, seed):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(rows, cols, generator=g) * 0.05
    w[0, 0] = 0.4  # one outlier, as real weights have
    return w.to(torch.bfloat16)


def zero_blocks():
    """A zero full block, a normal block, a zero short last block (absmax clamped to 1e-38)."""
    w = weights(3, 50, 7).reshape(-1)
    w[:64] = 0
    w[128:] = 0
    return w.reshape(3, 50)


def nf4_midpoints():
    code = F.get_4bit_type("nf4", device="cpu")
    return ((code[:-1] + code[1:]) / 2).numpy().astype(np.float32)


def mul_div_pair():
    """fp32 (absmax, x) with x * (1 / absmax) and x / absmax on opposite sides of an NF4 midpoint: full
    blocks multiply by the reciprocal, the short last block divides, and this pair tells them apart."""
    rng = np.random.default_rng(0)
    mids = nf4_midpoints()
    while True:
        a = np.float32(rng.uniform(0.5, 1.0))
        xs = (rng.uniform(-1, 1, 100000) * a).astype(np.float32)
        mul = (xs * (np.float32(1) / a)).astype(np.float32)
        div = (xs / a).astype(np.float32)
        differ = np.nonzero(np.searchsorted(mids, mul) != np.searchsorted(mids, div))[0]
        if len(differ):
            return a, xs[differ[0]]


def tie_blocks():
    """fp32 values on and next to every midpoint between NF4 codes, with absmax 1 and 2 (exact scaling);
    then a full block and a short last block holding the same mul_div_pair."""
    vals = [np.float32(1.0), np.float32(-1.0), np.float32(0.0), np.float32(-0.0)]
    for m in nf4_midpoints():
        vals += [m, np.nextafter(m, np.float32(2)), np.nextafter(m, np.float32(-2))]
    ties = np.array(vals + [np.float32(0)] * (64 - len(vals)), dtype=np.float32)
    a, x = mul_div_pair()
    pair_full = np.zeros(64, np.float32)
    pair_full[:2] = [a, x]
    pair_short = pair_full[:10]
    row = np.concatenate([ties, ties * np.float32(2), pair_full, pair_short])
    return torch.from_numpy(row.reshape(1, -1))


def offset_sensitive_weights(rows, cols, blocksize):
    """Weights (first seed from 100 on) whose absmax.mean() in torch's fp32 cascade order differs both
    from the correctly rounded mean and from a left-to-right fp32 sum, so the offset is a real test.
    Rows are scaled by powers of two from 2^-12 to 2^12: absmax values of similar magnitude sum
    exactly in fp32 whatever the order, so the order only shows with a wide range."""
    for seed in range(100, 1000):
        g = torch.Generator().manual_seed(seed)
        row_scale = torch.pow(2.0, torch.randint(-12, 13, (rows, 1), generator=g).float())
        w = (weights(rows, cols, seed).float() * row_scale).to(torch.bfloat16)
        _, state = F.quantize_4bit(w, blocksize=blocksize, quant_type="nf4", compress_statistics=False)
        absmax = state.absmax.numpy()
        torch_mean = np.float32(state.absmax.mean().item())
        exact = np.float32(np.sum(absmax.astype(np.float64)) / len(absmax))
        running = np.float32(0)
        for v in absmax:
            running = np.float32(running + v)
        if torch_mean != exact and torch_mean != np.float32(running / np.float32(len(absmax))):
            return w
    raise RuntimeError("no offset-sensitive seed found")


def write_cases():
    cases = [
        write_case("w48x80_b64", weights(48, 80, 1), 64, False),
        write_case("w48x80_b64_nested", weights(48, 80, 1), 64, True),
        write_case("w7x64_b64_nested", weights(7, 64, 2), 64, True),
        write_case("w5x33_b64", weights(5, 33, 3), 64, False),
        write_case("w5x33_b64_nested", weights(5, 33, 3), 64, True),
        write_case("w7x64_b128", weights(7, 64, 4), 128, False),
        # 579 blocks: the cascade sum's vector, level and tail paths, and three nested groups.
        write_case("w37x500_b32_nested", offset_sensitive_weights(37, 500, 32), 32, True, dequant=False),
        write_case("zeros_b64", zero_blocks(), 64, False),
        write_case("zeros_b64_nested", zero_blocks(), 64, True),
        write_case("ties_f32_b64", tie_blocks(), 64, False),
    ]
    write(os.path.join(OUT, "dynamic_map.f32"), F.create_dynamic_map().numpy().astype("<f4"))
    write(os.path.join(OUT, "nf4_table.f32"), F.get_4bit_type("nf4", device="cpu").numpy().astype("<f4"))
    manifest = {
        "generator": "tools/make_nf4_fixture.py",
        "versions": {"bitsandbytes": bitsandbytes.__version__, "torch": torch.__version__,
                     "transformers": transformers.__version__, "safetensors": safetensors.__version__},
        "torch_threads_for_mean": torch.get_num_threads(),
        "cases": cases,
    }
    with open(os.path.join(OUT, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=1)
        f.write("\n")


def write_checkpoint(folder, double_quant, source_dir):
    quant = transformers.BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                            bnb_4bit_use_double_quant=double_quant,
                                            bnb_4bit_compute_dtype=torch.bfloat16)
    model = transformers.AutoModelForCausalLM.from_pretrained(source_dir, quantization_config=quant,
                                                              device_map="cpu", dtype=torch.bfloat16)
    shutil.rmtree(folder, ignore_errors=True)
    model.save_pretrained(folder)
    for extra in os.listdir(folder):
        if extra not in ("config.json", "model.safetensors"):
            os.remove(os.path.join(folder, extra))
    return model


def write_checkpoints():
    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=32, hidden_size=64, intermediate_size=96, num_hidden_layers=1,
                                      num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False)
    model = transformers.LlamaForCausalLM(config).to(torch.bfloat16)
    with tempfile.TemporaryDirectory() as source_dir:
        model.save_pretrained(source_dir)
        source = {k: v.contiguous() for k, v in model.state_dict().items() if k.endswith("_proj.weight")}
        save_file(source, os.path.join(OUT, "bnb_llama_tiny_source.safetensors"), metadata={"format": "pt"})
        quantized = write_checkpoint(os.path.join(OUT, "bnb_llama_tiny"), True, source_dir)
        write_checkpoint(os.path.join(OUT, "bnb_llama_tiny_plain"), False, source_dir)
    expected = {}
    for name in ("self_attn.q_proj", "mlp.down_proj"):
        layer = quantized.get_submodule("model.layers.0." + name)
        state = layer.weight.quant_state
        expected[f"model.layers.0.{name}.weight"] = reference_dequant(layer.weight.data, state, bnb_scales(state))
    save_file(expected, os.path.join(OUT, "bnb_llama_tiny_dequant.safetensors"), metadata={"format": "pt"})


def main():
    shutil.rmtree(OUT, ignore_errors=True)
    os.makedirs(OUT)
    write_cases()
    write_checkpoints()
    print("wrote", OUT)


if __name__ == "__main__":
    main()
