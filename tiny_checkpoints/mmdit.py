"""Tiny MMDiT checkpoints (the video model, its high-compression variant, Flux-dev) and PEFT LoRA folders."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors.torch import save_file

from ..loaders.mmdit import COMFY_PREFIX, METADATA_AXES_DIM, METADATA_ROPE_LAYOUT, METADATA_THETA
from ..models.mmdit import MMDiT, MMDiTConfig
from .seeding import build_seeded, file_tensors
from .text import TINY_CLIP_WIDTH, TINY_T5_WIDTH


def high_compression_variant(config: MMDiTConfig) -> MMDiTConfig:
    """``config`` for Video DC-AE latents: 128 channels at patch size 1 (``cond_in`` width in_channels + 1)."""
    return config.with_changes(in_channels=128, patch_size=1)


def flux_dev_variant(config: MMDiTConfig) -> MMDiTConfig:
    """``config`` with Flux-dev's flags (guidance embedding, fused q/k/v, interleaved RoPE, no image
    condition input) and one block of each kind, for the t2i2v first frame."""
    return config.with_changes(guidance_embed=True, cond_embed=False, fused_qkv=True, rope_layout="interleaved",
                               depth=1, depth_single_blocks=1)


# The released video model's flags (split q/k/v, cond_in, rotate-half RoPE) with tiny sizes; text widths
# match the tiny text encoders; head dim 16 gives RoPE axes (4, 6, 6). Latent: 16 channels x 2x2 patch = 64.
TINY_MMDIT = MMDiTConfig(
    in_channels=64, vec_in_dim=TINY_CLIP_WIDTH, context_in_dim=TINY_T5_WIDTH, hidden_size=64, num_heads=4,
    depth=2, depth_single_blocks=2, axes_dim=(4, 6, 6),
)
TINY_MMDIT_DC_AE = high_compression_variant(TINY_MMDIT)
TINY_FLUX_MMDIT = flux_dev_variant(TINY_MMDIT)


def _randomised(model: MMDiT) -> MMDiT:
    """Linear layers keep PyTorch's initialisation (outputs of order 1); ``cond_in`` (zero-initialised)
    and the QK-norm scales (ones) are randomised so that every tensor influences the output."""
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("norm.scale"):
                param.copy_(1 + 0.2 * torch.randn_like(param))
            elif name.startswith("cond_in."):
                param.copy_(0.1 * torch.randn_like(param))
    return model


def tiny_mmdit_state_dict(config: MMDiTConfig = TINY_MMDIT, seed: int = 0,
                          dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """Seeded random weights for ``config`` under the official keys."""
    return file_tensors(build_seeded(lambda: _randomised(MMDiT(config)), seed), dtype)


def write_tiny_mmdit(path: str | os.PathLike, config: MMDiTConfig = TINY_MMDIT, seed: int = 0,
                     dtype: torch.dtype = torch.float32, comfy_prefix: bool = False,
                     with_metadata: bool = True) -> Path:
    """Write a tiny checkpoint for ``config`` to ``path``.

    The RoPE settings that shapes cannot show (axes_dim, theta, layout) go into the safetensors metadata
    unless ``with_metadata`` is False (the released files have none); ``comfy_prefix`` adds ComfyUI's
    ``model.diffusion_model.`` to every key.
    """
    tensors = tiny_mmdit_state_dict(config, seed, dtype)
    if comfy_prefix:
        tensors = {COMFY_PREFIX + k: v for k, v in tensors.items()}
    metadata = {
        METADATA_AXES_DIM: json.dumps(list(config.axes_dim)),
        METADATA_THETA: str(config.theta),
        METADATA_ROPE_LAYOUT: config.rope_layout,
    } if with_metadata else None
    save_file(tensors, str(path), metadata=metadata)
    return Path(path)


def write_tiny_lora(folder: str | os.PathLike, config: MMDiTConfig = TINY_MMDIT, rank: int = 2, seed: int = 0,
                    targets: tuple[str, ...] = ("img_attn.q_proj", "img_attn.v_proj", "linear2")) -> Path:
    """A PEFT LoRA folder (``adapter_config.json`` + ``adapter_model.safetensors``, the layout peft's
    ``save_pretrained`` writes) adapting every block module whose name ends with one of ``targets``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with torch.device("meta"):  # shapes only
        names = {n: m for n, m in MMDiT(config).named_modules() if isinstance(m, torch.nn.Linear) and n.endswith(targets)}
    generator = torch.Generator().manual_seed(seed)
    tensors = {}
    for name, linear in sorted(names.items()):
        prefix = f"base_model.model.{name}"
        tensors[f"{prefix}.lora_A.weight"] = 0.3 * torch.randn(rank, linear.in_features, generator=generator)
        tensors[f"{prefix}.lora_B.weight"] = 0.3 * torch.randn(linear.out_features, rank, generator=generator)
    save_file(tensors, str(folder / "adapter_model.safetensors"))
    settings = {"peft_type": "LORA", "r": rank, "lora_alpha": 2 * rank, "lora_dropout": 0.0, "bias": "none",
                "target_modules": sorted(set(targets)), "task_type": None}
    (folder / "adapter_config.json").write_text(json.dumps(settings, indent=2), encoding="utf-8")
    return folder
