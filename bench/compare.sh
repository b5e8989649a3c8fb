#!/usr/bin/env bash
# bench/compare.sh: lipc's cpu target against the PyTorch peer on the same
# model, batch and threads, one after the other on an otherwise idle machine
# (the two must not run at once). Prints a markdown table; the raw JSON of
# every run goes to bench/out/.
#
#   bench/compare.sh [STEPS]      (default 10 timed steps after 3 warm-up)
#
# Needs build/lipc and build/cpu_step (cmake --build build --target cpu_step)
# and Debian's python3-torch (scripts/install-deps.sh --bench).
set -euo pipefail
cd "$(dirname "$0")/.."
steps=${1:-10}
mkdir -p bench/out
export OPENBLAS_CORETYPE=${OPENBLAS_CORETYPE:-SkylakeX}

field() { # field FILE KEY
  grep -o "\"$2\": *[-0-9.eE+]*" "$1" | head -1 | sed 's/.*: *//'
}

printf '| model | batch | threads | lipc train img/s | PyTorch train img/s | ratio | lipc infer+cert img/s | PyTorch infer+cert img/s | ratio | lipc train GFLOP/s | lipc JIT s | lipc peak RSS MiB |\n'
printf '|---|---|---|---|---|---|---|---|---|---|---|---|\n'
run() { # run LABEL BATCH ARGS...
  local label=$1 batch=$2
  shift 2
  for t in 1 2; do
    local l=bench/out/lipc-$label-t$t.json p=bench/out/torch-$label-t$t.json
    build/cpu_step "$@" --batch "$batch" --threads "$t" --steps "$steps" --warmup 3 > "$l"
    local sets=()
    while [ $# -gt 0 ]; do
      case "$1" in
        --set) sets+=(--set "$2"); shift 2 ;;
        *) model=$1; shift ;;
      esac
    done
    set -- "$model" "${sets[@]}"
    /usr/bin/python3 bench/torch_peer.py --model "$model" "${sets[@]}" --batch "$batch" --threads "$t" \
        --channels-last --steps "$steps" --warmup 3 --json > "$p"
    local lt lc pt pc
    lt=$(field "$l" train_img_s); lc=$(field "$l" certify_l2_img_s)
    pt=$(field "$p" train_img_s); pc=$(field "$p" infer_img_s)
    printf '| %s | %s | %s | %.0f | %.0f | %.2fx | %.0f | %.0f | %.2fx | %.0f | %.1f | %.0f |\n' \
      "$label" "$batch" "$t" "$lt" "$pt" "$(awk -v a="$lt" -v b="$pt" 'BEGIN{print a/b}')" \
      "$lc" "$pc" "$(awk -v a="$lc" -v b="$pc" 'BEGIN{print a/b}')" \
      "$(field "$l" train_gflop_s)" "$(field "$l" jit_s)" "$(field "$l" peak_rss_mb)"
  done
}
run fmnist-L6W64 128 models/liresnet-fmnist.yaml
run cifar-L12W128 64 models/liresnet-cifar10.yaml --set width=128
