"""Rows over many ranks: ``generate`` under ``torchrun`` (one host or several) shares the planned generations.

torchrun sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` and ``MASTER_ADDR`` for every process it starts;
that is how a run knows it is one rank of many. Ranks form data-parallel groups of ``sp_size``
consecutive ranks; generation ``i`` of the plan (the reference's order) goes to group
``i % num_groups``. The plan, and so every seed and file name, is computed identically on every rank
from the table and the options alone, never from the rank: one rank and N ranks write the same files.
The ranks of a group run the same generations together (``parallel/joined.py``); the first one writes.

Plain Python at import; torch is imported only to open and close the process group.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Mapping, Sequence, TypeVar

Item = TypeVar("Item")
TORCHRUN_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR")


@dataclass(frozen=True)
class RankLayout:
    """Where this process sits in the job: its rank, the job's size, its GPU index on the host, the group size."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    sp_size: int = 1

    def __post_init__(self) -> None:
        if self.sp_size < 1 or self.world_size % self.sp_size:
            raise ValueError(f"--sp-size {self.sp_size} must divide the number of ranks ({self.world_size}).")

    @property
    def num_groups(self) -> int:
        return self.world_size // self.sp_size

    @property
    def group(self) -> int:
        """This rank's data-parallel group (groups are runs of ``sp_size`` consecutive ranks)."""
        return self.rank // self.sp_size

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def writer(self) -> bool:
        """Whether this rank writes its group's files and manifest lines (the group's first rank does)."""
        return self.rank % self.sp_size == 0

    def share(self, items: Sequence[Item]) -> list[tuple[int, Item]]:
        """``(index, item)`` for the items this rank's group runs: item ``i`` belongs to group ``i % num_groups``."""
        return [(index, item) for index, item in enumerate(items) if index % self.num_groups == self.group]


def layout_from_environment(environment: Mapping[str, str] = os.environ, sp_size: int = 1) -> RankLayout | None:
    """The layout torchrun gave this process, or None when it was not started by torchrun."""
    if not all(name in environment for name in TORCHRUN_VARIABLES):
        return None
    return RankLayout(int(environment["RANK"]), int(environment["WORLD_SIZE"]), int(environment["LOCAL_RANK"]),
                      sp_size)


def rank_device(requested: str | None, layout: RankLayout) -> str:
    """The device of a rank: ``cuda:LOCAL_RANK`` when CUDA is asked for (or available and nothing is asked);
    an explicit ``cuda:N`` cannot be shared by the ranks of a host, so it is refused."""
    import torch

    if requested is None:
        requested = "cuda" if torch.cuda.is_available() else "cpu"
    if requested == "cuda":
        return f"cuda:{layout.local_rank}"
    if requested.startswith("cuda:") and layout.distributed:
        raise SystemExit(f"--device {requested}: under torchrun every rank takes cuda:LOCAL_RANK; give --device "
                         "cuda (or leave it out), and pick GPUs with CUDA_VISIBLE_DEVICES.")
    return requested


def open_process_group(device: str) -> None:
    """Join torchrun's process group: NCCL between GPUs, gloo on CPU (address and port from torchrun)."""
    import torch
    import torch.distributed as dist

    if device.startswith("cuda"):
        torch.cuda.set_device(torch.device(device))
    dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")


def gather_counts(counts: Sequence[int]) -> list[int]:
    """Element-wise sum of every rank's counts, after a barrier that waits for all ranks to finish."""
    import torch.distributed as dist

    dist.barrier()
    every: list = [None] * dist.get_world_size()
    dist.all_gather_object(every, list(counts))
    return [sum(column) for column in zip(*every)]


def close_process_group() -> None:
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()
