"""Overlapping-tile encode/decode with the reference's linear blending (``dc_ae.py:589-759``).

A tile of ``in_tile`` input positions maps to ``out_tile`` output positions. Tiles start every
``int(in_tile * (1 - overlap))`` input positions; each tile's first ``int(out_tile * overlap)`` output
positions are cross-faded with the end of its predecessor (in place, in the reference's order, so a
corner sees the already-blended neighbours), and ``out_tile - blend`` positions of each tile are kept.
"""

from __future__ import annotations

from typing import Callable, Iterator

import torch

TileFn = Callable[[torch.Tensor], torch.Tensor]


def blend_into(previous: torch.Tensor, current: torch.Tensor, extent: int, dim: int) -> None:
    """Cross-fade the start of ``current`` with the end of ``previous`` along ``dim``, in place:
    ``current[y] = previous[-e + y] * (1 - y/e) + current[y] * (y/e)`` for ``y < e``."""
    extent = min(previous.shape[dim], current.shape[dim], extent)
    if extent == 0:
        return
    shape = [1] * current.dim()
    shape[dim] = extent
    ramp = [y / extent for y in range(extent)]
    fade_in = torch.tensor(ramp, dtype=current.dtype, device=current.device).view(shape)
    fade_out = torch.tensor([1 - r for r in ramp], dtype=current.dtype, device=current.device).view(shape)
    head = current.narrow(dim, 0, extent)
    head.copy_(previous.narrow(dim, previous.shape[dim] - extent, extent) * fade_out + head * fade_in)


def tile_spatially(fn: TileFn, x: torch.Tensor, in_tile: int, out_tile: int, overlap: float) -> torch.Tensor:
    """Apply ``fn`` to overlapping ``in_tile`` x ``in_tile`` tiles of ``x[..., H, W]`` and blend the results."""
    stride = int(in_tile * (1 - overlap))
    blend = int(out_tile * overlap)
    keep = out_tile - blend
    height, width = x.shape[-2:]
    rows = [
        [fn(x[..., i : i + in_tile, j : j + in_tile]) for j in range(0, width, stride)]
        for i in range(0, height, stride)
    ]
    for i, row in enumerate(rows):
        for j, tile in enumerate(row):
            if i > 0:
                blend_into(rows[i - 1][j], tile, blend, dim=-2)
            if j > 0:
                blend_into(row[j - 1], tile, blend, dim=-1)
    return torch.cat([torch.cat([tile[..., :keep, :keep] for tile in row], dim=-1) for row in rows], dim=-2)


def tile_temporally(
    fn: TileFn, x: torch.Tensor, in_tile: int, out_tile: int, overlap: float
) -> Iterator[torch.Tensor]:
    """Apply ``fn`` to overlapping ``in_tile``-long windows of ``x[:, :, T]``; yield each tile's kept,
    final output positions as soon as they are known (concatenated they are the tiled result)."""
    stride = int(in_tile * (1 - overlap))
    blend = int(out_tile * overlap)
    keep = out_tile - blend
    previous = None
    for start in range(0, x.shape[2], stride):
        tile = fn(x[:, :, start : start + in_tile])
        if previous is not None:
            blend_into(previous, tile, blend, dim=2)
        yield tile[:, :, :keep]
        previous = tile
