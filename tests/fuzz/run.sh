#!/usr/bin/env bash
# Runs libFuzzer targets one after another (make fuzz calls it; run from the repository root):
#   tests/fuzz/run.sh FUZZ_DIR SECONDS TARGET...
# Seeds are made afresh from the repository's files (make_seeds.py) into FUZZ_DIR/seeds; what a run
# discovers is kept in FUZZ_DIR/corpus/<target> for the next. A crash, a sanitizer report, an input
# that runs longer than 60 s or memory past the limits below stops that target, saves the
# input in FUZZ_DIR/findings/ (run again once, to say whether it reproduces) and makes this script
# fail after the remaining targets ran.
set -u
dir="$1"; seconds="$2"; shift 2
# Every reader handles a seed in well under a second; 60 s keeps a busy machine from reporting
# slowness as a hang.
timeout=60

# Memory: one allocation of 1 GB or more is a finding (malloc_limit_mb), and so is a process
# past 2 GB. The latter is left to ASan (hard_rss_limit_mb), not to libFuzzer's rss_limit_mb,
# whose report first walks every live allocation, minutes when there are millions.
export ASAN_OPTIONS="${ASAN_OPTIONS:+$ASAN_OPTIONS:}hard_rss_limit_mb=2048"
limits=(-timeout=$timeout -rss_limit_mb=0 -malloc_limit_mb=1024)

# Largest input per target: a little above its largest seed, so mutations stay small and fast.
max_len() {
  case "$1" in
    tokenizer) echo 131072 ;;
    safetensors|jsonl) echo 16384 ;;
    *) echo 8192 ;;
  esac
}

rm -rf "$dir/seeds"
python3 tests/fuzz/make_seeds.py "$dir/seeds" || exit 1
export LOOM_FUZZ_TOKENIZER="${LOOM_FUZZ_TOKENIZER:-$dir/seeds/tokenizer/qwen3_shrunk.json}"  # jsonl's
mkdir -p "$dir/findings" "$dir/logs"
failed=()
for t in "$@"; do
  mkdir -p "$dir/corpus/$t"
  log="$dir/logs/$t.log"
  dict=()
  [ -f "tests/fuzz/$t.dict" ] && dict=(-dict="tests/fuzz/$t.dict")
  # The outer timeout catches a target that would not stop.
  timeout -k 10 $((seconds + 2 * timeout)) "$dir/$t" "$dir/corpus/$t" "$dir/seeds/$t" "${dict[@]}" \
    -max_total_time="$seconds" -max_len="$(max_len "$t")" "${limits[@]}" -print_final_stats=1 \
    -artifact_prefix="$dir/findings/$t-" >"$log" 2>&1
  rc=$?
  stats=$(grep -E '^stat::number_of_executed_units' "$log" | awk '{print $2}')
  cov=$(grep -E '^#[0-9]+' "$log" | tail -1 | grep -oE 'cov: [0-9]+' || true)
  if [ $rc -eq 0 ]; then
    echo "fuzz $t: ${seconds} s, ${stats:-?} inputs, ${cov:-cov: ?}, no finding"
  else
    failed+=("$t")
    input=$(grep -oE "$dir/findings/$t-[^ ]+" "$log" | tail -1)
    again="does not reproduce alone"
    [ -n "$input" ] && ! timeout -k 10 $((2 * timeout)) "$dir/$t" "${limits[@]}" "$input" >"$log.again" 2>&1 &&
      again="reproduces"
    echo "fuzz $t: FINDING (exit $rc, $again) — input: ${input:-none saved}; log: $log"
    grep -E 'ERROR: |SUMMARY: |terminate called|what\(\):|loom fuzz finding|runtime error' "$log" | head -5 | sed 's/^/    /'
  fi
done
if [ ${#failed[@]} -gt 0 ]; then
  echo "fuzz: findings in: ${failed[*]} (reproduce: LOOM_FUZZ_TOKENIZER=$LOOM_FUZZ_TOKENIZER $dir/<target> <input>)"
  exit 1
fi
echo "fuzz: no findings in $# targets"
