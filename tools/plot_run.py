#!/usr/bin/env python3
"""Plots a loom run: the curves you would otherwise open wandb (or TensorBoard) for.

    python3 tools/plot_run.py RUN_DIR [--out FILE]

Reads RUN_DIR/metrics.jsonl (format at the top of engine/metrics.h) and writes RUN_DIR/curves.png
(or FILE): train and eval loss, learning rate, gradient norm and tokens/s, each against the step.
Works on a finished run and on one still training (it plots the lines written so far); needs
matplotlib only (Debian: python3-matplotlib, installed by tools/setup.sh), no display.
"""
import argparse
import json
import math
import os
import sys


def fail(message):
    print(f"plot_run: error: {message}", file=sys.stderr)
    sys.exit(1)


def record_of(line):
    """The JSON object of a metrics.jsonl record (an integer "step" >= 1), else None, as
    truncate_metrics_after in engine/metrics.cpp defines records."""
    try:
        j = json.loads(line)
    except (ValueError, RecursionError):  # torn writes, garbage, nesting past Python's limit
        return None
    if not isinstance(j, dict):
        return None
    step = j.get("step")
    # bool is an int in Python; JSON true is no step.
    if not isinstance(step, int) or isinstance(step, bool) or step < 1:
        return None
    return j


def number(j, key):
    """j[key] as a float; NaN (a gap in the curve) where it is missing or null (a non-finite value)."""
    v = j.get(key)
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else math.nan


def read_run(run_dir):
    """(step lines, eval lines) of run_dir/metrics.jsonl; an eval line is a record with "eval_loss"."""
    if not os.path.isdir(run_dir):
        fail(f"{run_dir} is not a folder: give the run folder (output.dir of the run's config)")
    path = os.path.join(run_dir, "metrics.jsonl")
    if not os.path.isfile(path):
        fail(f"{path} not found: {run_dir} is not a loom run folder, or its run has not finished a step yet")
    steps, evals = [], []
    with open(path, "rb") as f:
        for raw in f:
            j = record_of(raw.decode("utf-8", errors="replace"))
            if j is not None:
                (evals if "eval_loss" in j else steps).append(j)
    if not steps:
        fail(f"{path} holds no step lines (JSON objects with an integer \"step\"): nothing to plot")
    return steps, evals


def load_pyplot():
    try:
        import matplotlib
    except ImportError:
        fail("matplotlib is not installed: sudo bash tools/setup.sh (Debian: python3-matplotlib), "
             "or pip install matplotlib")
    matplotlib.use("Agg")  # writes files; no display needed
    import matplotlib.pyplot as plt
    return plt


def series(lines, key):
    return [j["step"] for j in lines], [number(j, key) for j in lines]


def plot(steps, evals, out, title):
    plt = load_pyplot()
    fig, axes = plt.subplots(2, 2, figsize=(12, 8), dpi=100, sharex=True)
    loss, lr, grad, speed = axes.flat
    loss.plot(*series(steps, "loss"), label="train", linewidth=1)
    if evals:
        loss.plot(*series(evals, "eval_loss"), "o-", label="eval", markersize=4)
    loss.set_title("loss (mean over target tokens)")
    loss.set_ylabel("loss")
    loss.legend()
    lr.plot(*series(steps, "lr"), color="tab:green")
    lr.set_title("learning rate")
    lr.set_ylabel("lr")
    lr.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
    grad.plot(*series(steps, "grad_norm"), color="tab:red", linewidth=1)
    grad.set_title("gradient norm (before clipping)")
    grad.set_ylabel("L2 norm")
    speed.plot(*series(steps, "tokens_per_s"), color="tab:purple", linewidth=1)
    speed.set_title("throughput")
    speed.set_ylabel("tokens / s")
    for ax in axes.flat:
        ax.set_xlabel("step")
        ax.tick_params(labelbottom=True)  # sharex hides the top row's step labels otherwise
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", help="the run folder (output.dir), holding metrics.jsonl")
    parser.add_argument("--out", help="the PNG to write (default: RUN_DIR/curves.png)")
    args = parser.parse_args()
    steps, evals = read_run(args.run_dir)
    out = args.out or os.path.join(args.run_dir, "curves.png")
    try:
        plot(steps, evals, out, os.path.abspath(args.run_dir))
    except OSError as e:
        fail(f"cannot write {out}: {e.strerror} (check --out)")
    except ValueError as e:  # an extension matplotlib has no writer for
        fail(f"cannot write {out}: {e} (check --out; .png, .svg and .pdf work)")
    numbers = [j["step"] for j in steps]
    print(f"plot_run: wrote {out} ({len(steps)} step lines, {len(evals)} eval lines, "
          f"steps {min(numbers)}..{max(numbers)})")


if __name__ == "__main__":
    main()
