#!/usr/bin/env bash
# A change's speed against the code it replaces, measured in one device call (the only fair comparison
# on lent GPUs, whose clocks and cards differ from call to call: tools/perf_notes.md).
#
# Here, before the call: save the files the change touched as they were at a revision into an ignored
# folder that travels with the working tree (the lent machine's git history may be stale):
#   bash tools/gpu_before_after.sh save REV DIR          e.g. save main .gpu/before
# There, in the call (after `make all` in the checkout): for each saved DIR, copy the checkout and its
# build/ to a tree of its own (BEFORE_TREE, default /tmp/before, with the DIR's name appended when there
# are several), put DIR's files over it and rebuild there only what they change; then run each command (a
# program under build/ and its arguments, one quoted string each) in the checkout and in every tree, the
# change's first; logs NAME.after.log and NAME.LABEL.log in $OUT (default build/before_after), where NAME
# is the command with its non-alphanumerics as _ and LABEL is DIR's last component (.gpu/before: before).
# Stops starting commands once LIMIT seconds (default 540) have passed.
#   bash tools/gpu_before_after.sh run .gpu/before "build/gemv_bench" "build/decode_bench --preset qwen3-0.6b --quant nf4"
#   bash tools/gpu_before_after.sh run .gpu/before,.gpu/before_ring "build/gemv_bench"   (two earlier states)
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

# build_tree DIR TREE OUT TARGETS...: the checkout with DIR's files over it, rebuilt in TREE.
build_tree() {
  local dir="$1" tree="$2" out="$3" label
  shift 3
  label=$(basename "$dir")
  [ -d "$dir" ] || { echo "gpu_before_after: no folder $dir (run 'save' here first)"; exit 1; }
  rm -rf "$tree" && mkdir -p "$tree"
  # Sources first, then build/ (newer than them), then the before files (newest): make rebuilds theirs.
  cp -r Makefile engine ops models dist data tools tests configs "$tree"/
  [ -d .deps ] && cp -r .deps "$tree"/
  cp -r build "$tree"/
  cp -r "$dir"/. "$tree"/
  local make_args=(-j"$(nproc)")
  [ -d "$tree/.deps" ] && make_args+=(DEPS_PREFIX="$tree/.deps")
  if ! make -C "$tree" "${make_args[@]}" "$@" > "$out/${label}_build.log" 2>&1; then
    echo "gpu_before_after: the $label tree did not build (see $out/${label}_build.log)"
    tail -5 "$out/${label}_build.log"
    exit 1
  fi
}

run_both() {  # DIR[,DIR...] COMMAND...
  local dirs="$1" base="${BEFORE_TREE:-/tmp/before}" out="${OUT:-build/before_after}" limit="${LIMIT:-540}"
  shift
  local t0 cmd name dir side targets=() trees=() labels=()
  t0=$(date +%s)
  mkdir -p "$out"
  [ -d build ] || { echo "gpu_before_after: build the checkout first (make all)"; exit 1; }
  for cmd in "$@"; do targets+=("${cmd%% *}"); done
  IFS=, read -r -a dirs <<< "$dirs"
  for dir in "${dirs[@]}"; do
    labels+=("$(basename "$dir")")
    if ((${#dirs[@]} == 1)); then trees+=("$base"); else trees+=("${base}_$(basename "$dir")"); fi
    build_tree "$dir" "${trees[-1]}" "$out" "${targets[@]}"
  done
  for cmd in "$@"; do
    name=$(echo "$cmd" | sed 's/[^A-Za-z0-9]\+/_/g')
    for side in -1 $(seq 0 $((${#dirs[@]} - 1))); do
      local label=after tree=.
      ((side >= 0)) && label=${labels[side]} tree=${trees[side]}
      if (($(date +%s) - t0 > limit)); then echo "== $label: $cmd skipped (past ${limit} s)"; continue; fi
      echo "== $label: $cmd ($(($(date +%s) - t0)) s in)"
      (cd "$tree" && eval "$cmd") > "$out/$name.$label.log" 2>&1
      echo "   exit $?; $(tail -n 1 "$out/$name.$label.log" | cut -c1-200)"
    done
  done
}

case "${1:-}" in
  save) [ $# -eq 3 ] || { echo "usage: $0 save REV DIR"; exit 2; }; save "$2" "$3" ;;
  run) [ $# -ge 3 ] || { echo "usage: $0 run DIR[,DIR...] COMMAND..."; exit 2; }; shift; run_both "$@" ;;
  *) echo "usage: $0 save REV DIR | run DIR[,DIR...] COMMAND..."; exit 2 ;;
esac
