#!/usr/bin/env python3
"""Builds tiny random DeepSeek-V4 models with transformers and saves reference fixtures.

Run on a machine with torch and transformers >= 5.17 (the GPU machine has both; everything here
runs on its CPU, in fp32, so no TF32 or GPU kernel choice can leak into the references):

    python3 scripts/make_model_fixtures.py --out tests/data/model

Each fixture directory holds
  model/config.json     transformers' own `save_pretrained` config (or DeepSeek's inference format)
  model/model.safetensors  the weights (transformers state-dict names, or DeepSeek names + FP8/FP4)
  reference.safetensors input_ids, logits, final hidden state, routed expert ids, greedy decode
                        tokens and per-step decode logits (+ MTP logits, loss where produced)
  grads.safetensors     (mixed_small only) d loss / d parameter for every parameter, HF names

Weights are random (there is no network on the GPU machine) with scales chosen so that every
branch matters: non-zero sinks, position biases and mHC biases, routing biases, SwiGLU inputs that
reach the clamp. Parameters stored in bf16/FP8/FP4 are first rounded to those formats in the model
itself, so the fp32 reference forward sees exactly the values the file holds.
"""
import argparse
import copy
import json
import math
import os
import sys
import time
import traceback

import torch
import transformers
from safetensors.torch import load_file, save_file
from transformers import DeepseekV4Config, DeepseekV4ForCausalLM
from transformers.models.deepseek_v4 import modeling_deepseek_v4 as mdv4


def log(*args):
    print(*args, flush=True)


# ---------------------------------------------------------------------------------------------
# Configs
# ---------------------------------------------------------------------------------------------

YARN = {
    "rope_type": "yarn",
    "factor": 16.0,
    "original_max_position_embeddings": 65536,
    "beta_fast": 32.0,
    "beta_slow": 1.0,
}


def make_config(**overrides):
    kwargs = dict(
        vocab_size=128,
        hidden_size=64,
        moe_intermediate_size=16,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=32,
        q_lora_rank=32,
        partial_rotary_factor=0.5,  # rope dim 16
        num_experts_per_tok=2,
        n_routed_experts=8,
        n_shared_experts=1,
        routed_scaling_factor=1.5,
        rope_theta=10000.0,
        compress_rope_theta=160000.0,
        rope_parameters=dict(YARN),
        hc_mult=4,
        hc_sinkhorn_iters=20,
        hc_eps=1e-6,
        rms_norm_eps=1e-6,
        swiglu_limit=10.0,
        o_groups=2,
        o_lora_rank=16,
        # Eight indexer heads make an all-ReLU-zero score (an exact tie, which torch.topk breaks
        # arbitrarily) rare enough not to reach a top-k boundary in these fixtures.
        index_n_heads=8,
        index_head_dim=32,
        num_nextn_predict_layers=1,
        tie_word_embeddings=False,
    )
    kwargs.update(overrides)
    return DeepseekV4Config(**kwargs)


def build_model(config, seed):
    torch.manual_seed(seed)
    try:
        model = DeepseekV4ForCausalLM._from_config(config, attn_implementation="eager")
    except (TypeError, ValueError):
        config._attn_implementation = "eager"
        model = DeepseekV4ForCausalLM(config)
    model = model.float().eval()
    randomize(model, config, seed + 1)
    return model


def randomize(model, config, seed):
    """Replaces HF's init (zeros for sinks / biases, 0.02 normals) by values that exercise
    every term of the forward."""
    g = torch.Generator().manual_seed(seed)
    H = config.hidden_size
    n = config.hc_mult
    E = config.n_routed_experts
    k = config.num_experts_per_tok

    def normal(shape, std):
        return torch.randn(shape, generator=g) * std

    with torch.no_grad():
        for name, p in model.named_parameters():
            shape = p.shape
            if name.endswith("embed_tokens.weight"):
                p.copy_(normal(shape, 1.0))
            elif name.endswith("lm_head.weight"):
                p.copy_(normal(shape, 1.0 / math.sqrt(H)))
            elif name.endswith("_hc.fn") or name.endswith("hc_head.hc_fn"):
                p.copy_(normal(shape, 1.0 / math.sqrt(n * H)))
            elif name.endswith("_hc.base") or name.endswith("hc_head.hc_base"):
                p.copy_(normal(shape, 0.5))
            elif name.endswith("_hc.scale") or name.endswith("hc_head.hc_scale"):
                p.copy_(torch.rand(shape, generator=g) + 0.5)
            elif name.endswith("sinks"):
                p.copy_(normal(shape, 1.0))
            elif name.endswith("position_bias"):
                p.copy_(normal(shape, 0.5))
            elif "norm" in name.split(".")[-2] or "layernorm" in name:
                p.copy_(1.0 + normal(shape, 0.1))
            elif name.endswith("experts.gate_up_proj"):
                p.copy_(normal(shape, 4.0 / math.sqrt(H)))
            elif name.endswith("experts.down_proj"):
                p.copy_(normal(shape, 0.5 / math.sqrt(shape[-1])))
            elif p.dim() == 2:
                p.copy_(normal(shape, 1.0 / math.sqrt(shape[1])))
            else:
                raise RuntimeError(f"no init rule for parameter {name} {tuple(shape)}")
        for name, b in model.named_buffers():
            if name.endswith("tid2eid"):
                rows = [torch.randperm(E, generator=g)[:k] for _ in range(b.shape[0])]
                b.copy_(torch.stack(rows).to(b.dtype))
            elif name.endswith("e_score_correction_bias"):
                b.copy_(normal(b.shape, 0.3))


def round_params_to_bf16(model):
    with torch.no_grad():
        for _, p in model.named_parameters():
            p.copy_(p.bfloat16().float())
        # Persistent buffers only (the routing bias): the RoPE inv_freq tables stay fp32.
        for name, b in model.named_buffers():
            if b.is_floating_point() and "inv_freq" not in name:
                b.copy_(b.bfloat16().float())


# ---------------------------------------------------------------------------------------------
# Reference computations
# ---------------------------------------------------------------------------------------------

class Capture:
    """Forward hooks: routed ids per MoE gate, the final hidden state and the streams before
    hc_head, and the decoder-layer kwargs (mask, position embeddings) for the MTP reference."""

    def __init__(self, model):
        self.routed = {}
        self.layer_kwargs = None
        self.streams = None
        self.hidden = None
        self.handles = []
        inner = model.model
        for i, layer in enumerate(inner.layers):
            self.handles.append(layer.mlp.gate.register_forward_hook(self._gate_hook(i)))
        self.handles.append(inner.layers[0].register_forward_pre_hook(self._layer_pre_hook,
                                                                      with_kwargs=True))
        self.handles.append(inner.hc_head.register_forward_pre_hook(self._hc_head_pre_hook))
        self.handles.append(inner.norm.register_forward_hook(self._norm_hook))

    def _gate_hook(self, i):
        def hook(module, inputs, output):
            self.routed[i] = output[2].detach().clone()
        return hook

    def _layer_pre_hook(self, module, args, kwargs):
        self.layer_kwargs = dict(kwargs)

    def _hc_head_pre_hook(self, module, inputs):
        self.streams = inputs[0].detach().clone()

    def _norm_hook(self, module, inputs, output):
        self.hidden = output.detach().clone()

    def close(self):
        for h in self.handles:
            h.remove()


def routed_ids_tensor(capture, num_layers):
    ids = [torch.sort(capture.routed[i], dim=-1).values for i in range(num_layers)]
    return torch.stack(ids).to(torch.int32)


def greedy_decode(model, prompt, steps):
    """Prefill `prompt` with a cache, then feed back the argmax `steps - 1` times. Returns the
    generated tokens [B, steps] and the logits that chose each of them [B, steps, V]."""
    with torch.no_grad():
        out = model(input_ids=prompt, use_cache=True)
        past = out.past_key_values
        logits = [out.logits[:, -1]]
        tokens = [logits[-1].argmax(-1)]
        for _ in range(steps - 1):
            out = model(input_ids=tokens[-1][:, None], past_key_values=past, use_cache=True)
            past = out.past_key_values
            logits.append(out.logits[:, -1])
            tokens.append(logits[-1].argmax(-1))
    return torch.stack(tokens, 1), torch.stack(logits, 1)


def reference(model, config, input_ids, decode_prompt_len, decode_steps, with_grads):
    num_layers = config.num_hidden_layers
    cap = Capture(model)
    with torch.no_grad():
        out = model(input_ids=input_ids, use_cache=False)
    logits = out.logits.detach().clone()
    ref = {
        "input_ids": input_ids.to(torch.int64),
        "logits": logits,
        "hidden": cap.hidden,
        "routed_ids": routed_ids_tensor(cap, num_layers),
    }
    streams, layer_kwargs = cap.streams, cap.layer_kwargs
    cap.close()

    with torch.no_grad():
        cached = model(input_ids=input_ids, use_cache=True).logits
    log(f"  prefill with cache vs without: max abs diff {(cached - logits).abs().max().item():.3e}")

    prompt = input_ids[:, :decode_prompt_len]
    tokens, decode_logits = greedy_decode(model, prompt, decode_steps)
    ref["decode_prompt_len"] = torch.tensor([decode_prompt_len], dtype=torch.int64)
    ref["decode_tokens"] = tokens.to(torch.int64)
    ref["decode_logits"] = decode_logits
    full = torch.cat([prompt, tokens[:, :-1]], 1)
    with torch.no_grad():
        full_logits = model(input_ids=full, use_cache=False).logits[:, decode_prompt_len - 1:]
    per_step = (full_logits - decode_logits).abs().amax(dim=(0, 2))
    log(f"  decode logits vs full-sequence forward, max abs diff per step: "
        + " ".join(f"{v:.1e}" for v in per_step.tolist()))

    grads = None
    if with_grads:
        model.zero_grad(set_to_none=True)
        out = model(input_ids=input_ids, labels=input_ids, use_cache=False)
        out.loss.backward()
        ref["loss"] = out.loss.detach().reshape(1)
        grads = {name: p.grad.detach().clone() for name, p in model.named_parameters()
                 if p.grad is not None}
        missing = [name for name, p in model.named_parameters() if p.grad is None]
        log(f"  loss {out.loss.item():.6f}; {len(grads)} grads; without grad: {missing}")
        model.zero_grad(set_to_none=True)
    return ref, grads, streams, layer_kwargs


# ---------------------------------------------------------------------------------------------
# MTP reference (transformers has no MTP module: compose it from transformers' own blocks)
# ---------------------------------------------------------------------------------------------

def build_mtp(config, seed):
    n = config.num_hidden_layers
    mtp_config = copy.deepcopy(config)
    # Plain attribute writes: the config's field validation would see the lengths mid-update.
    mtp_config.__dict__.update({
        "num_hidden_layers": n + 1,
        "layer_types": list(config.layer_types) + ["sliding_attention"],
        "mlp_layer_types": list(config.mlp_layer_types) + ["moe"],
        "_attn_implementation": "eager",
    })
    H = config.hidden_size
    mtp = torch.nn.ModuleDict({
        "layer": mdv4.DeepseekV4DecoderLayer(mtp_config, n),
        "e_proj": torch.nn.Linear(H, H, bias=False),
        "h_proj": torch.nn.Linear(H, H, bias=False),
        "enorm": mdv4.DeepseekV4RMSNorm(H, eps=config.rms_norm_eps),
        "hnorm": mdv4.DeepseekV4RMSNorm(H, eps=config.rms_norm_eps),
        "norm": mdv4.DeepseekV4RMSNorm(H, eps=config.rms_norm_eps),
        "hc_head": mdv4.DeepseekV4HyperHead(config),
    }).float().eval()
    randomize(mtp, config, seed)
    return mtp


def mtp_forward(model, mtp, streams, layer_kwargs, next_ids):
    with torch.no_grad():
        e = mtp["enorm"](model.model.embed_tokens(next_ids))
        x = mtp["e_proj"](e).unsqueeze(2) + mtp["h_proj"](mtp["hnorm"](streams))
        kwargs = dict(layer_kwargs)
        kwargs["input_ids"] = next_ids
        kwargs["past_key_values"] = None
        x = mtp["layer"](x, **kwargs)
        return model.lm_head(mtp["norm"](mtp["hc_head"](x)))


# ---------------------------------------------------------------------------------------------
# DeepSeek naming and the official number formats
# ---------------------------------------------------------------------------------------------

def fp8_block_quant(w):
    """E4M3 with one power-of-two (ue8m0) scale per 128x128 tile; returns (dequant, codes,
    scale exponent bytes)."""
    out, inp = w.shape
    bo, bi = (out + 127) // 128, (inp + 127) // 128
    padded = torch.zeros(bo * 128, bi * 128)
    padded[:out, :inp] = w
    tiles = padded.view(bo, 128, bi, 128)
    amax = tiles.abs().amax(dim=(1, 3)).clamp(min=1e-4)
    exponent = torch.ceil(torch.log2(amax / 448.0))
    scale = torch.pow(2.0, exponent)
    q = (tiles / scale[:, None, :, None]).clamp(-448, 448).to(torch.float8_e4m3fn)
    deq = (q.float() * scale[:, None, :, None]).view(bo * 128, bi * 128)[:out, :inp]
    codes = q.view(bo * 128, bi * 128)[:out, :inp].contiguous()
    return deq, codes, (exponent + 127).to(torch.uint8)


E2M1_GRID = torch.tensor([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0])


def fp4_quant(w):
    """E2M1 with one ue8m0 scale per 32 input elements; packed two per byte, element 2c in the
    low nibble. Returns (dequant, packed int8 [out, in/2], scale exponent bytes [out, in/32])."""
    out, inp = w.shape
    blocks = w.view(out, inp // 32, 32)
    amax = blocks.abs().amax(-1).clamp(min=6.0 * 2.0 ** -126)
    exponent = torch.ceil(torch.log2(amax / 6.0))
    scale = torch.pow(2.0, exponent)
    x = (blocks / scale[..., None]).clamp(-6, 6)
    index = (x.abs()[..., None] - E2M1_GRID).abs().argmin(-1)
    value = E2M1_GRID[index] * torch.sign(x)
    deq = (value * scale[..., None]).view(out, inp)
    codes = (index | ((x < 0).to(torch.int64) << 3)).view(out, inp)
    packed = (codes[:, 0::2] | (codes[:, 1::2] << 4)).to(torch.uint8).view(torch.int8)
    return deq, packed.contiguous(), (exponent + 127).to(torch.uint8)


def e8m0(exponent_bytes):
    try:
        return exponent_bytes.view(torch.float8_e8m0fnu)
    except (AttributeError, RuntimeError):
        return exponent_bytes


HF_TO_DS_LAYER = [
    ("input_layernorm.weight", "attn_norm.weight"),
    ("post_attention_layernorm.weight", "ffn_norm.weight"),
    ("attn_hc.fn", "hc_attn_fn"), ("attn_hc.base", "hc_attn_base"), ("attn_hc.scale", "hc_attn_scale"),
    ("ffn_hc.fn", "hc_ffn_fn"), ("ffn_hc.base", "hc_ffn_base"), ("ffn_hc.scale", "hc_ffn_scale"),
    ("self_attn.q_a_proj.weight", "attn.wq_a.weight"),
    ("self_attn.q_a_norm.weight", "attn.q_norm.weight"),
    ("self_attn.q_b_proj.weight", "attn.wq_b.weight"),
    ("self_attn.kv_proj.weight", "attn.wkv.weight"),
    ("self_attn.kv_norm.weight", "attn.kv_norm.weight"),
    ("self_attn.o_a_proj.weight", "attn.wo_a.weight"),
    ("self_attn.o_b_proj.weight", "attn.wo_b.weight"),
    ("self_attn.sinks", "attn.attn_sink"),
    ("self_attn.compressor.indexer.kv_proj.weight", "attn.indexer.compressor.wkv.weight"),
    ("self_attn.compressor.indexer.gate_proj.weight", "attn.indexer.compressor.wgate.weight"),
    ("self_attn.compressor.indexer.position_bias", "attn.indexer.compressor.ape"),
    ("self_attn.compressor.indexer.kv_norm.weight", "attn.indexer.compressor.norm.weight"),
    ("self_attn.compressor.indexer.q_b_proj.weight", "attn.indexer.wq_b.weight"),
    ("self_attn.compressor.indexer.scorer.weights_proj.weight", "attn.indexer.weights_proj.weight"),
    ("self_attn.compressor.indexer.weights_proj.weight", "attn.indexer.weights_proj.weight"),
    ("self_attn.compressor.kv_proj.weight", "attn.compressor.wkv.weight"),
    ("self_attn.compressor.gate_proj.weight", "attn.compressor.wgate.weight"),
    ("self_attn.compressor.position_bias", "attn.compressor.ape"),
    ("self_attn.compressor.kv_norm.weight", "attn.compressor.norm.weight"),
    ("mlp.gate.weight", "ffn.gate.weight"),
    ("mlp.gate.e_score_correction_bias", "ffn.gate.bias"),
    ("mlp.gate.tid2eid", "ffn.gate.tid2eid"),
    ("mlp.shared_experts.gate_proj.weight", "ffn.shared_experts.w1.weight"),
    ("mlp.shared_experts.up_proj.weight", "ffn.shared_experts.w3.weight"),
    ("mlp.shared_experts.down_proj.weight", "ffn.shared_experts.w2.weight"),
]

FP8_SUFFIXES = ("attn.wq_a.weight", "attn.wq_b.weight", "attn.wkv.weight", "attn.wo_a.weight",
                "attn.wo_b.weight", "attn.indexer.wq_b.weight", "shared_experts.w1.weight",
                "shared_experts.w2.weight", "shared_experts.w3.weight", "e_proj.weight",
                "h_proj.weight")
FP32_SUFFIXES = ("hc_attn_fn", "hc_attn_base", "hc_attn_scale", "hc_ffn_fn", "hc_ffn_base",
                 "hc_ffn_scale", "hc_head_fn", "hc_head_base", "hc_head_scale", "attn_sink",
                 "ape", "gate.bias")


def ds_layer_tensors(prefix, layer_state, num_experts):
    """HF names of one decoder layer's state (relative) -> DeepSeek names (with prefix)."""
    out = {}
    for name, t in layer_state.items():
        if name == "mlp.experts.gate_up_proj":
            inter = t.shape[1] // 2
            for e in range(num_experts):
                out[f"{prefix}ffn.experts.{e}.w1.weight"] = t[e, :inter]
                out[f"{prefix}ffn.experts.{e}.w3.weight"] = t[e, inter:]
            continue
        if name == "mlp.experts.down_proj":
            for e in range(num_experts):
                out[f"{prefix}ffn.experts.{e}.w2.weight"] = t[e]
            continue
        for hf, ds in HF_TO_DS_LAYER:
            if name == hf:
                out[prefix + ds] = t
                break
        else:
            raise RuntimeError(f"no DeepSeek name for layer tensor {name}")
    return out


def quantize_deepseek(tensors):
    """Stores DeepSeek-named fp32 tensors in the official formats. Returns (file tensors,
    dequantised fp32 values by name) so the model can be given exactly the stored values."""
    stored, values = {}, {}
    for name, t in tensors.items():
        t = t.detach().float().contiguous()
        if name.endswith("tid2eid"):
            stored[name] = t.to(torch.int64)
            continue
        if ".experts." in name and "shared" not in name:
            deq, packed, exps = fp4_quant(t)
            stored[name] = packed
            stored[name[: -len("weight")] + "scale"] = e8m0(exps)
            values[name] = deq
        elif name.endswith(FP8_SUFFIXES):
            deq, codes, exps = fp8_block_quant(t)
            stored[name] = codes
            stored[name[: -len("weight")] + "scale"] = e8m0(exps)
            values[name] = deq
        elif name.endswith(FP32_SUFFIXES):
            stored[name] = t
            values[name] = t
        else:
            stored[name] = t.bfloat16()
            values[name] = t.bfloat16().float()
    return stored, values


def deepseek_state(model, config, mtp):
    state = model.state_dict()
    out = {
        "embed.weight": state["model.embed_tokens.weight"],
        "head.weight": state["lm_head.weight"],
        "norm.weight": state["model.norm.weight"],
        "hc_head_fn": state["model.hc_head.hc_fn"],
        "hc_head_base": state["model.hc_head.hc_base"],
        "hc_head_scale": state["model.hc_head.hc_scale"],
    }
    for i in range(config.num_hidden_layers):
        prefix = f"model.layers.{i}."
        layer = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        out.update(ds_layer_tensors(f"layers.{i}.", layer, config.n_routed_experts))
    if mtp is not None:
        ms = mtp.state_dict()
        layer = {k[len("layer."):]: v for k, v in ms.items() if k.startswith("layer.")}
        out.update(ds_layer_tensors("mtp.0.", layer, config.n_routed_experts))
        for name in ("e_proj.weight", "h_proj.weight", "enorm.weight", "hnorm.weight",
                     "norm.weight"):
            out["mtp.0." + name] = ms[name]
        out["mtp.0.hc_head_fn"] = ms["hc_head.hc_fn"]
        out["mtp.0.hc_head_base"] = ms["hc_head.hc_base"]
        out["mtp.0.hc_head_scale"] = ms["hc_head.hc_scale"]
    return out


def load_deepseek_values(model, config, mtp, values):
    """Writes dequantised values back into the HF modules (inverse of deepseek_state)."""
    with torch.no_grad():
        def assign(module_state, hf_name, value):
            module_state[hf_name].copy_(value)

        state = dict(model.named_parameters())
        top = {"embed.weight": "model.embed_tokens.weight", "head.weight": "lm_head.weight",
               "norm.weight": "model.norm.weight", "hc_head_fn": "model.hc_head.hc_fn",
               "hc_head_base": "model.hc_head.hc_base", "hc_head_scale": "model.hc_head.hc_scale"}
        for ds, hf in top.items():
            if ds in values:
                assign(state, hf, values[ds])

        def assign_layer(params, prefix_hf, prefix_ds):
            for hf, ds in HF_TO_DS_LAYER:
                key = prefix_ds + ds
                if key in values and (prefix_hf + hf) in params:
                    assign(params, prefix_hf + hf, values[key])
            gu = params.get(prefix_hf + "mlp.experts.gate_up_proj")
            dp = params.get(prefix_hf + "mlp.experts.down_proj")
            inter = gu.shape[1] // 2
            for e in range(config.n_routed_experts):
                gu[e, :inter].copy_(values[f"{prefix_ds}ffn.experts.{e}.w1.weight"])
                gu[e, inter:].copy_(values[f"{prefix_ds}ffn.experts.{e}.w3.weight"])
                dp[e].copy_(values[f"{prefix_ds}ffn.experts.{e}.w2.weight"])

        for i in range(config.num_hidden_layers):
            assign_layer(state, f"model.layers.{i}.", f"layers.{i}.")
        if mtp is not None:
            mstate = dict(mtp.named_parameters())
            assign_layer(mstate, "layer.", "mtp.0.")
            for name in ("e_proj.weight", "h_proj.weight", "enorm.weight", "hnorm.weight",
                         "norm.weight"):
                assign(mstate, name, values["mtp.0." + name])
            assign(mstate, "hc_head.hc_fn", values["mtp.0.hc_head_fn"])
            assign(mstate, "hc_head.hc_base", values["mtp.0.hc_head_base"])
            assign(mstate, "hc_head.hc_scale", values["mtp.0.hc_head_scale"])


def deepseek_inference_config(config, compress_ratios, dtype):
    rp = config.rope_parameters["compress"]
    return {
        "vocab_size": config.vocab_size,
        "dim": config.hidden_size,
        "moe_inter_dim": config.moe_intermediate_size,
        "n_layers": config.num_hidden_layers,
        "n_hash_layers": sum(1 for t in config.mlp_layer_types if t == "hash_moe"),
        "n_heads": config.num_attention_heads,
        "n_routed_experts": config.n_routed_experts,
        "n_shared_experts": config.n_shared_experts,
        "n_activated_experts": config.num_experts_per_tok,
        "score_func": config.scoring_func,
        "route_scale": config.routed_scaling_factor,
        "swiglu_limit": config.swiglu_limit,
        "q_lora_rank": config.q_lora_rank,
        "head_dim": config.head_dim,
        "rope_head_dim": config.qk_rope_head_dim,
        "o_groups": config.o_groups,
        "o_lora_rank": config.o_lora_rank,
        "window_size": config.sliding_window,
        "original_seq_len": rp["original_max_position_embeddings"],
        "rope_theta": config.rope_theta,
        "rope_factor": rp["factor"],
        "beta_fast": rp["beta_fast"],
        "beta_slow": rp["beta_slow"],
        "index_n_heads": config.index_n_heads,
        "index_head_dim": config.index_head_dim,
        "index_topk": config.index_topk,
        "hc_mult": config.hc_mult,
        "hc_sinkhorn_iters": config.hc_sinkhorn_iters,
        "dtype": dtype,
        "scale_fmt": "ue8m0",
        "expert_dtype": "fp4",
        "compress_rope_theta": config.compress_rope_theta,
        "compress_ratios": compress_ratios,
    }


# ---------------------------------------------------------------------------------------------
# Fixtures
# ---------------------------------------------------------------------------------------------

def save_hf_fixture(out_dir, model, config, ref, grads, weights_dtype):
    model_dir = os.path.join(out_dir, "model")
    os.makedirs(model_dir, exist_ok=True)
    config.save_pretrained(model_dir)
    state = {k: v.detach().to(weights_dtype).contiguous() if v.is_floating_point() else v.contiguous()
             for k, v in model.state_dict().items()}
    save_file(state, os.path.join(model_dir, "model.safetensors"))
    save_file({k: v.contiguous() for k, v in ref.items()},
              os.path.join(out_dir, "reference.safetensors"))
    if grads is not None:
        save_file({k: v.contiguous() for k, v in grads.items()},
                  os.path.join(out_dir, "grads.safetensors"))


def random_ids(config, batch, length, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, config.vocab_size, (batch, length), generator=g)


def fixture_mixed_small(root):
    """All three layer types, hash + top-k MoE, small ratios, index_topk < entries; grads."""
    config = make_config(
        num_hidden_layers=3,
        layer_types=["sliding_attention", "compressed_sparse_attention",
                     "heavily_compressed_attention"],
        mlp_layer_types=["hash_moe", "moe", "moe"],
        compress_rates={"compressed_sparse_attention": 4, "heavily_compressed_attention": 8},
        sliding_window=8,
        index_topk=3,
    )
    log("  config: " + json.dumps(config.to_dict(), default=str))
    model = build_model(config, seed=1)
    round_params_to_bf16(model)
    ids = random_ids(config, 2, 40, seed=11)
    ref, grads, _, _ = reference(model, config, ids, decode_prompt_len=37, decode_steps=12,
                                 with_grads=True)
    save_hf_fixture(os.path.join(root, "mixed_small"), model, config, ref, grads, torch.bfloat16)
    return model


def fixture_ratios_4_128(root):
    """Real ratios 4 and 128 with YaRN, T = 300 > 2 x 128 + window, index_topk < entries."""
    config = make_config(
        num_hidden_layers=4,
        layer_types=["sliding_attention", "compressed_sparse_attention",
                     "heavily_compressed_attention", "compressed_sparse_attention"],
        mlp_layer_types=["hash_moe", "hash_moe", "moe", "moe"],
        compress_rates={"compressed_sparse_attention": 4, "heavily_compressed_attention": 128},
        sliding_window=16,
        index_topk=16,
    )
    model = build_model(config, seed=2)
    round_params_to_bf16(model)
    ids = random_ids(config, 1, 300, seed=12)
    ref, _, _, _ = reference(model, config, ids, decode_prompt_len=250, decode_steps=20,
                             with_grads=False)
    save_hf_fixture(os.path.join(root, "ratios_4_128"), model, config, ref, None, torch.bfloat16)


def fixture_deepseek_fp8(root):
    """DeepSeek key names and inference config, FP8 block-scaled weights, FP4 experts, MTP."""
    config = make_config(
        num_hidden_layers=3,
        num_attention_heads=4,
        head_dim=64,
        partial_rotary_factor=0.25,  # rope dim 16
        moe_intermediate_size=32,
        layer_types=["sliding_attention", "compressed_sparse_attention",
                     "heavily_compressed_attention"],
        mlp_layer_types=["hash_moe", "moe", "moe"],
        compress_rates={"compressed_sparse_attention": 4, "heavily_compressed_attention": 8},
        sliding_window=8,
        index_topk=4,
    )
    model = build_model(config, seed=3)
    mtp = build_mtp(config, seed=33)
    stored, values = quantize_deepseek(deepseek_state(model, config, mtp))
    load_deepseek_values(model, config, mtp, values)
    ids = random_ids(config, 2, 33, seed=13)
    ref, _, streams, layer_kwargs = reference(model, config, ids, decode_prompt_len=30,
                                              decode_steps=8, with_grads=False)
    g = torch.Generator().manual_seed(14)
    next_ids = torch.cat([ids[:, 1:], torch.randint(0, config.vocab_size, (2, 1), generator=g)], 1)
    ref["mtp_next_ids"] = next_ids
    ref["mtp_logits"] = mtp_forward(model, mtp, streams, layer_kwargs, next_ids)
    out_dir = os.path.join(root, "deepseek_fp8")
    model_dir = os.path.join(out_dir, "model")
    os.makedirs(model_dir, exist_ok=True)
    with open(os.path.join(model_dir, "config.json"), "w") as f:
        json.dump(deepseek_inference_config(config, [0, 4, 8, 0], "fp8"), f, indent=2)
    try:
        save_file(stored, os.path.join(model_dir, "model.safetensors"))
    except Exception as error:  # older safetensors without F8_E8M0: raw exponent bytes (U8)
        log(f"  saving E8M0 scales failed ({error}); storing them as U8")
        stored = {k: (v.view(torch.uint8) if v.dtype != torch.uint8 and v.element_size() == 1
                      and k.endswith(".scale") else v) for k, v in stored.items()}
        save_file(stored, os.path.join(model_dir, "model.safetensors"))
    save_file({k: v.contiguous() for k, v in ref.items()},
              os.path.join(out_dir, "reference.safetensors"))


def report_naming(model, scratch):
    """Logs transformers' own module names and what save_pretrained writes (spec §6.5 notes
    version differences, e.g. indexer.weights_proj vs indexer.scorer.weights_proj)."""
    names = [n for n, _ in model.named_parameters()] + [n for n, _ in model.named_buffers()]
    log("state-dict names of layer 1 (CSA):")
    for n in names:
        if ".layers.1." in n:
            log("   ", n)
    model.save_pretrained(scratch)
    keys = []
    for f in sorted(os.listdir(scratch)):
        if f.endswith(".safetensors"):
            keys += list(load_file(os.path.join(scratch, f)).keys())
    log(f"save_pretrained wrote {len(keys)} tensors; layer-1 keys:")
    for k in sorted(keys):
        if ".1." in k:
            log("   ", k)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="tests/data/model")
    parser.add_argument("--scratch", default="/tmp/v4rl_fixture_scratch")
    args = parser.parse_args()
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    log(f"torch {torch.__version__}, transformers {transformers.__version__}")
    start = time.time()
    failed = 0
    for fn in (fixture_mixed_small, fixture_ratios_4_128, fixture_deepseek_fp8):
        log(f"{fn.__name__}:")
        try:
            model = fn(args.out)
            if fn is fixture_mixed_small:
                report_naming(model, args.scratch)
        except Exception:
            traceback.print_exc()
            failed += 1
        log(f"  done at {time.time() - start:.1f}s")
    for root, _, files in os.walk(args.out):
        for f in sorted(files):
            path = os.path.join(root, f)
            log(f"{path}: {os.path.getsize(path)} bytes")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
