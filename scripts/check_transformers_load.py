"""Loads a v4rl checkpoint with transformers and compares its fp32 logits with v4rl's.

On the GPU machine: python3 scripts/check_transformers_load.py MODEL_DIR IN.safetensors OUT.safetensors
where OUT comes from `v4rl logits --model MODEL_DIR --input IN.safetensors --output OUT`.
"""
import sys
import torch
from safetensors.torch import load_file
from transformers import DeepseekV4ForCausalLM

model = DeepseekV4ForCausalLM.from_pretrained(sys.argv[1], torch_dtype=torch.float32).eval()
ids = load_file(sys.argv[2])["input_ids"]
ours = load_file(sys.argv[3])["logits"]
with torch.no_grad():
    theirs = model(input_ids=ids).logits.float()
err = (theirs - ours).abs().max().item()
print(f"transformers loaded {sys.argv[1]}: logits {tuple(theirs.shape)}, max abs diff {err:.3g}, "
      f"max rel {err / theirs.abs().max().item():.3g}")
