#!/usr/bin/env bash
# v4rl's CUDA ops against an eager torch bf16 baseline at the same shapes on the same GPU, one
# table with the ratio (torch ms / v4rl ms; > 1 means v4rl is faster). Run on the H200 machine:
#
#   bench/cuda_kernels_bench.sh BENCH_BINARY [TOKENS=4096] [PYTHON=/opt/torch/.venv/bin/python3]
#
# Measured figures are in the session report of issue 11 (not repeated here until tuned).
set -euo pipefail
cd "$(dirname "$0")/.."
binary="$1" tokens="${2:-4096}" python="${3:-/opt/torch/.venv/bin/python3}"
"$binary" "$tokens" | tee /dev/stderr | "$python" bench/cuda_kernels_baseline.py "$tokens"
