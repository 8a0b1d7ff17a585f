#!/usr/bin/env bash
# The project's test command: installs what is missing, configures, builds everything (CUDA
# sources included when nvcc is present), checks the layering rules, and runs every test that
# does not need a GPU. Tests labelled `slow` (minutes-long acceptance runs) are skipped unless
# V4RL_TEST_SLOW=1.
#
#   scripts/test.sh                 # full run, build dir ./build
#   BUILD_DIR=/tmp/b scripts/test.sh
#   CTEST_ARGS="-R core_" scripts/test.sh
set -euo pipefail
cd "$(dirname "$0")/.."

BUILD_DIR=${BUILD_DIR:-build}
JOBS=${JOBS:-$(nproc)}

bash scripts/setup.sh
bash scripts/fetch_tokenizer.sh
bash scripts/check_layering.sh

cuda_flags=()
if command -v nvcc >/dev/null || [[ -x /usr/local/cuda/bin/nvcc ]]; then
  export PATH=/usr/local/cuda/bin:$PATH
  cuda_flags=(-DV4RL_WITH_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90a)
fi

cmake -S . -B "$BUILD_DIR" -G Ninja "${cuda_flags[@]}"
cmake --build "$BUILD_DIR" -j "$JOBS"
cd "$BUILD_DIR"
exclude='gpu|slow'
[[ "${V4RL_TEST_SLOW:-0}" == 1 ]] && exclude='gpu'
# shellcheck disable=SC2086
ctest -LE "$exclude" --output-on-failure -j "$JOBS" ${CTEST_ARGS:-}
