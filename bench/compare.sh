#!/usr/bin/env bash
# bench/compare.sh: lipc's cpu target against the PyTorch peer on the same
# model, batch and threads, one after the other on an otherwise idle machine
# (the two must not run at once). Prints a markdown table; the raw JSON of
# every run goes to bench/out/.
#
#   bench/compare.sh [STEPS] [ROUNDS] [ONLY]
#
# STEPS: timed steps after 3 warm-up (default 10). ROUNDS (default 1): pairs
# of runs per line, lipc then the peer; the table then gives each side's
# median and the median of the pairs' ratios, which a noisy machine moves
# less than a single pair (each pair's numbers go to stderr). ONLY: a glob on
# "label:threads" (e.g. 'cifar-*:1') to run some lines only.
#
# Needs build/lipc and build/cpu_step (cmake --build build --target cpu_step)
# and Debian's python3-torch (scripts/install-deps.sh --bench).
set -euo pipefail
cd "$(dirname "$0")/.."
steps=${1:-10}
rounds=${2:-1}
only=${3:-*}
mkdir -p bench/out
export OPENBLAS_CORETYPE=${OPENBLAS_CORETYPE:-SkylakeX}

field() { # field FILE KEY
  grep -o "\"$2\": *[-0-9.eE+]*" "$1" | head -1 | sed 's/.*: *//'
}

median() { # median VALUES...
  printf '%s\n' "$@" | sort -g | awk '{v[NR] = $1} END {print NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2}'
}

printf '| model | batch | threads | lipc train img/s | PyTorch train img/s | ratio | lipc infer+cert img/s | PyTorch infer+cert img/s | ratio | lipc train GFLOP/s | lipc JIT s | lipc peak RSS MiB |\n'
printf '|---|---|---|---|---|---|---|---|---|---|---|---|\n'
run() { # run LABEL BATCH MODEL [--set KEY=VALUE]...
  local label=$1 batch=$2 model=$3
  shift 3
  local sets=("$@")
  for t in 1 2; do
    case "$label:$t" in $only) ;; *) continue ;; esac
    local l=bench/out/lipc-$label-t$t.json p=bench/out/torch-$label-t$t.json
    local lts=() lcs=() pts=() pcs=() rts=() rcs=()
    for r in $(seq "$rounds"); do
      build/cpu_step "$model" "${sets[@]}" --batch "$batch" --threads "$t" --steps "$steps" \
          --warmup 3 > "$l"
      /usr/bin/python3 bench/torch_peer.py --model "$model" "${sets[@]}" --batch "$batch" \
          --threads "$t" --channels-last --steps "$steps" --warmup 3 --json > "$p"
      local lt lc pt pc
      lt=$(field "$l" train_img_s); lc=$(field "$l" certify_l2_img_s)
      pt=$(field "$p" train_img_s); pc=$(field "$p" infer_img_s)
      lts+=("$lt"); lcs+=("$lc"); pts+=("$pt"); pcs+=("$pc")
      rts+=("$(awk -v a="$lt" -v b="$pt" 'BEGIN{print a/b}')")
      rcs+=("$(awk -v a="$lc" -v b="$pc" 'BEGIN{print a/b}')")
      [ "$rounds" -gt 1 ] && printf '%s, %s threads, round %s: train %s / %s, infer+cert %s / %s\n' \
          "$label" "$t" "$r" "$lt" "$pt" "$lc" "$pc" >&2
    done
    printf '| %s | %s | %s | %.1f | %.1f | %.2fx | %.0f | %.0f | %.2fx | %.0f | %.1f | %.0f |\n' \
      "$label" "$batch" "$t" "$(median "${lts[@]}")" "$(median "${pts[@]}")" \
      "$(median "${rts[@]}")" "$(median "${lcs[@]}")" "$(median "${pcs[@]}")" \
      "$(median "${rcs[@]}")" \
      "$(field "$l" train_gflop_s)" "$(field "$l" jit_s)" "$(field "$l" peak_rss_mb)"
  done
}
run fmnist-L6W64 128 models/liresnet-fmnist.yaml
run cifar-L12W128 64 models/liresnet-cifar10.yaml --set width=128
