"""transformers baseline for bench/cuda_prefill_bench.cc: loads OUT_DIR/model (the same random
weights) as DeepseekV4ForCausalLM in bf16 on the GPU (under bf16 autocast), times one-sequence prefill at the same
lengths and token ids (logits of the last position only, as v4rl), compares the full logits of the
first length with v4rl's (OUT_DIR/v4rl_logits.safetensors), and prints one table with the ratio.

  cuda_prefill_bench CONFIG OUT_DIR 4096,16384 | python3 bench/cuda_prefill_baseline.py OUT_DIR
      [--fp32-reference]   # also transformers in fp32 at the first length (the bf16 noise floor)
"""
import json
import sys

import torch
from safetensors.torch import load_file
from transformers import DeepseekV4ForCausalLM


def compare(what, actual, reference):
    """Cosine distance, max abs error, error by norm (in float64) and argmax agreement."""
    a, r = actual.double().flatten(), reference.double().flatten()
    cos = (a @ r / (a.norm() * r.norm())).item()
    err = a - r
    agree = (actual.argmax(-1) == reference.argmax(-1)).float().mean().item()
    print(f"{what}: cosine distance {1 - cos:.3e}, max abs err {err.abs().max().item():.3e} "
          f"(max |ref| {r.abs().max().item():.3f}), err by norm {(err.norm() / r.norm()).item():.3e}, "
          f"argmax agreement {agree:.4f}")


def main():
    out_dir = sys.argv[1]
    fp32_reference = "--fp32-reference" in sys.argv
    ours = [json.loads(line) for line in sys.stdin if line.startswith("{")]
    # bf16 weights; autocast keeps the activations bf16 where the model's mHC code returns f32.
    model = DeepseekV4ForCausalLM.from_pretrained(out_dir + "/model", dtype=torch.bfloat16)
    model = model.cuda().eval()
    vocab = model.config.vocab_size
    theirs = {}
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        ref = load_file(out_dir + "/v4rl_logits.safetensors")
        ids = ref["input_ids"].long().cuda()
        logits = model(input_ids=ids, use_cache=False).logits.float().cpu()
        v4rl = ref["logits"]
        compare(f"logits at {ids.shape[1]} tokens, v4rl bf16 vs transformers bf16", v4rl, logits)
        for row in ours:
            t = row["tokens"]
            ids = ((torch.arange(t) * 7919 + 13) % vocab).view(1, t).cuda()
            try:
                model(input_ids=ids, use_cache=False, logits_to_keep=1)
                torch.cuda.synchronize()
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                for _ in range(2):
                    model(input_ids=ids, use_cache=False, logits_to_keep=1)
                end.record()
                torch.cuda.synchronize()
                theirs[t] = start.elapsed_time(end) / 2
            except torch.cuda.OutOfMemoryError:
                theirs[t] = None
                torch.cuda.empty_cache()
    if fp32_reference:
        # transformers in fp32 on the same weights: how far bf16 (v4rl's or transformers') is from
        # the fp32 model on these random weights.
        with torch.no_grad():
            ids = load_file(out_dir + "/v4rl_logits.safetensors")["input_ids"].long().cuda()
            fp32 = model.float()(input_ids=ids, use_cache=False).logits.float().cpu()
        compare("v4rl bf16 vs transformers fp32", ref["logits"], fp32)
        compare("transformers bf16 vs transformers fp32", logits, fp32)
    print(f"{'tokens':>8s} {'v4rl tok/s':>12s} {'transformers tok/s':>19s} {'ratio':>7s}")
    for row in ours:
        t, b = row["tokens"], theirs.get(row["tokens"])
        base = f"{t / (b * 1e-3):19.0f}" if b else f"{'out of memory':>19s}"
        ratio = f"{(t / (row['ms'] * 1e-3)) / (t / (b * 1e-3)):6.2f}x" if b else "      -"
        print(f"{t:8d} {row['tokens_per_s']:12.0f} {base} {ratio}")
    print(f"device: {torch.cuda.get_device_name()}, torch {torch.__version__}")


if __name__ == "__main__":
    main()
