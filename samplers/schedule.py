"""Timestep schedule and guidance oscillation of the Open-Sora 2.0 samplers.

Facts: docs/reference.md#schedule (schedule), docs/reference.md#denoising (oscillation, temporal image-guidance ramp).
"""

from __future__ import annotations

import math

import torch

# The shift line goes through (256 tokens per frame, alpha 1) and (4096 tokens per frame, alpha 3).
_SHIFT_TOKENS = (256.0, 4096.0)
_SHIFT_ALPHAS = (1.0, 3.0)
# Oscillating guidance is applied on every step before this one, then on even steps only.
OSCILLATION_WARMUP_STEPS = 10


def shift_alpha(tokens_per_frame: int, latent_frames: int) -> float:
    """The resolution and length dependent shift: ``(m * S + b) * sqrt(T)``."""
    (x1, x2), (y1, y2) = _SHIFT_TOKENS, _SHIFT_ALPHAS
    slope = (y2 - y1) / (x2 - x1)
    intercept = y1 - slope * x1
    return (slope * tokens_per_frame + intercept) * math.sqrt(latent_frames)


def get_schedule(
    num_steps: int,
    tokens_per_frame: int,
    latent_frames: int,
    shift: bool = True,
    flow_shift: float | None = None,
) -> list[float]:
    """``num_steps + 1`` times from 1 (noise) to 0 (data), shifted towards 1 like the reference.

    ``tokens_per_frame`` is the number of packed image tokens of one latent frame and ``latent_frames``
    the latent frame count. ``flow_shift`` (when ``shift``) replaces the computed alpha.
    Computed in float32 as the reference does and returned as Python floats.
    """
    if num_steps < 1:
        raise ValueError(f"steps={num_steps}: at least 1 sampling step is needed.")
    timesteps = torch.linspace(1, 0, num_steps + 1)
    if shift:
        alpha = flow_shift if flow_shift is not None else shift_alpha(tokens_per_frame, latent_frames)
        timesteps = alpha * timesteps / (1 + (alpha - 1) * timesteps)
    return timesteps.tolist()


def oscillated_scale(scale: float, step: int, warmup: int = OSCILLATION_WARMUP_STEPS) -> float:
    """Guidance oscillation: the full ``scale`` before ``warmup`` and on even steps, 1 on odd steps."""
    return scale if step < warmup or step % 2 == 0 else 1.0


def guidance_scales(
    step: int,
    text_scale: float,
    image_scale: float,
    text_oscillation: bool,
    image_oscillation: bool,
) -> tuple[float, float]:
    """Text and image guidance scales of one step (before the temporal image ramp)."""
    text = oscillated_scale(text_scale, step) if text_oscillation else text_scale
    image = oscillated_scale(image_scale, step) if image_oscillation else image_scale
    return text, image


def temporal_image_scales(image_scale: float, step: int, num_steps: int, latent_frames: int) -> torch.Tensor:
    """Per-latent-frame image guidance ``[T]`` (float32): a ramp from 1 at the first frame to an upper
    bound that decays linearly from ``image_scale`` at step 0 to 1 after the last step."""
    upper = torch.linspace(image_scale, 1.0, num_steps + 1)[step]
    return torch.linspace(1.0, upper, latent_frames)
