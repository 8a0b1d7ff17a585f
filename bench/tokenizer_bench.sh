#!/usr/bin/env bash
# Encode throughput of v4rl's tokenizer against Hugging Face tokenizers (the baseline) on the same
# text, on the same machine, one thread each; checks both produce the same ids and prints the
# ratio. Needs Python `tokenizers` (the H200 image has it; PyPI is not reachable from the dev
# machines, so run it there: see the README's tokenizer section).
#
#   bench/tokenizer_bench.sh TOKENIZER_BENCH_BINARY TOKENIZER_JSON [MEGABYTES]
#
# Measured 2026-11-28 on the H200 machine's CPU (Xeon, one thread, 4.1 MB text, 1,507,555 tokens,
# identical ids): v4rl 17.96 MB/s vs tokenizers 0.23.2 1.44 MB/s (one encode() of the whole
# string), ratio 12.5x; loading tokenizer.json 0.34 s vs 0.56 s.
set -euo pipefail
cd "$(dirname "$0")/.."

binary="$1" tokenizer="$2" megabytes="${3:-4}"
text="$(mktemp --suffix=.txt)"
trap 'rm -f "$text"' EXIT

baseline="$(python3 bench/tokenizer_baseline.py "$tokenizer" "$text" --make-text "$megabytes")"
ours="$("$binary" "$tokenizer" "$text")"
echo "$baseline"
echo "$ours"
python3 - "$baseline" "$ours" <<'PY'
import json, sys
base, ours = json.loads(sys.argv[1]), json.loads(sys.argv[2])
same = base["ids_fnv1a"] == ours["ids_fnv1a"] and base["tokens"] == ours["tokens"]
print(f"text {ours['bytes'] / 1e6:.2f} MB, {ours['tokens']} tokens, identical ids: {same}")
print(f"encode MB/s: v4rl {ours['mb_per_s']:.2f} vs {base['name']} {base['mb_per_s']:.2f} "
      f"-> ratio {ours['mb_per_s'] / base['mb_per_s']:.2f}x "
      f"(first pass {ours['first_mb_per_s'] / base['first_mb_per_s']:.2f}x)")
print(f"load s: v4rl {ours['load_s']:.2f} vs baseline {base['load_s']:.2f}")
sys.exit(0 if same else 1)
PY
