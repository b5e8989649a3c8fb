#!/usr/bin/env bash
# Installs the Debian 12 packages lipc needs to build and test (and the
# Fashion-MNIST dataset, which training, certification and some tests read, and gnuplot,
# which draws the training and VRA reports). Idempotent: when every
# package is already present it does nothing; otherwise it runs `apt-get update` once and
# installs what is missing. Run as root (or through sudo).
#
#   scripts/install-deps.sh            build + test dependencies
#   scripts/install-deps.sh --fuzz     also clang-19 and libFuzzer, for tests/fuzz
#   scripts/install-deps.sh --bench    also PyTorch and NumPy, for the PyTorch peer in bench/
set -euo pipefail

packages=(
  build-essential cmake pkg-config ninja-build
  llvm-19-dev
  libyaml-dev libjansson-dev zlib1g-dev
  liblapacke-dev libopenblas-dev
  libcriterion-dev
  dataset-fashion-mnist
  gnuplot-nox
)
for arg in "$@"; do
  case "$arg" in
    --fuzz) packages+=(clang-19 libfuzzer-19-dev libclang-rt-19-dev) ;;
    --bench) packages+=(python3 python3-torch python3-numpy) ;;
    *) echo "install-deps.sh: unknown option '$arg'" >&2; exit 2 ;;
  esac
done

missing=()
for p in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "install-deps: all ${#packages[@]} packages present"
  exit 0
fi

sudo=""
if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
echo "install-deps: installing ${missing[*]}"
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
echo "install-deps: done"
