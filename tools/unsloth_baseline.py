#!/usr/bin/env python3
"""Unsloth's QLoRA on BENCHMARK.md's sft-alpaca workload (issue 15), beside build/bench.

    python3 tools/unsloth_baseline.py --preset llama-3.1-8b [--steps 5] [--warmup 2] [--json FILE]
    python3 tools/unsloth_baseline.py --preset qwen3-0.6b --check-bench build/bench
    python3 tools/unsloth_baseline.py --preset tiny --device cpu --cpu-oom-tokens 1200 --steps 1 --warmup 1
                                                      (CPU smoke through Unsloth's CPU fallback)

What a user of Unsloth runs, on tools/hf_baseline.py's documents and steps (its Workload, shared, so
--check-bench holds for both): the preset's random-weight model (tools/hf_baseline.py base_model,
torch seed 0) saved with a word-level tokenizer of exactly V tokens to a folder (--model-dir; Unsloth
loads from a path), then FastLanguageModel.from_pretrained(folder, max_seq_length=2048,
load_in_4bit=True, the rest its defaults) and FastLanguageModel.get_peft_model(r=16, lora_alpha=16,
lora_dropout=0 on q,k,v,o,gate,up,down, its default use_gradient_checkpointing="unsloth"). Packing on:
each micro-batch's documents flattened into one row (DataCollatorWithFlattening, as the tuned HF
baseline; Unsloth reads the document boundaries from the restarting position_ids and runs its packed
attention). The micro-batch is the largest that fits (tools/hf_baseline.py search_micro_batch).
torch AdamW lr 2e-4, weight decay 0, grad-norm clip 1.0, the loss over the step's targets.

Figures: the JSON fields of tools/hf_baseline.py (tokens_per_s, mfu with the same FLOPs per token,
peak_mem_gib = torch.cuda.max_memory_allocated over the timed steps, pad_share 0), engine "unsloth",
mode "nf4".

Needs (beside torch with triton, transformers <= 5.17 and peft): unsloth, unsloth_zoo, bitsandbytes,
trl <= 1.15, datasets < 5, tyro, cut_cross_entropy, msgspec and what they import (bash tools/baseline_wheels.sh install
installs them from wheels). The device has no network: HF_HUB_OFFLINE=1 and Unsloth's statistics off.
"""
import os
import shutil
import sys
import tempfile

# Before anything imports huggingface_hub: the model is a local folder and the GPU machine has no network.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("UNSLOTH_DISABLE_STATISTICS", "1")
os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import hf_baseline as hb  # noqa: E402  (numpy only at import: Unsloth still patches transformers first)

UNSLOTH_MAX_SEQ_LENGTH = hb.MAX_LEN  # the longest document; packed rows may exceed it (Unsloth allows it)


def write_tokenizer(folder, vocab):
    """A word-level tokenizer of exactly `vocab` tokens ("t0".."t{V-1}"; bos t0, eos t1, pad t2, unk t3),
    so Unsloth finds a tokenizer with a pad token and resizes no embedding. The ids never pass through it."""
    import tokenizers
    import transformers
    words = {f"t{i}": i for i in range(vocab)}
    core = tokenizers.Tokenizer(tokenizers.models.WordLevel(words, unk_token="t3"))
    core.pre_tokenizer = tokenizers.pre_tokenizers.WhitespaceSplit()
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=core, bos_token="t0", eos_token="t1",
                                                pad_token="t2", unk_token="t3", model_max_length=UNSLOTH_MAX_SEQ_LENGTH)
    fast.save_pretrained(folder)


def write_model(torch, preset, folder, device):
    """The preset's random-weight bf16 model and its tokenizer in `folder`, unless already there."""
    if os.path.exists(os.path.join(folder, "config.json")) and os.path.exists(os.path.join(folder, "tokenizer.json")):
        print(f"unsloth_baseline: reusing {folder}", file=sys.stderr)
        return
    os.makedirs(folder, exist_ok=True)
    model = hb.base_model(torch, preset, device)
    model.config.bos_token_id, model.config.eos_token_id, model.config.pad_token_id = 0, 1, 2
    model.save_pretrained(folder)
    write_tokenizer(folder, hb.PRESETS[preset][1])
    del model
    hb.release(torch, device)
    print(f"unsloth_baseline: wrote {preset} to {folder}", file=sys.stderr)


def load_unsloth(folder, load_in_4bit):
    from unsloth import FastLanguageModel
    model, _ = FastLanguageModel.from_pretrained(model_name=folder, max_seq_length=UNSLOTH_MAX_SEQ_LENGTH,
                                                 load_in_4bit=load_in_4bit)
    model = FastLanguageModel.get_peft_model(model, r=16, lora_alpha=16, lora_dropout=0, bias="none",
                                             target_modules=hb.TARGETS, random_state=0)
    model.train()
    return model


def run_unsloth(args, workload):
    import unsloth  # noqa: F401  (first of the training stack: it patches transformers, peft and trl)
    import torch
    ceilings = hb.start_device(torch, args.device)
    # Without --model-dir the folder lives only until Unsloth has loaded it: an 8B preset is 16 GB of
    # bf16 safetensors, and the GPU machine's disk holds 64 GB.
    folder = args.model_dir or tempfile.mkdtemp(prefix=f"loom-unsloth-{args.preset}-")
    write_model(torch, args.preset, folder, args.device)
    model = load_unsloth(folder, not args.no_4bit)
    if not args.model_dir:
        shutil.rmtree(folder)
    args.attn = "sdpa"  # no flash-attn cu_seq_lens in the batches: Unsloth derives them from position_ids
    size, searched = (args.micro_batch, []) if args.micro_batch else hb.search_micro_batch(torch, args, model, workload)
    print(f"unsloth_baseline: micro-batch {size} documents", file=sys.stderr)
    batches = [hb.packed_micro_batches(torch, workload, docs, size, args.device, False) for docs in workload.steps]
    timing = hb.timed_training(torch, args, model, batches, hb.step_targets(workload))
    extra = {"micro_batch": size, "micro_batch_search": searched, "packing": "DataCollatorWithFlattening (position_ids)",
             "load_in_4bit": not args.no_4bit, "gradient_checkpointing": "unsloth (its default)",
             "unsloth": version_of("unsloth"), "unsloth_zoo": version_of("unsloth_zoo"),
             "bitsandbytes": version_of("bitsandbytes"), "alloc_conf": os.environ.get("PYTORCH_CUDA_ALLOC_CONF", "")}
    result = hb.result_json(args, torch, args.device, {**hb.figures_of(args, workload, batches, timing, ceilings),
                                                        **extra}, engine="unsloth", recompute="unsloth")
    result["mode"] = "nf4" if not args.no_4bit else "bf16"
    return result


def version_of(package):
    import importlib.metadata
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def parse_args():
    p = hb.training_baseline_parser(__doc__, "cpu runs Unsloth's CPU fallback (its figures mean nothing)")
    p.add_argument("--model-dir", default="",
                   help="keep the random-weight model in this folder (reused when there; default: a temporary one)")
    p.add_argument("--micro-batch", type=int, default=0, help="documents per micro-batch (default: searched)")
    p.add_argument("--no-4bit", action="store_true", help="LoRA on bf16 weights instead of QLoRA")
    p.add_argument("--cpu-oom-tokens", type=int, default=0,
                   help="--device cpu: a micro-batch of more tokens counts as out of memory (exercises the search)")
    args = p.parse_args()
    if args.steps < 1 or args.warmup < 0:
        p.error(f"--steps must be >= 1 and --warmup >= 0 (got {args.steps}, {args.warmup})")
    if not 0 <= args.micro_batch <= hb.SEQUENCES_PER_STEP:
        p.error(f"--micro-batch must be 1..{hb.SEQUENCES_PER_STEP} documents (got {args.micro_batch})")
    return args


def main():
    args = parse_args()
    vocab = hb.PRESETS[args.preset][1]
    workload = hb.Workload(vocab, args.warmup + args.steps)
    if args.check_bench:
        hb.check_against_bench(args.check_bench, args, workload, vocab)
        return
    result = run_unsloth(args, workload)
    hb.print_row(result)
    hb.emit(result, args.json)


if __name__ == "__main__":
    main()
