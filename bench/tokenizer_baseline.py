#!/usr/bin/env python3
"""Baseline of bench/tokenizer_bench.sh: Hugging Face tokenizers on the same tokenizer.json (with
the V4 tokens, loaded as tests/data/actor/make_tokenizer_expectations.py does) and the same text.
Writes the bench text first when asked to (mixed chat prompts, prose, code, CJK, emoji and random
strings from the expectations corpus, shuffled per copy with a fixed seed).

  tokenizer_baseline.py TOKENIZER_JSON TEXT_FILE [--make-text MEGABYTES] [--repeats N]
Prints one JSON line like tokenizer_bench.
"""
import argparse
import json
import os
import random
import sys
import time

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path.insert(0, os.path.join(ROOT, "tests", "data", "actor"))
import make_tokenizer_expectations as expectations  # noqa: E402


def make_text(path, megabytes):
    texts = expectations.corpus(os.path.join(ROOT, "tests", "data", "actor", "dsv4_fixtures"))
    rng = random.Random(5)
    parts, size = [], 0
    while size < megabytes * 1e6:
        rng.shuffle(texts)
        for t in texts:
            parts.append(t)
            size += len(t.encode())
    with open(path, "w", encoding="utf-8", newline="") as f:
        f.write("\n".join(parts))


def fnv1a(ids):
    h = 1469598103934665603
    for byte in ",".join(map(str, ids)).encode():
        h = ((h ^ byte) * 1099511628211) & 0xFFFFFFFFFFFFFFFF
    return f"{h:016x}"


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("tokenizer")
    parser.add_argument("text")
    parser.add_argument("--make-text", type=float, default=0)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    if args.make_text:
        make_text(args.text, args.make_text)
    start = time.perf_counter()
    tok = expectations.load_tokenizer(args.tokenizer)
    load_s = time.perf_counter() - start
    with open(args.text, encoding="utf-8", newline="") as f:
        text = f.read()
    size = len(text.encode())
    start = time.perf_counter()
    ids = tok.encode(text, add_special_tokens=False).ids
    first_s = best_s = time.perf_counter() - start
    for _ in range(args.repeats):
        start = time.perf_counter()
        ids = tok.encode(text, add_special_tokens=False).ids
        best_s = min(best_s, time.perf_counter() - start)
    print(json.dumps({"name": f"hf-tokenizers-{expectations.tokenizers.__version__}",
                      "bytes": size, "tokens": len(ids), "ids_fnv1a": fnv1a(ids),
                      "load_s": round(load_s, 3), "first_mb_per_s": round(size / 1e6 / first_s, 2),
                      "mb_per_s": round(size / 1e6 / best_s, 2)}))


if __name__ == "__main__":
    main()
