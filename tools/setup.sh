#!/usr/bin/env bash
# Installs every Debian package loom builds against. Idempotent: installs only what is missing.
# Run as root (or with sudo). The CUDA toolkit (nvcc, cuBLAS/cuBLASLt, NCCL) is expected at
# /usr/local/cuda; it is not a Debian package here.
set -euo pipefail
PACKAGES=(
  g++ make pkg-config
  libyaml-cpp-dev          # YAML configs
  libsentencepiece-dev sentencepiece   # .model tokenizers (+ spm_train for the demo tokenizer)
  libopenmpi-dev openmpi-bin           # mpirun launch, rank discovery
  libgtest-dev             # GoogleTest
  nlohmann-json3-dev       # config.json, tokenizer.json, JSONL
  libpcre2-dev             # tokenizer.json Split regexes (look-ahead, \p{L}, \p{N})
  libutf8proc-dev          # NFC normalisation (Qwen tokenizers)
  python3-matplotlib       # tools/plot_run.py: a run's curves.png (and its test)
)
missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "setup: all ${#PACKAGES[@]} packages present"
  exit 0
fi
SUDO=""
[ "$(id -u)" -ne 0 ] && SUDO="sudo"
echo "setup: installing ${missing[*]}"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
