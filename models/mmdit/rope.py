"""3-D rotary position embedding (time, height, width) in the two layouts the MMDiT weights use."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .config import RopeLayout


@dataclass(frozen=True)
class RopeTables:
    """cos/sin of every rotation angle, ``[B or 1, 1, L, D/2]`` float32, and the pairing layout.

    One table per distinct row of positions (one when every batch row has the same positions, as the
    guidance branches do), built once per forward and shared by every block and head. Only the ``D/2``
    angles are stored; :attr:`cos` and :attr:`sin` expand them to the per-dimension ``[.., D]`` view.
    """

    half_cos: torch.Tensor
    half_sin: torch.Tensor
    layout: RopeLayout

    @property
    def cos(self) -> torch.Tensor:
        return self._per_dimension(self.half_cos)

    @property
    def sin(self) -> torch.Tensor:
        return self._per_dimension(self.half_sin)

    def _per_dimension(self, half: torch.Tensor) -> torch.Tensor:
        return half.repeat(1, 1, 1, 2) if self.layout == "rotate_half" else half.repeat_interleave(2, dim=-1)


class RotaryEmbedding(nn.Module):
    """Turn position ids ``[B, L, n_axes]`` into :class:`RopeTables`.

    Axis ``i`` gets ``axes_dim[i] / 2`` frequencies ``theta ** (-2j / axes_dim[i])``.
    ``rotate_half``: the per-axis angles are concatenated (``[t, h, w]``) and dimension ``j`` pairs
    with ``j + D/2`` (the Open-Sora weights; computed in float32 like the reference's Liger kernel).
    ``interleaved``: angle ``j`` rotates dimensions ``2j, 2j+1`` (Flux; angles computed in float64 and
    rounded to float32 like BFL's code).
    """

    def __init__(self, axes_dim: tuple[int, ...], theta: int, layout: RopeLayout):
        super().__init__()
        self.axes_dim = tuple(axes_dim)
        self.theta = theta
        self.layout = layout

    def forward(self, ids: torch.Tensor) -> RopeTables:
        if ids.shape[0] > 1 and torch.equal(ids, ids[:1].expand_as(ids)):
            ids = ids[:1]  # same positions in every row: one table, broadcast over the batch
        compute = torch.float32 if self.layout == "rotate_half" else torch.float64
        angles = []
        for axis, dim in enumerate(self.axes_dim):
            exponent = torch.arange(0, dim, 2, dtype=compute, device=ids.device) / dim
            omega = 1.0 / (self.theta**exponent)
            angles.append(ids[..., axis].to(compute)[..., None] * omega)
        angle = torch.cat(angles, dim=-1)[:, None]  # [B, 1, L, D/2]
        return RopeTables(angle.cos().float(), angle.sin().float(), self.layout)


def apply_rope(x: torch.Tensor, rope: RopeTables) -> torch.Tensor:
    """Rotate ``x`` ``[B, H, L, D]`` by the tables; computed in float32, returned in ``x``'s dtype.

    Each pair ``(a, b)`` becomes ``(a cos - b sin, b cos + a sin)``. rotate_half: four half-size
    products written into the result, instead of building a rotated copy of ``x`` and two full-size
    products (the same float32 operations, so the same values). interleaved: one complex product.
    """
    x32 = x.float()
    cos, sin = rope.half_cos, rope.half_sin
    if rope.layout == "interleaved":
        rotated = torch.view_as_complex(x32.unflatten(-1, (-1, 2)).contiguous()) * torch.complex(cos, sin)
        return torch.view_as_real(rotated).flatten(-2).to(x.dtype)
    first, second = x32.chunk(2, dim=-1)
    out = torch.empty_like(x32)
    out_first, out_second = out.chunk(2, dim=-1)
    torch.mul(first, cos, out=out_first).sub_(second * sin)
    torch.mul(second, cos, out=out_second).add_(first * sin)
    return out.to(x.dtype)
