"""Tiny random Video DC-AE checkpoints in the official key layout, for tests of any area."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file

from comfyui_opensora.models.dc_ae import DCAEConfig, VideoDCAE

# The golden fixture's block structure (6 stages, s32 t4) at widths small enough for CPU tests.
TINY_DC_AE = DCAEConfig(
    latent_channels=16,
    encoder_widths=(8, 16, 16, 32, 32, 32),
    encoder_depths=(1, 1, 1, 1, 1, 1),
    decoder_widths=(8, 16, 16, 32, 32, 32),
    decoder_depths=(1, 1, 1, 1, 1, 1),
)


def tiny_dc_ae_state_dict(config: DCAEConfig = TINY_DC_AE, seed: int = 0,
                          dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """Seeded random weights with the official keys: convs ~ N(0, 1/fan_in), biases and norm affines
    perturbed around (0, 1) so every parameter matters."""
    with torch.device("meta"):
        shapes = {k: v.shape for k, v in VideoDCAE(config).state_dict().items()}
    generator = torch.Generator().manual_seed(seed)
    state: dict[str, torch.Tensor] = {}
    for key, shape in sorted(shapes.items()):
        noise = torch.randn(shape, generator=generator)
        if len(shape) > 1:
            value = noise / (shape[1:].numel() ** 0.5)
        elif key.endswith("norm.weight") or ".op_list.0.weight" in key:
            value = 1 + 0.1 * noise
        else:
            value = 0.1 * noise
        state[key] = value.to(dtype)
    return state


def write_dc_ae_checkpoint(path: str | Path, config: DCAEConfig = TINY_DC_AE, seed: int = 0,
                           dtype: torch.dtype = torch.float32) -> Path:
    """Write a tiny random DC-AE ``.safetensors`` (official key layout) and return its path."""
    path = Path(path)
    save_file(tiny_dc_ae_state_dict(config, seed, dtype), str(path))
    return path
