#!/usr/bin/env bash
# Builds lipc and runs the whole test suite. The last line printed is the
# Criterion summary ("Synthesis: ...").
#
#   scripts/test.sh              plain build (build/)
#   scripts/test.sh --sanitize   AddressSanitizer + UBSan build (build-asan/)
set -euo pipefail
cd "$(dirname "$0")/.."

build=build
flags=()
for arg in "$@"; do
  case "$arg" in
    --sanitize) build=build-asan; flags+=(-DLIPC_SANITIZE=ON -DCMAKE_BUILD_TYPE=Debug) ;;
    *) echo "test.sh: unknown option '$arg'" >&2; exit 2 ;;
  esac
done

scripts/install-deps.sh
cmake -S . -B "$build" -G Ninja -DLIPC_WERROR=ON "${flags[@]}" >/dev/null
cmake --build "$build"
# Criterion runs each test in its own process; two workers match CI's 2 cores.
exec "$build/tests/lipc_tests" --jobs 2
