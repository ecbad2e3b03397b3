#!/usr/bin/env bash
# Bug injection (issue #9): three deliberate bugs in the GPU path, each of which the GPU suite must
# catch, and the clean tree, which it must pass. Run ON A GPU MACHINE from the repository root:
#   bash tools/bug_injection.sh                  the clean tree, then every bug
#   bash tools/bug_injection.sh o_proj window    the clean tree, then only these bugs
#   bash tools/bug_injection.sh --check          no GPU needed: every patch applies (patch --dry-run)
#                                                and every patched file compiles
# The working tree is never modified. The clean tree is copied (build/ included, .git left out) to
# $WORK/clean (default WORK=/tmp/loom-inject), built there (make -j$JOBS build/loom_tests build/train)
# and its GPU suites run ($GPU_FILTER); each bug's copy starts from that built copy, gets its patch
# (patch -p1) and rebuilds only what the patch touches. The table ($WORK/bug_injection.md) has one
# row each: the clean tree "passed" (else "FAILED"), each bug "caught" (else "MISSED"), with the
# failing tests named; the script prints it and exits 0 only when every row is as it must be.
#
# The bugs (each a real-looking one-line slip):
#   o_proj      the LoRA B gradient of every o_proj is scaled by 0.5 (CudaModel linear_backward)
#   rope_theta  the GPU's RoPE frequencies use theta x 2 (CudaModel::load)
#   window      the GPU attention's sliding window lets one key too many through (lowest_visible_key)
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
WORK=${WORK:-/tmp/loom-inject}
JOBS=${JOBS:-16}
# The suites that need a GPU (the multi-GPU DistTrain test is left out: it skips below 2 GPUs).
GPU_FILTER=${GPU_FILTER:-'*GpuStep*:GpuTrain*:AttentionGpu*:Cast.*:Bias.*:Embedding.*:RmsNorm.*:Rope.*:SwiGlu.*:Dropout.*:Nf4.*:Gemm.*:LmHeadCrossEntropy.*:AdamW.*:GradNorm.*'}
export LOOM_SHARED=${LOOM_SHARED:-$(cd "$ROOT/.." && pwd)/shared}
TABLE=$WORK/bug_injection.md
ALL_BUGS=(o_proj rope_theta window)

# --- the bugs: a unified diff each, and the object file that compiles the patched source ---------

diff_o_proj() {
  cat <<'EOF'
--- a/models/cuda_model.cpp
+++ b/models/cuda_model.cpp
@@ -387,7 +387,7 @@
     if (!s.enabled) return;
     const int R = lora.R;
     gemm_(du, dy, lora_bf16 + s.b_offset, T, R, out, false, false, lora.scale, 0.f, GemmOut::kBf16);
-    gemm_(lora_grad + s.b_offset, dy, u[t].at(l), out, R, T, true, false, lora.scale, 1.f, GemmOut::kFp32);
+    gemm_(lora_grad + s.b_offset, dy, u[t].at(l), out, R, T, true, false, t == kO ? 0.5f * lora.scale : lora.scale, 1.f, GemmOut::kFp32);
     gemm_(lora_grad + s.a_offset, du, lora_input(l, t, x, in), R, in, T, true, false, 1.f, 1.f, GemmOut::kFp32);
     if (dropout == 0) return gemm_(dx, du, lora_bf16 + s.a_offset, T, in, R, false, false, 1.f, 1.f, GemmOut::kBf16);
     gemm_(x_dropped, du, lora_bf16 + s.a_offset, T, in, R, false, false, 1.f, 0.f, GemmOut::kBf16);
EOF
}

diff_rope_theta() {
  cat <<'EOF'
--- a/models/cuda_model.cpp
+++ b/models/cuda_model.cpp
@@ -313,7 +313,9 @@
     upload_bf16(final_norm, src.final_norm());
     upload(nf4_table, std::vector<float>(kNf4Table, kNf4Table + 16));
     upload(nested_map, dynamic_map_signed());
-    upload(inv_freq, rope_inv_freq(cfg.D, cfg.rope));
+    RopeParams doubled = cfg.rope;
+    doubled.theta *= 2;
+    upload(inv_freq, rope_inv_freq(cfg.D, doubled));
     nf4_desc.resize(cfg.L);
     for (int l = 0; l < cfg.L; ++l) upload_layer(l, src.layer(l));
     set_lora(lora_init);
EOF
}

diff_window() {
  cat <<'EOF'
--- a/ops/attention_kernels.cuh
+++ b/ops/attention_kernels.cuh
@@ -153,7 +153,7 @@
 // Lowest key visible from query i (i < T).
 __device__ __forceinline__ int lowest_visible_key(const AttnParams& p, int i) {
   int lo = p.cu_seqlens[doc_of(p, i)];
-  return p.window > 0 ? max(lo, i - p.window + 1) : lo;
+  return p.window > 0 ? max(lo, i - p.window) : lo;
 }
 
 // One past the highest query that can see key j (j < T).
EOF
}

object_of() {
  case $1 in
    o_proj | rope_theta) echo build/obj/models/cuda_model.cpp.o ;;
    window) echo build/obj/ops/attention.cu.o ;;
  esac
}

# --- helpers --------------------------------------------------------------------------------------

# copy_tree SRC DST [TAR_OPTION...]: SRC's files with their times (so make rebuilds only what a patch
# touches), .git left out.
copy_tree() {
  local src=$1 dst=$2
  shift 2
  rm -rf "$dst"
  mkdir -p "$dst"
  tar -C "$src" --exclude=./.git "$@" -cf - . | tar -C "$dst" -xpf -
}

apply_bug() {  # apply_bug NAME DIR [PATCH_OPTION...], e.g. --dry-run
  local name=$1 dir=$2
  shift 2
  if ! "diff_$name" | patch -d "$dir" -p1 --forward --batch --silent "$@"; then
    echo "error: the $name patch does not apply to $dir (the code moved: update diff_$name in tools/bug_injection.sh)" >&2
    exit 2
  fi
}

build() {  # build DIR LOG
  if ! make -C "$1" -j"$JOBS" build/loom_tests build/train >"$2" 2>&1; then
    echo "error: the build in $1 failed; see $2" >&2
    tail -20 "$2" >&2
    exit 2
  fi
}

# run_suite DIR LOG: the GPU suites in DIR; prints "passed", "failed: <tests>" or "skipped: <tests>".
run_suite() {
  local rc=0
  (cd "$1" && timeout 1800 build/loom_tests --gtest_filter="$GPU_FILTER") >"$2" 2>&1 || rc=$?
  local failed skipped
  failed=$(sed -n 's/^\[  FAILED  \] \([A-Za-z0-9_./]*\).*/\1/p' "$2" | sort -u | tr '\n' ' ')
  skipped=$(sed -n 's/^\[  SKIPPED \] \([A-Za-z0-9_/]*GpuStep[A-Za-z0-9_./]*\).*/\1/p' "$2" | sort -u | tr '\n' ' ')
  if [[ -n $skipped ]]; then
    echo "skipped: $skipped"
  elif [[ $rc -eq 0 ]]; then
    echo "passed"
  else
    echo "failed (exit $rc): ${failed:-see the log}"
  fi
}

check_only() {
  local dir=$WORK/check
  for bug in "${ALL_BUGS[@]}"; do
    copy_tree "$ROOT" "$dir" --exclude=./build
    apply_bug "$bug" "$dir" --dry-run
    apply_bug "$bug" "$dir"
    local obj
    obj=$(object_of "$bug")
    if make -C "$dir" "$obj" >"$WORK/check-$bug.log" 2>&1; then
      echo "$bug: the patch applies and $obj compiles"
    else
      echo "error: $bug: $obj does not compile; see $WORK/check-$bug.log" >&2
      exit 2
    fi
  done
  rm -rf "$dir"
}

# --- main -----------------------------------------------------------------------------------------

mkdir -p "$WORK"
if [[ ${1:-} == --check ]]; then
  check_only
  exit 0
fi
bugs=("$@")
[[ ${#bugs[@]} -gt 0 ]] || bugs=("${ALL_BUGS[@]}")
for bug in "${bugs[@]}"; do
  declare -F "diff_$bug" >/dev/null || { echo "error: unknown bug '$bug' (known: ${ALL_BUGS[*]})" >&2; exit 2; }
done
nvidia-smi -L >/dev/null 2>&1 || { echo "error: no GPU here (nvidia-smi -L failed): every GPU test would skip" >&2; exit 2; }

ok=1
rows=()
echo "clean tree: copying and building in $WORK/clean" >&2
copy_tree "$ROOT" "$WORK/clean"
build "$WORK/clean" "$WORK/clean-build.log"
result=$(run_suite "$WORK/clean" "$WORK/clean-suite.log")
if [[ $result == passed ]]; then verdict=passed; else verdict=FAILED; ok=0; fi
rows+=("| clean tree | $verdict | $result |")

for bug in "${bugs[@]}"; do
  echo "$bug: copying, patching and building in $WORK/$bug" >&2
  copy_tree "$WORK/clean" "$WORK/$bug"
  apply_bug "$bug" "$WORK/$bug"
  build "$WORK/$bug" "$WORK/$bug-build.log"
  result=$(run_suite "$WORK/$bug" "$WORK/$bug-suite.log")
  if [[ $result == failed* ]]; then verdict=caught; else verdict=MISSED; ok=0; fi
  rows+=("| $bug | $verdict | $result |")
done

{
  echo "Bug injection, $(date -u +%Y-%m-%dT%H:%MZ), $(nvidia-smi --query-gpu=name --format=csv,noheader | head -1)"
  echo "GPU suites: build/loom_tests --gtest_filter='$GPU_FILTER' (logs in $WORK)"
  echo
  echo "| tree | verdict | GPU suite |"
  echo "| --- | --- | --- |"
  printf '%s\n' "${rows[@]}"
} >"$TABLE"
cat "$TABLE"
[[ $ok -eq 1 ]]
