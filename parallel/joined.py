"""This process as one rank of a group that runs each generation together (``generate --sp-size K``).

Under torchrun the command line joins every rank to its data-parallel group of ``K`` consecutive ranks
(:func:`join`). All ranks of a group run the same workflow; the sampler node then runs the MMDiT over
the group's ranks (:class:`~.sharded_model.ShardedMMDiT`, as a warm worker group does) and the VAE
Decode node spreads the decoder's tiles over them (:mod:`.shared_decode`). Nothing is joined inside
ComfyUI, where both nodes run in-process as before.

Process groups are created collectively by every rank of the job, so they are all made in :func:`join`,
before any generation: the groups need not run the same number of generations afterwards.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial
from typing import Iterable, Mapping

import torch
import torch.distributed as dist
from torch import nn

from ..models.autoencoder import PassRunner
from .attention import SequenceParallelGroups
from .layout import ParallelLayout
from .shared_decode import local_work, run_passes_over_group
from .sharded_model import ShardedMMDiT


@dataclass(frozen=True)
class JoinedGroup:
    """This rank's group: its place in it, the group's process group, and the sequence-parallel layout
    made for each attention head count of the workflow's models."""

    rank: int
    size: int
    process_group: dist.ProcessGroup
    sequence_groups: SequenceParallelGroups
    layouts: Mapping[int, ParallelLayout]

    @property
    def writer(self) -> bool:
        """The group's first rank writes the files and manifest lines; the others only compute."""
        return self.rank == 0

    def sharded(self, model: nn.Module) -> ShardedMMDiT:
        """``model`` (an MMDiT) run over the group's ranks, each on its share of the tokens."""
        heads = model.config.num_heads
        if heads not in self.layouts:
            raise ValueError(f"No sequence-parallel layout was prepared for a model with {heads} attention heads "
                             f"(prepared: {sorted(self.layouts)}): the workflow loads a model the command line "
                             "did not expect.")
        return ShardedMMDiT(model, self.layouts[heads], self.sequence_groups)

    def pass_runner(self, device: torch.device, dtype: torch.dtype) -> PassRunner:
        """Decoder passes spread over the group (every rank gets every output)."""
        return partial(run_passes_over_group, group=self.process_group, rank=self.rank, size=self.size,
                       device=device, dtype=dtype)

    def local_work(self, pass_work: list[int]) -> int:
        """The work units of the decoder passes this rank runs, of all passes' ``pass_work``."""
        return local_work(pass_work, self.rank, self.size)


_joined: JoinedGroup | None = None


def join(size: int, head_counts: Iterable[int]) -> JoinedGroup:
    """Join this rank to its group of ``size`` consecutive ranks of the default process group, with a
    layout (Ulysses degree ``gcd(size, heads)``, the rest ring) for every head count. Collective: every
    rank of the job calls it with the same arguments."""
    global _joined
    rank, world = dist.get_rank(), dist.get_world_size()
    if size < 2 or world % size:
        raise ValueError(f"A group of {size} ranks cannot divide {world} ranks into groups of two or more.")
    groups = [dist.new_group(list(range(start, start + size))) for start in range(0, world, size)]
    sequence_groups = SequenceParallelGroups(rank, world)
    layouts: dict[int, ParallelLayout] = {}
    for heads in sorted(set(head_counts)):
        ulysses = math.gcd(size, heads)
        layouts[heads] = ParallelLayout(ulysses, size // ulysses)
        sequence_groups.for_layout(layouts[heads])
    _joined = JoinedGroup(rank % size, size, groups[rank // size], sequence_groups, layouts)
    return _joined


def leave() -> None:
    """Forget the group (the process group itself is closed by its owner)."""
    global _joined
    _joined = None


def joined_group() -> JoinedGroup | None:
    """The group this process runs generations with, or None (ComfyUI, one process, ``--sp-size 1``)."""
    return _joined
