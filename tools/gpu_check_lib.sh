# What the quick kernel checks (tools/gpu_attention_check.sh, tools/gpu_moe_check.sh) share: sourced,
# with LOG_DIR set. Builds in the checkout (header-only deps from .deps when present), runs each step
# with its output teed into $LOG_DIR, and records the device and commit first.
MAKE_ARGS=(-j"$(nproc)")
[ -d .deps ] && MAKE_ARGS+=(DEPS_PREFIX="$PWD/.deps")  # header-only deps unpacked beside the checkout
CUDA_HOME="${CUDA_HOME:-/usr/local/cuda}"
status=0
mkdir -p "$LOG_DIR"
step() {  # name, log file, command...: a failed command sets status 1 and the run goes on
  local name="$1" log="$2"; shift 2
  echo "== $name"
  if ! "$@" 2>&1 | tee "$LOG_DIR/$log"; then echo "!! $name failed"; status=1; fi
}
# Links a benchmark program from the objects it names (built first) against the CUDA libraries.
link_bench() {  # output, objects...
  local out="$1"; shift
  make "${MAKE_ARGS[@]}" "$@" && g++ -o "$out" "$@" -L"$CUDA_HOME/lib64" -Wl,-rpath,"$CUDA_HOME/lib64" \
    -lcublasLt -lcublas -lcudart -fopenmp
}
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm --format=csv 2>&1 | tee "$LOG_DIR/device.txt"
git log -1 --format='commit %h' 2>/dev/null | tee -a "$LOG_DIR/device.txt"
