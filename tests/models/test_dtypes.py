"""models/dtypes.py: the one table of dtype names, the widgets' views of it and fp8's compute dtype."""

from __future__ import annotations

import torch

from comfyui_opensora.models import dtypes


def test_names_and_dtypes_round_trip():
    assert list(dtypes.WEIGHT_DTYPES) == ["bf16", "fp16", "fp32", "fp8_e4m3fn", "fp8_e5m2"]  # menu order
    for name, dtype in dtypes.WEIGHT_DTYPES.items():
        assert dtypes.dtype_name(dtype) == name
    assert dtypes.dtype_name(torch.float64) == "fp64"
    assert dtypes.dtype_name(torch.int8) == "int8"  # not a widget dtype: torch's own name


def test_widget_views_keep_their_order():
    assert dtypes.dtypes_named("fp32", "bf16") == {"fp32": torch.float32, "bf16": torch.bfloat16}
    assert list(dtypes.dtypes_named("fp32", "bf16")) == ["fp32", "bf16"]
    assert list(dtypes.FLOAT_DTYPES) == ["bf16", "fp16", "fp32"]


def test_fp8_is_stored_only_and_computes_in_bf16():
    for dtype in dtypes.FP8_DTYPES.values():
        assert dtypes.is_fp8(dtype) and dtypes.compute_dtype(dtype) == torch.bfloat16
    for dtype in dtypes.FLOAT_DTYPES.values():
        assert not dtypes.is_fp8(dtype) and dtypes.compute_dtype(dtype) == dtype


def test_safetensors_codes():
    assert dtypes.SAFETENSORS_DTYPES["BF16"] == torch.bfloat16
    assert dtypes.SAFETENSORS_DTYPES["F8_E4M3"] == torch.float8_e4m3fn
