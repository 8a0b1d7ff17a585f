#!/usr/bin/env bash
# Chunked long-prompt prefill and batched decode of v4rl's CUDA decoder against transformers'
# DeepseekV4ForCausalLM (bf16) on the same random weights of a config, same GPU, same token ids;
# decode next to the HBM bound (weight bytes a step touches / copy bandwidth measured in the run).
# Run on the H200 machine (needs ~20 GB of disk under OUT_DIR for the checkpoint), through the
# device bundle's env.sh so that the binary finds its libraries:
#
#   device_bundle/env.sh bash bench/cuda_decode_bench.sh device_bundle/bin/cuda_decode_bench ...
#
#   bench/cuda_decode_bench.sh BENCH_BINARY [CONFIG=configs/models/mid.json]
#       [PREFILL=4096,16384,32768,131072,1000000] [BATCHES=1,64,256] [OUT_DIR=/tmp/v4rl_decode]
#       [PYTHON=/opt/torch/.venv/bin/python3]
# Env: CHUNK (prefill chunk, 8192), CONTEXT (decode prompt, 4096), STEPS (16),
# HF_DECODE_BATCHES (batches transformers decodes, 1,64,256).
# Single-stream decode runs after the longest prompt (1M tokens by default: stricter than the 900K
# of issue 11, since the per-step work grows with the context) and is compared with batch 1 after
# CONTEXT tokens.
set -euo pipefail
cd "$(dirname "$0")/.."
binary="$1" config="${2:-configs/models/mid.json}" prefill="${3:-4096,16384,32768,131072,1000000}"
batches="${4:-1,64,256}" out="${5:-/tmp/v4rl_decode}" python="${6:-/opt/torch/.venv/bin/python3}"
mkdir -p "$out"
# v4rl's JSON lines go to a file, then to stderr and the baseline (tee /dev/stderr would reopen
# a redirected stderr file and lose them).
"$binary" "$config" "$out" "$prefill" "$batches" "${CHUNK:-8192}" "${CONTEXT:-4096}" \
    "${STEPS:-16}" > "$out/v4rl.jsonl"
cat "$out/v4rl.jsonl" >&2
"$python" bench/cuda_decode_baseline.py "$out" --decode-batches "${HF_DECODE_BATCHES:-1,64,256}" \
    --context "${CONTEXT:-4096}" --steps "${STEPS:-16}" < "$out/v4rl.jsonl"
