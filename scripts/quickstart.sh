#!/usr/bin/env bash
# The quickstart: installs what is missing, builds v4rl, and runs a whole post-training job on the
# CPU with `v4rl run configs/quickstart.textproto`: SFT of a tiny DeepSeek-V4 model
# (configs/models/tiny_char.json, every layer type) from scratch on 1-2 digit addition, then GRPO
# with an exact-match reward, every sample in a RocksDB trajectory store. It then shows the
# summary, counts the trajectories and inspects the final checkpoint.
#
#   scripts/quickstart.sh                 # about 7 minutes on 2 CPU cores, after the build
#   RUN_DIR=/tmp/qs scripts/quickstart.sh # elsewhere
# `v4rl sft --config configs/sft_addition.textproto` is the longer SFT-only run (98% held-out).
set -euo pipefail
cd "$(dirname "$0")/.."

BUILD_DIR=${BUILD_DIR:-build-quickstart}  # its own: test.sh configures `build` with tests on
RUN_DIR=${RUN_DIR:-runs/quickstart}

bash scripts/setup.sh
cmake -S . -B "$BUILD_DIR" -G Ninja -DCMAKE_BUILD_TYPE=Release -DV4RL_BUILD_TESTS=OFF \
  -DV4RL_BUILD_BENCH=OFF -DV4RL_WITH_CUDA=OFF >/dev/null
cmake --build "$BUILD_DIR" -j "$(nproc)" --target v4rl
v4rl="$BUILD_DIR/cli/v4rl"

echo "== v4rl run configs/quickstart.textproto (run dir $RUN_DIR): SFT, then GRPO"
rm -rf "$RUN_DIR"
config=$(mktemp)
trap 'rm -f "$config"' EXIT
sed "s#^run_dir: .*#run_dir: \"$RUN_DIR\"#" configs/quickstart.textproto > "$config"
"$v4rl" run "$config"

echo "== summary: $RUN_DIR/summary.json (the mean reward of every step is in it too)"
grep -v '^    ' "$RUN_DIR/summary.json"
echo "== v4rl store stats $RUN_DIR/trajectories"
"$v4rl" store stats "$RUN_DIR/trajectories"
checkpoint="$RUN_DIR/checkpoints/$(tr -d '\n' < "$RUN_DIR/checkpoints/latest")"
echo "== v4rl inspect $checkpoint --summary"
"$v4rl" inspect "$checkpoint" --summary
