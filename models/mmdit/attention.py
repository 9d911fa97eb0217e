"""The attention kernel of the MMDiT, kept in one place so faster backends can be plugged in."""

from __future__ import annotations

from typing import Callable

import torch

from ..attention_backends import attention as backend_attention


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
              backend: str | Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor] = "sdpa"
              ) -> torch.Tensor:
    """Full (unmasked) softmax attention with scale ``1/sqrt(D)``.

    ``q, k, v``: ``[B, H, L, D]`` (RoPE already applied). Returns ``[B, L, H*D]``. ``backend`` is a
    concrete kernel of :mod:`models.attention_backends` (``sdpa``, ``flash_attn``, ``sageattention``),
    or an injected kernel with the same ``[B, H, L, D]`` contract (e.g. the sequence-parallel
    attention of :mod:`parallel`).
    """
    out = backend(q, k, v) if callable(backend) else backend_attention(q, k, v, backend)
    batch, heads, length, head_dim = out.shape
    return out.transpose(1, 2).reshape(batch, length, heads * head_dim)
