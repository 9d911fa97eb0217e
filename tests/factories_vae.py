"""Tiny random autoencoder checkpoints in the official key layout, and look-alike files of other kinds.

``write_tiny_hunyuan_vae(path)`` writes a safetensors file that ``loaders.autoencoders.load_autoencoder``
(and the VAE Loader node) read like the released ``hunyuan_vae.safetensors``; its key layout is the
module's, which ``test_hunyuan_vae.py`` pins to the official key dump and the golden file.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from safetensors.torch import save_file

from comfyui_opensora.loaders.tiny_checkpoints import TINY_HUNYUAN_VAE  # the golden fixture's shape
from comfyui_opensora.models.hunyuan_vae import HunyuanVAEConfig, HunyuanVideoVAE

# The released model's widths (246M parameters), for shape checks on the meta device and benchmarks.
RELEASED_HUNYUAN_VAE = HunyuanVAEConfig()


def tiny_hunyuan_state_dict(config: HunyuanVAEConfig = TINY_HUNYUAN_VAE, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random weights for ``config`` under the official keys; norm affines are randomised too so that
    a wrong norm layout shows in outputs."""
    generator = torch.Generator().manual_seed(seed)
    with torch.device("meta"):
        module = HunyuanVideoVAE(config)
    tensors = {}
    for key, value in module.state_dict().items():
        if key.endswith("weight") and value.ndim > 1:
            fan_in = value[0].numel()
            tensor = torch.randn(value.shape, generator=generator) / fan_in**0.5
        elif "norm" in key and key.endswith("weight"):
            tensor = 1 + 0.1 * torch.randn(value.shape, generator=generator)
        else:
            tensor = 0.05 * torch.randn(value.shape, generator=generator)
        tensors[key] = tensor.contiguous()
    return tensors


def write_tiny_hunyuan_vae(path: str | os.PathLike, config: HunyuanVAEConfig = TINY_HUNYUAN_VAE,
                           seed: int = 0, dtype: torch.dtype = torch.float32) -> Path:
    """Write a tiny random HunyuanVideo VAE checkpoint (official key layout) to ``path``."""
    tensors = {k: v.to(dtype) for k, v in tiny_hunyuan_state_dict(config, seed).items()}
    save_file(tensors, str(path))
    return Path(path)


def write_lookalike(path: str | os.PathLike, kind: str) -> Path:
    """A small file with the marker keys of another checkpoint kind (``"mmdit"``, ``"t5"``, ``"flux_ae"``)."""
    keys = {
        "mmdit": ["cond_in.weight", "double_blocks.0.img_attn.q_proj.weight", "img_in.weight"],
        "t5": ["shared.weight", "encoder.block.0.layer.0.SelfAttention.q.weight"],
        "flux_ae": ["encoder.conv_in.weight", "decoder.conv_in.weight"],
    }[kind]
    save_file({key: torch.zeros(2, 2) for key in keys}, str(path))
    return Path(path)
