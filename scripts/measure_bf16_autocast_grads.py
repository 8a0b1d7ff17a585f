#!/usr/bin/env python3
"""How far bf16 autocast moves transformers' gradients from its own fp32 ones on our fixtures.

The bar for v4rl's bf16 GEMM math (model_cuda_backward_test's Bf16GemmGradientsStayNearTheCpu)
should be what bf16 products do to these gradients in the reference implementation, not a guess:
this script loads each fixture model (tests/data/model/<fixture>/model, written by
scripts/make_model_fixtures.py), computes d loss / d parameter for the fixture's input ids with
labels = input ids twice — in fp32, and under torch.autocast(bfloat16) with fp32 parameters —
and writes, per parameter (transformers' names), the relative error by norm
||g_bf16 - g_fp32|| / ||g_fp32||, plus both losses, as JSON.

Run on the GPU machine (torch and transformers >= 5.17):

    /opt/torch/.venv/bin/python3 scripts/measure_bf16_autocast_grads.py \\
        --fixtures tests/data/model --out /tmp/bf16_autocast_grad_errors.json [--device cuda]

The fp32 pass runs on the CPU (no TF32 can leak in); the autocast pass on --device (cuda by
default when available, as users train).
"""
import argparse
import json
import os
import sys

import torch
from safetensors.torch import load_file
from transformers import DeepseekV4ForCausalLM

FIXTURES = ("mixed_small", "ratios_4_128")


def gradients(model, input_ids, device, autocast):
    """(loss, {name: fp32 gradient on the CPU}) of the next-token loss with labels = input_ids."""
    model = model.to(device)
    model.zero_grad(set_to_none=True)
    ids = input_ids.to(device)
    if autocast:
        with torch.autocast(device_type=device, dtype=torch.bfloat16):
            out = model(input_ids=ids, labels=ids, use_cache=False)
    else:
        out = model(input_ids=ids, labels=ids, use_cache=False)
    out.loss.backward()
    grads = {name: p.grad.detach().float().cpu().clone() for name, p in model.named_parameters()
             if p.grad is not None}
    model.zero_grad(set_to_none=True)
    return out.loss.item(), grads


def measure(fixture_dir, device):
    model = DeepseekV4ForCausalLM.from_pretrained(os.path.join(fixture_dir, "model"),
                                                  torch_dtype=torch.float32)
    model.eval()  # no dropout; gradients still flow
    input_ids = load_file(os.path.join(fixture_dir, "reference.safetensors"))["input_ids"]
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    loss_fp32, exact = gradients(model, input_ids, "cpu", autocast=False)
    loss_bf16, rounded = gradients(model, input_ids, device, autocast=True)
    errors = {}
    for name, g in exact.items():
        norm = g.norm().item()
        diff = (rounded[name] - g).norm().item() if name in rounded else float("inf")
        errors[name] = diff / norm if norm > 0 else (0.0 if diff == 0 else float("inf"))
    return {"loss_fp32": loss_fp32, "loss_bf16_autocast": loss_bf16, "device": device,
            "grad_rel_err_by_norm": errors}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--fixtures", default="tests/data/model",
                        help="folder holding the fixture directories")
    parser.add_argument("--out", required=True, help="JSON file to write")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                        help="where the autocast pass runs (cuda or cpu)")
    args = parser.parse_args()
    result = {}
    for fixture in FIXTURES:
        path = os.path.join(args.fixtures, fixture)
        if not os.path.isdir(path):
            sys.exit(f"no fixture directory {path} (run scripts/make_model_fixtures.py)")
        result[fixture] = measure(path, args.device)
        worst = sorted(result[fixture]["grad_rel_err_by_norm"].items(), key=lambda kv: -kv[1])[:5]
        print(f"{fixture}: loss fp32 {result[fixture]['loss_fp32']:.6f}, bf16 autocast "
              f"{result[fixture]['loss_bf16_autocast']:.6f}; largest gradient errors by norm: "
              + ", ".join(f"{name} {err:.3e}" for name, err in worst), flush=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1, sort_keys=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
