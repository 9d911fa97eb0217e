"""Seeded initial noise, generated exactly like the reference's ``get_noise`` (docs/reference.md#noise-and-seeds)."""

from __future__ import annotations

import torch

from .geometry import VideoGeometry


def get_noise(
    geometry: VideoGeometry,
    batch_size: int,
    seed: int,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """``torch.randn`` of shape ``[B, C, T, H', W']`` from a generator on ``device`` seeded with ``seed``.

    The reference generates on the model's device in the model dtype (a CUDA generator, bf16); a CPU
    generator gives a different but portable stream. On the CPU, bf16 noise equals float32 noise
    rounded to bf16.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size}: at least 1 is needed.")
    device = torch.device(device)
    generator = torch.Generator(device=device).manual_seed(int(seed))
    return torch.randn(geometry.latent_shape(batch_size), device=device, dtype=dtype, generator=generator)

