"""Decoder passes spread over the ranks of a group, every output given to every rank.

A VAE decode in tiles is a list of independent decoder passes followed by a blend. The passes are taken
in rounds of ``size``: in each round rank ``r`` runs the round's pass ``r`` and the outputs are
all-gathered, so every rank blends the same tiles as one process would (identical pixels) while holding
at most one round of tiles beyond what the blend keeps. Tiles at the video's edges are smaller: each
round first gathers the shapes, then the tiles zero-padded to the largest.
"""

from __future__ import annotations

from itertools import islice
from typing import Callable, Iterable, Iterator

import torch
import torch.distributed as dist

MAX_DIMS = 8  # the rank of the tensors a pass may return


def run_passes_over_group(passes: Iterable[Callable[[], torch.Tensor]], group: dist.ProcessGroup, rank: int,
                          size: int, device: torch.device, dtype: torch.dtype) -> Iterator[torch.Tensor]:
    """Pass ``i`` runs on rank ``i % size`` of ``group``; yields every pass's output, in order, on every rank.

    Every rank of the group must hand in the same passes (the collectives run once per round);
    ``device``/``dtype`` are those of the outputs (a rank without a pass in the last round needs them).
    """
    pending = iter(passes)
    while True:
        round_passes = list(islice(pending, size))
        if not round_passes:
            return
        own = round_passes[rank]() if rank < len(round_passes) else None
        yield from _all_gather_tiles(own, len(round_passes), group, size, device, dtype)


def local_passes(passes: int, rank: int, size: int) -> range:
    """The indices of the passes, of ``passes``, that rank ``rank`` runs in :func:`run_passes_over_group`."""
    return range(rank, passes, size)


def local_work(pass_work: list[int], rank: int, size: int) -> int:
    """The work units (of each pass's ``pass_work``) of the passes rank ``rank`` runs: its progress total."""
    return sum(pass_work[index] for index in local_passes(len(pass_work), rank, size))


def _all_gather_tiles(own: torch.Tensor | None, count: int, group: dist.ProcessGroup, size: int,
                      device: torch.device, dtype: torch.dtype) -> list[torch.Tensor]:
    """The first ``count`` ranks' tiles (shapes may differ), on every rank."""
    shape = torch.zeros(1 + MAX_DIMS, dtype=torch.int64, device=device)  # the number of dimensions, the sizes
    if own is not None:
        if own.ndim > MAX_DIMS:
            raise ValueError(f"A decoder pass returned a {own.ndim}-dimensional tensor; at most {MAX_DIMS} are shared.")
        shape[:1 + own.ndim] = torch.tensor((own.ndim, *own.shape), dtype=torch.int64)
    shapes = [torch.empty_like(shape) for _ in range(size)]
    dist.all_gather(shapes, shape, group=group)
    sizes = [tuple(s.tolist()[1:1 + int(s[0])]) for s in shapes[:count]]
    largest = tuple(max(dims) for dims in zip(*sizes))
    padded = torch.zeros(largest, dtype=dtype, device=device)
    if own is not None:
        padded[tuple(slice(0, n) for n in own.shape)] = own
    tiles = [torch.empty_like(padded) for _ in range(size)]
    dist.all_gather(tiles, padded, group=group)
    return [tile[tuple(slice(0, n) for n in dims)] for tile, dims in zip(tiles[:count], sizes)]
