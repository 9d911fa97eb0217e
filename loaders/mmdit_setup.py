"""How an MMDiT is made ready to sample: weight dtype, attention kernel, block offload, compile.

The Model Loader node records these choices (:class:`MMDiTSetup`) on the model it returns, and the
parallel workers, which load the same file in their own processes, repeat them from the request, so
both sample the same model.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from ..models.attention_backends import resolve_backend, set_attention_backend
from ..models.block_compile import compile_blocks
from ..models.block_offload import install_block_offload
from ..models.dtypes import WEIGHT_DTYPES, compute_dtype
from ..models.mmdit import MMDiT
from .mmdit import load_mmdit

@dataclass(frozen=True)
class MMDiTSetup:
    """The loader's choices: ``weight_dtype`` (a :data:`WEIGHT_DTYPES` name), ``attention`` (a backend
    name or ``auto``), ``offload_blocks`` kept in host memory, and whether blocks are compiled."""

    weight_dtype: str = "bf16"
    attention: str = "auto"
    offload_blocks: int = 0
    compile: bool = False

    def __post_init__(self) -> None:
        if self.weight_dtype not in WEIGHT_DTYPES:
            raise ValueError(f"weight_dtype must be one of {list(WEIGHT_DTYPES)}, not {self.weight_dtype!r}.")

    @property
    def storage_dtype(self) -> torch.dtype:
        return WEIGHT_DTYPES[self.weight_dtype]

    @property
    def compute_dtype(self) -> torch.dtype:
        return compute_dtype(self.storage_dtype)


def load_mmdit_for_sampling(path: str | os.PathLike, setup: MMDiTSetup, device: torch.device,
                            offload_device: torch.device) -> MMDiT:
    """Load ``path`` into ``offload_device`` and prepare it to run on ``device`` as ``setup`` says.

    The attention backend is resolved first, so an impossible choice fails before the weights are read.
    When the two devices differ, blocks left in host memory (the last ``offload_blocks``, and any the
    host's partial loading leaves there) are streamed to ``device`` as they run.
    """
    backend = resolve_backend(setup.attention, device, setup.compute_dtype)
    module = load_mmdit(path, dtype=setup.storage_dtype, device=offload_device)
    set_attention_backend(module, backend)
    if device != offload_device:
        install_block_offload(module, setup.offload_blocks, device, offload_device)
    if setup.compile:
        compile_blocks(module)
    return module
