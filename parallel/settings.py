"""The OPENSORA_PARALLEL socket value: which worker group to use and how to divide the work."""

from __future__ import annotations

import math
from dataclasses import dataclass

from .group import GroupSettings
from .layout import TEXT_SPLIT, ParallelLayout


@dataclass(frozen=True)
class ParallelSettings:
    """Which warm group to use and how its ranks divide the work.

    ``cfg_degree`` groups of ``ranks / cfg_degree`` ranks share the guidance branches; inside a group
    ``ulysses_degree`` (0 = automatic: ``gcd(group size, heads)``) ranks exchange heads and the ring
    degree is ``group size / ulysses_degree``.
    """

    group: GroupSettings
    ulysses_degree: int = 0
    text: str = TEXT_SPLIT
    cfg_degree: int = 1

    def check_degrees(self) -> int:
        """Raise if the degrees do not divide the ranks; returns the sequence group size."""
        ranks = self.group.world_size  # over all hosts
        if self.cfg_degree < 1 or ranks % self.cfg_degree:
            raise ValueError(f"cfg_degree={self.cfg_degree} does not divide ranks={ranks}: choose a divisor of "
                             f"{ranks}.")
        size = ranks // self.cfg_degree
        if self.ulysses_degree and size % self.ulysses_degree:
            raise ValueError(f"ulysses_degree={self.ulysses_degree} does not divide the {size} ranks of a sequence "
                             f"group (ranks / cfg_degree): choose a divisor of {size} (or 0 for automatic).")
        return size

    def layout(self, num_heads: int) -> ParallelLayout:
        """The layout for a model with ``num_heads`` heads (resolves the automatic Ulysses degree)."""
        size = self.check_degrees()
        ulysses = self.ulysses_degree or math.gcd(size, num_heads)
        if size % ulysses:
            raise ValueError(f"ulysses_degree={ulysses} does not divide the {size} ranks of a sequence group "
                             f"(ranks / cfg_degree): choose a divisor of {size} (or 0 for automatic).")
        layout = ParallelLayout(ulysses, size // ulysses, self.text, self.cfg_degree)
        layout.validate(self.group.world_size, num_heads)
        return layout
