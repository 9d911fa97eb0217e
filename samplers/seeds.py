"""The noise seeds of the official script when no sampling seed is set (its default). Torch-free.

The script seeds Python's ``random`` with its global seed at start-up (``seed=42`` in every shipped
config) and, for each generation call without ``sampling_option.seed``, draws
``random.randint(0, 2**32 - 1)``: one draw per batch and repeated sample, in order (a t2i2v run draws
first for its Flux image, then for the video). Global seed 42 gives 2746317213 first.
"""

from __future__ import annotations

import random
from typing import Iterator

OPEN_SORA_GLOBAL_SEED = 42


def open_sora_seed_draws(global_seed: int = OPEN_SORA_GLOBAL_SEED) -> Iterator[int]:
    """The seeds the script draws, in call order (endless)."""
    rng = random.Random(int(global_seed))
    while True:
        yield rng.randint(0, 2**32 - 1)


def open_sora_sampling_seeds(global_seed: int = OPEN_SORA_GLOBAL_SEED, count: int = 1) -> list[int]:
    """The first ``count`` seeds the script draws from ``global_seed``."""
    draws = open_sora_seed_draws(global_seed)
    return [next(draws) for _ in range(count)]
