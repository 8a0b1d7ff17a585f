#!/usr/bin/env bash
# Prefill tokens/s of v4rl's CUDA forward against transformers' DeepseekV4ForCausalLM (bf16) on
# the same random weights of a config, same GPU, same token ids, with the ratio and a logits
# comparison. Run on the H200 machine (needs ~20 GB of disk under OUT_DIR for the checkpoint):
#
#   bench/cuda_prefill_bench.sh BENCH_BINARY [CONFIG=configs/models/mid.json] [TOKENS=4096,16384]
#       [OUT_DIR=/tmp/v4rl_prefill] [PYTHON=/opt/torch/.venv/bin/python3]
# FP32_REFERENCE=1 also runs transformers in fp32 at the first length (the bf16 noise floor).
set -euo pipefail
cd "$(dirname "$0")/.."
binary="$1" config="${2:-configs/models/mid.json}" tokens="${3:-4096,16384}"
out="${4:-/tmp/v4rl_prefill}" python="${5:-/opt/torch/.venv/bin/python3}"
mkdir -p "$out"
"$binary" "$config" "$out" "$tokens" | tee /dev/stderr | "$python" bench/cuda_prefill_baseline.py "$out" ${FP32_REFERENCE:+--fp32-reference}
