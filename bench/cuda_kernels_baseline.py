"""Torch baseline for bench/cuda_kernels_bench.cc: the same ops at the same shapes in bf16 on the
same GPU, written the way an eager PyTorch implementation (transformers style) computes them.
Reads the JSON lines of the v4rl bench on stdin, prints one table with both times and the ratio
torch / v4rl (> 1: v4rl is faster).

  cuda_kernels_bench 4096 | python3 bench/cuda_kernels_baseline.py 4096
"""
import json
import sys

import torch


def time_ms(fn, iters=20):
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(iters):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / iters


def main():
    tokens = int(sys.argv[1]) if len(sys.argv) > 1 else 4096
    ours = [json.loads(line) for line in sys.stdin if line.startswith("{")]
    dev, bf16 = "cuda", torch.bfloat16
    g = torch.Generator(device=dev).manual_seed(0)
    base = {}

    def randn(*shape, dtype=bf16, std=1.0):
        return (torch.randn(*shape, device=dev, generator=g) * std).to(dtype)

    # GEMMs: F.linear in bf16 (cuBLAS underneath), f32 output for the head as ours.
    for name, n, k, out_f32 in [("gemm wq_a", 1024, 2048, False), ("gemm wq_b", 8192, 1024, False),
                                ("gemm wo_b", 2048, 2048, False),
                                ("gemm expert w1 (T x 6 / 32 rows)", 1024, 2048, False),
                                ("gemm head", 32768, 2048, True)]:
        m = tokens * 6 // 32 if "expert" in name else tokens
        x, w = randn(m, k), randn(n, k, std=0.02)
        if out_f32:
            base[name] = time_ms(lambda: torch.nn.functional.linear(x, w).float())
        else:
            base[name] = time_ms(lambda: torch.nn.functional.linear(x, w))

    # Sparse attention as eager code does it: gather each query's keys, scores, softmax with the
    # sink as an extra logit, weighted sum. Chunked over queries to bound the gathered keys.
    heads, dim, window, topk = 16, 512, 128, 512
    q, kv, sink = randn(tokens, heads, dim), randn(tokens, dim), randn(heads, dtype=torch.float32)
    comp = randn(tokens // 4, dim)
    pos = torch.arange(tokens, device=dev)

    def attention(comp_kv, comp_idx):
        chunk = 512
        outs = []
        for s in range(0, tokens, chunk):
            t = pos[s:s + chunk]
            win = t[:, None] - torch.arange(window - 1, -1, -1, device=dev)[None, :]
            win_valid = win >= 0
            k_win = kv[win.clamp(min=0)]                                   # [c, W, D]
            idx = comp_idx[s:s + chunk]
            k_comp = comp_kv[idx.clamp(min=0)]                             # [c, K, D]
            keys = torch.cat([k_win, k_comp], 1)
            valid = torch.cat([win_valid, idx >= 0], 1)
            scores = torch.einsum("chd,ckd->chk", q[s:s + chunk], keys).float() / dim ** 0.5
            scores = scores.masked_fill(~valid[:, None, :], float("-inf"))
            logits = torch.cat([scores, sink[None, :, None].expand(scores.shape[0], heads, 1)], -1)
            probs = torch.softmax(logits, -1)[..., :-1].to(bf16)
            outs.append(torch.einsum("chk,ckd->chd", probs, keys))
        return torch.cat(outs)

    visible = (pos + 1) // 4
    picks = torch.arange(topk, device=dev)[None, :].expand(tokens, topk)
    csa_idx = torch.where(picks < visible[:, None], picks, torch.full_like(picks, -1))
    base["sparse attention CSA"] = time_ms(lambda: attention(comp, csa_idx))
    hca = randn(max(tokens // 128, 1), dim)
    hvis = (pos + 1) // 128
    hpicks = torch.arange(hca.shape[0], device=dev)[None, :].expand(tokens, hca.shape[0])
    hca_idx = torch.where(hpicks < hvis[:, None], hpicks, torch.full_like(hpicks, -1))
    base["sparse attention HCA"] = time_ms(lambda: attention(hca, hca_idx))

    # Indexer: ReLU'd per-head dot products, weighted sum, causal mask, top-k (chunked).
    iq, iw, ik = randn(tokens, 16, 128), randn(tokens, 16, dtype=torch.float32), randn(tokens // 4, 128)
    kpos = torch.arange(tokens // 4, device=dev)

    def indexer():
        chunk = 1024
        outs = []
        for s in range(0, tokens, chunk):
            logits = torch.einsum("chd,kd->chk", iq[s:s + chunk], ik).float().relu()
            scores = torch.einsum("chk,ch->ck", logits, iw[s:s + chunk]) / 128 ** 0.5
            scores = scores.masked_fill(kpos[None, :] >= visible[s:s + chunk, None], float("-inf"))
            outs.append(scores.topk(min(topk, scores.shape[1]), -1).indices)
        return torch.cat(outs)

    base["indexer scores + top-512"] = time_ms(indexer)

    # mHC pre: RMS of the flattened streams, mixes, gates, 20 Sinkhorn rounds, collapse.
    streams = randn(tokens, 4, 2048)
    fn, hbase, hscale = randn(24, 8192, dtype=torch.float32, std=0.01), randn(24, dtype=torch.float32), randn(3, dtype=torch.float32)

    def mhc():
        x = streams.flatten(1).float()
        mixes = (x * torch.rsqrt(x.square().mean(-1, keepdim=True) + 1e-6)) @ fn.t()
        pre = torch.sigmoid(mixes[:, :4] * hscale[0] + hbase[:4]) + 1e-6
        post = 2 * torch.sigmoid(mixes[:, 4:8] * hscale[1] + hbase[4:8])
        comb = torch.softmax((mixes[:, 8:] * hscale[2] + hbase[8:]).view(-1, 4, 4), -1) + 1e-6
        comb = comb / (comb.sum(-2, keepdim=True) + 1e-6)
        for _ in range(19):
            comb = comb / (comb.sum(-1, keepdim=True) + 1e-6)
            comb = comb / (comb.sum(-2, keepdim=True) + 1e-6)
        return (pre[:, :, None] * streams.float()).sum(1).to(bf16), post, comb

    base["mhc pre (fused)"] = time_ms(mhc)

    print(f"{'op':34s} {'shape':58s} {'v4rl ms':>9s} {'torch ms':>9s} {'torch/v4rl':>10s} {'v4rl TFLOP/s':>12s}")
    for row in ours:
        b = base.get(row["op"])
        ratio = f"{b / row['ms']:.2f}x" if b else "-"
        print(f"{row['op']:34s} {row['shape']:58s} {row['ms']:9.3f} {b if b else float('nan'):9.3f} "
              f"{ratio:>10s} {row['tflops']:12.1f}")
    print(f"device: {torch.cuda.get_device_name()}, torch {torch.__version__}, {tokens} tokens")


if __name__ == "__main__":
    main()
