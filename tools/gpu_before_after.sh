#!/usr/bin/env bash
# A change's speed against the code it replaces, measured in one device call (the only fair comparison
# on lent GPUs, whose clocks and cards differ from call to call: tools/perf_notes.md).
#
# Here, before the call: save the files the change touched as they were at a revision into an ignored
# folder that travels with the working tree (the lent machine's git history may be stale):
#   bash tools/gpu_before_after.sh save REV DIR          e.g. save main .gpu/before
# There, in the call (after `make all` in the checkout): copy the checkout and its build/ to BEFORE_TREE
# (default /tmp/before), put DIR's files over it, rebuild there only what they change, and run each
# command (a program under build/ and its arguments, one quoted string each) in both trees, the
# change's first; logs NAME.after.log and NAME.before.log in $OUT (default build/before_after), where
# NAME is the command with its non-alphanumerics as _. Stops starting commands once LIMIT seconds
# (default 540) have passed.
#   bash tools/gpu_before_after.sh run DIR "build/gemv_bench" "build/decode_bench --preset qwen3-0.6b --quant nf4"
set -uo pipefail
cd "$(dirname "$0")/.."

save() {  # REV DIR: every file that differs between REV and the working tree, as it is at REV
  local rev="$1" dir="$2" f
  rm -rf "$dir" && mkdir -p "$dir"
  git diff --name-only "$rev" -- . | while read -r f; do
    if git cat-file -e "$rev:$f" 2>/dev/null; then
      mkdir -p "$dir/$(dirname "$f")" && git show "$rev:$f" > "$dir/$f"
    else
      echo "  $f is new since $rev: the before tree keeps the change's copy (nothing includes it there)"
    fi
  done
  echo "saved $(find "$dir" -type f | wc -l) files of $rev into $dir"
}

run_both() {  # DIR COMMAND...
  local dir="$1" tree="${BEFORE_TREE:-/tmp/before}" out="${OUT:-build/before_after}" limit="${LIMIT:-540}"
  shift
  local t0 cmd name
  t0=$(date +%s)
  mkdir -p "$out"
  [ -d "$dir" ] || { echo "gpu_before_after: no folder $dir (run 'save' here first)"; exit 1; }
  [ -d build ] || { echo "gpu_before_after: build the checkout first (make all)"; exit 1; }
  rm -rf "$tree" && mkdir -p "$tree"
  # Sources first, then build/ (newer than them), then the before files (newest): make rebuilds theirs.
  cp -r Makefile engine ops models dist data tools tests configs "$tree"/
  [ -d .deps ] && cp -r .deps "$tree"/
  cp -r build "$tree"/
  cp -r "$dir"/. "$tree"/
  local make_args=(-j"$(nproc)")
  [ -d "$tree/.deps" ] && make_args+=(DEPS_PREFIX="$tree/.deps")
  local targets=()
  for cmd in "$@"; do targets+=("${cmd%% *}"); done
  if ! make -C "$tree" "${make_args[@]}" "${targets[@]}" > "$out/before_build.log" 2>&1; then
    echo "gpu_before_after: the before tree did not build (see $out/before_build.log)"; tail -5 "$out/before_build.log"; exit 1
  fi
  for cmd in "$@"; do
    name=$(echo "$cmd" | sed 's/[^A-Za-z0-9]\+/_/g')
    for side in after before; do
      if (($(date +%s) - t0 > limit)); then echo "== $side: $cmd skipped (past ${limit} s)"; continue; fi
      echo "== $side: $cmd ($(($(date +%s) - t0)) s in)"
      if [ $side = after ]; then
        (eval "$cmd") > "$out/$name.$side.log" 2>&1
      else
        (cd "$tree" && eval "$cmd") > "$out/$name.$side.log" 2>&1
      fi
      echo "   exit $?; $(tail -n 1 "$out/$name.$side.log" | cut -c1-200)"
    done
  done
}

case "${1:-}" in
  save) [ $# -eq 3 ] || { echo "usage: $0 save REV DIR"; exit 2; }; save "$2" "$3" ;;
  run) [ $# -ge 3 ] || { echo "usage: $0 run DIR COMMAND..."; exit 2; }; shift; run_both "$@" ;;
  *) echo "usage: $0 save REV DIR | run DIR COMMAND..."; exit 2 ;;
esac
