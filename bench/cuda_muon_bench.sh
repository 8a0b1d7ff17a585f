#!/usr/bin/env bash
# Muon step time on the GPU over every Muon matrix of a config: v4rl (kernels/cuda/optimizer.h)
# against a PyTorch implementation of the same hybrid Newton-Schulz iteration, same shapes, same
# GPU, run one after the other, with the ratio (issue 9's acceptance: v4rl no slower).
#
#   bench/cuda_muon_bench.sh BENCH_BINARY [CONFIG=configs/models/mid.json] [STEPS=5]
#       [PRECISION=bf16] [PYTHON=/opt/torch/.venv/bin/python3]
set -euo pipefail
cd "$(dirname "$0")/.."
binary="$1" config="${2:-configs/models/mid.json}" steps="${3:-5}" precision="${4:-bf16}"
python="${5:-/opt/torch/.venv/bin/python3}"
"$binary" "$config" "$steps" "$precision" | tee /dev/stderr | "$python" bench/cuda_muon_baseline.py "$steps"
