"""transformers baseline for bench/cuda_decode_bench.cc: loads OUT_DIR/model (the same random
weights) as DeepseekV4ForCausalLM in bf16 on the GPU (under bf16 autocast), times one-sequence
prefill at the same lengths and token ids (logits of the last position only; out of memory is
reported as such), and cached greedy decode at the given batches (a CONTEXT-token prompt per row,
fed PREFILL_CHUNK tokens per forward into the cache, then STEPS timed one-token steps after one
warm-up step). Prints one table next to v4rl's figures from stdin.

  cuda_decode_bench CONFIG OUT_DIR 4096,... 1,64,256 | python3 bench/cuda_decode_baseline.py OUT_DIR
      [--decode-batches 1,64,256] [--context 4096] [--steps 16] [--prefill-chunk 512]
"""
import argparse
import json
import os
import sys
import time

import torch
from transformers import DeepseekV4ForCausalLM


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("out_dir")
    parser.add_argument("--decode-batches", default="1,64")
    parser.add_argument("--context", type=int, default=4096)
    parser.add_argument("--steps", type=int, default=16)
    parser.add_argument("--prefill-chunk", type=int, default=512,
                        help="prompt tokens per forward when filling the decode batch's cache "
                             "(eager attention's scores grow with batch x chunk x context)")
    args = parser.parse_args()
    rows = [json.loads(line) for line in sys.stdin if line.startswith("{")]
    copy = next((r for r in rows if r["kind"] == "copy"), None)
    prefill = [r for r in rows if r["kind"] == "prefill"]
    decode = [r for r in rows if r["kind"] == "decode"]
    decode_long = [r for r in rows if r["kind"] == "decode_long"]
    no_graphs = {r["batch"]: r for r in rows if r["kind"] == "decode_no_graphs"}
    if not os.path.isfile(os.path.join(args.out_dir, "model", "config.json")):
        sys.exit(f"no checkpoint in {args.out_dir}/model: the v4rl bench failed before writing it "
                 "(on the GPU machine run it through device_bundle/env.sh)")
    model = DeepseekV4ForCausalLM.from_pretrained(args.out_dir + "/model", dtype=torch.bfloat16)
    model = model.cuda().eval()
    vocab = model.config.vocab_size
    theirs_prefill, theirs_decode = {}, {}
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        for row in prefill:
            t = row["tokens"]
            ids = ((torch.arange(t) * 7919 + 13) % vocab).view(1, t).cuda()
            try:
                model(input_ids=ids, use_cache=False, logits_to_keep=1)
                torch.cuda.synchronize()
                start = time.perf_counter()
                model(input_ids=ids, use_cache=False, logits_to_keep=1)
                torch.cuda.synchronize()
                theirs_prefill[t] = (time.perf_counter() - start) * 1e3
            except torch.cuda.OutOfMemoryError:
                theirs_prefill[t] = None
            torch.cuda.empty_cache()
        for batch in [int(b) for b in args.decode_batches.split(",") if b]:
            t = args.context
            ids = ((torch.arange(t) * 7919 + 13) % vocab).view(1, t).repeat(batch, 1).cuda()
            try:
                cache = None
                for begin in range(0, t, args.prefill_chunk):
                    out = model(input_ids=ids[:, begin:begin + args.prefill_chunk],
                                past_key_values=cache, use_cache=True, logits_to_keep=1)
                    cache = out.past_key_values
                nxt = out.logits[:, -1:].argmax(-1)
                out = model(input_ids=nxt, past_key_values=cache, use_cache=True)
                nxt = out.logits[:, -1:].argmax(-1)
                torch.cuda.synchronize()
                start = time.perf_counter()
                for _ in range(args.steps):
                    out = model(input_ids=nxt, past_key_values=cache, use_cache=True)
                    nxt = out.logits[:, -1:].argmax(-1)
                torch.cuda.synchronize()
                theirs_decode[batch] = (time.perf_counter() - start) * 1e3 / args.steps
                del cache, out
            except torch.cuda.OutOfMemoryError:
                theirs_decode[batch] = None
            torch.cuda.empty_cache()
    if copy:
        print(f"device-to-device copy bandwidth: {copy['gb_per_s']:.0f} GB/s")
    print(f"{'prefill tokens':>14s} {'v4rl tok/s':>11s} {'ms/token x1e3':>14s} "
          f"{'transformers tok/s':>19s} {'ratio':>7s}")
    for row in prefill:
        t, b = row["tokens"], theirs_prefill.get(row["tokens"])
        base = f"{t / (b * 1e-3):19.0f}" if b else f"{'out of memory':>19s}"
        ratio = f"{row['tokens_per_s'] / (t / (b * 1e-3)):6.2f}x" if b else "      -"
        print(f"{t:14d} {row['tokens_per_s']:11.0f} {row['ms'] / t * 1e3:14.2f} {base} {ratio}")
    print(f"{'decode batch':>14s} {'context':>8s} {'v4rl tok/s':>11s} {'HBM bound':>10s} "
          f"{'of bound':>9s} {'weights/step':>13s} {'transformers tok/s':>19s} {'ratio':>7s} "
          f"{'no graphs tok/s':>16s} {'graphs gain':>12s}")
    for row in decode:
        b = row["batch"]
        theirs = theirs_decode.get(b)
        base = (f"{b / (theirs * 1e-3):19.0f}" if theirs else
                f"{'out of memory' if b in theirs_decode else 'not run':>19s}")
        ratio = f"{row['tokens_per_s'] / (b / (theirs * 1e-3)):6.2f}x" if theirs else "      -"
        print(f"{b:14d} {row['context']:8d} {row['tokens_per_s']:11.0f} "
              f"{row['bound_tokens_per_s']:10.0f} {row['fraction_of_bound'] * 100:8.1f}% "
              f"{row['weight_bytes'] / 1e9:11.2f}GB {base} {ratio} "
              + (f"{no_graphs[b]['tokens_per_s']:16.0f} {no_graphs[b]['graphs_speedup']:11.2f}x"
                 if b in no_graphs else f"{'-':>16s} {'-':>12s}"))
    short = next((r for r in decode if r["batch"] == 1), None)
    for row in decode_long:
        line = (f"single-stream decode after a {row['context']}-token prompt: "
                f"{row['tokens_per_s']:.1f} tok/s ({row['ms_per_step']:.2f} ms/step)")
        if short:
            slower = (row["ms_per_step"] / short["ms_per_step"] - 1) * 100
            line += (f", {slower:+.1f}% per step against batch 1 after {short['context']} "
                     f"({short['ms_per_step']:.2f} ms)")
        print(line)
    print(f"device: {torch.cuda.get_device_name()}, torch {torch.__version__}")


if __name__ == "__main__":
    main()
