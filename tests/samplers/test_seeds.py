"""samplers/seeds.py: the official script's default seeds (Python random seeded with the global seed)."""

from __future__ import annotations

import random

from comfyui_opensora.samplers import seeds


def test_open_sora_sampling_seeds_follow_the_scripts_draws():
    rng = random.Random(7)  # the script: random.seed(cfg.seed), then randint(0, 2**32 - 1) per generation
    assert seeds.open_sora_sampling_seeds(7, count=3) == [rng.randint(0, 2**32 - 1) for _ in range(3)]
    assert seeds.open_sora_sampling_seeds()[0] == 2746317213  # global seed 42, the configs' value
    draws = seeds.open_sora_seed_draws(42)
    assert [next(draws) for _ in range(3)] == seeds.open_sora_sampling_seeds(42, count=3)
