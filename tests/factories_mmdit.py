"""Tiny random MMDiT checkpoints in the official key layout, for tests of every stage.

``write_tiny_mmdit(path)`` writes a safetensors file that :func:`loaders.mmdit.load_mmdit` (and the
Model Loader node) read like the real ``Open_Sora_v2.safetensors``. The key layout comes from the
model module, whose keys and shapes are pinned to the official key dumps by ``test_mmdit_model.py``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors.torch import save_file

from comfyui_opensora.loaders.mmdit import (
    COMFY_PREFIX,
    METADATA_AXES_DIM,
    METADATA_ROPE_LAYOUT,
    METADATA_THETA,
)
from comfyui_opensora.models.mmdit import MMDiT, MMDiTConfig

# The workspace's dumps of every key and shape of the real checkpoints (not shipped with the pack).
KEY_DUMPS = Path(__file__).resolve().parent / "key_dumps"  # copied from the workspace's shared/docs/key_dumps

# Same flags as the released video model (split q/k/v, cond_in, rotate-half RoPE), tiny sizes; equal to
# the golden mmdit_forward "video" configuration. Latent: 16 channels, patch 2 -> 64 packed features.
TINY_VIDEO_CONFIG = MMDiTConfig(
    in_channels=64, vec_in_dim=24, context_in_dim=32, hidden_size=64, num_heads=4,
    depth=2, depth_single_blocks=2, axes_dim=(4, 6, 6),
)
# The high-compression variant (Video DC-AE latents: patch 1, cond_in width in_channels + 1).
TINY_DC_AE_CONFIG = TINY_VIDEO_CONFIG.with_changes(in_channels=128, patch_size=1)
# Flux-dev flags (guidance_in, fused qkv/linear1, interleaved RoPE, no cond_in) for the t2i2v image step.
TINY_FLUX_CONFIG = TINY_VIDEO_CONFIG.with_changes(
    guidance_embed=True, cond_embed=False, fused_qkv=True, rope_layout="interleaved", depth=1, depth_single_blocks=1,
)


def tiny_mmdit_state_dict(config: MMDiTConfig = TINY_VIDEO_CONFIG, seed: int = 0,
                          dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """Seeded random weights under the official keys (the global RNG is left untouched).

    Linear layers keep PyTorch's default initialisation (outputs of order 1); ``cond_in`` and the
    QK-norm scales are randomised too, so that every tensor influences the output.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = MMDiT(config)
        with torch.no_grad():
            for name, param in model.named_parameters():
                if name.endswith("norm.scale"):
                    param.copy_(1 + 0.2 * torch.randn_like(param))
                elif name.startswith("cond_in."):
                    param.copy_(0.1 * torch.randn_like(param))
    return {k: v.detach().to(dtype).contiguous() for k, v in model.state_dict().items()}


def write_tiny_mmdit(path: str | os.PathLike, config: MMDiTConfig = TINY_VIDEO_CONFIG, seed: int = 0,
                     dtype: torch.dtype = torch.float32, comfy_prefix: bool = False,
                     with_metadata: bool = True) -> MMDiTConfig:
    """Write a tiny checkpoint for ``config`` to ``path`` and return the config.

    The RoPE settings that shapes cannot show (axes_dim, theta, layout) go into the safetensors
    metadata unless ``with_metadata`` is False; ``comfy_prefix`` adds ``model.diffusion_model.``.
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
    return config


def tiny_mmdit_inputs(config: MMDiTConfig = TINY_VIDEO_CONFIG, batch: int = 1, frames: int = 2, height: int = 3,
                      width: int = 4, text_tokens: int = 5, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random forward inputs for a tiny model: a (frames, height, width) token grid, ids, text, times."""
    generator = torch.Generator().manual_seed(seed)
    grid = torch.stack(torch.meshgrid(
        torch.arange(frames), torch.arange(height), torch.arange(width), indexing="ij"), dim=-1)
    tokens = frames * height * width
    inputs = {
        "img": torch.randn(batch, tokens, config.in_channels, generator=generator),
        "img_ids": grid.reshape(1, tokens, 3).float().expand(batch, -1, -1).clone(),
        "txt": torch.randn(batch, text_tokens, config.context_in_dim, generator=generator),
        "txt_ids": torch.zeros(batch, text_tokens, 3),
        "timesteps": torch.rand(batch, generator=generator),
        "y_vec": torch.randn(batch, config.vec_in_dim, generator=generator),
    }
    if config.cond_embed:
        inputs["cond"] = torch.randn(batch, tokens, config.cond_in_channels, generator=generator)
    if config.guidance_embed:
        inputs["guidance"] = torch.full((batch,), 3.5)
    return inputs


def official_key_dump(name: str) -> dict[str, tuple[int, ...]]:
    """Keys and shapes of a real checkpoint, from the key dumps copied into ``tests/key_dumps``."""
    path = KEY_DUMPS / name
    rows = [line.split("\t") for line in path.read_text().splitlines() if line and not line.startswith("#")]
    return {key: tuple(int(d) for d in shape.strip("[] ").split(",") if d) for key, shape in rows}
