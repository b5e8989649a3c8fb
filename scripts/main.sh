#!/usr/bin/env bash
# The main job, from a fresh Debian 12 machine: installs the dependencies
# (needs root or sudo), builds lipc, checks the default model and writes its
# IR after every pass to out/ as text, Graphviz dot and JSON.
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
