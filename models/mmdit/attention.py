"""The attention kernel of the MMDiT, kept in one place so faster backends can be plugged in."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Full (unmasked) softmax attention with scale ``1/sqrt(D)``.

    ``q, k, v``: ``[B, H, L, D]`` (RoPE already applied). Returns ``[B, L, H*D]``.
    """
    out = F.scaled_dot_product_attention(q, k, v)
    batch, heads, length, head_dim = out.shape
    return out.transpose(1, 2).reshape(batch, length, heads * head_dim)
