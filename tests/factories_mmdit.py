"""MMDiT test helpers: the golden-shaped tiny configurations, random forward inputs and the official key dumps.

The checkpoint writers are the pack's ``tiny_checkpoints.mmdit``, here with the golden configuration as default.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from comfyui_opensora.models.mmdit import MMDiTConfig
from comfyui_opensora.tiny_checkpoints import mmdit as tiny

# The workspace's dumps of every key and shape of the real checkpoints (not shipped with the pack).
KEY_DUMPS = Path(__file__).resolve().parent / "key_dumps"  # copied from the workspace's shared/docs/key_dumps

# The golden mmdit_forward "video" configuration: the smoke model with a 24-wide pooled-text input.
TINY_VIDEO_CONFIG = tiny.TINY_MMDIT.with_changes(vec_in_dim=24)
TINY_DC_AE_CONFIG = tiny.high_compression_variant(TINY_VIDEO_CONFIG)
TINY_FLUX_CONFIG = tiny.flux_dev_variant(TINY_VIDEO_CONFIG)


def tiny_mmdit_state_dict(config: MMDiTConfig = TINY_VIDEO_CONFIG, seed: int = 0,
                          dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """:func:`tiny_checkpoints.mmdit.tiny_mmdit_state_dict` with the golden configuration by default."""
    return tiny.tiny_mmdit_state_dict(config, seed, dtype)


def write_tiny_mmdit(path: str | os.PathLike, config: MMDiTConfig = TINY_VIDEO_CONFIG, **options) -> Path:
    """:func:`tiny_checkpoints.mmdit.write_tiny_mmdit` with the golden configuration by default."""
    return tiny.write_tiny_mmdit(path, config, **options)


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
