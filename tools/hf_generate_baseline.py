#!/usr/bin/env python3
"""The Hugging Face `generate` baseline of the decode benchmark (issue 12), beside its roofline.

    python3 tools/hf_generate_baseline.py --preset llama-3.1-8b --batch 64 [--prompt-len 128]
        [--new-tokens 256] [--warmup 1] [--runs 3] [--cache best|dynamic|static] [--no-compile]
        [--copy-tbps X --matmul-tflops Y] [--json FILE]
    python3 tools/hf_generate_baseline.py --smoke-cpu      (the whole path on the CPU, figures meaningless)

The baseline: transformers AutoModelForCausalLM.from_config in bf16, attn_implementation="sdpa",
random weights (torch seed 0; tools/hf_baseline.py's presets and model), B prompts of prompt-len ids
drawn by numpy default_rng(1234).integers(3, V) (no pad, no bos: 0, 1, 2 never occur), and
    model.generate(ids, attention_mask=ones, do_sample=False, max_new_tokens=N, min_new_tokens=N,
                   pad_token_id=0, use_cache=True, cache_implementation=dynamic|static)
so every sequence gets exactly N new tokens (min_new_tokens masks eos until then).

Caches. "dynamic" is transformers' DynamicCache (eager). "static" is its StaticCache, and on CUDA
transformers 5.x then compiles the decode forward by itself (torch.compile, mode reduce-overhead:
CUDA graphs; generation/utils.py _valid_auto_compile_criteria, the same in 5.17 and 5.23); the
first generate call compiles, which the warm-up absorbs. --no-compile (disable_compile=True)
measures the static cache eager. "best" (the default) measures dynamic and static in this process
and reports the faster, with both rates in decode_tokens_per_s_by_cache.

Timing (time.perf_counter around synchronised calls, torch.no_grad, median of --runs after --warmup):
    prefill_s   one forward over the prompts into the run's cache type (a StaticCache of
                prompt-len + N positions for static), logits of the last position only, as
                generate's own prefill does (logits_to_keep=1)
    generate_s  the whole generate call (prefill, N - 1 decode forwards, greedy picks)
    decode_tokens_per_s   B·N / (generate_s - prefill_s)
    prefill_tokens_per_s  B·prompt_len / prefill_s
    peak_mem_gib          torch.cuda.max_memory_allocated() over the chosen cache's timed runs

Roofline of one decode step (B sequences, one new token each), ℓ̄ = prompt_len + N/2 the mean
number of keys a decode forward attends (forward k = 1 .. N-1 attends prompt_len + k keys):
    roofline_step_bytes = 2·W + 2·B·C + 4·L·KVH·D·B·ℓ̄
        W: every parameter a step reads, bf16: all matrices of the L layers, their norms and the
           final norm, and the LM head V·C in full. The embedding table is not read in full: a
           step looks up B rows (2·B·C bytes); a tied model's table is the head and so is in W.
           W equals the HF model's parameter count less an untied embedding table (checked).
        KV: K and V (2), bf16 (2 bytes), of L layers × KVH heads × D for B·ℓ̄ cached positions.
        Writes (the new K/V rows, B logits rows) are left out: a few rows against gigabytes.
    roofline_step_flops = B·(2·P + 4·L·H·D·ℓ̄)   P: tools/hf_baseline.py matmul_params (head included)
    roofline_tokens_per_s = B / max(bytes / copy bandwidth, flops / matmul ceiling)
The ceilings are tools/hf_baseline.py's (2 GiB copy, 8192³ bf16 matmul) measured here, or given
by --copy-tbps and --matmul-tflops. At batch 1 the FLOPs term is a few hundredths of a percent of
the bytes term, so the roofline is the issue's bytes / copy bandwidth; at batch 64 it is the max.
"""
import argparse
import datetime
import os
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import hf_baseline as hb  # noqa: E402  (the presets, the model, the ceilings, the device identity)

PROMPT_SEED = 1234
FIRST_ID = 3            # ids 0, 1, 2 are pad / bos / eos in these configs: prompts avoid them
SMOKE = dict(preset="tiny", batch=2, prompt_len=8, new_tokens=16, warmup=1, runs=2)


# ---------------------------------------------------------------------------------------------
# The roofline (the formulas of the docstring)

def read_params(preset):
    """Parameters a decode step reads in full: matrices, norms, the LM head (not the embedding table)."""
    arch, _, C, _, L, _, _, D = hb.PRESETS[preset][:8]
    norms = L * 2 * C + C + (L * 2 * D if arch == "qwen3" else 0)  # qwen3 also norms q and k per head
    return hb.matmul_params(preset) + norms


def mean_decode_keys(prompt_len, new_tokens):
    return prompt_len + new_tokens / 2


def roofline(preset, batch, prompt_len, new_tokens, copy_tbps, matmul_tflops):
    _, _, C, _, L, H, KVH, D = hb.PRESETS[preset][:8]
    keys = mean_decode_keys(prompt_len, new_tokens)
    step_bytes = 2 * read_params(preset) + 2 * batch * C + 4 * L * KVH * D * batch * keys
    step_flops = batch * (2 * hb.matmul_params(preset) + 4 * L * H * D * keys)
    out = {"roofline_step_bytes": int(step_bytes), "roofline_step_flops": step_flops,
           "roofline_bound": None, "roofline_tokens_per_s": None}
    if copy_tbps and matmul_tflops:
        bytes_s, flops_s = step_bytes / (copy_tbps * 1e12), step_flops / (matmul_tflops * 1e12)
        out["roofline_bound"] = "bytes" if bytes_s >= flops_s else "flops"
        out["roofline_tokens_per_s"] = batch / max(bytes_s, flops_s)
    return out


def check_read_params(model, preset):
    """The formula's W against the model itself: a drift in either fails before anything is timed."""
    _, V, C = hb.PRESETS[preset][:3]
    tied = hb.PRESETS[preset][8]
    counted = sum(p.numel() for p in model.parameters()) - (0 if tied else V * C)
    if counted != read_params(preset):
        sys.exit(f"error: tools/hf_generate_baseline.py read_params({preset}) = {read_params(preset)} but the HF "
                 f"model has {counted} parameters besides an untied embedding: update read_params")


# ---------------------------------------------------------------------------------------------
# Timing generate

def prompts(torch, vocab, batch, prompt_len, device):
    ids = np.random.default_rng(PROMPT_SEED).integers(FIRST_ID, vocab, size=(batch, prompt_len))
    ids = torch.from_numpy(ids).to(device)
    return ids, torch.ones_like(ids)


def generate_kwargs(cache, args):
    kw = dict(do_sample=False, max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens,
              pad_token_id=0, use_cache=True, cache_implementation=cache)
    if args.no_compile:
        kw["disable_compile"] = True
    return kw


def prefill_cache(transformers, model, cache, length):
    """The cache generate would build: a StaticCache is sized and zeroed before the prompt enters it."""
    if cache == "static":
        return transformers.StaticCache(config=model.config, max_cache_len=length)
    return transformers.DynamicCache(config=model.config)


def time_call(torch, device, run):
    hb.synchronize(torch, device)
    t0 = time.perf_counter()
    out = run()
    hb.synchronize(torch, device)
    return time.perf_counter() - t0, out


def measure_cache(torch, model, ids, mask, cache, args, device):
    """Median prefill and generate seconds of one cache type, and its peak memory."""
    import transformers
    kw = generate_kwargs(cache, args)
    length = args.prompt_len + args.new_tokens

    def prefill():
        return model(input_ids=ids, attention_mask=mask, use_cache=True, logits_to_keep=1,
                     past_key_values=prefill_cache(transformers, model, cache, length))

    def generate():
        return model.generate(ids, attention_mask=mask, **kw)

    for k in range(args.warmup):
        seconds, _ = time_call(torch, device, generate)
        print(f"hf_generate: {cache} warm-up {k + 1}/{args.warmup}: {seconds:.2f} s", file=sys.stderr)
        time_call(torch, device, prefill)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    prefill_s, generate_s = [], []
    for _ in range(args.runs):
        seconds, _ = time_call(torch, device, prefill)
        prefill_s.append(seconds)
        seconds, out = time_call(torch, device, generate)
        generate_s.append(seconds)
        if tuple(out.shape) != (args.batch, length):
            sys.exit(f"error: generate returned shape {tuple(out.shape)}, expected ({args.batch}, {length}): "
                     "it stopped early, min_new_tokens did not hold")
    return {"prefill_s": statistics.median(prefill_s), "generate_s": statistics.median(generate_s),
            "prefill_runs_s": prefill_s, "generate_runs_s": generate_s,
            "peak_mem_gib": torch.cuda.max_memory_allocated() / 2 ** 30 if device == "cuda" else None}


def rates(m, args):
    decode_s = m["generate_s"] - m["prefill_s"]
    return (args.batch * args.new_tokens / decode_s, args.batch * args.prompt_len / m["prefill_s"])


def compiled(cache, args, device):
    """Whether transformers compiles the decode forward (see the docstring: static on CUDA)."""
    return cache == "static" and device == "cuda" and not args.no_compile


# ---------------------------------------------------------------------------------------------

def run_baseline(args, device):
    import torch
    import transformers
    if device == "cuda" and not torch.cuda.is_available():
        sys.exit("error: the baseline needs a CUDA device (--smoke-cpu runs the path on the CPU)")
    copy_tbps, matmul_tflops = args.copy_tbps, args.matmul_tflops
    if device == "cuda" and not (copy_tbps and matmul_tflops):
        matmul_tflops, copy_tbps = hb.measure_ceilings(torch)
    model = hb.base_model(torch, args.preset, device)
    model.eval()
    check_read_params(model, args.preset)
    ids, mask = prompts(torch, hb.PRESETS[args.preset][1], args.batch, args.prompt_len, device)
    caches = ["dynamic", "static"] if args.cache == "best" else [args.cache]
    measured = {}
    with torch.no_grad():
        for cache in caches:
            measured[cache] = measure_cache(torch, model, ids, mask, cache, args, device)
    best = max(caches, key=lambda c: rates(measured[c], args)[0])
    decode, prefill = rates(measured[best], args)
    m = measured[best]
    head = {"engine": "hf-generate", "preset": args.preset, "mode": "bf16", "batch": args.batch,
            "prompt_len": args.prompt_len, "new_tokens": args.new_tokens, "cache": best,
            "compiled": compiled(best, args, device), "decode_tokens_per_s": decode,
            "prefill_tokens_per_s": prefill, "peak_mem_gib": m["peak_mem_gib"]}
    roof = roofline(args.preset, args.batch, args.prompt_len, args.new_tokens, copy_tbps, matmul_tflops)
    roof["roofline_share"] = decode / roof["roofline_tokens_per_s"] if roof["roofline_tokens_per_s"] else None
    ident = hb.device_json(torch) if device == "cuda" else {"device": "cpu"}
    run = {"commit": hb.git_commit(), "copy_tbps": copy_tbps, "matmul_tflops": matmul_tflops,
           "mean_decode_keys": mean_decode_keys(args.prompt_len, args.new_tokens),
           "warmup": args.warmup, "runs": args.runs, "prefill_s": m["prefill_s"], "generate_s": m["generate_s"],
           "prefill_runs_s": m["prefill_runs_s"], "generate_runs_s": m["generate_runs_s"],
           "decode_tokens_per_s_by_cache": {c: rates(measured[c], args)[0] for c in caches}}
    versions = {"torch": torch.__version__, "transformers": transformers.__version__,
                "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds")}
    return {**head, **roof, **ident, **run, **versions}


def print_row(j):
    def pct(x):
        return f"{100 * x:5.1f}%" if x is not None else "  n/a"
    peak = f"{j['peak_mem_gib']:6.2f} GiB" if j["peak_mem_gib"] is not None else "   n/a"
    roof = f"{j['roofline_tokens_per_s']:.0f}" if j["roofline_tokens_per_s"] is not None else "n/a"
    print(f"{j['preset']:<14} hf-generate bf16 B={j['batch']:<3} {j['cache']}{' compiled' if j['compiled'] else ''} | "
          f"decode {j['decode_tokens_per_s']:9.1f} tok/s ({pct(j['roofline_share'])} of roofline {roof}) | "
          f"prefill {j['prefill_tokens_per_s']:9.0f} tok/s | {peak} | {j['device']}", file=sys.stderr)


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--preset", choices=sorted(hb.PRESETS))
    p.add_argument("--batch", type=int)
    p.add_argument("--prompt-len", type=int, default=128)
    p.add_argument("--new-tokens", type=int, default=256)
    p.add_argument("--warmup", type=int, default=1, help="untimed generate calls per cache (the compile of static)")
    p.add_argument("--runs", type=int, default=3, help="timed calls per cache; the median is reported")
    p.add_argument("--cache", default="best", choices=["best", "dynamic", "static"])
    p.add_argument("--no-compile", action="store_true",
                   help="disable_compile=True: the static cache without transformers' automatic torch.compile")
    p.add_argument("--copy-tbps", type=float, help="copy bandwidth for the roofline (with --matmul-tflops: "
                   "skips measuring the ceilings)")
    p.add_argument("--matmul-tflops", type=float, help="bf16 matmul ceiling for the roofline")
    p.add_argument("--json", default="", help="also write the JSON object to this file")
    p.add_argument("--smoke-cpu", action="store_true",
                   help="preset tiny, batch 2, prompt 8, 16 new tokens on the CPU (the path works; figures meaningless)")
    args = p.parse_args()
    if args.smoke_cpu:
        for key, value in SMOKE.items():
            setattr(args, key, value)
    elif args.preset is None or args.batch is None:
        p.error("--preset and --batch are required (or --smoke-cpu)")
    if min(args.batch, args.prompt_len, args.new_tokens, args.runs) < 1 or args.warmup < 0:
        p.error("--batch, --prompt-len, --new-tokens and --runs must be >= 1, --warmup >= 0")
    if args.new_tokens < 2:
        p.error("--new-tokens must be >= 2: the first new token comes from the prefill, decode starts at the second")
    return args


def main():
    args = parse_args()
    result = run_baseline(args, "cpu" if args.smoke_cpu else "cuda")
    print_row(result)
    hb.emit(result, args.json)


if __name__ == "__main__":
    main()
