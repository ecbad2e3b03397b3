#!/usr/bin/env bash
# Called by make before the first compile: prints ✓/✗ per dependency and stops the build with the
# exact command to run when something is missing. DEPS_PREFIX: an extra root to search (headers
# unpacked from .debs with dpkg -x on machines without apt).
prefix="${DEPS_PREFIX:-}"
cuda="${CUDA_HOME:-/usr/local/cuda}"
ok=1
have_header() { for d in /usr/include /usr/local/include "$cuda/include" ${prefix:+$prefix/usr/include}; do [ -e "$d/$1" ] && return 0; done; return 1; }
check() { # name, test command...
  local name="$1"; shift
  if "$@" >/dev/null 2>&1; then echo "  ✓ $name"; else echo "  ✗ $name"; ok=0; fi
}
echo "loom dependencies:"
check "nvcc ($cuda/bin/nvcc or PATH)" bash -c "command -v nvcc || test -x $cuda/bin/nvcc"
check "cuBLASLt headers" have_header cublasLt.h
check "NCCL headers" have_header nccl.h
check "yaml-cpp" have_header yaml-cpp/yaml.h
check "sentencepiece" have_header sentencepiece_processor.h
check "nlohmann-json" have_header nlohmann/json.hpp
check "PCRE2" have_header pcre2.h
check "utf8proc" have_header utf8proc.h
check "GoogleTest" have_header gtest/gtest.h
check "Open MPI (mpicxx)" command -v mpicxx
if [ $ok -eq 0 ]; then
  echo
  echo "Missing dependencies. Install them with:  sudo bash tools/setup.sh"
  echo "(CUDA itself: install the CUDA Toolkit 12.4+ so that nvcc, cuBLASLt and NCCL are under $cuda)"
  exit 1
fi
