"""Autoencoder test helpers: look-alike files of other checkpoint kinds.

Tiny autoencoder checkpoints come from the pack's ``tiny_checkpoints.autoencoders`` (re-exported here).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from safetensors.torch import save_file

from comfyui_opensora.tiny_checkpoints.autoencoders import (  # noqa: F401  (re-exported for the tests)
    TINY_HUNYUAN_VAE,
    tiny_hunyuan_state_dict,
    write_tiny_hunyuan_vae,
)


def write_lookalike(path: str | os.PathLike, kind: str) -> Path:
    """A small file with the marker keys of another checkpoint kind (``"mmdit"``, ``"t5"``, ``"flux_ae"``)."""
    keys = {
        "mmdit": ["cond_in.weight", "double_blocks.0.img_attn.q_proj.weight", "img_in.weight"],
        "t5": ["shared.weight", "encoder.block.0.layer.0.SelfAttention.q.weight"],
        "flux_ae": ["encoder.conv_in.weight", "decoder.conv_in.weight"],
    }[kind]
    save_file({key: torch.zeros(2, 2) for key in keys}, str(path))
    return Path(path)
