"""Tiny random checkpoints in the official file formats, for install checks (``--smoke``) and tests.

Each writer builds the pack's own module with a tiny configuration and saves its state dict under the
official key layout, so the loaders read these files exactly like the released ones: nothing else in
the pipeline knows they are tiny. Outputs of such models are noise.

:func:`write_tiny_model_folder` lays out a whole ComfyUI-style ``models`` folder with the file names
the example workflows use.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file

from ..models.hunyuan_vae import HunyuanVAEConfig, HunyuanVideoVAE
from ..models.mmdit import MMDiT, MMDiTConfig

# The released video model's flags (split q/k/v, cond_in, rotate-half RoPE) with tiny sizes. Text widths
# match the tiny text encoders below (T5 d_model 32, CLIP hidden 24); head dim 16 gives RoPE axes (4, 6, 6).
TINY_MMDIT = MMDiTConfig(
    in_channels=64, vec_in_dim=24, context_in_dim=32, hidden_size=64, num_heads=4,
    depth=2, depth_single_blocks=2, axes_dim=(4, 6, 6),
)
# The high-compression model: Video DC-AE latents (128 channels), patch size 1.
TINY_MMDIT_DC_AE = TINY_MMDIT.with_changes(in_channels=128, patch_size=1)
# HunyuanVideo VAE with the released layout (4 blocks: 8x spatial, 4x temporal) and narrow widths.
TINY_HUNYUAN_VAE = HunyuanVAEConfig(block_out_channels=(8, 16, 16, 16), layers_per_block=1, norm_num_groups=4)

# File and folder names the example workflows expect (the released names).
MMDIT_FILE = "Open_Sora_v2.safetensors"
MMDIT_DC_AE_FILE = "Open_Sora_v2_Video_DC_AE.safetensors"
HUNYUAN_VAE_FILE = "hunyuan_vae.safetensors"
DC_AE_FILE = "F32T4C128_AE.safetensors"
T5_FOLDER = "t5-v1_1-xxl"
CLIP_FOLDER = "clip-vit-large-patch14"


def _seeded_state_dict(build: "callable", seed: int) -> dict[str, torch.Tensor]:
    """State dict of ``build()`` created under ``seed`` without touching the global RNG."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        module = build()
    return {key: value.detach().contiguous() for key, value in module.state_dict().items()}


def write_tiny_mmdit(path: str | os.PathLike, config: MMDiTConfig = TINY_MMDIT, seed: int = 0) -> Path:
    """A tiny MMDiT under the official keys (no metadata, like ``Open_Sora_v2.safetensors``)."""
    tensors = _seeded_state_dict(lambda: MMDiT(config), seed)
    save_file(tensors, str(path))
    return Path(path)


def write_tiny_hunyuan_vae(path: str | os.PathLike, config: HunyuanVAEConfig = TINY_HUNYUAN_VAE,
                           seed: int = 0) -> Path:
    """A tiny HunyuanVideo causal VAE under the official keys of ``hunyuan_vae.safetensors``."""
    tensors = _seeded_state_dict(lambda: HunyuanVideoVAE(config), seed)
    save_file(tensors, str(path))
    return Path(path)


@dataclass(frozen=True)
class TinyModelFolder:
    """Where :func:`write_tiny_model_folder` put each file (names relative to their model folder)."""

    root: Path
    files: dict[str, str]


def write_tiny_model_folder(root: str | os.PathLike, what: str = "t2v", seed: int = 0) -> TinyModelFolder:
    """Write tiny models for a workflow family into a ComfyUI ``models`` folder layout under ``root``.

    ``what``: ``"t2v"`` / ``"i2v"`` (video MMDiT, Hunyuan VAE, T5 and CLIP folders) or
    ``"high_compression"`` (adds the DC-AE MMDiT and the Video DC-AE).
    """
    root = Path(root)
    for folder in ("diffusion_models", "vae", "text_encoders"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    files: dict[str, str] = {}
    write_tiny_mmdit(root / "diffusion_models" / MMDIT_FILE, TINY_MMDIT, seed)
    files["mmdit"] = MMDIT_FILE
    write_tiny_hunyuan_vae(root / "vae" / HUNYUAN_VAE_FILE, TINY_HUNYUAN_VAE, seed + 1)
    files["vae"] = HUNYUAN_VAE_FILE
    return TinyModelFolder(root, files)
