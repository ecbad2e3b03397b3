#!/usr/bin/env bash
# Flash attention on a GPU machine, in one go and without building the rest of loom (about a minute
# of compiling on 16 cores): the wgmma wrapper suite (GPU_ARCH=90 builds), the attention suites
# (every kernel family of the build against the reference, 64K-token documents on sampled rows),
# the timing program on every case (tools/attention_bench_main.cpp), then memcheck on the attention
# suite and racecheck on one small case.
#   bash tools/gpu_attention_check.sh
# Logs go to $OUT when set (the lent GPU), else build/attention_check. Exits non-zero if any step failed.
# QUICK=1 stops after the suites and the bench (no sanitizers). PROFILE=1 adds Nsight Compute reports
# of the long-document forward and backward kernels (mma.sync and Hopper) on the 16K-token document.
set -uo pipefail
cd "$(dirname "$0")/.."
LOG_DIR="${OUT:-build/attention_check}"
source tools/gpu_check_lib.sh
SRCS="ops/attention.cu ops/attention_ref.cpp ops/cuda_common.cpp ops/error.cpp ops/device.cpp"
step "build bench" bench_build.log link_bench build/attention_bench build/obj/tools/attention_bench_main.cpp.o \
  build/obj/ops/attention.cu.o build/obj/ops/attention_decode.cu.o build/obj/ops/cuda_common.cpp.o \
  build/obj/ops/error.cpp.o build/obj/ops/device.cpp.o
for suite in wgmma_gpu attention_gpu attention_long_gpu; do
  step "$suite" "$suite.log" make "${MAKE_ARGS[@]}" unit T=$suite SRCS="$SRCS"
done
step "bench" bench.log build/attention_bench
if [ "${PROFILE:-0}" = 1 ]; then
  NCU=(ncu --section SpeedOfLight --section Occupancy --section LaunchStats --section WarpStateStats
       --section SchedulerStats --section MemoryWorkloadAnalysis --section ComputeWorkloadAnalysis)
  # One launch of each long-document kernel (mangled names carry the family's namespace).
  for family in long_docs hopper; do
    for pass in forward backward; do
      step "ncu $family $pass" "ncu_${family}_${pass}.txt" "${NCU[@]}" --kernel-name-base mangled \
        -k "regex:${family}.*attention_${pass}_kernel" -c 1 build/attention_bench --case 4
    done
  done
fi
if [ "${QUICK:-0}" != 1 ]; then
  step "memcheck" memcheck.log compute-sanitizer --tool memcheck --error-exitcode 1 build/unit/attention_gpu
  step "racecheck" racecheck.log compute-sanitizer --tool racecheck --error-exitcode 1 \
    build/unit/attention_gpu --gtest_filter=AttentionGpu.MatchesReferenceGqa8D64
fi
echo "== summary"
grep -h "passed, .* failed" "$LOG_DIR"/*_gpu.log || true
grep -h "TFLOP/s" "$LOG_DIR/bench.log" 2>/dev/null || true
grep -h "ERROR SUMMARY\|RACECHECK SUMMARY" "$LOG_DIR/memcheck.log" "$LOG_DIR/racecheck.log" 2>/dev/null || true
exit $status
