"""Packing latents into MMDiT token sequences and the 3-D position ids (docs/reference.md#packing-and-positions).

A latent ``[B, C, T, H', W']`` becomes ``[B, T * H'/p * W'/p, C * p * p]``: tokens in time, row,
column order; the features of a token are channel-major, then the patch row and column.
"""

from __future__ import annotations

import torch
from einops import rearrange


def pack(latent: torch.Tensor, patch_size: int) -> torch.Tensor:
    """``[B, C, T, H', W']`` -> ``[B, tokens, C * p * p]``."""
    return rearrange(latent, "b c t (h ph) (w pw) -> b (t h w) (c ph pw)", ph=patch_size, pw=patch_size)


def unpack(tokens: torch.Tensor, latent_frames: int, latent_height: int, latent_width: int, patch_size: int) -> torch.Tensor:
    """Inverse of :func:`pack` for a latent of ``latent_frames x latent_height x latent_width``."""
    return rearrange(
        tokens,
        "b (t h w) (c ph pw) -> b c t (h ph) (w pw)",
        t=latent_frames,
        h=latent_height // patch_size,
        w=latent_width // patch_size,
        ph=patch_size,
        pw=patch_size,
    )


def image_ids(
    batch_size: int,
    latent_frames: int,
    latent_height: int,
    latent_width: int,
    patch_size: int,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """RoPE positions ``[B, tokens, 3]``: (latent frame, token row, token column) of every image token."""
    t, h, w = latent_frames, latent_height // patch_size, latent_width // patch_size
    grid = torch.stack(
        torch.meshgrid(torch.arange(t), torch.arange(h), torch.arange(w), indexing="ij"), dim=-1
    ).reshape(1, t * h * w, 3)
    return grid.expand(batch_size, -1, -1).to(device=device, dtype=dtype)


def text_ids(
    batch_size: int, text_length: int, dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu"
) -> torch.Tensor:
    """RoPE positions of the text tokens: all zero (``[B, L, 3]``), so text is not rotated."""
    return torch.zeros(batch_size, text_length, 3, dtype=dtype, device=device)
