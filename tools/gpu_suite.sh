#!/usr/bin/env bash
# Every GPU test suite, and with `bench` the figures the open issues wait on, in one device call:
# builds everything, runs each suite whose tests live in tests/*gpu* (the multi-GPU ones skip on one
# GPU), then the benchmarks; each stage is skipped once it would not finish inside BUDGET_S seconds
# (default 570, under the device tool's 600-second call), so a slow build still leaves logs.
#   OUT=<log folder> [BUDGET_S=570] bash tools/gpu_suite.sh [bench]
# On the lent GPU: carry .deps (header-only deps unpacked with dpkg -x) and a copy of ../shared in an
# ignored folder named by LOOM_SHARED. Logs under $OUT (default build/gpu_suite); the summary at the
# end names every failed test. Exit status 1 when a stage failed, 0 otherwise (skipped stages say so).
set -uo pipefail
cd "$(dirname "$0")/.."
LOG_DIR="${OUT:-build/gpu_suite}"
mkdir -p "$LOG_DIR"
BUDGET=${BUDGET_S:-570}
T0=$(date +%s)
MAKE_ARGS=(-j"$(nproc)")
[ -d .deps ] && MAKE_ARGS+=(DEPS_PREFIX="$PWD/.deps")
status=0

# stage NAME SECONDS_NEEDED LOG COMMAND...: runs COMMAND with what is left of the budget as its limit.
stage() {
  local name="$1" need="$2" log="$3"; shift 3
  local left=$((BUDGET - ($(date +%s) - T0)))
  if ((left < need)); then echo "== $name skipped: ${left}s left, needs ${need}s"; return; fi
  echo "== $name ($(($(date +%s) - T0))s in)"
  if ! timeout "$left" "$@" >"$LOG_DIR/$log" 2>&1; then echo "!! $name failed (see $log)"; status=1; fi
  tail -n "${TAIL:-4}" "$LOG_DIR/$log"
}

nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm --format=csv 2>&1 | tee "$LOG_DIR/device.txt"
{ git log -1 --format='commit %h' 2>/dev/null; date -u; } | tee -a "$LOG_DIR/device.txt"
stage build 120 build.log make "${MAKE_ARGS[@]}" all build/loom_tests
# Every suite named in a GPU test file; the leading * takes in parameterized instances (Prefix/Suite.Test/param).
filter=$(grep -ho '^TEST[_FP]*( *[A-Za-z0-9_]*' tests/*gpu* | sed 's/.*( *//' | sort -u | sed 's/.*/*&.*/' | paste -sd:)
stage "GPU suites" 60 gpu_tests.log build/loom_tests --gtest_filter="$filter"
if [ "${1:-}" = bench ]; then  # most wanted first: what runs depends on the time left
  stage "qwen3-0.6b nf4" 40 bench_qwen3_nf4.log build/bench --preset qwen3-0.6b --quant nf4 --steps 5
  # Building 30.5B random weights (and their NF4 codes) on the host took over 105 s on an H200 host.
  # Budget 16,384: one micro-batch a step, 1.26x the default 4,096's tokens/s on an H100 (41 GiB; perf_notes).
  stage "qwen3-30b-a3b nf4" 200 bench_moe.log build/bench --preset qwen3-30b-a3b --quant nf4 --recompute full --steps 3 --token-budget 16384
  stage "llama-3.1-8b --long 32768" 120 bench_long32k.log build/bench --preset llama-3.1-8b --quant nf4 --long 32768 --steps 2
  stage "lm head" 40 lm_head_bench.log build/lm_head_bench
  stage "decode llama-3.1-8b nf4 B1" 60 decode_llama_nf4_b1.log build/decode_bench --preset llama-3.1-8b --quant nf4 --batch 1
  stage "gemv" 40 gemv_bench.log build/gemv_bench
  stage "qwen3-0.6b nf4 graphs" 40 bench_qwen3_nf4_graphs.log build/bench --preset qwen3-0.6b --quant nf4 --steps 5 --graphs
  stage "attention" 40 attention_bench.log build/attention_bench
  stage "grouped GEMM" 60 grouped_gemm_bench.log build/grouped_gemm_bench
fi
echo "== summary ($(($(date +%s) - T0))s)"
grep -h "passed, .* failed" "$LOG_DIR/gpu_tests.log" 2>/dev/null || true
grep -h "^\[  FAILED  \]" "$LOG_DIR/gpu_tests.log" 2>/dev/null | sort -u || true
exit $status
