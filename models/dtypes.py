"""The dtypes the pack names: widget and request names, safetensors header codes, fp8 storage.

One table maps names to torch dtypes; a node's widget offers a subset of it (``dtypes_named``). fp8 is a
storage dtype only: models stored in it compute in bf16 (``compute_dtype``).
"""

from __future__ import annotations

import torch

FLOAT_DTYPES: dict[str, torch.dtype] = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
FP8_DTYPES: dict[str, torch.dtype] = {"fp8_e4m3fn": torch.float8_e4m3fn, "fp8_e5m2": torch.float8_e5m2}
# What a model's weights may be stored in (fp8: the transformer blocks' Linear weights only).
WEIGHT_DTYPES: dict[str, torch.dtype] = {**FLOAT_DTYPES, **FP8_DTYPES}
FP8_COMPUTE_DTYPE = torch.bfloat16  # what fp8-stored models compute in (and keep their other tensors in)

# The dtype codes of a safetensors header.
SAFETENSORS_DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "F8_E4M3": torch.float8_e4m3fn,
    "F8_E5M2": torch.float8_e5m2,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}

_NAMES: dict[torch.dtype, str] = {dtype: name for name, dtype in {**WEIGHT_DTYPES, "fp64": torch.float64}.items()}


def dtypes_named(*names: str) -> dict[str, torch.dtype]:
    """The entries of ``WEIGHT_DTYPES`` a widget offers, in the order given (its menu order)."""
    return {name: WEIGHT_DTYPES[name] for name in names}


def dtype_name(dtype: torch.dtype) -> str:
    """``torch.bfloat16`` -> ``"bf16"``: the name a widget uses, else torch's own name."""
    return _NAMES.get(dtype, str(dtype).removeprefix("torch."))


def is_fp8(dtype: torch.dtype) -> bool:
    return dtype in FP8_DTYPES.values()


def compute_dtype(weight_dtype: torch.dtype) -> torch.dtype:
    """The dtype activations run in for a model whose weights are stored as ``weight_dtype``."""
    return FP8_COMPUTE_DTYPE if is_fp8(weight_dtype) else weight_dtype
