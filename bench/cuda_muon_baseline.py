"""PyTorch baseline for bench/cuda_muon_bench.cc: the same Muon step (momentum 0.95, Nesterov,
the hybrid Newton-Schulz of learner/newton_schulz.h in bf16 matmuls batched over each parameter's
experts, update RMS 0.18 scaling, decoupled weight decay) over the parameter shapes the v4rl bench
printed on stdin; prints its time and the ratio torch / v4rl."""
import sys
import time

import torch

FAST = (3.4445, -4.7750, 2.0315)
SETTLE = (2.0, -1.5, 0.5)


def newton_schulz(g, dtype):
    x = g.to(dtype)
    tall = x.size(-2) > x.size(-1)
    if tall:
        x = x.mT
    x = x / (x.norm(dim=(-2, -1), keepdim=True) + 1e-7)
    for a, b, c in [FAST] * 8 + [SETTLE] * 2:
        gram = x @ x.mT
        poly = b * gram + c * (gram @ gram)
        x = a * x + poly @ x
    if tall:
        x = x.mT
    return x


def muon_step(value, grad, momentum, lr, dtype, mu=0.95, wd=0.1, update_rms=0.18):
    momentum.mul_(mu).add_(grad)
    update = newton_schulz(grad.add(momentum, alpha=mu), dtype)
    scale = update_rms * max(value.size(-2), value.size(-1)) ** 0.5
    value.mul_(1 - lr * wd).add_(update.float(), alpha=-lr * scale)


def main():
    lines = sys.stdin.read().splitlines()
    shapes, v4rl_ms, precision = [], None, "bf16"
    for line in lines:
        parts = line.split()
        if parts and parts[0] == "muon_param":
            shapes.append((int(parts[2]), int(parts[3]), int(parts[4])))
        elif parts and parts[0] == "v4rl_muon_ms":
            v4rl_ms = float(parts[1])
        elif parts and parts[0] == "precision":
            precision = parts[1]
    if v4rl_ms is None:
        sys.exit("no v4rl_muon_ms line from the v4rl bench")
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    torch.backends.cuda.matmul.allow_tf32 = False
    steps = int(sys.argv[1]) if len(sys.argv) > 1 else 5
    params = []
    for count, rows, cols in shapes:
        value = torch.randn(count, rows, cols, device="cuda") * 0.02
        grad = torch.randn(count, rows, cols, device="cuda") * 0.02
        params.append((value, grad, torch.zeros_like(value)))

    def step():
        for value, grad, momentum in params:
            muon_step(value, grad, momentum, 1e-3, dtype)

    step()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    torch.cuda.synchronize()
    torch_ms = (time.perf_counter() - start) * 1e3 / steps
    print(f"torch {torch.__version__} muon step ({precision} Newton-Schulz, batched per parameter): "
          f"{torch_ms:.3f} ms")
    print(f"v4rl muon step: {v4rl_ms:.3f} ms; speedup v4rl vs torch: {torch_ms / v4rl_ms:.2f}x "
          f"(acceptance: >= 1.0x)")


if __name__ == "__main__":
    main()
