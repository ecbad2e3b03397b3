#!/usr/bin/env bash
# Flash attention on a GPU machine, in one go: builds the attention_gpu suite and the timing program,
# runs the suite, times the target workload (tools/attention_bench_main.cpp), then reruns the suite
# under compute-sanitizer (memcheck on everything, racecheck on one small case).
#   bash tools/gpu_attention_check.sh
# Logs go to $OUT when set (the lent GPU), else build/attention_check. Exits non-zero if any step failed.
# PROFILE=1 adds an Nsight Compute report of the four kernels on the target workload (ncu.txt).
set -uo pipefail
cd "$(dirname "$0")/.."
LOG_DIR="${OUT:-build/attention_check}"
mkdir -p "$LOG_DIR"
MAKE_ARGS=(-j"$(nproc)")
[ -d .deps ] && MAKE_ARGS+=(DEPS_PREFIX="$PWD/.deps")  # header-only deps unpacked beside the checkout
SRCS="ops/attention.cu ops/attention_ref.cpp ops/cuda_common.cpp ops/error.cpp engine/device.cpp"
CUDA_HOME="${CUDA_HOME:-/usr/local/cuda}"
status=0
step() {  # name, log file, command...
  local name="$1" log="$2"; shift 2
  echo "== $name"
  if ! "$@" 2>&1 | tee "$LOG_DIR/$log"; then echo "!! $name failed"; status=1; fi
}

nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm --format=csv 2>&1
step "build + test" test.log make "${MAKE_ARGS[@]}" unit T=attention_gpu SRCS="$SRCS"
step "build bench" bench_build.log bash -c "make ${MAKE_ARGS[*]} build/obj/tools/attention_bench_main.cpp.o && \
  g++ -o build/attention_bench build/obj/tools/attention_bench_main.cpp.o build/obj/ops/attention.cu.o \
    build/obj/ops/cuda_common.cpp.o build/obj/ops/error.cpp.o build/obj/engine/device.cpp.o \
    -L$CUDA_HOME/lib64 -Wl,-rpath,$CUDA_HOME/lib64 -lcudart -fopenmp"
step "bench" bench.log build/attention_bench
if [ "${PROFILE:-0}" = 1 ]; then
  NCU=(ncu --section SpeedOfLight --section Occupancy --section LaunchStats --section WarpStateStats
       --section SchedulerStats --section MemoryWorkloadAnalysis --section ComputeWorkloadAnalysis)
  step "ncu forward" ncu_fwd.txt "${NCU[@]}" -k regex:attention_forward_kernel -c 1 build/attention_bench 1
  step "ncu backward" ncu_bwd.txt "${NCU[@]}" -k regex:"attention_(backward|dq)" -c 3 build/attention_bench 1
fi
step "memcheck" memcheck.log compute-sanitizer --tool memcheck --error-exitcode 1 build/unit/attention_gpu
step "racecheck" racecheck.log compute-sanitizer --tool racecheck --error-exitcode 1 \
  build/unit/attention_gpu --gtest_filter=AttentionGpu.MatchesReferenceGqa8D64
echo "== summary"
grep -h "passed, .* failed" "$LOG_DIR/test.log" || true
cat "$LOG_DIR/bench.log" 2>/dev/null | tail -5
grep -h "ERROR SUMMARY\|RACECHECK SUMMARY" "$LOG_DIR/memcheck.log" "$LOG_DIR/racecheck.log" 2>/dev/null || true
exit $status
