#!/usr/bin/env bash
# make benchmark: BENCHMARK.md's sft-alpaca workload on GPU 0, engine beside the Hugging Face baseline.
#   make benchmark                                   (make builds build/bench first; this script builds nothing)
#   BENCH_PRESETS="qwen3-0.6b llama-3.1-8b" make benchmark
# For each preset: build/bench in nf4 and bf16 at the engine's default settings, plus nf4 with
# --recompute full for the 7-8B presets; then, when python3 imports torch, transformers and peft,
# tools/hf_baseline.py on the same documents (checked against build/bench --print-data first), then
# the stronger anchors of issue 15 on the same documents: tools/hf_baseline.py --tuned (no checkpointing,
# packed micro-batches of the largest size that fits, Liger when liger_kernel imports; retried without
# Liger if it fails with it) and tools/unsloth_baseline.py (Unsloth's QLoRA, packing on), each when its
# imports work (on the GPU machine: bash tools/baseline_wheels.sh install and PYTHONPATH=/tmp/site15 first).
# Then the mixture-of-experts presets (issue 16): build/bench nf4 with --recompute full (the only mode
# the engine trains experts in) beside tools/hf_baseline.py (bf16, LoRA on the attention and every
# expert, checked against build/bench --print-data first; its micro-batch falls back to 2 or 1 sequences
# where 4 do not fit, see its docstring's "Memory"); MFU on active parameters in both.
# Then the DPO workload (build/bench --dpo, nf4) beside TRL's DPOTrainer + peft
# (tools/trl_dpo_baseline.py, when python3 also imports trl; checked against --dpo --print-data).
# Then generation (build/decode_bench: prompt 128, 256 new tokens, greedy; nf4 and bf16 at batch 1 and
# 64 with the LoRA unmerged, bf16 at batch 1 without it) beside Hugging Face generate
# (tools/hf_generate_baseline.py, bf16, sdpa, the faster of its dynamic and compiled static caches).
# Prints a table with the ratios engine / baseline (tokens/s or pairs/s, and peak memory) and the
# targets of BENCHMARK.md and the issues, the device, the date and the commit. Every JSON line goes to BENCH_OUT.
# Environment: BENCH_OUT (default build/bench.jsonl, rewritten), BENCH_PRESETS (default issue 15's five:
# "qwen3-0.6b llama-3.2-1b mistral-7b llama-3.1-8b qwen3-8b"; set but empty: none), BENCH_MOE_PRESETS
# (default "qwen3-30b-a3b"; set but empty: none; mixtral-8x7b's bf16 baseline needs an H200),
# BENCH_DPO_PRESETS (default "llama-3.1-8b"; set but empty: none), BENCH_DECODE_PRESETS (default "qwen3-0.6b llama-3.1-8b"; set but empty: none),
# BENCH_LONG_PRESETS (default "llama-3.1-8b") and BENCH_LONG_LENGTHS (default "32768 131072"): one
# document of L tokens per step (build/bench --long L, nf4, recompute full; issue 14),
# BENCH_STEPS (timed steps, default 5), BENCH_BASELINE=0 skips the baselines, BENCH_TUNED=0 the tuned HF
# baseline, BENCH_UNSLOTH=0 the Unsloth one.
# Exit status: 0 when every run gave its figures (targets missed are reported, not failures), 1 otherwise.
set -uo pipefail
cd "$(dirname "$0")/.."

BUILD=${BUILD:-build}
OUT=${BENCH_OUT:-$BUILD/bench.jsonl}
PRESETS=${BENCH_PRESETS-"qwen3-0.6b llama-3.2-1b mistral-7b llama-3.1-8b qwen3-8b"}
MOE_PRESETS=${BENCH_MOE_PRESETS-"qwen3-30b-a3b"}
DPO_PRESETS=${BENCH_DPO_PRESETS-"llama-3.1-8b"}
DECODE_PRESETS=${BENCH_DECODE_PRESETS-"qwen3-0.6b llama-3.1-8b"}
LONG_PRESETS=${BENCH_LONG_PRESETS-"llama-3.1-8b"}
LONG_LENGTHS=${BENCH_LONG_LENGTHS-"32768 131072"}
DECODE_BENCH="$BUILD/decode_bench"
STEPS=${BENCH_STEPS:-5}
WARMUP=2
BENCH="$BUILD/bench"

if ! nvidia-smi -L >/dev/null 2>&1; then
  echo "no CUDA device: benchmark skipped"
  exit 0
fi
for program in "$BENCH" "$DECODE_BENCH"; do
  if [[ ! -x "$program" ]]; then
    echo "error: $program is missing; run 'make benchmark' (it builds the benchmark programs first)" >&2
    exit 1
  fi
done

baseline_available() {
  [[ "${BENCH_BASELINE:-1}" != 0 ]] && python3 -c "import torch, transformers, peft" >/dev/null 2>&1
}

# python3 imports the module (quietly); $1 the modules, as an import statement lists them.
imports() {
  python3 -c "import $1" >/dev/null 2>&1
}

trl_available() {
  [[ "${BENCH_BASELINE:-1}" != 0 ]] && python3 -c "import torch, transformers, peft, trl" >/dev/null 2>&1
}

# Modes of a preset: "quant recompute" pairs; "default" leaves the choice to the engine.
modes_of() {
  case "$1" in
    mistral-7b | llama-3.1-8b | qwen3-8b) echo "nf4:default bf16:default nf4:full" ;;
    *) echo "nf4:default bf16:default" ;;
  esac
}

mkdir -p "$(dirname "$OUT")"
: >"$OUT"
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
failures=0

# run NAME CMD...: runs one measurement, appends its JSON object to $OUT.
run() {
  local name=$1
  shift
  echo "== $name: $*" >&2
  "$@" --json "$scratch/$name.json" >/dev/null
  local status=$?
  if [[ $status -eq 0 && -s "$scratch/$name.json" ]]; then
    cat "$scratch/$name.json" >>"$OUT"
    return 0
  fi
  echo "== $name FAILED (exit $status); its row is missing from the table" >&2
  failures=$((failures + 1))
  return 1
}

# run_baseline NAME SCRIPT PRESET [ARGS...]: the Python baseline on the same data as build/bench (its
# --check-bench compares them first; a difference skips the row and counts as a failure).
run_baseline() {
  local name=$1 script=$2 preset=$3
  shift 3
  if python3 "$script" --preset "$preset" --steps "$STEPS" --warmup "$WARMUP" "$@" --check-bench "$BENCH"; then
    run "$name" python3 "$script" --preset "$preset" --steps "$STEPS" --warmup "$WARMUP" "$@"
  else
    echo "== $name skipped: its data differ from build/bench's" >&2
    failures=$((failures + 1))
    return 1
  fi
}

# The tuned HF baseline; when it fails with Liger's kernels, once more without them (the failure with
# Liger is reported, and counted only if the run without Liger fails too).
run_tuned() {
  local preset=$1
  if ! run_baseline "hf-tuned-$preset" tools/hf_baseline.py "$preset" --tuned && imports liger_kernel; then
    echo "== hf-tuned-$preset: again without Liger's kernels" >&2
    failures=$((failures - 1))
    run_baseline "hf-tuned-$preset" tools/hf_baseline.py "$preset" --tuned --no-liger
  fi
}

# Once: the import checks of the stronger baselines (importing unsloth takes seconds).
tuned_ok=0
unsloth_ok=0
if baseline_available && [[ "${BENCH_TUNED:-1}" != 0 ]]; then
  tuned_ok=1
  imports liger_kernel.transformers || echo "== the tuned HF baseline runs without Liger: python3 cannot import liger_kernel" >&2
fi
if baseline_available && [[ "${BENCH_UNSLOTH:-1}" != 0 && -n "$PRESETS" ]]; then
  HF_HUB_OFFLINE=1 UNSLOTH_DISABLE_STATISTICS=1 imports "unsloth, bitsandbytes" && unsloth_ok=1
fi

for preset in $PRESETS; do
  for mode in $(modes_of "$preset"); do
    quant=${mode%%:*}
    recompute=${mode##*:}
    args=(--preset "$preset" --quant "$quant" --steps "$STEPS" --warmup "$WARMUP")
    [[ "$recompute" != default ]] && args+=(--recompute "$recompute")
    run "loom-$preset-$quant-$recompute" "$BENCH" "${args[@]}"
  done
  if baseline_available; then
    run_baseline "hf-$preset" tools/hf_baseline.py "$preset"
  else
    echo "== hf-$preset skipped: python3 cannot import torch, transformers and peft (or BENCH_BASELINE=0)" >&2
  fi
  if [[ $tuned_ok == 1 ]]; then
    run_tuned "$preset"
  else
    echo "== hf-tuned-$preset skipped: python3 cannot import torch, transformers and peft (or BENCH_BASELINE=0, BENCH_TUNED=0)" >&2
  fi
  if [[ $unsloth_ok == 1 ]]; then
    run_baseline "unsloth-$preset" tools/unsloth_baseline.py "$preset"
  else
    echo "== unsloth-$preset skipped: python3 cannot import unsloth and bitsandbytes (bash tools/baseline_wheels.sh install, PYTHONPATH=/tmp/site15), or BENCH_BASELINE=0, BENCH_UNSLOTH=0" >&2
  fi
done

# Mixture of experts: loom nf4 recompute full beside the HF baseline of the same preset.
for preset in $MOE_PRESETS; do
  run "loom-$preset-nf4-full" "$BENCH" --preset "$preset" --quant nf4 --recompute full --steps "$STEPS" \
    --warmup "$WARMUP"
  if baseline_available; then
    run_baseline "hf-$preset" tools/hf_baseline.py "$preset"
  else
    echo "== hf-$preset skipped: python3 cannot import torch, transformers and peft (or BENCH_BASELINE=0)" >&2
  fi
done

# DPO: the engine's default (fastest: one micro-batch per step) and --recompute full (least memory:
# 4096-token micro-batches), the mode to set beside TRL's gradient checkpointing.
for preset in $DPO_PRESETS; do
  for recompute in default full; do
    args=(--preset "$preset" --dpo --quant nf4 --steps "$STEPS" --warmup "$WARMUP")
    [[ "$recompute" != default ]] && args+=(--recompute "$recompute")
    run "loom-dpo-$preset-nf4-$recompute" "$BENCH" "${args[@]}"
  done
  if trl_available; then
    run_baseline "trl-dpo-$preset" tools/trl_dpo_baseline.py "$preset"
  else
    echo "== trl-dpo-$preset skipped: python3 cannot import torch, transformers, peft and trl (or BENCH_BASELINE=0)" >&2
  fi
done

# Generation: the engine's rows, then HF generate's at both batch sizes.
for preset in $DECODE_PRESETS; do
  for batch in 1 64; do
    for quant in nf4 bf16; do
      run "loom-decode-$preset-$quant-$batch" "$DECODE_BENCH" --preset "$preset" --quant "$quant" --batch "$batch"
    done
  done
  run "loom-decode-$preset-bf16-1-off" "$DECODE_BENCH" --preset "$preset" --quant bf16 --batch 1 --adapters off
  for batch in 1 64; do
    if baseline_available; then
      run "hf-decode-$preset-$batch" python3 tools/hf_generate_baseline.py --preset "$preset" --batch "$batch"
    else
      echo "== hf-decode-$preset-$batch skipped: python3 cannot import torch, transformers and peft (or BENCH_BASELINE=0)" >&2
    fi
  done
done

# Long context: one L-token document per step, nf4, full recompute (issue 14's MFU target counts attention).
for preset in $LONG_PRESETS; do
  for length in $LONG_LENGTHS; do
    run "loom-long-$preset-$length" "$BENCH" --preset "$preset" --quant nf4 --long "$length" --steps 2 --warmup 1
  done
done

commit=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
[[ -n "$(git status --porcelain --untracked-files=no 2>/dev/null)" ]] && commit="$commit-dirty"
echo
device=$(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | head -n1)
echo "sft-alpaca benchmark | $(date -u +%Y-%m-%dT%H:%M:%SZ) | commit $commit | $device"
if command -v python3 >/dev/null; then
  python3 - "$OUT" <<'EOF'
# The table: one row per JSON line, ratios against the baseline of the same preset, BENCHMARK.md's targets.
import json, sys

every = [json.loads(line) for line in open(sys.argv[1]) if line.strip()]
is_dpo = lambda r: r.get("objective") == "dpo" or r["engine"] == "trl-dpo"
is_decode = lambda r: "decode_tokens_per_s" in r
is_long = lambda r: "long_tokens" in r
decode_rows = [r for r in every if is_decode(r)]
long_rows = [r for r in every if is_long(r)]
# build/bench's mixture-of-experts presets (models/model_config.cpp): a table of their own (issue 16).
is_moe = lambda r: r["preset"] in ("qwen3-30b-a3b", "mixtral-8x7b")
every_training = [r for r in every if not is_decode(r) and not is_long(r)]
moe_rows = [r for r in every_training if is_moe(r) and not is_dpo(r)]
rows = [r for r in every_training if not is_dpo(r) and not is_moe(r)]
dpo_rows = [r for r in every_training if is_dpo(r)]
base = {r["preset"]: r for r in rows if r["engine"] == "hf-peft"}
# The stronger anchors of issue 15: each row's tokens/s against them too.
anchors = {e: {r["preset"]: r for r in rows if r["engine"] == e} for e in ("hf-peft-tuned", "unsloth")}
nf4_speed = {r["preset"]: r["tokens_per_s"] for r in rows
             if r["engine"] == "loom" and r["mode"] == "nf4" and r["recompute"] != "full"}

def ratio(r, b, key):
    """r[key] / b[key] against another row of the table (None without one, or for the row itself)."""
    return r[key] / b[key] if b and r is not b and b.get(key) else None

def target(r, speed, mem):
    """BENCHMARK.md's target for this row and whether it is met ('' when none applies)."""
    if r["engine"] != "loom" or speed is None:
        return ""
    full = r["recompute"] == "full"
    if r["preset"] in ("llama-3.1-8b", "qwen3-8b") and r["mode"] == "nf4":
        if full:
            ok = speed >= 3 and mem is not None and mem <= 0.5
            return ("met" if ok else "MISSED") + " (>=3x tok/s, <=0.5x mem)"
        return ("met" if speed >= 5 else "MISSED") + " (>=5x tok/s)"
    if r["preset"] in ("qwen3-0.6b", "llama-3.2-1b") and not full:
        return ("met" if speed >= 10 else "MISSED") + " (>=10x tok/s)"
    return ""

def bf16_target(r):
    if r["engine"] != "loom" or r["mode"] != "bf16" or r["preset"] not in nf4_speed:
        return ""
    return ("met" if r["tokens_per_s"] >= nf4_speed[r["preset"]] else "MISSED") + " (bf16 >= nf4 tok/s)"

fmt = "{:<14} {:<13} {:<5} {:<10} {:>10} {:>7} {:>9} {:>7} {:>6} {:>6} {:>7} {:>7}  {}"
if rows:
    print(fmt.format("preset", "engine", "mode", "recompute", "tok/s", "x base", "peak GiB", "x base", "MFU",
                     "pad", "x tuned", "x unsl", "target"))

def against(r, engine):
    x = ratio(r, anchors[engine].get(r["preset"]), "tokens_per_s")
    return f"{x:.2f}" if x else "-"

for r in rows:
    b = base.get(r["preset"])
    speed, mem = ratio(r, b, "tokens_per_s"), ratio(r, b, "peak_mem_gib")
    goal = " ".join(t for t in (target(r, speed, mem), bf16_target(r)) if t)
    print(fmt.format(r["preset"], r["engine"], r["mode"], r["recompute"], f"{r['tokens_per_s']:,.0f}",
                     f"{speed:.2f}" if speed else "-", f"{r['peak_mem_gib']:.2f}", f"{mem:.2f}" if mem else "-",
                     f"{100 * r['mfu']:.1f}%", f"{100 * r['pad_share']:.0f}%", against(r, "hf-peft-tuned"),
                     against(r, "unsloth"), goal))
for r in rows:
    if "micro_batch_search" in r:  # how the anchor was tuned: the search's trials, attention, Liger
        tried = ", ".join(f"{t['micro_batch']}{'' if t['fits'] else ' OOM'}" for t in r["micro_batch_search"])
        how = [f"micro-batch {r['micro_batch']} documents packed" + (f" (tried {tried})" if tried else " (given)")]
        how += [f"attention {r['attn_implementation']}"] if "attn_implementation" in r else []
        how += [f"Liger {r['liger']}"] if "liger" in r else []
        how += [f"unsloth {r['unsloth']}, bitsandbytes {r['bitsandbytes']}"] if "unsloth" in r else []
        print(f"  {r['engine']} {r['preset']}: " + "; ".join(how))
if moe_rows:
    # Mixture of experts (issue 16): loom nf4 against transformers + peft of the same preset; MFU on
    # active parameters (the router and the K chosen experts, engine/flops.h) in both. Target: >= 10x
    # HF's tok/s and >= 35% MFU, in at most the 79 GiB an 80 GB H100 shows (peak of this run's device).
    hf_moe = {r["preset"]: r for r in moe_rows if r["engine"] == "hf-peft"}
    print()
    mfmt = "{:<14} {:<8} {:<5} {:<10} {:>10} {:>7} {:>9} {:>7} {:>6} {:>6}  {}"
    print(mfmt.format("MoE preset", "engine", "mode", "recompute", "tok/s", "x HF", "peak GiB", "x HF", "MFU",
                      "micro", "target"))
    for r in moe_rows:
        b = hf_moe.get(r["preset"])
        speed, mem = ratio(r, b, "tokens_per_s"), ratio(r, b, "peak_mem_gib")
        goal = ""
        if r["engine"] == "loom" and r["mode"] == "nf4":
            checks = [("MFU", r["mfu"] >= 0.35), ("fits 80 GB", r["peak_mem_gib"] <= 79.0)]
            checks.append(("x HF", speed is not None and speed >= 10))
            missed = [name for name, ok in checks if not ok]
            goal = ("met" if not missed else "MISSED " + ", ".join(missed)) + " (>=10x HF tok/s, >=35% MFU, <=79 GiB)"
            if speed is None:
                goal += "; no hf-peft row to compare"
        # loom: sequences per micro-batch vary (token budget); HF: the padded micro-batch it could fit.
        micro = str(r["micro_batch"]) if "micro_batch" in r else f"{r.get('token_budget') or '-'}t"
        print(mfmt.format(r["preset"], r["engine"], r["mode"], r.get("recompute", "-"), f"{r['tokens_per_s']:,.0f}",
                          f"{speed:.2f}" if speed else "-", f"{r['peak_mem_gib']:.2f}", f"{mem:.2f}" if mem else "-",
                          f"{100 * r['mfu']:.1f}%", micro, goal))
if dpo_rows:
    # DPO: pairs/s with the reference in the step (TRL's default; precompute_ref_log_probs off), and
    # loom's figures with a precomputed reference; target >= 5x TRL's pairs/s at <= its memory.
    trl = {r["preset"]: r for r in dpo_rows if r["engine"] == "trl-dpo"}
    print()
    dfmt = "{:<14} {:<8} {:<5} {:<10} {:>9} {:>7} {:>9} {:>7} {:>6} {:>24}  {}"
    print(dfmt.format("DPO preset", "engine", "mode", "recompute", "pairs/s", "x TRL", "peak GiB", "x TRL", "MFU",
                      "precomputed ref pairs/s", "target"))
    for r in dpo_rows:
        b = trl.get(r["preset"])
        speed, mem = ratio(r, b, "pairs_per_s"), ratio(r, b, "peak_mem_gib")
        goal = ""
        if r["engine"] == "loom" and speed is not None:
            ok = speed >= 5 and mem is not None and mem <= 1
            goal = ("met" if ok else "MISSED") + " (>=5x pairs/s, <=1x mem)"
        pre = (f"{r['precomputed_pairs_per_s']:.2f} (+{r['reference_pass_pairs_per_s']:.1f}/s once)"
               if "precomputed_pairs_per_s" in r else "-")
        mfu = f"{100 * r['mfu']:.1f}%" if r.get("mfu") else "-"
        print(dfmt.format(r["preset"], r["engine"], r["mode"], r.get("recompute", "-"), f"{r['pairs_per_s']:.2f}",
                          f"{speed:.2f}" if speed else "-",
                          f"{r['peak_mem_gib']:.2f}" if r.get("peak_mem_gib") else "-",
                          f"{mem:.2f}" if mem else "-", mfu, pre, goal))
if long_rows:
    # Long context (issue 14): target MFU (attention counted) >= 50% at 32K and 128K.
    print()
    lfmt = "{:<14} {:<5} {:<10} {:>9} {:>10} {:>7} {:>9} {:>9}  {}"
    print(lfmt.format("long preset", "mode", "recompute", "tokens", "tok/s", "MFU", "GPU GiB", "host GiB", "target"))
    for r in long_rows:
        goal = ("met" if r["mfu"] >= 0.5 else "MISSED") + " (MFU >= 50%)"
        print(lfmt.format(r["preset"], r["mode"], r["recompute"], f"{r['long_tokens']:,}", f"{r['tokens_per_s']:,.0f}",
                          f"{100 * r['mfu']:.1f}%", f"{r['peak_mem_gib']:.2f}", f"{r['peak_host_gib']:.2f}", goal))
if decode_rows:
    # Generation (issue 12): decode tok/s against HF generate at the same batch, and against the
    # roofline of the row's own weight bytes. Targets: batch 1 >= 50% of the roofline and >= 10x HF,
    # batch 64 >= 40% of the roofline.
    hf = {(r["preset"], r["batch"]): r for r in decode_rows if r["engine"] == "hf-generate"}
    print()
    gfmt = "{:<14} {:<12} {:<5} {:<9} {:>5} {:>11} {:>7} {:>9} {:>11} {:>9}  {}"
    print(gfmt.format("decode preset", "engine", "mode", "adapters", "batch", "decode tok/s", "x HF", "roofline",
                      "prefill t/s", "peak GiB", "target"))
    for r in decode_rows:
        b = hf.get((r["preset"], r["batch"]))
        speed = ratio(r, b, "decode_tokens_per_s")
        share = r.get("fraction_of_roofline", r.get("roofline_share"))
        goal = ""
        if r["engine"] == "loom" and share is not None:
            if r["batch"] == 1:
                ok = share >= 0.5 and speed is not None and speed >= 10
                goal = ("met" if ok else "MISSED") + " (>=50% roofline, >=10x HF)"
            elif r["batch"] >= 64:
                goal = ("met" if share >= 0.4 else "MISSED") + " (>=40% roofline)"
        print(gfmt.format(r["preset"], r["engine"], r.get("quant", r.get("mode", "")), r.get("adapters", "-"),
                          r["batch"], f"{r['decode_tokens_per_s']:,.1f}", f"{speed:.2f}" if speed else "-",
                          f"{100 * share:.1f}%" if share is not None else "-",
                          f"{r['prefill_tokens_per_s']:,.0f}", f"{r['peak_mem_gib']:.2f}", goal))
flops = [r["matmul_tflops"] for r in every if r.get("matmul_tflops")]
copy = [r["copy_tbps"] for r in every if r.get("copy_tbps")]
if flops and copy:
    print(f"ceilings measured in each run: {min(flops):.0f}-{max(flops):.0f} TFLOP/s dense bf16, "
          f"{min(copy):.2f}-{max(copy):.2f} TB/s copy; CUDA {every[0].get('driver_cuda', '?')} (driver), "
          f"{every[0].get('runtime_cuda', '?')} (runtime)")
EOF
else
  cat "$OUT"
fi
echo "JSON lines: $OUT"
[[ $failures -eq 0 ]]
