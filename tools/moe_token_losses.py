#!/usr/bin/env python3
"""Every token's loss on a mixture-of-experts fixture (tests/fixtures/moe/<arch>), in HF fp32 and in
HF computing in loom's GPU arithmetic (the emulation of tools/make_moe_fixtures.py's yardstick), in
the order GpuMoeScore (tests/gpu_moe_step_test.cpp) prints the GPU's: micro-batch after micro-batch,
each packed document's tokens in turn, the loss at a token predicting the next (0 where the next is
no target, and at a document's last token).

  python3 tools/moe_token_losses.py mixtral nf4 [GPU_LOG] [--root DIR]

With GPU_LOG, a log holding GpuMoeScore's "[mixtral/nf4] GPU token losses: ..." line, the GPU's losses
are printed beside them with GPU - emulation. The emulation stands for the GPU's arithmetic up to the
order of its fp32 sums, which moves these losses by at most 5e-7 (2026-12-07, make_hf_fixtures.mm's
order_gen), so a larger difference at a token is arithmetic the emulation does not model; how far that
moves a token's loss is the token's conditioning (make_moe_fixtures.py's rounding_spread). nf4 needs
build/nf4_roundtrip (make build/nf4_roundtrip). torch 2.15.0, transformers 5.23.0, peft 0.21.2.
"""
import argparse
import json
import os
import re
import sys
import tempfile
import warnings

import torch
import transformers

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import make_hf_fixtures as hf  # noqa: E402
import make_moe_fixtures as moe  # noqa: E402


def packed_losses(model, docs):
    """moe.token_losses (each document's n - 1 predictions) with a 0 for each document's last token."""
    per_doc = moe.token_losses(model, docs).tolist()
    out, at = [], 0
    for mb in moe.MICRO_BATCHES:
        for i in mb:
            n = len(docs[i]["ids"])
            out += per_doc[at:at + n - 1] + [0.0]
            at += n - 1
    return out


def gpu_losses(log, label):
    try:
        with open(log) as f:
            for line in f:
                m = re.match(rf"\[{re.escape(label)}\] GPU token losses:(.*)", line)
                if m:
                    return [float(x) for x in m.group(1).split()]
    except OSError as e:
        raise SystemExit(f"{log}: {e.strerror}")
    raise SystemExit(f"{log} has no '[{label}] GPU token losses:' line")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("arch", choices=sorted(moe.ARCHS))
    parser.add_argument("quant", choices=["bf16", "nf4"])
    parser.add_argument("gpu_log", nargs="?")
    parser.add_argument("--root", default=moe.OUT,
                        help="the fixtures' folder (default tests/fixtures/moe; a bisect variant's: "
                             "build/moe_variants/NAME)")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    transformers.logging.set_verbosity_error()
    d = os.path.join(args.root, args.arch)
    with open(os.path.join(d, "batch.json")) as f:
        docs = json.load(f)["documents"]
    with open(os.path.join(d, "model", "config.json")) as f:
        moe.TOP_K = json.load(f)["num_experts_per_tok"]  # the emulated MoE block's top-k (a variant may change it)
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = os.path.join(d, "model") if args.quant == "bf16" else hf.nf4_model(d, tmp)
        fp32 = packed_losses(moe.load_in(False, model_dir, d), docs)
        with torch.no_grad(), moe.MoeLoomPrecision():
            emulated = packed_losses(moe.load_in(True, model_dir, d), docs)
    gpu = gpu_losses(args.gpu_log, f"{args.arch}/{args.quant}") if args.gpu_log else None
    if gpu is not None and len(gpu) != len(fp32):
        raise SystemExit(f"{len(gpu)} GPU losses for {len(fp32)} tokens")
    print("micro-batch token      fp32  emulated" + ("       GPU  GPU-emulated" if gpu else ""))
    k = 0
    for b, mb in enumerate(moe.MICRO_BATCHES):
        for t in range(sum(len(docs[i]["ids"]) for i in mb)):
            row = f"{b:11d} {t:5d} {fp32[k]:9.5f} {emulated[k]:9.5f}"
            if gpu:
                row += f" {gpu[k]:9.5f} {gpu[k] - emulated[k]:+13.5f}"
            print(row)
            k += 1


if __name__ == "__main__":
    main()
