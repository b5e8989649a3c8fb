#!/usr/bin/env bash
# bench/gpu_compare.sh: lipc's cuda target against the PyTorch peer on the
# same GPU, model, batch and power iterations, one after the other (never at
# once). Prints a markdown table (also kept as bench/out/gpu_compare.md); the
# raw JSON of every run goes to bench/out/.
#
#   bench/gpu_compare.sh [--steps S] [--warmup W] [--tf32 on|off]
#                        [--certify-n N] [--models fmnist,cifar] [--build DIR]
#                        [--step-bin PATH] [--dumps DIR]
#
# Defaults: 10 timed steps after 3 warm-up, TF32 on in the peer's training
# step (PyTorch's own default for convolutions; lipc computes in plain float),
# lipc's host-side rounding bounds timed on 1 image (0: skipped), both models,
# the build directory build/ (or $LIPC_BUILD). The peer runs under /usr/bin/python3
# unless $PYTHON names another interpreter (one whose PyTorch has CUDA).
#
# Needs DIR/lipc and DIR/cpu_step (cmake --build DIR --target cpu_step), built
# with the CUDA toolkit, and an NVIDIA GPU; exits 3 with one line when lipc or
# PyTorch cannot use a GPU. On a GPU machine without LLVM (scripts/cuda-device.sh):
# --step-bin names the step benchmark built without it (gpu_step), and --dumps a
# folder of the models' `lipc dump --format=json` made elsewhere (LABEL.json),
# which the peer reads instead of running lipc.
set -euo pipefail
cd "$(dirname "$0")/.."
steps=10 warmup=3 tf32=on certify_n=1 models=fmnist,cifar build=${LIPC_BUILD:-build}
step_bin="" dumps=""
py=${PYTHON:-/usr/bin/python3}
usage() {
  echo "gpu_compare: $1" >&2
  echo "usage: bench/gpu_compare.sh [--steps S] [--warmup W] [--tf32 on|off] [--certify-n N]" \
       "[--models fmnist,cifar] [--build DIR]" >&2
  exit 2
}
while [ $# -gt 0 ]; do
  case "$1" in
    --steps) steps=$2; shift 2 ;;
    --warmup) warmup=$2; shift 2 ;;
    --tf32) tf32=$2; shift 2 ;;
    --certify-n) certify_n=$2; shift 2 ;;
    --models) models=$2; shift 2 ;;
    --build) build=$2; shift 2 ;;
    --step-bin) step_bin=$2; shift 2 ;;
    --dumps) dumps=$2; shift 2 ;;
    *) usage "unknown option '$1'" ;;
  esac
done
case "$tf32" in on|off) ;; *) usage "--tf32 takes on or off" ;; esac
step_bin=${step_bin:-$build/cpu_step}
need=("$step_bin")
[ -n "$dumps" ] || need+=("$build/lipc")
for f in "${need[@]}"; do
  [ -x "$f" ] || { echo "gpu_compare: $f is missing (cmake --build $build --target lipc cpu_step)" >&2; exit 2; }
done
mkdir -p bench/out

field() { # field FILE KEY: a value of the JSON object in FILE ("" for null)
  "$py" -c 'import json, sys
v = json.load(open(sys.argv[1])).get(sys.argv[2])
print("" if v is None else v)' "$1" "$2"
}
num() { # num FMT VALUE: "-" when VALUE is empty
  if [ -n "$2" ]; then printf "$1" "$2"; else printf -- '-'; fi
}
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a == "" || b == "" || b == 0) print "-"; else printf "%.2fx", a / b }'; }

rows=() lipc_gpu="" torch_gpu=""
run() { # run LABEL BATCH MODEL [--set K=V]...
  local label=$1 batch=$2 model=$3
  shift 3
  local l=bench/out/gpu-lipc-$label.json p=bench/out/gpu-torch-$label.json
  local le=bench/out/gpu-lipc-$label.err pe=bench/out/gpu-torch-$label.err
  echo "gpu_compare: $label: lipc --target cuda, batch $batch" >&2
  if ! "$step_bin" "$model" "$@" --target cuda --batch "$batch" --steps "$steps" \
      --warmup "$warmup" --certify-n "$certify_n" > "$l" 2> "$le"; then
    cat "$le" >&2
    if grep -q 'no usable NVIDIA GPU\|built without the CUDA toolkit' "$le"; then
      echo "gpu_compare: lipc cannot use a GPU on this machine (above); nothing compared" >&2
      exit 3
    fi
    echo "gpu_compare: $label: lipc failed (above)" >&2
    exit 1
  fi
  local iters
  iters=$(field "$l" power_iters)
  echo "gpu_compare: $label: PyTorch --device cuda, batch $batch, $iters power iterations" >&2
  local rc=0
  local src=(--model "$model" "$@" --lipc "$build/lipc")
  [ -z "$dumps" ] || src=(--dump "$dumps/$label.json")
  "$py" bench/torch_peer.py "${src[@]}" --device cuda \
      --tf32 "$tf32" --batch "$batch" --power-iters "$iters" --channels-last \
      --steps "$steps" --warmup "$warmup" --json > "$p" 2> "$pe" || rc=$?
  if [ "$rc" -ne 0 ]; then
    cat "$pe" >&2
    if [ "$rc" -eq 2 ] && grep -q 'no CUDA device' "$pe"; then
      echo "gpu_compare: PyTorch ($py) cannot use a GPU on this machine (above); set PYTHON" \
           "to an interpreter whose PyTorch has CUDA" >&2
      exit 3
    fi
    echo "gpu_compare: $label: the PyTorch peer failed (above)" >&2
    exit 1
  fi
  lipc_gpu=$(field "$l" device) torch_gpu=$(field "$p" gpu)
  local lt lc lb lm pt pc pm
  lt=$(field "$l" train_img_s) lc=$(field "$l" infer_cert_img_s) lb=$(field "$l" certify_img_s)
  lm=$(field "$l" peak_gpu_mib) pt=$(field "$p" train_img_s) pc=$(field "$p" infer_img_s)
  pm=$(field "$p" peak_gpu_mib)
  rows+=("$(printf '| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |' \
    "$label" "$batch" "$(num %.0f "$lt")" "$(num %.0f "$pt")" "$(ratio "$lt" "$pt")" \
    "$(num %.0f "$lc")" "$(num %.0f "$pc")" "$(ratio "$lc" "$pc")" \
    "$(num %.0f "$lm")" "$(num %.0f "$pm")" "$(num %.1f "$(field "$l" compile_s)")" \
    "$(num %.2f "$lb")")")
}

IFS=, read -ra which <<< "$models"
for m in "${which[@]}"; do
  case "$m" in
    fmnist) run fmnist-L6W64 128 models/liresnet-fmnist.yaml ;;
    cifar) run cifar-L12W512 256 models/liresnet-cifar10.yaml --set width=512 --set depth=12 ;;
    *) echo "gpu_compare: unknown model '$m' (fmnist, cifar)" >&2; exit 2 ;;
  esac
done

table() {
  printf 'GPU: %s (lipc); %s (PyTorch, TF32 %s in training)\n\n' "$lipc_gpu" "$torch_gpu" "$tf32"
  printf '| model | batch | lipc train img/s | PyTorch train img/s | ratio | lipc infer+cert img/s | PyTorch infer+cert img/s | ratio | lipc peak GPU MiB | PyTorch peak GPU MiB | lipc compile s | lipc sound bounds img/s (host, double) |\n'
  printf '|---|---|---|---|---|---|---|---|---|---|---|---|\n'
  printf '%s\n' "${rows[@]}"
}
table | tee bench/out/gpu_compare.md
