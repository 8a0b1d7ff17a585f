#!/usr/bin/env bash
# Forward + backward tokens/s of v4rl's GPU training path against transformers'
# DeepseekV4ForCausalLM (bf16, labels = input_ids) on the same random weights of a config, same
# GPU, same token ids, with MFU from the config's FLOPs per token (model/flops.h, formula printed)
# over the bf16 GEMM peak measured in the same run (issue 9's bench). On the H200 machine,
# through the device bundle's env.sh (needs ~10 GB of disk under OUT_DIR for the checkpoint):
#
#   device_bundle/env.sh bash bench/cuda_train_bench.sh device_bundle/bin/cuda_train_bench \
#       [CONFIG=configs/models/mid.json] [SEQ_LEN=4096] [BATCH=1] [OUT_DIR=/tmp/v4rl_train]
#       [PYTHON=/opt/torch/.venv/bin/python3]
set -euo pipefail
cd "$(dirname "$0")/.."
binary="$1" config="${2:-configs/models/mid.json}" seq_len="${3:-4096}" batch="${4:-1}"
out="${5:-/tmp/v4rl_train}" python="${6:-/opt/torch/.venv/bin/python3}"
mkdir -p "$out"
# v4rl's JSON lines go to a file, then to stderr and the baseline (tee /dev/stderr would reopen
# a redirected stderr file and lose them).
"$binary" "$config" "$out" "$seq_len" "$batch" 3 > "$out/v4rl.jsonl"
cat "$out/v4rl.jsonl" >&2
"$python" bench/cuda_train_baseline.py "$out" < "$out/v4rl.jsonl"
