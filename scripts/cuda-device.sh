#!/usr/bin/env bash
# scripts/cuda-device.sh: the cuda target's checks and benchmark on a GPU.
#
#   scripts/cuda-device.sh prepare    on the build machine (CUDA toolkit, lipc's
#                                     dependencies): builds the bundle in .device/
#   scripts/cuda-device.sh run        on the GPU machine, from the repository root,
#                                     with .device/ beside the sources
#
# A GPU machine may have the CUDA toolkit, PyTorch and cuDNN but none of lipc's
# other build dependencies (LLVM 19, libyaml, jansson, Criterion). So `prepare`
# builds, where they are installed, the programs that need none of LLVM:
#   .device/bin/lipc_gpu_tests   the cuda target's tests (tests/test_cuda.c): on a
#                                GPU, every model of the suite and a small
#                                LiResNet against the reference backend (logits,
#                                whole-step gradients, one step), with the
#                                convolutions measured and chosen, forced
#                                through cuDNN, and emitted; TF32 off
#   .device/bin/gpu_step         bench/cpu_step.c for the cuda target
#   .device/lib/                 the shared libraries they need that a GPU image
#                                may lack (not glibc, libstdc++ or CUDA's)
#   .device/dumps/LABEL.json     the benchmark models' `lipc dump --format=json`,
#                                which the PyTorch peer reads
# and `run` runs them: the GPU tests, then bench/gpu_compare.sh (lipc against
# the PyTorch peer on the same GPU), printing the comparison table last. Logs
# go to $OUT (or .device/out). CUDA's own libraries and cuDNN are the GPU
# machine's (its toolkit, or PyTorch's bundled cuDNN).
#
# Options of run: --steps S (default 10), --quick (5 steps, 2 warm-up, the
# Fashion-MNIST model only), --no-bench, --no-tests.
set -euo pipefail
cd "$(dirname "$0")/.."

bundle=.device

prepare() {
  local build=${LIPC_BUILD:-build}
  cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=Release >/dev/null
  cmake --build "$build" -j"$(nproc)" --target lipc lipc_gpu_tests gpu_step ||
    { echo "cuda-device: the build failed (without the CUDA toolkit there is no" \
           "lipc_gpu_tests target)" >&2; exit 2; }
  rm -rf "$bundle"
  mkdir -p "$bundle/bin" "$bundle/lib" "$bundle/dumps"
  cp "$build/lipc_gpu_tests" "$build/gpu_step" "$bundle/bin/"
  # what the dynamic linker finds here, less the system's core and CUDA's
  ldd "$bundle/bin/lipc_gpu_tests" "$bundle/bin/gpu_step" | awk '$3 ~ /^\// { print $3 }' |
    sort -u | grep -Ev '/(libc|libm|libdl|libpthread|librt|libresolv|libstdc\+\+|libgcc_s|ld-linux[^/]*)\.so|/libcu|/libnvrtc|/libcudnn' |
    while read -r lib; do cp -L "$lib" "$bundle/lib/"; done
  "$build/lipc" dump models/liresnet-fmnist.yaml --format=json > "$bundle/dumps/fmnist-L6W64.json"
  "$build/lipc" dump models/liresnet-cifar10.yaml --set width=512 --set depth=12 --format=json \
    > "$bundle/dumps/cifar-L12W512.json"
  # the bundle travels to the GPU machine beside the sources, not in git
  grep -qx "/$bundle/" .git/info/exclude 2>/dev/null || echo "/$bundle/" >> .git/info/exclude
  echo "cuda-device: bundle ready ($(du -sh "$bundle" | cut -f1)): carry '$bundle' and run" \
       "'scripts/cuda-device.sh run' there" >&2
}

# CUDA's runtime, NVRTC and cuDNN on the GPU machine: its toolkit, else the
# Python wheels PyTorch brings.
cuda_libs() {
  local dirs=() d
  for d in /usr/local/cuda/lib64 /usr/local/cuda/lib /usr/local/cuda/targets/x86_64-linux/lib; do
    [ -d "$d" ] && dirs+=("$d")
  done
  local py
  py=$(python3 - <<'PY' 2>/dev/null || true
import importlib, os
for name in ("nvidia.cudnn", "nvidia.cuda_nvrtc", "nvidia.cuda_runtime", "nvidia.cu13"):
    try:
        m = importlib.import_module(name)
    except Exception:
        continue
    for p in getattr(m, "__path__", []):
        for sub in ("lib", "lib64"):
            if os.path.isdir(os.path.join(p, sub)):
                print(os.path.join(p, sub))
PY
)
  while read -r d; do [ -n "$d" ] && dirs+=("$d"); done <<< "$py"
  local IFS=:
  echo "${dirs[*]}"
}

run() {
  local steps=10 warmup=3 models=fmnist,cifar bench=1 tests=1
  while [ $# -gt 0 ]; do
    case "$1" in
      --steps) steps=$2; shift 2 ;;
      --quick) steps=5 warmup=2 models=fmnist; shift ;;
      --no-bench) bench=0; shift ;;
      --no-tests) tests=0; shift ;;
      *) echo "cuda-device: unknown option '$1'" >&2; exit 2 ;;
    esac
  done
  [ -x "$bundle/bin/lipc_gpu_tests" ] ||
    { echo "cuda-device: no bundle: run 'scripts/cuda-device.sh prepare' first" >&2; exit 2; }
  local out=${OUT:-$bundle/out}
  mkdir -p "$out"
  export LD_LIBRARY_PATH="$PWD/$bundle/lib:$(cuda_libs)${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  nvidia-smi -L 2>&1 | tee "$out/gpu.txt" || true
  ldd "$bundle/bin/gpu_step" | grep 'not found' && { echo "cuda-device: libraries missing (above)" >&2; exit 2; }
  local test_rc=0 summary="tests not run"
  if [ "$tests" = 1 ]; then
    set +e
    timeout 300 "$bundle/bin/lipc_gpu_tests" --filter 'cuda_gpu/*' -j1 --verbose=1 \
      > "$out/tests.log" 2>&1
    test_rc=$?
    set -e
    summary=$(grep 'Synthesis' "$out/tests.log" | head -1)
    grep -E 'FAIL|differ|off by|disagree|lipc: cuda' "$out/tests.log" | head -20 || true
  fi
  if [ "$bench" = 1 ]; then
    timeout 420 bench/gpu_compare.sh --step-bin "$bundle/bin/gpu_step" --dumps "$bundle/dumps" \
      --steps "$steps" --warmup "$warmup" --models "$models" --certify-n 0 \
      2> "$out/bench.err" | tee "$out/gpu_compare.md" > /dev/null || {
      tail -20 "$out/bench.err" >&2
      echo "cuda-device: the benchmark failed (above)" >&2
    }
    cp bench/out/gpu-*.json "$out/" 2>/dev/null || true
  fi
  echo
  echo "GPU tests: $summary (exit $test_rc)"
  [ "$bench" = 1 ] && cat "$out/gpu_compare.md"
  return "$test_rc"
}

case "${1:-}" in
  prepare) shift; prepare "$@" ;;
  run) shift; run "$@" ;;
  *) echo "usage: scripts/cuda-device.sh prepare | run [--steps S] [--quick] [--no-bench] [--no-tests]" >&2
     exit 2 ;;
esac
