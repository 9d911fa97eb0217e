"""Attention kernels the MMDiT can run on: PyTorch SDPA, flash-attn and SageAttention.

All backends take and return ``[B, H, L, D]`` (batch, heads, tokens, head dim), non-causal, no mask,
scale ``1/sqrt(D)``. The optional packages are detected at run time and never required:

* ``sdpa``: ``torch.nn.functional.scaled_dot_product_attention``; PyTorch picks its flash /
  memory-efficient / cuDNN kernel itself. Works everywhere, exact.
* ``flash_attn``: Dao-AILab flash-attention (v3 ``flash_attn_interface`` preferred over v2
  ``flash_attn``); CUDA, fp16/bf16 only, exact up to rounding.
* ``sageattention``: thu-ml SageAttention (int8 Q/K, fp16/fp8 P·V); CUDA, fp16/bf16; fastest on
  consumer GPUs but approximate, so ``auto`` never picks it.
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import Callable

import torch
import torch.nn.functional as F

BACKENDS = ("auto", "sdpa", "flash_attn", "sageattention")

# backend -> (importable modules in order of preference, pip package named in errors)
_PACKAGES = {
    "flash_attn": (("flash_attn_interface", "flash_attn"), "flash-attn"),
    "sageattention": (("sageattention",), "sageattention"),
}
_HALF = (torch.float16, torch.bfloat16)


class AttentionBackendError(ValueError):
    """The chosen attention backend cannot run here; the message says what to install or change."""


def _installed_module(backend: str) -> str | None:
    modules, _package = _PACKAGES[backend]
    for name in modules:
        if importlib.util.find_spec(name) is not None:
            return name
    return None


def available_backends() -> list[str]:
    """Concrete backends usable in this Python environment (``sdpa`` always)."""
    return ["sdpa"] + [b for b in _PACKAGES if _installed_module(b) is not None]


def resolve_backend(name: str, device: torch.device | str, dtype: torch.dtype) -> str:
    """The concrete backend for the widget value ``name`` on ``device`` with compute ``dtype``.

    ``auto`` is flash-attn when installed and usable (CUDA, fp16/bf16), else SDPA. An explicit
    choice that cannot run raises :class:`AttentionBackendError` naming the pip package or the
    setting to change.
    """
    if name not in BACKENDS:
        raise AttentionBackendError(f"Unknown attention backend '{name}'; choose one of {', '.join(BACKENDS)}.")
    device = torch.device(device)
    usable_here = device.type == "cuda" and dtype in _HALF
    if name == "auto":
        return "flash_attn" if usable_here and _installed_module("flash_attn") else "sdpa"
    if name == "sdpa":
        return name
    if _installed_module(name) is None:
        raise AttentionBackendError(
            f"Attention backend '{name}' is not installed: run `pip install {_PACKAGES[name][1]}` in "
            "ComfyUI's Python environment, or choose 'auto' or 'sdpa'."
        )
    if device.type != "cuda":
        raise AttentionBackendError(f"Attention backend '{name}' needs a CUDA GPU (the model runs on {device}); "
                                    "choose 'auto' or 'sdpa'.")
    if dtype not in _HALF:
        raise AttentionBackendError(f"Attention backend '{name}' needs bf16/fp16/fp8 weights, not {dtype}; "
                                    "choose another weight_dtype or the 'sdpa' backend.")
    return name


def _sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return F.scaled_dot_product_attention(q, k, v)


def _flash_attn(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    module = importlib.import_module(_installed_module("flash_attn"))
    out = module.flash_attn_func(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), causal=False)
    if isinstance(out, tuple):  # some flash-attn 3 releases also return the log-sum-exp
        out = out[0]
    return out.transpose(1, 2)


def _sageattention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    module = importlib.import_module("sageattention")
    return module.sageattn(q, k, v, tensor_layout="HND", is_causal=False)


_KERNELS: dict[str, Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "sdpa": _sdpa,
    "flash_attn": _flash_attn,
    "sageattention": _sageattention,
}


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, backend: str = "sdpa") -> torch.Tensor:
    """``softmax(q kᵀ / sqrt(D)) v`` for ``[B, H, L, D]`` inputs with a concrete backend.

    Inputs a fast kernel cannot take (CPU tensors, fp32) fall back to SDPA, so a resolved backend
    never fails mid-sampling.
    """
    if backend != "sdpa" and (not q.is_cuda or q.dtype not in _HALF):
        backend = "sdpa"
    return _KERNELS[backend](q, k, v)


def set_attention_backend(model: torch.nn.Module, backend: str) -> None:
    """Make every attention block of ``model`` (those with an ``attention_backend`` attribute) use ``backend``."""
    if backend not in _KERNELS:
        raise AttentionBackendError(f"'{backend}' is not a concrete backend ({', '.join(_KERNELS)}); resolve it first.")
    for module in model.modules():
        if hasattr(type(module), "attention_backend"):
            module.attention_backend = backend
