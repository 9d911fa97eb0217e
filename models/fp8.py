"""fp8 weight storage with bf16 compute: the big Linear weights of the transformer blocks.

Weights are stored as ``float8_e4m3fn`` or ``float8_e5m2`` (one byte per value, half of bf16) and
upcast layer by layer to the activations' dtype inside ``forward``; biases, norms, embedders and the
final layer stay in the compute dtype. The cast is a plain saturating cast without scales, as
ComfyUI's fp8 weight dtypes do.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .dtypes import FP8_COMPUTE_DTYPE, FP8_DTYPES, is_fp8


def to_fp8(weight: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Cast to an fp8 dtype, saturating at its largest finite value instead of overflowing to NaN."""
    limit = torch.finfo(dtype).max
    return weight.clamp(-limit, limit).to(dtype)


class FP8Linear(nn.Linear):
    """``nn.Linear`` whose weight is stored in fp8 and upcast to the input's dtype per call."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = None if self.bias is None else self.bias.to(x.dtype)
        return F.linear(x, self.weight.to(x.dtype), bias)


def block_linears(model: nn.Module) -> dict[str, nn.Linear]:
    """The Linear layers inside ``model.double_blocks`` and ``model.single_blocks``, by qualified name."""
    found: dict[str, nn.Linear] = {}
    for blocks_name in ("double_blocks", "single_blocks"):
        for name, module in getattr(model, blocks_name).named_modules(prefix=blocks_name):
            if isinstance(module, nn.Linear):
                found[name] = module
    return found


def fp8_weight_keys(model: nn.Module) -> set[str]:
    """State-dict keys that :func:`convert_blocks_to_fp8` stores in fp8 (block Linear weights)."""
    return {f"{name}.weight" for name in block_linears(model)}


def storage_dtypes(model: nn.Module, weight_dtype: torch.dtype) -> Callable[[str], torch.dtype]:
    """``key -> dtype`` to load a checkpoint for ``model`` with ``weight_dtype`` (fp8 or not).

    For fp8, block Linear weights get ``weight_dtype`` and every other tensor the compute dtype.
    """
    if not is_fp8(weight_dtype):
        return lambda _key: weight_dtype
    keys = fp8_weight_keys(model)
    return lambda key: weight_dtype if key in keys else FP8_COMPUTE_DTYPE


def convert_blocks_to_fp8(model: nn.Module, dtype: torch.dtype) -> nn.Module:
    """Make every block Linear of ``model`` an :class:`FP8Linear` with its weight cast to ``dtype``.

    Works in place on a meta-built model (load fp8 tensors afterwards with ``assign=True``) or on a
    loaded one (each weight is cast and the old one freed, one at a time).
    """
    if not is_fp8(dtype):
        raise ValueError(f"{dtype} is not an fp8 dtype ({', '.join(FP8_DTYPES)}).")
    for module in block_linears(model).values():
        module.__class__ = FP8Linear
        if module.weight.dtype != dtype:
            module.weight = nn.Parameter(to_fp8(module.weight.data, dtype), requires_grad=False)
    return model


def parameter_bytes(model: nn.Module) -> int:
    """Bytes held by the parameters and buffers of ``model``."""
    tensors = list(model.parameters()) + list(model.buffers())
    return sum(t.numel() * t.element_size() for t in tensors)
