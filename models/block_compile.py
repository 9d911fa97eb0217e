"""Optional ``torch.compile`` of the MMDiT's transformer blocks."""

from __future__ import annotations

import torch
from torch import nn

from .block_offload import transformer_blocks


def compile_blocks(model: nn.Module) -> nn.Module:
    """Compile the ``forward`` of every double/single block in place (lazily: at its first call).

    Only the block bodies are compiled, so module hooks (block offload) keep running eagerly around
    them, and all blocks of one kind share one compiled graph. Needs a working Triton (CUDA) or C++
    compiler (CPU); the first sampling step pays the compile time.
    """
    for block in transformer_blocks(model):
        if not hasattr(block.forward, "_torchdynamo_orig_callable"):
            block.forward = torch.compile(block.forward)
    return model
