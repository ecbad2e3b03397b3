#!/usr/bin/env python3
"""The TRL baseline of BENCHMARK.md's DPO workload, measured beside build/bench --dpo.

    python3 tools/trl_dpo_baseline.py --preset llama-3.1-8b [--steps 5] [--warmup 2] [--json FILE]
    python3 tools/trl_dpo_baseline.py --preset llama-3.1-8b --print-data            (CPU only)
    python3 tools/trl_dpo_baseline.py --preset llama-3.1-8b --check-bench build/bench   (CPU only)
    python3 tools/trl_dpo_baseline.py --smoke-cpu      (the whole TRL run, 2 steps, preset tiny, CPU)

The baseline: trl.DPOTrainer with its defaults but for what the workload fixes. The model is
tools/hf_baseline.py's (from_config, bf16, sdpa, random weights, torch seed 0); DPOTrainer wraps it
with peft LoRA r=16 alpha=16 dropout 0 on q,k,v,o,gate,up,down (peft_config), so the reference is
the adapter-disabled model, as in the engine. DPOConfig: sigmoid loss, beta 0.1, lr 2e-4 constant,
no warm-up, weight decay 0, grad-norm clip 1.0, bf16, gradient checkpointing (non-reentrant), no
truncation (max_length None), reference log-probs computed every step (not precomputed), TRL's
padding (right, to the longest of the micro-batch's 4 sequences), 2 pairs per micro-batch and 8
accumulation steps: 16 pairs, 32 sequences per optimizer step, like the SFT workload's 32.

The data are build/bench --dpo's (data/synthetic.h synthetic_pairs, data/dataloader.h):
    documents  tools/hf_baseline.py's 4096 (lengths seed 1234, ids seed 7 below the preset's V)
    pair k     documents 2k (length a) and 2k+1 (length b), k < 2048; p = min(a, b) // 2:
               prompt = ids[:p] of 2k, chosen = ids[p:a] of 2k, rejected = ids[p:b] of 2k+1
    order      the loader's shuffle of the 2048 pairs (hf_baseline.epoch_order, seed 42, epoch 0)
    step k     pairs order[16k, 16k + 16); micro-batch j of a step: its pairs 2j and 2j+1
TRL 1.16 has no route for token ids (DPOTrainer._prepare_dataset always extracts a prompt from
text, appends EOS to the text completions and tokenizes), so a subclass hands it the rows as the
collator takes them ({prompt_ids, chosen_ids, rejected_ids}): nothing is added, no EOS, no BOS.
The order is DPOConfig(train_sampling_strategy="sequential") over rows already in loader order;
a wrapper around TRL's own collator checks every micro-batch it pads (the pairs, the order, the
padding rule, no token added or cut) and counts the padding.

Figures (one JSON object on stdout):
    pairs_per_s   pairs of the timed steps / their wall seconds, from the first timed step's start
                  to the last one's end (on_step_begin / on_step_end, device synchronised)
    tokens_per_s  the same seconds over the pairs' real tokens, Σ (a + b)
    peak_mem_gib  torch.cuda.max_memory_allocated() over the timed steps
    pad_share     pad tokens / all tokens of the batches TRL's collator produced for the timed steps
    mfu           tokens_per_s · flops_per_token / the matmul ceiling measured here, where
                  flops_per_token = hf_baseline's 4·P + 12·L·H·D·ℓ̄ (policy forward and backward)
                  + 2·P + 4·L·H·D·ℓ̄ (the reference forward), ℓ̄ over every sequence of the timed steps
"""
import argparse
import contextlib
import datetime
import json
import os
import subprocess
import sys
import tempfile
import time

import hf_baseline as hb

PAIRS = hb.DOCUMENTS // 2
PAIRS_PER_STEP = 16             # 32 sequences, the SFT workload's step
MICRO_PAIRS = 2                 # 4 sequences per micro-batch, as the SFT baseline's
ACCUMULATION = PAIRS_PER_STEP // MICRO_PAIRS
BETA = 0.1
FIRST_PAIRS_PRINTED = 8
SMOKE_PRESET = "tiny"           # hf_baseline's (and models/model_config.cpp's) V 512, C 128, 4 layers


# ---------------------------------------------------------------------------------------------
# The data: data/synthetic.cpp synthetic_pairs and the loader's order of them

class Pairs:
    """The 2048 pairs and the pairs of every step, as build/bench --dpo's loader hands them out."""

    def __init__(self, vocab, n_steps):
        lengths, ids = hb.synthetic_documents(vocab)
        self.lengths = [(lengths[2 * k], lengths[2 * k + 1]) for k in range(PAIRS)]
        self.rows = []  # per pair: prompt, chosen, rejected ids (lists of int: what TRL's collator takes)
        for k, (a, b) in enumerate(self.lengths):
            p = min(a, b) // 2
            first, second = ids[2 * k].tolist(), ids[2 * k + 1].tolist()
            self.rows.append((first[:p], first[p:], second[p:]))
        if n_steps * PAIRS_PER_STEP > PAIRS:
            sys.exit(f"error: {n_steps} steps need {n_steps * PAIRS_PER_STEP} pairs, one epoch holds {PAIRS}: "
                     "lower --steps or --warmup")
        order = hb.epoch_order(PAIRS)
        self.steps = [order[k * PAIRS_PER_STEP:(k + 1) * PAIRS_PER_STEP] for k in range(n_steps)]

    def tokens(self, pairs):
        return sum(a + b for a, b in (self.lengths[k] for k in pairs))

    def sequence_lengths(self, pairs):
        return [n for k in pairs for n in self.lengths[k]]

    def step_json(self, pairs):
        # The prompt is in both sequences, so its ids count twice.
        id_sum = sum(2 * sum(self.rows[k][0]) + sum(self.rows[k][1]) + sum(self.rows[k][2]) for k in pairs)
        return {"pairs": len(pairs), "tokens": self.tokens(pairs),
                "lengths": sorted(self.sequence_lengths(pairs), reverse=True), "id_sum": id_sum}

    def data_json(self, preset, vocab):
        first = [n for k in range(FIRST_PAIRS_PRINTED) for n in self.lengths[k]]
        return {"preset": preset, "vocab": vocab, "pairs": PAIRS, "first_lengths": first,
                "steps": [self.step_json(s) for s in self.steps]}


def check_against_bench(bench, args, pairs, vocab):
    cmd = [bench, "--preset", args.preset, "--dpo", "--steps", str(args.steps), "--warmup", str(args.warmup),
           "--print-data"]
    theirs = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)
    ours = pairs.data_json(args.preset, vocab)
    for key in ("vocab", "pairs", "first_lengths"):
        if theirs.get(key) != ours[key]:
            sys.exit(f"error: {key} differs: {' '.join(cmd)} gives {theirs.get(key)}, "
                     f"tools/trl_dpo_baseline.py {ours[key]}")
    if len(theirs["steps"]) != len(ours["steps"]):
        sys.exit(f"error: {' '.join(cmd)} prints {len(theirs['steps'])} steps, tools/trl_dpo_baseline.py "
                 f"{len(ours['steps'])}")
    for k, (a, b) in enumerate(zip(theirs["steps"], ours["steps"])):
        if a != b:
            sys.exit(f"error: step {k} differs from {bench}'s (pairs {a.get('pairs')} vs {b['pairs']}, tokens "
                     f"{a.get('tokens')} vs {b['tokens']}, id sum {a.get('id_sum')} vs {b['id_sum']}): "
                     "synthetic_pairs, the dataloader or the generator changed")
    print(f"trl_dpo_baseline: the pairs of {len(ours['steps'])} steps match {bench}", file=sys.stderr)


def dpo_flops_per_token(preset, mean_keys):
    """The policy's forward and backward (hf_baseline's 4·P + 12·L·H·D·ℓ̄) and the reference forward:
    2·P for the weights and 4·L·H·D·ℓ̄ for QKᵀ and PV (engine/flops.h's terms)."""
    _, _, _, _, L, H, _, D = hb.PRESETS[preset][:8]
    return hb.flops_per_token(preset, mean_keys) + 2.0 * hb.matmul_params(preset) + 4.0 * L * H * D * mean_keys


# ---------------------------------------------------------------------------------------------
# TRL

class CheckedCollator:
    """TRL's collator, checked on every call: micro-batch i must be rows 2i and 2i+1 (the loader's
    order), padded by TRL's rule (right, all 4 sequences to the longest: chosen rows, then rejected)
    with every real token kept and none added (no EOS, no truncation). Records each batch's size."""

    def __init__(self, collate, rows):
        self.collate, self.rows, self.padded = collate, rows, []

    def __call__(self, examples):
        i = len(self.padded)
        expected = self.rows[MICRO_PAIRS * i:MICRO_PAIRS * (i + 1)]
        got = [(e["prompt_ids"], e["chosen_ids"], e["rejected_ids"]) for e in examples]
        if got != [tuple(r) for r in expected]:
            first = MICRO_PAIRS * i
            sys.exit(f"error: TRL's micro-batch {i} is not the run's pairs {first}..{first + MICRO_PAIRS - 1} in the "
                     "loader's order: its sampler shuffled or regrouped them")
        batch = self.collate(examples)
        lengths = [len(p) + len(c) for p, c, _ in expected] + [len(p) + len(r) for p, _, r in expected]
        real = batch["attention_mask"].sum(dim=1).tolist()
        if real != lengths or tuple(batch["input_ids"].shape) != (len(lengths), max(lengths)):
            sys.exit(f"error: TRL padded micro-batch {i} to {tuple(batch['input_ids'].shape)} with real lengths "
                     f"{real}; the pairs are {lengths} long: it added or cut tokens, or pads another way")
        self.padded.append(batch["input_ids"].numel())
        return batch


def step_timer(torch, device, warmup, total):
    """A TrainerCallback timing each optimizer step, device synchronised at both ends."""
    from transformers import TrainerCallback

    def synchronize():
        if device == "cuda":
            torch.cuda.synchronize()

    class StepTimer(TrainerCallback):
        def __init__(self):
            self.times, self.losses, self.t_first, self.t_last, self.t_step, self.peak = [], [], None, None, None, None

        def on_step_begin(self, args, state, control, **kwargs):
            synchronize()
            if state.global_step == warmup:
                if device == "cuda":
                    torch.cuda.reset_peak_memory_stats()
                self.t_first = time.perf_counter()
            self.t_step = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            synchronize()
            now = time.perf_counter()
            if state.global_step > warmup:  # global_step counts this step already
                self.times.append(now - self.t_step)
                self.t_last = now
                if device == "cuda":
                    self.peak = torch.cuda.max_memory_allocated() / 2 ** 30

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:
                self.losses.append(float(logs["loss"]))
                phase = "warm-up" if state.global_step <= warmup else "timed"
                print(f"trl_dpo_baseline: {phase} step {state.global_step}/{total}, loss {logs['loss']:.4f}",
                      file=sys.stderr)

    return StepTimer()


def pad_only_tokenizer():
    """DPOTrainer needs a tokenizer whose pad token is in its vocabulary; the ids never pass through
    it. Id 0 pads: padded positions are masked out of attention and of the completion."""
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast
    return PreTrainedTokenizerFast(tokenizer_object=Tokenizer(WordLevel({"<pad>": 0}, unk_token="<pad>")),
                                   pad_token="<pad>")


def run_trl(args, pairs, device):
    # Nothing may reach the network: the GPU machines have none, and TRL pings the Hub on start.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    import datasets
    import torch
    import trl
    from torch.utils.data import SequentialSampler

    class PretokenizedDPOTrainer(trl.DPOTrainer):
        def _prepare_dataset(self, dataset, processing_class, dpo_args, dataset_name):
            # The rows already are what TRL's tokenisation makes (its prompt extraction and EOS need text).
            return dataset

    if device == "cuda" and not torch.cuda.is_available():
        sys.exit("error: the baseline needs a CUDA device (--smoke-cpu runs it on the CPU, figures meaningless)")
    tflops, tbps = hb.measure_ceilings(torch) if device == "cuda" else (None, None)
    n_steps = args.warmup + args.steps
    rows = [pairs.rows[k] for step in pairs.steps for k in step]
    dataset = datasets.Dataset.from_dict({"prompt_ids": [r[0] for r in rows], "chosen_ids": [r[1] for r in rows],
                                          "rejected_ids": [r[2] for r in rows]})
    timer = step_timer(torch, device, args.warmup, n_steps)
    # The Trainer prints its logs to stdout, which holds only the result: they go to stderr. It saves
    # nothing (save_strategy "no"), but wants an output directory.
    with tempfile.TemporaryDirectory(prefix="trl_dpo_baseline.") as out, contextlib.redirect_stdout(sys.stderr):
        config = trl.DPOConfig(
            output_dir=out, max_steps=n_steps, per_device_train_batch_size=MICRO_PAIRS,
            gradient_accumulation_steps=ACCUMULATION, beta=BETA, loss_type=["sigmoid"], learning_rate=2e-4,
            lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0, max_grad_norm=1.0, bf16=True,
            gradient_checkpointing=True, gradient_checkpointing_kwargs={"use_reentrant": False}, max_length=None,
            precompute_ref_log_probs=False, train_sampling_strategy="sequential", dataloader_num_workers=0, seed=0,
            report_to="none", save_strategy="no", eval_strategy="no", logging_steps=1, disable_tqdm=True,
            use_cpu=device == "cpu")
        trainer = PretokenizedDPOTrainer(model=hb.base_model(torch, args.preset, device), ref_model=None,
                                         args=config, train_dataset=dataset, processing_class=pad_only_tokenizer(),
                                         peft_config=hb.lora_config(), callbacks=[timer])
        if not isinstance(trainer._get_train_sampler(), SequentialSampler):
            sys.exit("error: DPOTrainer's sampler is not sequential: train_sampling_strategy was ignored")
        collator = CheckedCollator(trainer.data_collator, rows)
        trainer.data_collator = collator
        trainer.train()
    if len(timer.times) != args.steps or len(collator.padded) != n_steps * ACCUMULATION:
        sys.exit(f"error: TRL ran {len(timer.times)} timed steps over {len(collator.padded)} micro-batches, "
                 f"expected {args.steps} over {n_steps * ACCUMULATION}")

    timed = [k for step in pairs.steps[args.warmup:] for k in step]
    seconds = timer.t_last - timer.t_first
    real = pairs.tokens(timed)
    padded = sum(collator.padded[args.warmup * ACCUMULATION:])
    keys = hb.mean_attended_keys(pairs.sequence_lengths(timed))
    fpt = dpo_flops_per_token(args.preset, keys)
    tokens_per_s = real / seconds
    return result_json(args, torch, device, config, dict(
        pairs_per_s=len(timed) / seconds, tokens_per_s=tokens_per_s,
        mfu=tokens_per_s * fpt / (tflops * 1e12) if tflops else None, peak_mem_gib=timer.peak,
        pad_share=1.0 - real / padded, matmul_tflops=tflops, copy_tbps=tbps,
        micro_batches=args.steps * ACCUMULATION, pairs=len(timed), tokens=real, padded_tokens=padded,
        seconds=seconds, step_times_s=timer.times, flops_per_token=fpt, mean_attended_keys=keys,
        loss_last=timer.losses[-1] if timer.losses else None))


def result_json(args, torch, device, config, figures):
    import peft
    import transformers
    import trl
    head = {"engine": "trl-dpo", "preset": args.preset, "mode": "bf16", "gpus": 1}
    for key in ("pairs_per_s", "tokens_per_s", "mfu", "peak_mem_gib", "pad_share"):
        head[key] = figures.pop(key)
    ident = hb.device_json(torch) if device == "cuda" else {"device": "cpu"}
    run = {"commit": hb.git_commit(), "matmul_tflops": figures.pop("matmul_tflops"),
           "copy_tbps": figures.pop("copy_tbps"), "recompute": "full", "pairs_per_step": PAIRS_PER_STEP,
           "sequences_per_step": 2 * PAIRS_PER_STEP, "micro_batch_pairs": MICRO_PAIRS, "beta": BETA,
           "optim": getattr(config.optim, "value", config.optim), "warmup_steps": args.warmup,
           "timed_steps": args.steps}
    versions = {"trl": trl.__version__, "transformers": transformers.__version__, "peft": peft.__version__,
                "torch": torch.__version__, "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds")}
    return {**head, **ident, **run, **figures, **versions}


def print_row(j):
    mfu = f"{100 * j['mfu']:5.1f}%" if j["mfu"] is not None else "  n/a"
    peak = f"{j['peak_mem_gib']:6.2f} GiB" if j["peak_mem_gib"] is not None else "   n/a"
    print(f"{j['preset']:<14} trl-dpo bf16 | {j['pairs_per_s']:7.2f} pairs/s | {j['tokens_per_s']:9.0f} tok/s | "
          f"MFU {mfu} | {peak} | pad {100 * j['pad_share']:.1f}% | {j['device']}", file=sys.stderr)


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--preset", choices=sorted(hb.PRESETS))
    p.add_argument("--steps", type=int, default=5, help="timed steps (after the warm-up)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--json", default="", help="also write the JSON object to this file")
    p.add_argument("--print-data", action="store_true", help="print each step's pairs, as build/bench --dpo does")
    p.add_argument("--check-bench", metavar="BENCH", help="compare the pairs with BENCH --dpo --print-data")
    p.add_argument("--smoke-cpu", action="store_true",
                   help=f"the whole TRL run on the CPU: preset {SMOKE_PRESET}, 1 warm-up and 1 timed step")
    args = p.parse_args()
    if args.smoke_cpu:
        args.preset = args.preset or SMOKE_PRESET
        args.warmup, args.steps = 1, 1
    if not args.preset:
        p.error("--preset is required (but for --smoke-cpu)")
    if args.steps < 1 or args.warmup < 0:
        p.error(f"--steps must be >= 1 and --warmup >= 0 (got {args.steps}, {args.warmup})")
    return args


def main():
    args = parse_args()
    vocab = hb.PRESETS[args.preset][1]
    pairs = Pairs(vocab, args.warmup + args.steps)
    if args.print_data:
        hb.emit(pairs.data_json(args.preset, vocab), args.json)
    elif args.check_bench:
        check_against_bench(args.check_bench, args, pairs, vocab)
    else:
        result = run_trl(args, pairs, "cpu" if args.smoke_cpu else "cuda")
        print_row(result)
        hb.emit(result, args.json)


if __name__ == "__main__":
    main()
