"""transformers baseline for bench/cuda_train_bench.cc: loads OUT_DIR/model (the same random
weights) as DeepseekV4ForCausalLM in bf16 on the GPU, times forward + backward of the next-token
loss (labels = input_ids) on the same token ids, batch and length, and prints one table next to
v4rl's figures from stdin: tokens/s, TFLOP/s and MFU for both, with the FLOPs per token and the
bf16 peak v4rl measured in the same run, the ratio, and the FLOP formula.

  cuda_train_bench CONFIG OUT_DIR 4096 1 3 | python3 bench/cuda_train_baseline.py OUT_DIR
"""
import json
import os
import sys
import time

import torch
from transformers import DeepseekV4ForCausalLM


def main():
    out_dir = sys.argv[1]
    rows = [json.loads(line) for line in sys.stdin if line.startswith("{")]
    by_kind = {row["kind"]: row for row in rows}
    trains = [row for row in rows if row["kind"] == "train"]
    train, flops, peak = (trains[0] if trains else None), by_kind.get("flops"), by_kind.get("peak")
    if not (train and flops and peak):
        sys.exit("the v4rl bench printed no train/flops/peak lines (run it through env.sh)")
    if not os.path.isfile(os.path.join(out_dir, "model", "config.json")):
        sys.exit(f"no checkpoint in {out_dir}/model")
    model = DeepseekV4ForCausalLM.from_pretrained(out_dir + "/model", dtype=torch.bfloat16)
    model = model.cuda().train()
    batch, seq_len = train["batch"], train["seq_len"]
    vocab = model.config.vocab_size
    t = torch.arange(seq_len)
    ids = torch.stack([(t * 7919 + 13 + b) % vocab for b in range(batch)]).cuda()
    steps = 3
    try:
        def step():
            model.zero_grad(set_to_none=True)
            # autocast: the mHC streams are fp32 in training mode and meet bf16 Linear weights
            with torch.autocast("cuda", dtype=torch.bfloat16):
                loss = model(input_ids=ids, labels=ids).loss
            loss.backward()
            return loss
        step()
        torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(steps):
            step()
        torch.cuda.synchronize()
        theirs = batch * seq_len / ((time.perf_counter() - start) / steps)
    except torch.cuda.OutOfMemoryError:
        theirs = None
    per_token = flops["training_per_token"]
    print(f"bf16 dense GEMM peak measured: {peak['tflops']:.0f} TFLOP/s; training FLOPs/token "
          f"{per_token / 1e9:.3f} G at T = {seq_len}")
    print(f"{'':28s} {'tokens/s':>10s} {'TFLOP/s':>8s} {'MFU':>6s}")
    for row in trains:
        ours = row["tokens_per_s"]
        print(f"{'v4rl (' + row['precision'] + ')':28s} {ours:10.0f} "
              f"{ours * per_token / 1e12:8.1f} "
              f"{100 * ours * per_token / 1e12 / peak['tflops']:5.1f}%")
    if theirs:
        label = "transformers (bf16 autocast)"
        print(f"{label:28s} {theirs:10.0f} {theirs * per_token / 1e12:8.1f} "
              f"{100 * theirs * per_token / 1e12 / peak['tflops']:5.1f}%")
        for row in trains:
            print(f"ratio v4rl ({row['precision']}) / transformers: "
                  f"{row['tokens_per_s'] / theirs:.2f}x")
    else:
        print(f"{'transformers (bf16 autocast)':28s} {'out of memory':>10s}")
    print(f"formula: {flops['formula']}")
    print(f"device: {torch.cuda.get_device_name()}, torch {torch.__version__}")


if __name__ == "__main__":
    main()
