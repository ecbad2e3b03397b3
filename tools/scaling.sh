#!/usr/bin/env bash
# Multi-GPU scaling per BENCHMARK.md, through build/train on the sft-alpaca workload:
#   weak:   32 sequences per GPU per step  -> efficiency = tok/s(N) / (N · tok/s(1))
#   strong: 32 sequences in all
# tokens/s = mean over the timed steps (after 2 warm-up steps) of metrics.jsonl's tokens_per_s.
# Usage: bash tools/scaling.sh [presets...]   (default: qwen3-0.6b llama-3.1-8b); GPUS="1 2" by default.
# BASE_TPS=<tokens/s>: the 1-GPU figure measured before on the same device (then GPUS may omit 1).
set -euo pipefail
cd "$(dirname "$0")/.."
presets=("${@:-qwen3-0.6b llama-3.1-8b}")
read -r -a presets <<< "${presets[*]}"
gpus=${GPUS:-"1 2"}
out=${SCALING_OUT:-build/scaling.jsonl}
: > "$out"
export NCCL_NVLS_ENABLE=0  # NVLink multicast stays off on shared machines

tokens_per_s() {  # mean tokens_per_s of steps 3.. in a metrics.jsonl
  python3 -c "import json,sys; r=[json.loads(l) for l in open(sys.argv[1])][2:]; print(sum(x['tokens_per_s'] for x in r)/len(r))" "$1"
}

run() {  # preset, gpus, global batch -> tokens/s
  local dir="build/scaling/$1-$2gpu-$3"
  rm -rf "$dir"
  local launch=()
  [ "$2" -gt 1 ] && launch=(mpirun --allow-run-as-root --bind-to none -np "$2" -x NCCL_NVLS_ENABLE=0)
  "${launch[@]}" build/train configs/bench-sft-alpaca.yaml model.preset="$1" train.global_batch="$3" \
    data.synthetic_docs=$((3 * 7 * $3)) output.dir="$dir" > "$dir.log" 2>&1 || { tail -20 "$dir.log"; exit 1; }
  tokens_per_s "$dir/metrics.jsonl"
}

printf "%-14s %4s | %12s %8s | %12s %8s\n" preset gpus "weak tok/s" "eff" "strong tok/s" "eff"
for p in "${presets[@]}"; do
  base=${BASE_TPS:-}
  for n in $gpus; do
    mkdir -p build/scaling
    weak=$(run "$p" "$n" $((32 * n)))
    strong=$([ "$n" -eq 1 ] && echo "$weak" || run "$p" "$n" 32)
    [ -z "$base" ] && base=$weak
    ew=$(python3 -c "print(f'{$weak/($n*$base):.3f}')")
    es=$(python3 -c "print(f'{$strong/($n*$base):.3f}')")
    printf "%-14s %4s | %12.0f %8s | %12.0f %8s\n" "$p" "$n" "$weak" "$ew" "$strong" "$es"
    echo "{\"preset\":\"$p\",\"mode\":\"nf4\",\"gpus\":$n,\"weak_tokens_per_s\":$weak,\"weak_efficiency\":$ew,\"strong_tokens_per_s\":$strong,\"strong_efficiency\":$es}" >> "$out"
  done
done
echo "device: $(nvidia-smi --query-gpu=name --format=csv,noheader | head -1) x$(nvidia-smi -L | wc -l), commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown), $(date -u +%F)"
