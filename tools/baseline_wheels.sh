#!/usr/bin/env bash
# The wheels of issue 15's stronger baselines (Liger, Unsloth and what they import that the GPU
# machine's python3 lacks), kept in the git-ignored .whl15/ because the GPU machine has no network.
#   bash tools/baseline_wheels.sh fetch     (here, with PyPI: downloads the pinned wheels into .whl15/)
#   bash tools/baseline_wheels.sh install   (on the GPU machine: installs what python3 cannot import)
#   export PYTHONPATH=/tmp/site15${PYTHONPATH:+:$PYTHONPATH}
# No torch, triton, CUDA runtime, transformers or peft: the machine's own are used (Unsloth 2026.10.9's
# metadata wants transformers <= 5.17, torch < 2.15, trl <= 1.15; it trained with trl 1.16 in the CPU
# check). trl, datasets, dill, multiprocess, requests, urllib3 and charset_normalizer come from .whl/
# (tools/trl_dpo_baseline.py's). Two wheels are stripped (tools/strip_wheel.py): unsloth without studio/
# (its web UI, 88 MB unpacked, never imported) and bitsandbytes with only its CUDA 12.6/12.8/13.0/13.2
# and CPU libraries (it loads the one of torch.version.cuda, else the nearest lower of the same major).
# install exits 0 even when something fails: the benchmark skips the row whose imports fail.
set -uo pipefail
cd "$(dirname "$0")/.."
DIR=.whl15
PINNED="liger_kernel==0.8.5 unsloth==2026.10.9 unsloth_zoo==2026.10.9 bitsandbytes==0.50.2 pillow==13.0.0
sentencepiece==0.2.3 protobuf==7.36.2 msgspec==0.23.0 tyro==1.0.17 certifi==2026.10.19.post1 idna==3.21
einops==0.8.2 typeguard==4.6.1 shtab==1.13.0 cut_cross_entropy==25.1.1 docstring_parser==0.18.0"
KEEP_BNB="libbitsandbytes_cpu.so libbitsandbytes_cuda126.so libbitsandbytes_cuda128.so libbitsandbytes_cuda130.so
libbitsandbytes_cuda132.so"

fetch() {
  local raw
  raw=$(mktemp -d)
  mkdir -p "$DIR"
  # The GPU machine's python: 3.12 on x86_64 Linux.
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --platform manylinux_2_28_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux_2_24_x86_64 --platform any -d "$raw" $PINNED || exit 1
  for wheel in "$raw"/*.whl; do
    case "$(basename "$wheel")" in
      unsloth-2*) python3 tools/strip_wheel.py "$wheel" "$DIR" studio/ ;;
      bitsandbytes-*)
        local drop
        drop=$(python3 -c "import sys, zipfile; keep = set(sys.argv[2].split())
print(' '.join(n for n in (i.filename for i in zipfile.ZipFile(sys.argv[1]).infolist())
               if n.startswith('bitsandbytes/libbitsandbytes_') and n.split('/')[-1] not in keep))" "$wheel" "$KEEP_BNB")
        python3 tools/strip_wheel.py "$wheel" "$DIR" $drop ;;
      *) cp "$wheel" "$DIR/" ;;
    esac
  done
  rm -rf "$raw"
  du -sh "$DIR"
}

install() {
  local site=${SITE:-/tmp/site15}
  mkdir -p "$site"
  export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
  export HF_HUB_OFFLINE=1 UNSLOTH_DISABLE_STATISTICS=1  # no network on the GPU machine
  # module -> wheel file pattern (.whl15 first, then .whl)
  declare -A wheels=(
    [liger_kernel]="liger_kernel-*" [unsloth]="unsloth-2*" [unsloth_zoo]="unsloth_zoo-*"
    [bitsandbytes]="bitsandbytes-*" [trl]="trl-*" [datasets]="datasets-*" [dill]="dill-*"
    [multiprocess]="multiprocess-*" [requests]="requests-*" [urllib3]="urllib3-*"
    [charset_normalizer]="charset_normalizer-*" [idna]="idna-*" [certifi]="certifi-*" [PIL]="pillow-*"
    [google.protobuf]="protobuf-*" [sentencepiece]="sentencepiece-*" [tyro]="tyro-*"
    [docstring_parser]="docstring_parser-*" [typeguard]="typeguard-*" [shtab]="shtab-*"
    [msgspec]="msgspec-*" [cut_cross_entropy]="cut_cross_entropy-*" [einops]="einops-*"
  )
  local order="liger_kernel unsloth unsloth_zoo bitsandbytes trl datasets dill multiprocess requests urllib3
charset_normalizer idna certifi PIL google.protobuf sentencepiece tyro docstring_parser typeguard shtab msgspec
cut_cross_entropy einops"
  local missing=() module wheel
  for module in $order; do
    if python3 -c "import $module" >/dev/null 2>&1; then
      echo "present   $module"
      continue
    fi
    wheel=$(ls $DIR/${wheels[$module]}.whl .whl/${wheels[$module]}.whl 2>/dev/null | head -n1)
    if [[ -z "$wheel" ]]; then
      echo "FAILED    $module: not importable and no wheel for it in $DIR/ or .whl/"
      continue
    fi
    missing+=("$wheel")
    echo "to install $module from $wheel"
  done
  if ((${#missing[@]})); then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" \
      "${missing[@]}" || echo "FAILED    pip install --target $site ${missing[*]}"
  fi
  echo "python3 $(python3 -c 'import sys; print(sys.version.split()[0])'), PYTHONPATH=$PYTHONPATH"
  python3 -c "import torch, transformers, peft; print('torch', torch.__version__, 'cuda', torch.version.cuda,
    'transformers', transformers.__version__, 'peft', peft.__version__)"
  python3 -c "import liger_kernel.transformers, importlib.metadata as m; print('liger-kernel', m.version('liger-kernel'), 'imports')" ||
    echo "FAILED    import liger_kernel.transformers"
  python3 -c "import unsloth, bitsandbytes; from unsloth import FastLanguageModel; print('unsloth', unsloth.__version__,
    'bitsandbytes', bitsandbytes.__version__, 'imports')" || echo "FAILED    import unsloth"
  return 0
}

case "${1:-}" in
  fetch) fetch ;;
  install) install ;;
  *) echo "usage: bash tools/baseline_wheels.sh fetch|install" >&2; exit 2 ;;
esac
