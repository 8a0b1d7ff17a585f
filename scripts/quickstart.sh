#!/usr/bin/env bash
# The quickstart: installs what is missing, builds v4rl, fine-tunes a tiny DeepSeek-V4 model
# (configs/models/tiny_char.json, every layer type) from scratch on 1-2 digit addition with
# `v4rl sft`, then inspects the checkpoint it wrote and runs a forward pass on it.
#
#   scripts/quickstart.sh              # 600 steps: 98% held-out exact match in about 5 minutes
#                                      # of training on 2 CPU cores, after the build
#   STEPS=60 scripts/quickstart.sh     # shorter (the schedule shrinks with it; lower accuracy)
set -euo pipefail
cd "$(dirname "$0")/.."

BUILD_DIR=${BUILD_DIR:-build-quickstart}  # its own: test.sh configures `build` with tests on
RUN_DIR=${RUN_DIR:-runs/quickstart}
STEPS=${STEPS:-}

bash scripts/setup.sh
cmake -S . -B "$BUILD_DIR" -G Ninja -DV4RL_BUILD_TESTS=OFF -DV4RL_BUILD_BENCH=OFF \
  -DV4RL_WITH_CUDA=OFF >/dev/null
cmake --build "$BUILD_DIR" -j "$(nproc)" --target v4rl
v4rl="$BUILD_DIR/cli/v4rl"

echo "== v4rl sft: supervised fine-tuning from scratch (run dir $RUN_DIR)"
rm -rf "$RUN_DIR"
"$v4rl" sft --config configs/sft_addition.textproto --run-dir "$RUN_DIR" ${STEPS:+--steps "$STEPS"}

checkpoint="$RUN_DIR/checkpoints/$(tr -d '\n' < "$RUN_DIR/checkpoints/latest")"
echo "== v4rl inspect $checkpoint"
"$v4rl" inspect "$checkpoint" --summary

echo "== metrics: $RUN_DIR/metrics.jsonl (last lines)"
tail -n 3 "$RUN_DIR/metrics.jsonl"
echo "== summary: $RUN_DIR/summary.json"
cat "$RUN_DIR/summary.json"
