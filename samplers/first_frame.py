"""The t2i2v first frame as the reference hands it to the video: rounded to 8 bits like its PNG.

The reference saves the Flux-made frame with torchvision's ``save_image(normalize=True,
value_range=(-1, 1))`` and reads the PNG back as the i2v condition. ``save_image`` computes
``clamp(-1, 1)``, ``(x + 1) / 2``, ``* 255 + 0.5``, ``clamp(0, 255)`` and truncation *in the decoder's
dtype* (bf16 in the shipped configs), so the condition image is those uint8 values. An IMAGE no longer
says its dtype; the decode node computes ``(x + 1) / 2`` in the decoder's dtype, so frames whose values
are all bf16 numbers came from a bf16 decode and are rounded in bf16 here, others in float32.
"""

from __future__ import annotations

import torch


def arithmetic_dtype(frames: torch.Tensor) -> torch.dtype:
    """bf16 when every value is a bf16 number (a bf16 decode), else float32."""
    as_float = frames.detach().float()
    return torch.bfloat16 if torch.equal(as_float.to(torch.bfloat16).float(), as_float) else torch.float32


def reference_uint8(frames: torch.Tensor) -> torch.Tensor:
    """IMAGE frames in [0, 1] -> the uint8 pixels of the reference's PNG (NaN becomes 0)."""
    dtype = arithmetic_dtype(frames)
    values = torch.nan_to_num(frames.detach().cpu().float(), nan=0.0).to(dtype)
    return values.mul(255).add_(0.5).clamp_(0, 255).to(torch.uint8)


def round_trip(frames: torch.Tensor) -> torch.Tensor:
    """The frames as read back from that PNG: ``uint8 / 255`` in float32."""
    return reference_uint8(frames).float().div(255)
