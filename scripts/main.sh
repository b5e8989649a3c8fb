#!/usr/bin/env bash
# The main job, from a fresh Debian 12 machine: installs the dependencies
# (needs root or sudo), builds lipc, checks the default model and writes its
# IR after every pass to out/; then trains a small member of its family with
# certified training (EMMA) on the reference backend, bounds it and certifies
# the Fashion-MNIST test images with the sound bound. About 2 minutes on 2 cores.
#
#   scripts/main.sh [MODEL.yaml]      (default: models/liresnet-fmnist.yaml)
set -euo pipefail
cd "$(dirname "$0")/.."
model=${1:-models/liresnet-fmnist.yaml}
name=$(basename "$model" .yaml)

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

if [ "$model" = models/liresnet-fmnist.yaml ]; then
  # A small member of the family (the reference backend is plain loops in
  # double: the fast CPU backend trains the full model).
  small=(--set width=16 --set depth=2 --set dense=64)
  echo
  build/lipc train "$model" "${small[@]}" --limit 5000 --val 1000 --epochs 4 \
      --out out/liresnet-fmnist-small.safetensors
  echo
  build/lipc bound "$model" "${small[@]}" --weights out/liresnet-fmnist-small.safetensors
  echo
  build/lipc certify "$model" "${small[@]}" --weights out/liresnet-fmnist-small.safetensors \
      --eps 0.1,0.141,0.3,0.5,1.0 --limit 2000
fi
