#!/bin/sh
# scripts/update-diag-goldens.sh: regenerate tests/diag/*.err from the current build.
#
# Each NAME.err is the exact stderr of `lipc check NAME.yaml` run inside tests/diag
# (tests/test_diag.c compares the library's diagnostics with it). Review the diff
# by eye before committing: every message must be clear, point at the right
# line:col and give a hint where one exists.
#
# usage: scripts/update-diag-goldens.sh [BUILD_DIR]   (default: build)
set -eu
root=$(cd "$(dirname "$0")/.." && pwd)
build=${1:-build}
case $build in /*) ;; *) build=$root/$build ;; esac
lipc=$build/lipc
[ -x "$lipc" ] || { echo "no $lipc: build first (cmake --build $build)" >&2; exit 2; }
cd "$root/tests/diag"
n=0
for f in *.yaml; do
    # Exit status 1 is the expected outcome; 0 means a bad model was accepted.
    if "$lipc" check "$f" >/dev/null 2>"${f%.yaml}.err"; then
        echo "warning: $f was accepted: it is not a bad model" >&2
    fi
    n=$((n + 1))
done
echo "regenerated $n golden files in tests/diag; review them with git diff" >&2
