"""ComfyUI IMAGE values (float, 0..1) -> the uint8 pixels a file holds: one rule for saving and for
reading references back.

The reference turns the decoder output ``x`` in [-1, 1] into ``trunc(clamp((x + 1) / 2 * 255 + 0.5, 0,
255))`` in bf16 (docs/reference.md#saving); our IMAGE already is ``(x + 1) / 2`` and we apply the same
rounding in float32 (bf16 arithmetic can move a value by one level). Values that came from a uint8 file
(``k / 255``) come back as exactly ``k``.
"""

from __future__ import annotations

import torch


def to_uint8(frames: torch.Tensor) -> torch.Tensor:
    """IMAGE values ``[..., 3]`` in 0..1 -> uint8 on the CPU, rounded half up; NaN becomes 0."""
    values = torch.nan_to_num(frames.detach().to("cpu", torch.float32), nan=0.0)
    return values.mul(255.0).add_(0.5).clamp_(0.0, 255.0).to(torch.uint8)
