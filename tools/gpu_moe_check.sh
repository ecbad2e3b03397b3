#!/usr/bin/env bash
# The mixture-of-experts kernels on a GPU machine without building the rest of loom: the MoE suite
# (routing, permutation, grouped GEMMs with every kernel of the build against the references), the
# grouped-GEMM timing program (tools/grouped_gemm_bench_main.cpp), then memcheck and racecheck on the suite.
#   bash tools/gpu_moe_check.sh
# Logs go to $OUT when set (the lent GPU), else build/moe_check. Exits non-zero if any step failed.
# QUICK=1 stops after the suite and the bench (no sanitizers).
set -uo pipefail
cd "$(dirname "$0")/.."
LOG_DIR="${OUT:-build/moe_check}"
source tools/gpu_check_lib.sh
SRCS="ops/grouped_gemm.cu ops/grouped_gemm_ref.cpp ops/moe_permute.cu ops/moe_permute_ref.cpp ops/moe_route.cu
  ops/moe_router_ref.cpp ops/cuda_common.cpp ops/error.cpp ops/device.cpp"
step "build bench" moe_bench_build.log link_bench build/grouped_gemm_bench \
  build/obj/tools/grouped_gemm_bench_main.cpp.o build/obj/ops/grouped_gemm.cu.o build/obj/ops/gemm.cu.o \
  build/obj/ops/cuda_common.cpp.o build/obj/ops/error.cpp.o build/obj/ops/device.cpp.o
step moe_gpu moe_gpu.log make "${MAKE_ARGS[@]}" unit T=moe_gpu SRCS="$SRCS"
step "bench" grouped_gemm_bench.log build/grouped_gemm_bench
if [ "${QUICK:-0}" != 1 ]; then
  step "memcheck" moe_memcheck.log compute-sanitizer --tool memcheck --error-exitcode 1 build/unit/moe_gpu
  # racecheck sees the mma.sync kernels' shared memory; wgmma's reads (the async proxy) escape it.
  step "racecheck" moe_racecheck.log compute-sanitizer --tool racecheck --error-exitcode 1 \
    build/unit/moe_gpu --gtest_filter='GroupedGemmGpu.Forward*'
fi
echo "== summary"
grep -h "passed, .* failed" "$LOG_DIR/moe_gpu.log" || true
grep -h "TFLOP/s\|routing" "$LOG_DIR/grouped_gemm_bench.log" 2>/dev/null || true
grep -h "ERROR SUMMARY\|RACECHECK SUMMARY" "$LOG_DIR/moe_memcheck.log" "$LOG_DIR/moe_racecheck.log" 2>/dev/null || true
exit $status
