#!/usr/bin/env bash
# Ablations of the method on Fashion-MNIST, each one command (docs/results.md):
#
#   scripts/ablations.sh loss [EPOCHS]   EMMA vs GloRo cross-entropy vs TRADES-GloRo
#                                        (lambda 2), the default LiResNet L6W64
#   scripts/ablations.sh arch [EPOCHS]   LiResNet vs the conventional ResNet of the
#                                        same size (nonlinear residual bodies): VRA and
#                                        how tight each one's bound is
#
# EPOCHS defaults to 1. Each run trains on 55000 images (5000 held out for
# validation), certifies the 10000 test images with the sound bound and prints
# one table row. Needs a built lipc (scripts/main.sh builds it). Outputs go to
# out/ablations/.
set -euo pipefail
cd "$(dirname "$0")/.."
what=${1:-}
epochs=${2:-1}
dir=out/ablations
mkdir -p "$dir"

num() { grep -o "\"$2\": *[-0-9.eE+a-z]*" "$1" | head -1 | sed 's/.*: *//'; }
vra() { grep -o "\"vra\": {[^}]*}" "$1" | grep -o "\"$2\": *[0-9.eE+-]*" | sed 's/.*: *//'; }
pct() { awk -v v="$1" 'BEGIN { printf "%.1f", 100 * v }'; }

# run NAME MODEL [train options...]: train, certify, print a row
run() {
  local name=$1 model=$2
  shift 2
  build/lipc train "$model" --epochs "$epochs" --val 5000 --seed 1 --no-report \
      --out "$dir/$name.safetensors" --json "$@" > "$dir/$name.train.json"
  build/lipc certify "$model" --weights "$dir/$name.safetensors" \
      --eps 0.1,0.141,0.3,0.5,1.0 --json > "$dir/$name.certify.json"
  local c=$dir/$name.certify.json t=$dir/$name.train.json
  printf '| %s | %s | %s | %s | %s | %s | %s | %.4g | %.0f |\n' "$name" \
    "$(pct "$(num "$c" clean_acc)")" "$(pct "$(vra "$c" 0.1)")" "$(pct "$(vra "$c" 0.141)")" \
    "$(pct "$(vra "$c" 0.3)")" "$(pct "$(vra "$c" 0.5)")" "$(pct "$(vra "$c" 1)")" \
    "$(num "$c" k_sub)" "$(num "$t" seconds)"
}

header() {
  echo "| run | clean % | VRA 0.1 | VRA 0.141 | VRA 0.3 | VRA 0.5 | VRA 1.0 | K_sub (sound) | train s |"
  echo "|---|---|---|---|---|---|---|---|---|"
}

case "$what" in
  loss)
    echo "Losses, LiResNet L6W64, $epochs epoch(s), seed 1"
    header
    for loss in emma gloro; do
      run "loss-$loss" models/liresnet-fmnist.yaml --loss "$loss"
    done
    # TRADES-GloRo with lambda = 1 is GloRo's cross-entropy exactly (the two
    # logsumexp(f) terms cancel), so the ablation uses lambda = 2: the model
    # file with that one key added to its train: section
    sed 's/^train:$/train:\n  trades_lambda: 2/' models/liresnet-fmnist.yaml \
        > "$dir/liresnet-fmnist-trades2.yaml"
    run "loss-trades-lambda2" "$dir/liresnet-fmnist-trades2.yaml" --loss trades
    ;;
  arch)
    echo "Architectures, EMMA, $epochs epoch(s), seed 1"
    header
    run arch-liresnet models/liresnet-fmnist.yaml
    run arch-resnet models/resnet-fmnist.yaml
    echo
    echo "Bound tightness: empirical lower bound on K (50 steepest-ascent pairs) against the"
    echo "power-iteration estimate and the sound bound of the whole network before the head"
    for a in liresnet resnet; do
      model=models/$a-fmnist.yaml
      build/lipc bound "$model" --weights "$dir/arch-$a.safetensors" --lower 50 --json \
          > "$dir/arch-$a.bound.json"
      echo "$a: $(grep -o '"k_sub[a-z_]*": *[-0-9.eE+]*\|"lower[a-z_]*": *[-0-9.eE+]*' \
          "$dir/arch-$a.bound.json" | tr '\n' ' ')"
    done
    ;;
  *)
    echo "usage: scripts/ablations.sh loss|arch [EPOCHS]" >&2
    exit 2
    ;;
esac
