#!/usr/bin/env python3
"""Checks loom's exports with the programs users load them with.

    python3 tools/check_export.py MANIFEST.json

MANIFEST.json is written by tests/export_test.cpp (ExportProgram.TransformersAndLlamaCppReproduceLoom):
per model family a base folder, an adapter, the merged HF folder, GGUF files (q8_0, f16, bf16), a
prompt with loom's token ids, loom's logits of the trained model (the fp32 merge, "logits") and of
the merged folder ("merged_logits"), and loom's logits on each GGUF file's own (rounded) weights.
Checked, where the packages are installed:

transformers (torch): AutoTokenizer on the merged folder gives loom's ids; AutoModelForCausalLM loads
  it in the dtype its config names, and in fp32 its logits equal loom's of the same folder within
  1e-4 (the bound of tests/parity_test.cpp for the same fp32 computation on the same weights); its
  mean NLL equals build/score's on the merged folder within 1e-5, and for an fp32 base ("exact":
  its merged folder is fp32) build/score's of base + adapter, the trained model's, within 1e-5
  (tests/export_test.cpp measures <= 6e-8 between the two in loom); a bf16 folder's NLL differs
  from it by the bf16 rounding of the merged weights, printed.
llama-cpp-python: each GGUF file loads; llama.cpp's tokenizer gives loom's ids; its logits equal
  loom's of the trained model within 2 E + E_f16. E is the largest logit change loom itself sees
  from the file's rounded weights (the type's own error). llama.cpp rounds twice more: the input
  of every matrix product to the weights' type (Q8_0 activations for Q8_0 weights, F16 / BF16 for
  those), an error of E's kind and size, and the KV cache and attention inputs to F16, an error of
  the size of the f16 file's E (E_f16).
  A model with a sliding window is compared on the positions the window does not cut (llama.cpp
  runs these architectures with full attention).
Prints one line per figure and the package versions; exits 1 when a check fails.
"""
import json
import math
import subprocess
import sys


def max_abs_diff(a, b):
    worst = 0.0
    for row_a, row_b in zip(a, b):
        for x, y in zip(row_a, row_b):
            d = abs(float(x) - float(y))
            if math.isnan(d):
                return math.inf
            worst = max(worst, d)
    return worst if len(a) == len(b) else math.inf


def mean_nll(logits, ids):
    total = 0.0
    for t in range(len(ids) - 1):
        row = logits[t]
        m = max(row)
        lse = m + math.log(sum(math.exp(x - m) for x in row))
        total += lse - row[ids[t + 1]]
    return total / (len(ids) - 1)


def loom_score(score, model, ids, adapter=None):
    cmd = [score, "--model", model, "--device", "cpu"] + (["--adapter", adapter] if adapter else [])
    out = subprocess.run(cmd, input=json.dumps({"ids": ids}) + "\n", capture_output=True, text=True, check=True)
    return json.loads(out.stdout.splitlines()[0])["nll"]


class Checks:
    def __init__(self):
        self.failed = []

    def expect(self, ok, what):
        if not ok:
            self.failed.append(what)
            print("FAILED: " + what)


def check_transformers(case, score, checks):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    name, merged, ids = case["arch"], case["merged"], case["ids"]
    tokenizer = AutoTokenizer.from_pretrained(merged)
    hf_ids = tokenizer(case["text"])["input_ids"]
    checks.expect(hf_ids == ids, f"{name}: AutoTokenizer ids {hf_ids} != loom's {ids}")
    config_dtype = json.load(open(merged + "/config.json")).get("dtype") or \
        json.load(open(merged + "/config.json")).get("torch_dtype")
    loaded = AutoModelForCausalLM.from_pretrained(merged)
    checks.expect(str(loaded.dtype) == "torch." + config_dtype,
                  f"{name}: from_pretrained loads {loaded.dtype}, config.json says {config_dtype}")
    model = AutoModelForCausalLM.from_pretrained(merged, dtype=torch.float32)
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0].tolist()
    diff = max_abs_diff(logits, case["merged_logits"])
    hf_nll = mean_nll(logits, ids)
    merged_nll = loom_score(score, merged, ids)
    adapter_nll = loom_score(score, case["base"], ids, case["adapter"])
    print(f"[transformers] {name}: ids equal: {hf_ids == ids}; loads as {loaded.dtype}; fp32 logits max |diff| "
          f"{diff:.2e} (bound 1e-4); NLL transformers {hf_nll:.6f}, build/score merged {merged_nll:.6f} "
          f"(diff {abs(hf_nll - merged_nll):.1e}), build/score base+adapter {adapter_nll:.6f}")
    checks.expect(diff <= 1e-4, f"{name}: transformers logits differ from loom's by {diff}")
    checks.expect(abs(hf_nll - merged_nll) <= 1e-5, f"{name}: NLL {hf_nll} (transformers) vs {merged_nll} (loom)")
    if case["exact"]:
        checks.expect(abs(hf_nll - adapter_nll) <= 1e-5,
                      f"{name}: NLL {hf_nll} (transformers, fp32 merged folder) vs {adapter_nll} (loom, base + adapter)")


def check_llama_cpp(case, checks):
    from llama_cpp import Llama

    name, ids, window = case["arch"], case["ids"], case["window"]
    compared = len(ids) if window == 0 else min(window, len(ids))
    own_effect = {t: max_abs_diff(g["logits"][:compared], case["logits"][:compared]) for t, g in case["gguf"].items()}
    for gguf_type, g in case["gguf"].items():
        llm = Llama(model_path=g["path"], n_ctx=64, logits_all=True, verbose=False, n_threads=2, seed=0)
        cpp_ids = llm.tokenize(case["text"].encode("utf-8"), add_bos=True, special=True)
        checks.expect(cpp_ids == ids, f"{name} {gguf_type}: llama.cpp ids {cpp_ids} != loom's {ids}")
        llm.reset()
        llm.eval(ids)
        logits = [list(row) for row in llm.scores[:len(ids)]]
        own = own_effect[gguf_type]
        diff = max_abs_diff(logits[:compared], case["logits"][:compared])
        vs_own = max_abs_diff(logits[:compared], g["logits"][:compared])
        bound = 2 * own + own_effect["f16"]
        scale = max(abs(x) for row in case["logits"][:compared] for x in row)
        nll_cpp, nll_loom = mean_nll(logits[:compared], ids[:compared]), mean_nll(case["logits"][:compared], ids[:compared])
        print(f"[llama.cpp] {name} {gguf_type}: ids equal: {cpp_ids == ids}; logits (up to {scale:.2f}) max |diff| vs "
              f"loom's trained model {diff:.2e} (E = {own:.2e}, bound 2E + E_f16 = {bound:.2e}; vs loom on the "
              f"file's own weights {vs_own:.2e}); positions compared {compared} of {len(ids)}, mean NLL "
              f"llama.cpp {nll_cpp:.6f} vs loom {nll_loom:.6f}")
        checks.expect(diff <= bound, f"{name} {gguf_type}: llama.cpp logits differ by {diff} > {bound}")
        llm.close()


def versions():
    found = []
    for module in ["torch", "transformers", "llama_cpp"]:
        try:
            found.append(f"{module} {__import__(module).__version__}")
        except ImportError:
            found.append(f"{module} not installed")
    return ", ".join(found)


def main():
    manifest = json.load(open(sys.argv[1]))
    print("check_export: " + versions())
    checks = Checks()
    for case in manifest["cases"]:
        if manifest["hf"]:
            check_transformers(case, manifest["score"], checks)
        if manifest["llama_cpp"]:
            check_llama_cpp(case, checks)
    print(f"check_export: {len(checks.failed)} failed")
    sys.exit(1 if checks.failed else 0)


if __name__ == "__main__":
    main()
