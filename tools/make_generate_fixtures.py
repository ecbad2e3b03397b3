#!/usr/bin/env python3
"""Writes the greedy-generation fixtures tests/fixtures/generate/<arch>.json (llama, mistral, qwen2,
qwen3) from the tiny models and adapters of tests/fixtures/hf/<arch>/ (tools/make_hf_fixtures.py),
and checks them (--check).

What the tests take from them (issue 12's checks):
  CPU path: loom's greedy ids must equal Hugging Face generate(do_sample=False) token for token,
    with and without the PEFT adapter, for all NEW (40) new tokens.
  GPU path: the same ids until the first step where HF's own bf16 top-2 logits are within bf16
    rounding of each other ("tie_step" below), and the per-step logits within the bf16 rule.
  KV cache: "step_logits" are HF's fp32 logits at a few decode steps of one prompt, so a decode
    through loom's KV cache can be compared step by step (--check shows they equal a full forward).

How HF is run (fp32 unless said otherwise, on the CPU):
  attention "eager": plain softmax(q·kᵀ·scale + mask)·v, the sum loom's fp32 reference computes and
    the implementation the hf fixtures use (its LoomPrecision patches eager attention); sdpa's fused
    CPU kernel sums in another order (it gave the same fp32 ids in all 24 runs).
  eos disabled (generation_config.eos_token_id = None), not min_new_tokens: min_new_tokens would set
    the eos logit to -inf and so change the argmax wherever eos wins; with eos disabled every step is
    the plain argmax of the raw logits and exactly NEW tokens come out. "first_eos" says where a
    generator that stops at eos would stop (the ids up to there are the same).
  adapter: peft.PeftModel.from_pretrained(base, tests/fixtures/hf/<arch>/adapter), values set to the
    saved fp32 ones (make_hf_fixtures.load_adapter_fp32).
  Prompts: lengths 1, 7, 23, ids drawn with a fixed seed from [3, V) (0..2 avoided: bos 1 and eos 2
    in the llama and mistral fixtures). 23 + 40 = 63 <= max_position_embeddings (64). mistral's
    sliding window is 4, so every prompt + its new tokens passes it, and the 23-token prompt passes
    it within the prefill.

Layout of <arch>.json ("step k" is the k-th new token; its logits are those of the prompt's last
position for k = 0 and of new token k-1 for k > 0; lists per prompt are in the order of "prompts"):
  arch, vocab, eos_token_id (config's; null for qwen2/qwen3), eos_disabled (true), sliding_window
  (config's or null), max_new_tokens (40), attn_implementation ("eager"),
  prompts                [[ids]] x 3
  greedy                 {"base": [[40 ids]] x 3, "adapter": [[40 ids]] x 3}   (fp32, HF generate)
  first_eos              {"base": [k or null] x 3, "adapter": ...}: first step that produced eos
  fp32_top2_gap          {"base": [[40 gaps]] x 3, "adapter": ...}: fp32 top1 - top2 logit per step
                         (how close a CPU flip would be)
  batched_left_padding   {"base": bool, "adapter": bool}: generating the 3 prompts as one left-padded
                         batch gave the same ids as one by one (only the one-by-one ids are stored)
  bf16                   {"rule": text, "base": [run] x 3, "adapter": [run] x 3}; run =
      {"tie_step": first step k whose bf16 gap <= max(2·ulp_bf16(|top1|), logit_err.hf_bf16[k]),
                   or null: the first step where HF's own bf16 top-2 logits are within bf16
                   rounding of each other, that rounding being the larger of the logit's own
                   (2 ulps) and the error bf16 measurably brings to the logits at that step,
       "tie_step_ulp_only": the same with the 2-ulp term alone (kept to show it is too weak),
       "ids": HF bf16 ids before tie_step (all 40 when null),
       "top2": [[top1, top2]] x 40, "gap": [top1 - top2] x 40  (HF bf16 logits, all steps),
       "agrees_with_fp32_before_tie": bool, "first_divergence": first step whose bf16 id differs
       from the fp32 id, or null,
       "logit_err": per step, max over the vocabulary of |logit - fp32 logit| on the same prefix:
         "hf_bf16": [40]  HF bf16 generate's logits (KV cache) on its own ids vs an fp32 forward;
         "loom_precision": [40]  HF in loom's GPU precision (make_hf_fixtures.LoomPrecision: fp32
           logits, worst of its fp32 and fp64 accumulations) vs fp32, on the fp32 greedy ids
           (teacher-forced full forwards): the yardstick of "per-step logits within the bf16 rule"}
      The bf16 model is loaded with dtype bfloat16 (the same weights: they are bf16 values), the
      adapter rounded to bf16 too (autocast_adapter_dtype=False, so peft does not run it in fp32).
      ulp_bf16(x) = 2^(floor(log2 x) - 7): bf16 has 8 significand bits, so the spacing of bf16
      values in [2^e, 2^(e+1)) is 2^(e-7).
      Why not 2 ulps alone: these random tiny models have flat output distributions (top-2 gaps of
      0.01-0.05 are common) while bf16 moves their logits by 0.02-0.5, far more than 2 ulps of a
      logit near 4 (0.03). With the 2-ulp rule HF bf16 itself left the fp32 ids before its "tie" in
      3 of the 24 runs (qwen2 at step 0 with a 30-step "safe" run), and HF in loom's GPU precision
      (the stand-in for loom's GPU) left HF bf16's ids before it in 1 (llama adapter prompt 0, step 9:
      gap 3 ulps); with tie_step as defined, 0 of 24.
  step_logits            {"prompt": 2, "adapter": true, "steps": [4 steps], "logits": [[V floats]] x 4}
                         (fp32, as HF generate's KV-cache decode produced them)
  versions               torch, transformers, peft

Runs on a CPU in about 10 seconds (--check: 7); torch 2.15.0, transformers 5.23.0, peft 0.21.2 wrote the fixtures
(pip install torch==2.15.0 transformers==5.23.0 peft==0.21.2):
  python3 tools/make_generate_fixtures.py            write every fixture
  python3 tools/make_generate_fixtures.py --check    check them, write nothing (exit 1 on a mismatch):
    greedy ids recomputed without HF's generate or its KV cache (argmax of a full forward per step),
    step_logits against a full forward, tie_step and bf16 ids against the stored top-2, prompt ids
    in range, and one prompt's bf16 run regenerated.
"""
import argparse
import json
import math
import os
import sys

import torch
import transformers
import peft

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import make_hf_fixtures as hf  # noqa: E402  (the fixtures' loading and loom's GPU precision)

OUT = os.path.join(hf.REPO, "tests", "fixtures", "generate")
ARCHS = list(hf.ARCHS)
NEW = 40
PROMPT_LENGTHS = (1, 7, 23)
FIRST_ID = 3            # prompt ids from [FIRST_ID, V): 0..2 hold bos and eos in two fixtures
PAD = 0                 # pad id of the left-padded batch: masked out, so its value does not matter
STEP_LOGITS = dict(prompt=2, adapter=True, steps=[0, 1, 20, NEW - 1])
TIE_ULPS = 2
BF16 = torch.bfloat16
# Full forward vs HF's KV-cache decode, both fp32: only the summation order differs (~1e-6);
# 1e-4 is tests/parity_test.cpp's fp32 bar.
KV_TOL = 1e-4


def fixture_dir(arch):
    return os.path.join(hf.OUT, arch)


def load(arch, adapter, dtype):
    """HF's model of the fixture (eager attention, eos disabled), with the PEFT adapter if asked.
    bf16: the adapter is rounded to bf16 too and kept there (autocast_adapter_dtype=False)."""
    d = fixture_dir(arch)
    model = transformers.AutoModelForCausalLM.from_pretrained(os.path.join(d, "model"), dtype=dtype,
                                                              attn_implementation="eager")
    model.generation_config.eos_token_id = None
    model.generation_config.pad_token_id = PAD
    if adapter:
        model = peft.PeftModel.from_pretrained(model, os.path.join(d, "adapter"),
                                               autocast_adapter_dtype=False)
        hf.load_adapter_fp32(model, d)
        for _, p in hf.lora_params(model):
            p.data = p.data.to(dtype)
    return model.eval()


def generate(model, prompt):
    """HF greedy: NEW new ids and the raw logits of each step (NEW, V), fp32 copies."""
    ids = torch.tensor([prompt])
    out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False,
                         num_beams=1, max_new_tokens=NEW, return_dict_in_generate=True,
                         output_logits=True)
    new = out.sequences[0, len(prompt):].tolist()
    assert len(new) == NEW, f"generate gave {len(new)} new tokens, not {NEW}"
    return new, torch.stack(out.logits)[:, 0].float()


def generate_left_padded(model, prompts):
    """The prompts as one left-padded batch; the NEW new ids of each."""
    width = max(len(p) for p in prompts)
    ids = torch.tensor([[PAD] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    out = model.generate(input_ids=ids, attention_mask=mask, do_sample=False, num_beams=1,
                         max_new_tokens=NEW)
    return out[:, width:].tolist()


def full_logits(model, prompt, new):
    """fp32 logits of the steps of `new` from one forward over prompt + new (no KV cache)."""
    seq = torch.tensor([prompt + new])
    return model(input_ids=seq).logits[0, len(prompt) - 1: len(prompt) - 1 + len(new)].float()


def top2(logits):
    v = torch.topk(logits, 2, dim=-1).values
    return v[:, 0].tolist(), v[:, 1].tolist()


def ulp_bf16(x):
    return 2.0 ** (math.floor(math.log2(max(abs(x), 2.0 ** -126))) - 7)


def tie_step(top1, second, err=None):
    """First step whose top two bf16 logits are within bf16 rounding of each other, or None: the
    gap is at most TIE_ULPS bf16 steps of the top logit or, given err, at most that step's measured
    error of the bf16 logits."""
    for k, (a, b) in enumerate(zip(top1, second)):
        if a - b <= max(TIE_ULPS * ulp_bf16(a), 0.0 if err is None else err[k]):
            return k
    return None


def loom_precision_logits(arch, adapter, prompt, new):
    """The step logits of HF in loom's GPU precision over prompt + new, one (len(new), V) tensor per
    accumulation of make_hf_fixtures.ACCUMULATIONS (the caller takes the worst). Without the adapter
    its B is zeroed: the LoRA term then adds exactly 0 before the projection's one rounding of an
    already-bf16 value, so this is exactly the base model in loom's precision."""
    d = fixture_dir(arch)
    out = []
    with hf.LoomPrecision():
        model = hf.load_for_baseline(os.path.join(d, "model"), d, True)
        if not adapter:
            for n, p in hf.lora_params(model):
                if "lora_B" in n:
                    p.data.zero_()
        for hf.accumulate_in in hf.ACCUMULATIONS:  # the module global its mm() sums in
            out.append(full_logits(model, prompt, new))
    hf.accumulate_in = torch.float32
    return out


def first_diff(a, b):
    return next((k for k, (x, y) in enumerate(zip(a, b)) if x != y), None)


def bf16_run(arch, adapter, model16, model32, prompt, ids32):
    ids16, logits16 = generate(model16, prompt)
    t1, t2 = top2(logits16)
    hf_err = (logits16 - full_logits(model32, prompt, ids16)).abs().amax(-1).tolist()
    tie = tie_step(t1, t2, hf_err)
    divergence = first_diff(ids16, ids32)
    ref = full_logits(model32, prompt, ids32)
    loom_err = torch.stack([(x - ref).abs().amax(-1)
                            for x in loom_precision_logits(arch, adapter, prompt, ids32)]).amax(0)
    return {"tie_step": tie, "tie_step_ulp_only": tie_step(t1, t2), "ids": ids16[:NEW if tie is None else tie],
            "top2": [[a, b] for a, b in zip(t1, t2)], "gap": [a - b for a, b in zip(t1, t2)],
            "agrees_with_fp32_before_tie": divergence is None or (tie is not None and divergence >= tie),
            "first_divergence": divergence,
            "logit_err": {"hf_bf16": hf_err, "loom_precision": loom_err.tolist()}}


def make_prompts(vocab, seed):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randint(FIRST_ID, vocab, (n,), generator=gen).tolist() for n in PROMPT_LENGTHS]


def run_arch(arch, seed):
    cfg = transformers.AutoConfig.from_pretrained(os.path.join(fixture_dir(arch), "model"))
    vocab, eos = cfg.vocab_size, cfg.eos_token_id
    prompts = make_prompts(vocab, seed)
    fx = {"arch": arch, "vocab": vocab, "eos_token_id": eos, "eos_disabled": True,
          "sliding_window": getattr(cfg, "sliding_window", None), "max_new_tokens": NEW,
          "attn_implementation": "eager", "prompts": prompts, "greedy": {}, "first_eos": {},
          "fp32_top2_gap": {}, "batched_left_padding": {},
          "bf16": {"rule": f"tie_step: first step with top1 - top2 <= max({TIE_ULPS} * 2^(floor(log2|top1|) - 7), "
                           "logit_err.hf_bf16) on HF's bf16 logits; tie_step_ulp_only: without logit_err"}}
    for variant, adapter in (("base", False), ("adapter", True)):
        model32, model16 = load(arch, adapter, torch.float32), load(arch, adapter, BF16)
        runs = [generate(model32, p) for p in prompts]
        fx["greedy"][variant] = [ids for ids, _ in runs]
        fx["first_eos"][variant] = [ids.index(eos) if eos in ids else None for ids, _ in runs]
        fx["fp32_top2_gap"][variant] = [[a - b for a, b in zip(*top2(lg))] for _, lg in runs]
        fx["batched_left_padding"][variant] = generate_left_padded(model32, prompts) == fx["greedy"][variant]
        fx["bf16"][variant] = [bf16_run(arch, adapter, model16, model32, p, ids)
                               for p, (ids, _) in zip(prompts, runs)]
        if adapter == STEP_LOGITS["adapter"]:
            logits = runs[STEP_LOGITS["prompt"]][1]
            fx["step_logits"] = dict(STEP_LOGITS, logits=[logits[k].tolist() for k in STEP_LOGITS["steps"]])
    fx["versions"] = {"torch": torch.__version__, "transformers": transformers.__version__,
                      "peft": peft.__version__}
    return fx


def dumps(obj, indent=0):
    """JSON with one line per list of numbers (the fixtures stay readable and diffable)."""
    pad = " " * (indent + 1)
    if isinstance(obj, dict):
        items = [f"{pad}{json.dumps(k)}: {dumps(v, indent + 1)}" for k, v in obj.items()]
        return "{\n" + ",\n".join(items) + "\n" + " " * indent + "}"
    if isinstance(obj, list) and any(isinstance(x, (dict, list)) for x in obj):
        return "[\n" + ",\n".join(pad + dumps(x, indent + 1) for x in obj) + "\n" + " " * indent + "]"
    return json.dumps(obj)


def summary(fx):
    lines = []
    for v in ("base", "adapter"):
        b = fx["bf16"][v]
        lines.append(f"  {v}: eos at {fx['first_eos'][v]}, batched==single {fx['batched_left_padding'][v]}, "
                     f"min fp32 gap {min(min(g) for g in fx['fp32_top2_gap'][v]):.2e}, "
                     f"bf16 tie {[r['tie_step'] for r in b]}, bf16 diverges {[r['first_divergence'] for r in b]}, "
                     f"agree before tie {[r['agrees_with_fp32_before_tie'] for r in b]}, "
                     f"max logit err hf_bf16 {max(max(r['logit_err']['hf_bf16']) for r in b):.3g} "
                     f"loom {max(max(r['logit_err']['loom_precision']) for r in b):.3g}")
    return "\n".join(lines)


# --- --check -------------------------------------------------------------------------------------
def greedy_without_cache(model, prompt):
    """Greedy by a full forward per step: no generate, no KV cache (an independent path)."""
    seq = list(prompt)
    with torch.no_grad():
        for _ in range(NEW):
            seq.append(int(model(input_ids=torch.tensor([seq])).logits[0, -1].argmax()))
    return seq[len(prompt):]


def check_arch(arch, fx):
    problems = []
    vocab = fx["vocab"]
    if [len(p) for p in fx["prompts"]] != list(PROMPT_LENGTHS) or \
            any(not FIRST_ID <= i < vocab for p in fx["prompts"] for i in p):
        problems.append("prompt lengths or ids out of range")
    for variant, adapter in (("base", False), ("adapter", True)):
        model = load(arch, adapter, torch.float32)
        for k, (p, want) in enumerate(zip(fx["prompts"], fx["greedy"][variant])):
            got = greedy_without_cache(model, p)
            if got != want:
                problems.append(f"{variant} prompt {k}: full-forward greedy differs at step {first_diff(got, want)}")
        for k, run in enumerate(fx["bf16"][variant]):
            t1, t2 = zip(*run["top2"])
            tie = tie_step(t1, t2, run["logit_err"]["hf_bf16"])
            count = NEW if tie is None else tie
            if tie != run["tie_step"] or tie_step(t1, t2) != run["tie_step_ulp_only"] or len(run["ids"]) != count:
                problems.append(f"{variant} prompt {k}: tie_step or bf16 id count disagrees with top2")
            if run["agrees_with_fp32_before_tie"] != (run["ids"] == fx["greedy"][variant][k][:len(run["ids"])]):
                problems.append(f"{variant} prompt {k}: agrees_with_fp32_before_tie is wrong")
        if adapter == fx["step_logits"]["adapter"]:
            s = fx["step_logits"]
            p = fx["prompts"][s["prompt"]]
            with torch.no_grad():
                ref = full_logits(model, p, fx["greedy"][variant][s["prompt"]])
            err = max((torch.tensor(row) - ref[k]).abs().max().item() for k, row in zip(s["steps"], s["logits"]))
            print(f"  {arch}: step_logits (KV-cache decode) vs full forward: max abs {err:.2e}")
            if err > KV_TOL:
                problems.append(f"step_logits differ from a full forward by {err:.2e} > {KV_TOL}")
    # Reproducibility of the bf16 run (its tie step and ids) on this machine: one prompt.
    with torch.no_grad():
        ids16, logits16 = generate(load(arch, True, BF16), fx["prompts"][1])
    run = fx["bf16"]["adapter"][1]
    if tie_step(*top2(logits16)) != run["tie_step_ulp_only"] or ids16[:len(run["ids"])] != run["ids"]:
        problems.append("adapter prompt 1: the bf16 run did not reproduce")
    return problems


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="check the fixtures, write nothing")
    parser.add_argument("--dir", default=OUT, help="where the fixtures are (default %(default)s)")
    args = parser.parse_args()
    failed = False
    for k, arch in enumerate(ARCHS):
        path = os.path.join(args.dir, f"{arch}.json")
        if args.check:
            with open(path) as f:
                problems = check_arch(arch, json.load(f))
            print(f"{arch}: " + ("ok" if not problems else "FAILED\n    " + "\n    ".join(problems)))
            failed |= bool(problems)
            continue
        with torch.no_grad():
            fx = run_arch(arch, seed=200 + k)
        os.makedirs(args.dir, exist_ok=True)
        with open(path, "w") as f:
            f.write(dumps(fx) + "\n")
        print(f"{arch}: {os.path.getsize(path)} bytes\n{summary(fx)}")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
