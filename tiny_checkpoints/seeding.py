"""Building a module under a seed without disturbing the caller's random state."""

from __future__ import annotations

from typing import Callable, TypeVar

import torch

Module = TypeVar("Module", bound=torch.nn.Module)


def build_seeded(build: Callable[[], Module], seed: int) -> Module:
    """``build()`` run under ``torch.manual_seed(seed)`` inside a forked RNG (the global stream is untouched)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()


def file_tensors(module: torch.nn.Module, dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    """``module``'s state dict as contiguous tensors ready for ``safetensors`` (optionally cast)."""
    return {k: (v.detach() if dtype is None else v.detach().to(dtype)).contiguous() for k, v in module.state_dict().items()}
