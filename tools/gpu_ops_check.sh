#!/usr/bin/env bash
# Builds the GPU kernel suite (tests/ops_gpu_test.cu: ops/*.cu against ops/*_ref.cpp), runs it, then
# runs it again under compute-sanitizer memcheck. Needs a CUDA device; run from anywhere:
#   bash tools/gpu_ops_check.sh [log folder]        (default build/gpu_ops_check)
# On a machine without the header-only dependencies installed, unpack them under .deps/ (the
# Makefile's DEPS_PREFIX); the script passes it when the folder exists. Logs: build_and_test.log,
# memcheck.log and device.txt in the log folder. Exit status: 0 only if both runs pass.
set -uo pipefail
cd "$(dirname "$0")/.."
out="${1:-build/gpu_ops_check}"
mkdir -p "$out"

kernels="ops/cast.cu ops/embedding.cu ops/rmsnorm.cu ops/rope.cu ops/swiglu.cu ops/nf4.cu ops/gemm.cu \
ops/cross_entropy.cu ops/adamw.cu ops/grad_norm.cu ops/lora_linear.cu ops/lora_gemv.cu ops/dropout.cu ops/bias.cu"
references="ops/embedding_ref.cpp ops/rmsnorm_ref.cpp ops/rope_ref.cpp ops/swiglu_ref.cpp ops/nf4_ref.cpp \
ops/cross_entropy_ref.cpp ops/matmul_ref.cpp ops/adamw_ref.cpp ops/grad_norm_ref.cpp ops/lora_linear_ref.cpp \
ops/lora_gemv_ref.cpp ops/dropout_ref.cpp"
support="ops/cuda_common.cpp ops/error.cpp ops/device.cpp"
make_args=(-j"$(nproc)" unit T=ops_gpu SRCS="$kernels $references $support")
[ -d .deps ] && make_args+=(DEPS_PREFIX="$PWD/.deps")

nvidia-smi >"$out/device.txt" 2>&1

make "${make_args[@]}" 2>&1 | tee "$out/build_and_test.log"
status=$?
if [ $status -ne 0 ]; then
  echo "gpu_ops_check: build or tests failed (exit $status); see $out/build_and_test.log"
  exit $status
fi

# The 2^31-element cross-entropy test moves 4 GB per pass: minutes under memcheck, and its indexing
# is what the plain run above already checks.
compute-sanitizer --tool memcheck --error-exitcode 3 build/unit/ops_gpu --gtest_filter='-*LargeChunk*' \
  2>&1 | tee "$out/memcheck.log"
status=$?
[ $status -ne 0 ] && echo "gpu_ops_check: memcheck failed (exit $status); see $out/memcheck.log"
exit $status
