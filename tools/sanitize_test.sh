#!/usr/bin/env bash
# make SANITIZE=... test: runs BUILD/loom_tests built with sanitizers, from BUILD/root, a stand-in
# for the repository root whose build/ is BUILD (the tests start build/train, build/score, ...
# by that path) and whose other entries link back to the repository; ../shared resolves beside it.
# Every process writes its sanitizer reports to BUILD/sanitizer-reports/; the run fails when the
# suite fails or when any report was written (UBSan reports do not stop a process).
#   tools/sanitize_test.sh BUILD [gtest arguments...]
set -u
build="$1"; shift
repo="$(pwd)"
root="$build/root"
reports="$(cd "$build" && pwd)/sanitizer-reports"
mkdir -p "$root"
rm -rf "$reports" && mkdir -p "$reports"
for entry in *; do
  case "$entry" in build|build-*|runs) continue ;; esac
  ln -sfn "$repo/$entry" "$root/$entry"
done
ln -sfn .. "$root/build"
ln -sfn "$(cd "$repo/.." && pwd)/shared" "$build/shared"

# protect_shadow_gap=0: the CUDA driver maps memory where ASan keeps its shadow gap (GPU machines).
# detect_leaks=0: the CUDA runtime, Open MPI and NCCL keep allocations until exit by design.
export ASAN_OPTIONS="${ASAN_OPTIONS:-protect_shadow_gap=0:detect_leaks=0}:log_path=$reports/asan"
export UBSAN_OPTIONS="${UBSAN_OPTIONS:-print_stacktrace=1}:log_path=$reports/ubsan"
# The suite's own output is searched too: a report that reached stderr instead of log_path (seen
# once: UBSan's null memcpy in data/shards.cpp, 2026-12-06) must fail the run as well.
output="$build/sanitize_test.log"
(cd "$root" && ./build/loom_tests "$@") 2>&1 | tee "$output"
status=${PIPESTATUS[0]}
if grep -qE "runtime error:|ERROR: (Address|Leak|Undefined)Sanitizer" "$output"; then
  echo "sanitizer reports in the suite's output ($output):"
  grep -nE -A12 "runtime error:|ERROR: (Address|Leak|Undefined)Sanitizer" "$output" | head -60
  exit 1
fi
if compgen -G "$reports/*" >/dev/null; then
  echo "sanitizer reports ($reports):"
  for f in "$reports"/*; do echo "== $f"; head -40 "$f"; done
  exit 1
fi
exit $status
