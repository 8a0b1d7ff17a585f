#!/usr/bin/env python3
"""Asks Hugging Face `tokenizers` (its Oniguruma regex engine) which code points each Unicode class
of the DeepSeek pre-tokenizer matches, so scripts/gen_unicode_classes.py's table can be checked
against the engine the reference ids come from (spec/chat-encoding.md §8.2: Unicode versions
differ between engines).

  python3 probe_unicode_classes.py OUT_JSON   ->  {"L": [[first, last], ...], "M": ..., ...}
"""
import json
import sys

from tokenizers import Regex, pre_tokenizers

CLASSES = {"L": r"\p{L}", "M": r"\p{M}", "N": r"\p{N}", "P": r"\p{P}", "S": r"\p{S}",
           "W": r"\s"}


def code_points():
    return [c for c in range(0x110000) if not 0xD800 <= c <= 0xDFFF]


def matched(pattern, cps):
    split = pre_tokenizers.Split(Regex(pattern), behavior="removed")
    kept = set()
    chunk = 4096
    for i in range(0, len(cps), chunk):
        text = "".join(map(chr, cps[i:i + chunk]))
        for piece, _ in split.pre_tokenize_str(text):
            kept.update(map(ord, piece))
    return [c for c in cps if c not in kept]


def ranges(cps):
    out = []
    for c in cps:
        if out and out[-1][1] == c - 1:
            out[-1][1] = c
        else:
            out.append([c, c])
    return out


def main():
    cps = code_points()
    result = {name: ranges(matched(p, cps)) for name, p in CLASSES.items()}
    with open(sys.argv[1], "w") as f:
        json.dump(result, f)


if __name__ == "__main__":
    main()
