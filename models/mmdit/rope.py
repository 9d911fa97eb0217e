"""3-D rotary position embedding (time, height, width) in the two layouts the MMDiT weights use."""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from .config import RopeLayout


class RopeTables(NamedTuple):
    """Per-token cos/sin of every head dimension, ``[B, 1, L, D]`` float32, and the pairing layout."""

    cos: torch.Tensor
    sin: torch.Tensor
    layout: RopeLayout


class RotaryEmbedding(nn.Module):
    """Turn position ids ``[B, L, n_axes]`` into :class:`RopeTables`.

    Axis ``i`` gets ``axes_dim[i] / 2`` frequencies ``theta ** (-2j / axes_dim[i])``.
    ``rotate_half``: the per-axis angles are concatenated (``[t, h, w]``) and repeated twice, so
    dimension ``j`` pairs with ``j + D/2`` (the Open-Sora weights; computed in float32 like the
    reference's Liger kernel). ``interleaved``: each angle is used for dimensions ``2j, 2j+1``
    (Flux; angles computed in float64 and rounded to float32 like BFL's code).
    """

    def __init__(self, axes_dim: tuple[int, ...], theta: int, layout: RopeLayout):
        super().__init__()
        self.axes_dim = tuple(axes_dim)
        self.theta = theta
        self.layout = layout

    def forward(self, ids: torch.Tensor) -> RopeTables:
        compute = torch.float32 if self.layout == "rotate_half" else torch.float64
        angles = []
        for axis, dim in enumerate(self.axes_dim):
            exponent = torch.arange(0, dim, 2, dtype=compute, device=ids.device) / dim
            omega = 1.0 / (self.theta**exponent)
            angles.append(ids[..., axis].to(compute)[..., None] * omega)
        angle = torch.cat(angles, dim=-1)  # [B, L, D/2]
        cos, sin = angle.cos().float(), angle.sin().float()
        if self.layout == "rotate_half":
            cos, sin = cos.repeat(1, 1, 2), sin.repeat(1, 1, 2)
        else:
            cos, sin = cos.repeat_interleave(2, dim=-1), sin.repeat_interleave(2, dim=-1)
        return RopeTables(cos[:, None], sin[:, None], self.layout)


def apply_rope(x: torch.Tensor, rope: RopeTables) -> torch.Tensor:
    """Rotate ``x`` ``[B, H, L, D]`` by the tables; computed in float32, returned in ``x``'s dtype."""
    x32 = x.float()
    if rope.layout == "rotate_half":
        first, second = x32.chunk(2, dim=-1)
        rotated = torch.cat((-second, first), dim=-1)
    else:
        pairs = x32.unflatten(-1, (-1, 2))
        rotated = torch.stack((-pairs[..., 1], pairs[..., 0]), dim=-1).flatten(-2)
    return (x32 * rope.cos + rotated * rope.sin).to(x.dtype)
