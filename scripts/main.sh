#!/usr/bin/env bash
# The main job, from a fresh Debian 12 machine: installs the dependencies
# (needs root or sudo), builds lipc, checks the default model and writes its
# IR after every pass to out/; then trains the default Fashion-MNIST LiResNet
# (models/liresnet-fmnist.yaml: L6 W64, EMMA) on the cpu target, holding out
# 5000 training images for validation after every epoch, certifies the 10000
# test images with the sound bound and prints the results. Reports (training
# curves, VRA against eps) are drawn next to the checkpoint in out/.
#
#   scripts/main.sh [EPOCHS]        (default 5: about ten minutes on 2 cores)
#
# The long recipe is the same command with 15 epochs (docs/results.md).
set -euo pipefail
cd "$(dirname "$0")/.."
epochs=${1:-5}
model=models/liresnet-fmnist.yaml
name=liresnet-fmnist

scripts/install-deps.sh
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build

mkdir -p out
build/lipc check "$model"
build/lipc dump "$model" --print-after=all > "out/$name.ir.txt"
build/lipc dump "$model" --format=dot > "out/$name.dot"
build/lipc dump "$model" --format=json > "out/$name.json"
echo
echo "IR after every pass: out/$name.ir.txt; graph: out/$name.dot; JSON: out/$name.json"
echo

ckpt="out/$name.safetensors"
build/lipc train "$model" --epochs "$epochs" --val 5000 --val-every 1 --out "$ckpt" \
    --json > "out/$name.train.json"
echo
build/lipc certify "$model" --weights "$ckpt" --eps 0.1,0.141,0.3,0.5,1.0 \
    --report "out/$name" --json > "out/$name.certify.json"

# The results table, from the two JSON reports.
num() { # num FILE KEY: a number from a flat JSON object
  grep -o "\"$2\": *[-0-9.eE+a-z]*" "$1" | head -1 | sed 's/.*: *//'
}
vra() { # vra EPS: the VRA at a radius of the certify report
  grep -o "\"vra\": {[^}]*}" "out/$name.certify.json" | grep -o "\"$1\": *[0-9.eE+-]*" |
    sed 's/.*: *//'
}
pct() { awk -v v="$1" 'BEGIN { printf "%.1f %%", 100 * v }'; }
t=out/$name.train.json
c=out/$name.certify.json
echo
echo "Results: $name, $epochs epochs on the cpu target, Fashion-MNIST test set (10000 images)"
echo
printf '| %-26s | %s |\n' "quantity" "value"
printf '|%s|%s|\n' "----------------------------" "------------"
printf '| %-26s | %s |\n' "clean accuracy" "$(pct "$(num "$c" clean_acc)")"
for e in 0.1 0.141 0.3 0.5 1; do
  printf '| %-26s | %s |\n' "VRA at eps $e" "$(pct "$(vra "$e")")"
done
printf '| %-26s | %.4g |\n' "K_sub (sound bound)" "$(num "$c" k_sub)"
printf '| %-26s | %.4g |\n' "K_sub (power iteration)" "$(num "$c" k_sub_estimate)"
printf '| %-26s | %.0f s |\n' "training time" "$(num "$t" seconds)"
printf '| %-26s | %.0f |\n' "training images/s" "$(num "$t" images_per_s)"
printf '| %-26s | %.1f %% |\n' "validation VRA at 0.141" "$(awk -v v="$(num "$t" val_vra)" 'BEGIN{print 100*v}')"
echo
echo "Checkpoint $ckpt; metrics out/$name.metrics.jsonl;"
echo "reports out/$name-training.svg (curves) and out/$name-vra.svg (VRA against eps)"
