"""How a token sequence is cut across sequence-parallel ranks.

Every rank holds one contiguous run of the real tokens, padded at its end to the common chunk length
(``ceil(n / ranks)``), so at most one padding row per rank. Tokens keep their global 3-D RoPE
positions (the ids are cut with the tokens, never renumbered per rank). Padding rows are excluded
from attention exactly (their keys are removed inside the attention kernel, see ``attention.py``) and
dropped when the ranks' outputs are gathered, so any token count works with any number of ranks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

TEXT_SPLIT, TEXT_REPLICATED = "split", "replicated"
TEXT_MODES = (TEXT_SPLIT, TEXT_REPLICATED)


@dataclass(frozen=True)
class ParallelLayout:
    """Parallel degrees of one sampling run.

    ``ulysses_degree`` ranks exchange heads for tokens with all-to-all (DeepSpeed-Ulysses: needs the head
    count divisible by it); ``ring_degree`` ranks pass key/value blocks round a ring (ring attention).
    Their product is the sequence-parallel group size. ``cfg_degree`` such groups share the batch rows
    (the guidance branches) and exchange only the finished velocities, which suits GPUs without NVLink.
    ``text``: ``split`` cuts the text tokens across ranks like the image tokens; ``replicated`` keeps
    every text token on every rank (text-stream work is repeated, the text attention rows are still
    computed once and all-gathered). Ranks ``g * sp .. (g + 1) * sp - 1`` form sequence group ``g``.
    """

    ulysses_degree: int = 1
    ring_degree: int = 1
    text: str = TEXT_SPLIT
    cfg_degree: int = 1

    @property
    def sequence_size(self) -> int:
        return self.ulysses_degree * self.ring_degree

    @property
    def world_size(self) -> int:
        return self.cfg_degree * self.sequence_size

    def validate(self, world_size: int, num_heads: int | None = None) -> None:
        """Raise a ValueError that says what to change if this layout cannot run."""
        if min(self.ulysses_degree, self.ring_degree, self.cfg_degree) < 1:
            raise ValueError("ulysses_degree, ring_degree and cfg_degree must be at least 1.")
        if self.text not in TEXT_MODES:
            raise ValueError(f"text must be one of {TEXT_MODES}, not {self.text!r}.")
        if self.world_size != world_size:
            raise ValueError(
                f"cfg_degree x ulysses_degree x ring_degree = {self.cfg_degree} x {self.ulysses_degree} x "
                f"{self.ring_degree} = {self.world_size}, but the worker group has {world_size} ranks: make the "
                "product equal the number of ranks."
            )
        if num_heads is not None and num_heads % self.ulysses_degree:
            raise ValueError(
                f"The model has {num_heads} attention heads, which cannot be shared by ulysses_degree="
                f"{self.ulysses_degree} ranks: choose a ulysses degree that divides {num_heads} and put the "
                "remaining factor into ring_degree."
            )


@dataclass(frozen=True)
class TokenSplit:
    """``length`` tokens cut into ``ranks`` contiguous pieces of ``counts[r]`` real tokens, each padded
    to ``chunk`` rows (the first ``length % ranks`` ranks get one token more)."""

    length: int
    ranks: int

    @property
    def chunk(self) -> int:
        return math.ceil(self.length / self.ranks)

    @property
    def counts(self) -> tuple[int, ...]:
        base, extra = divmod(self.length, self.ranks)
        return tuple(base + (1 if r < extra else 0) for r in range(self.ranks))

    @property
    def starts(self) -> tuple[int, ...]:
        counts = self.counts
        return tuple(sum(counts[:r]) for r in range(self.ranks))

    def shard(self, x: torch.Tensor, rank: int, dim: int = 1) -> torch.Tensor:
        """Rank ``rank``'s rows of ``x`` along ``dim``, zero-padded to ``chunk`` rows."""
        piece = x.narrow(dim, self.starts[rank], self.counts[rank])
        missing = self.chunk - self.counts[rank]
        if missing == 0:
            return piece
        pad_shape = list(x.shape)
        pad_shape[dim] = missing
        return torch.cat((piece, x.new_zeros(pad_shape)), dim=dim)

    def unshard(self, pieces: list[torch.Tensor], dim: int = 1) -> torch.Tensor:
        """The full sequence from every rank's padded piece (in rank order), padding dropped."""
        return torch.cat([p.narrow(dim, 0, n) for p, n in zip(pieces, self.counts)], dim=dim)

    def padding_rows(self, rank: int) -> torch.Tensor:
        """``[chunk]`` bool, True on the padding rows of rank ``rank``'s piece."""
        rows = torch.zeros(self.chunk, dtype=torch.bool)
        rows[self.counts[rank]:] = True
        return rows


def check_sequence_fits(image_tokens: int, world_size: int) -> None:
    """Every rank needs at least one real image token (so no key block is all padding)."""
    if image_tokens < world_size:
        raise ValueError(
            f"The video has only {image_tokens} image tokens, fewer than the {world_size} sequence-parallel "
            "ranks: use fewer ranks (or sample in-process) for such small latents."
        )
