#!/usr/bin/env bash
# Shows what a dead rank does to a run: starts a 2-rank training (mpirun, or the TCP bootstrap with
# BOOTSTRAP=tcp), kills rank 1 with SIGKILL once training is under way, and reports how long the
# surviving rank took to end, how many steps it logged after the kill (a step in flight then must not
# be: its all-reduce lacked rank 1) and what it printed. A hang would show as the 60 s limit being hit.
set -uo pipefail
cd "$(dirname "$0")/.."
dir=build/kill_rank_demo
rm -rf "$dir" && mkdir -p "$dir"
args=(configs/bench-sft-alpaca.yaml model.preset="${PRESET:-qwen3-0.6b}" train.steps=500 output.dir="$dir/run")
export NCCL_NVLS_ENABLE=0
if [ "${BOOTSTRAP:-mpi}" = tcp ]; then
  for r in 0 1; do
    RANK=$r WORLD_SIZE=2 LOCAL_RANK=$r MASTER_ADDR=127.0.0.1 MASTER_PORT=29533 build/train "${args[@]}" \
      > "$dir/rank$r.log" 2>&1 &
  done
else
  mpirun --allow-run-as-root --bind-to none -np 2 -x NCCL_NVLS_ENABLE=0 build/train "${args[@]}" > "$dir/mpirun.log" 2>&1 &
fi
launcher=$!
for _ in $(seq 600); do [ -s "$dir/run/metrics.jsonl" ] && [ "$(wc -l < "$dir/run/metrics.jsonl")" -ge 3 ] && break; sleep 0.1; done
pids=($(pgrep -f "build/train configs/bench-sft-alpaca.yaml" | sort -n))
victim=${pids[-1]}
logged=$(wc -l < "$dir/run/metrics.jsonl")
echo "training under way ($logged steps logged); kill -9 $victim (rank 1)"
t0=$(date +%s.%N)
kill -9 "$victim"
for _ in $(seq 600); do pgrep -f "build/train configs/bench-sft-alpaca.yaml" > /dev/null || break; sleep 0.1; done
t1=$(date +%s.%N)
if pgrep -f "build/train configs/bench-sft-alpaca.yaml" > /dev/null; then
  echo "HANG: ranks still running 60 s after the kill"; pkill -9 -f "build/train configs/bench-sft-alpaca.yaml"; exit 1
fi
wait "$launcher"; code=$?
printf "all ranks ended %.1f s after the kill (exit code %d); steps logged after the kill: %d; last output:\n" \
  "$(python3 -c "print($t1 - $t0)")" "$code" "$(( $(wc -l < "$dir/run/metrics.jsonl") - logged ))"
tail -n 6 "$dir"/*.log
