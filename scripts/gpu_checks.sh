#!/usr/bin/env bash
# On the GPU machine, in one `run` call: unpacks the bundle scripts/device_bundle.sh packed
# (carry ["device_bundle_packed"]), runs every gpu-labelled test, then the benchmarks the CUDA
# issues quote, each under a time limit, writing logs to OUT_DIR and a short summary to stdout.
#
#   bash scripts/gpu_checks.sh [STEPS=tests,decode,train,long] [OUT_DIR=$OUT or /tmp/gpu_checks]
#
# STEPS: tests   every gpu test (device_bundle/run_gpu_tests.sh)            -> tests.log
#        decode  bench/cuda_decode_bench.sh on the mid config vs transformers -> decode.txt
#        train   bench/cuda_train_bench.sh on the mid config vs transformers  -> train.txt
#                and the attention backward's two kernels -> attention_backward.txt
#        long    a 1,000,000-token prefill and single-stream decode after it  -> long.txt
#                and the context-growing decode ops at 4K, 900K, 1M         -> long_ops.txt
#        profile V4RL_CUDA_PROFILE phases (not in the default STEPS): decode steps at batch 1 and
#                256 (synchronised and host-only), and training steps at 4,096 tokens (exact f32
#                GEMMs, then bf16 GEMM math; a warm-up and one timed step each)
#                                                                             -> profile.txt
#        kernels Nsight Compute GPU time by kernel (not in the default STEPS) of one bf16-GEMM
#                training step at 4,096 tokens and one decode step at batch 256
#                (scripts/ncu_kernel_table.py; at the GPU's own clocks with warm caches,
#                so a decode step's kernel times add up to about its wall time; NCU_BASE=1
#                locks base clocks and flushes caches between kernels instead)
#                                                      -> kernels_train.txt, kernels_decode.txt
#        ab      (not in the default STEPS) the same v4rl-only timings of BUNDLE and of BASELINE
#                (another bundle carried in the same call, e.g. one packed from the parent commit
#                with BUNDLE_DIR=device_bundle_base scripts/device_bundle.sh): bf16 training steps
#                at 4,096 tokens, prefill at 4K/16K and decode at batch 1/64/256, BASELINE first;
#                AB_ROUNDS=N alternates the two N times (calls differ by 1-2%: compare within
#                one), AB_DECODE_ONLY=1 skips the training steps              -> ab.txt
# Env: BUNDLE (device_bundle), BASELINE (for ab), LIMIT_S (per step, 420), NCU_BASE (kernels).
set -uo pipefail
cd "$(dirname "$0")/.."
steps="${1:-tests,decode,train,long}"
out="${2:-${OUT:-/tmp/gpu_checks}}"
bundle="${BUNDLE:-device_bundle}"
limit="${LIMIT_S:-420}"
mkdir -p "$out"
for packed in "$bundle" ${BASELINE:-}; do
  if [[ ! -d "$packed" && -f "${packed}_packed/bundle.tar.xz" ]]; then
    top=$(tar -tJf "${packed}_packed/bundle.tar.xz" | head -1)
    # A tarball packed under another name would overwrite that bundle instead.
    [[ "${top%%/*}" == "$packed" ]] || { echo "${packed}_packed holds ${top%%/*}/, not $packed/"; exit 2; }
    tar -xJf "${packed}_packed/bundle.tar.xz"
  fi
done
[[ -x "$bundle/env.sh" ]] || { echo "no $bundle (run scripts/device_bundle.sh and carry it)"; exit 2; }
export V4RL_SOURCE_DIR=$PWD
wants() { [[ ",$steps," == *",$1,"* ]]; }

if wants tests; then
  timeout "$limit" bash "$bundle/run_gpu_tests.sh" > "$out/tests.log" 2>&1
  echo "== tests (rc $?): $(grep '^gpu tests:' "$out/tests.log")"
  grep -E '^\[measured\]|^\[cuda' "$out/tests.log" | head -40
fi
if wants decode; then
  timeout "$limit" "$bundle/env.sh" bash bench/cuda_decode_bench.sh "$bundle/bin/cuda_decode_bench" \
    configs/models/mid.json 4096,16384,32768,131072 1,64,256 /tmp/v4rl_decode \
    > "$out/decode.txt" 2> "$out/decode.err"
  echo "== decode (rc $?)"
  cat "$out/decode.txt"
fi
if wants train; then
  timeout "$limit" "$bundle/env.sh" bash bench/cuda_train_bench.sh "$bundle/bin/cuda_train_bench" \
    > "$out/train.txt" 2> "$out/train.err"
  echo "== train (rc $?)"
  cat "$out/train.txt"
  timeout "$limit" "$bundle/env.sh" cuda_attention_backward_bench 4096 5 \
    > "$out/attention_backward.txt" 2>&1
  echo "== attention backward (rc $?)"
  cat "$out/attention_backward.txt"
fi
if wants long; then
  timeout "$limit" "$bundle/env.sh" cuda_decode_bench configs/models/mid.json - 1000000 1 8192 \
    4096 8 > "$out/long.txt" 2> "$out/long.err"
  echo "== long (rc $?)"
  grep kind "$out/long.txt"
  timeout "$limit" "$bundle/env.sh" cuda_long_decode_bench 4096,900000,1000000 50 \
    > "$out/long_ops.txt" 2>&1
  echo "== long ops (rc $?)"
  grep step_ "$out/long_ops.txt"
fi
if wants profile; then
  {
    for mode in 1 host; do
      for batch in 1 256; do
        V4RL_CUDA_PROFILE=$mode timeout "$limit" "$bundle/env.sh" cuda_decode_bench \
          configs/models/mid.json - 4096 "$batch" 8192 4096 3 2>&1 | grep "decode step $batch " |
          tail -1
      done
    done
    V4RL_CUDA_PROFILE=1 timeout "$limit" "$bundle/env.sh" cuda_train_bench configs/models/mid.json \
      - 4096 1 1 2>&1 | grep -E "^\[profile|\"train\""
  } > "$out/profile.txt"
  echo "== profile"
  cat "$out/profile.txt"
fi
if wants kernels; then
  ncu_table() {  # ncu_table OUT_FILE ENV=VALUE BINARY ARGS...
    local file="$1"; shift
    local ncu; ncu=$(command -v ncu || echo /usr/local/cuda/bin/ncu)
    local clocks=(--clock-control none --cache-control none)
    [[ -n "${NCU_BASE:-}" ]] && clocks=()
    timeout "$limit" env "$1" "$bundle/env.sh" "$ncu" --profile-from-start off "${clocks[@]}" \
      --csv --page raw \
      --metrics gpu__time_duration.sum "$bundle/bin/$2" "${@:3}" 2> "$file.err" |
      python3 scripts/ncu_kernel_table.py 45 > "$file"
  }
  ncu_table "$out/kernels_train.txt" PROFILE_TRAIN=1 cuda_train_bench configs/models/mid.json - \
    4096 1 1 bf16
  echo "== kernels: training step (bf16 GEMMs)"
  cat "$out/kernels_train.txt"
  ncu_table "$out/kernels_decode.txt" PROFILE_DECODE=1 cuda_decode_bench configs/models/mid.json \
    - 4096 256 8192 4096 2
  echo "== kernels: decode step at batch 256"
  cat "$out/kernels_decode.txt"
fi
if wants ab; then
  [[ -x "${BASELINE:-}/env.sh" ]] || { echo "ab: set BASELINE to a second carried bundle"; exit 2; }
  for round in $(seq "${AB_ROUNDS:-1}"); do
    for side in "$BASELINE" "$bundle"; do
      echo "== $side (round $round)"
      if [[ -z "${AB_DECODE_ONLY:-}" ]]; then
        timeout "$limit" "$side/env.sh" cuda_train_bench configs/models/mid.json - 4096 1 3 bf16 \
          2>&1 | grep '"train"'
      fi
      timeout "$limit" "$side/env.sh" cuda_decode_bench configs/models/mid.json - 4096,16384 \
        1,64,256 8192 4096 16 2>/dev/null | grep -E '"prefill"|"decode"|"decode_no_graphs"'
    done
  done > "$out/ab.txt"
  echo "== ab (baseline first)"
  cat "$out/ab.txt"
fi
