#!/bin/sh
# Copy this worktree's kernel code into /work/main/.kern (git-ignored there) for the device tool,
# which ships only the main checkout. Usage: sh benchmarks/sync_kern.sh
set -e
src=$(cd "$(dirname "$0")/.." && pwd)
dst=/work/main/.kern
rm -rf "$dst"
mkdir -p "$dst/podserve" "$dst/tests" "$dst/benchmarks"
cp "$src/podserve/__init__.py" "$dst/podserve/"
cp -r "$src/podserve/attention" "$src/podserve/kernels" "$dst/podserve/"
cp -r "$src/tests/kernels" "$dst/tests/"
cp "$src/benchmarks/"*.py "$dst/benchmarks/"
find "$dst" -name __pycache__ -prune -exec rm -rf {} +
du -sh "$dst"
