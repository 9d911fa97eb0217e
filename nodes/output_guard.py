"""Checks on what each stage hands on, so a broken run stops with an error instead of a bad video.

A stage whose arithmetic went wrong (fp16 overflow, a faulty low-precision kernel, a diverged sampler)
usually leaves a trace a single reduction can see: NaN/inf values, or decoded frames that are one flat
colour although the latent was not. Each check costs one pass over a tensor the stage has already
produced, far less than the stage itself, so the checks stay on. The errors name the stage, the
precision and device it ran in, and what to change.
"""

from __future__ import annotations

import torch

from ..models.dtypes import dtype_name

# Decoded frames (0..1) whose values all lie within one 8-bit level are a flat colour once saved.
FLAT_RANGE = 1.0 / 255.0
# A latent whose values all lie this close together carries no picture to decode (e.g. all zeros).
FLAT_LATENT_RANGE = 1e-6


class StageOutputError(RuntimeError):
    """A stage produced values no video can come from (non-finite or flat)."""


def precision_remedy(dtype: torch.dtype, widget: str) -> str:
    """What to change when a stage running in ``dtype`` went wrong; ``widget`` names the setting."""
    if dtype == torch.float16:
        return f"fp16 overflows easily: set {widget} to bf16 or fp32."
    if dtype == torch.bfloat16:
        return f"Set {widget} to fp32 (some bf16 kernels, on the CPU in particular, give wrong results)."
    return "It already runs in fp32, so check its inputs and weights (a damaged or wrong checkpoint?)."


def _all_finite(values: torch.Tensor) -> bool:
    """One min/max reduction (NaN propagates through both, inf shows in one) without a mask the size
    of ``values``: a decoded video can be gigabytes."""
    if values.numel() == 0:
        return True
    low, high = values.aminmax()
    return bool(torch.isfinite(low) & torch.isfinite(high))


def check_finite(values: torch.Tensor, stage: str, dtype: torch.dtype, device: torch.device | str,
                 remedy: str) -> None:
    """Raise StageOutputError if ``values`` holds NaN or inf."""
    if _all_finite(values):
        return
    bad = values.numel() - int(torch.isfinite(values).sum())  # counted only on the error path
    raise StageOutputError(
        f"{stage} produced {bad} NaN/inf values out of {values.numel()} (ran in {dtype_name(dtype)} on "
        f"{device}); the video would be black or broken, so the run stops here. {remedy}"
    )


def check_input_finite(values: torch.Tensor, what: str, remedy: str) -> None:
    """Raise StageOutputError if an input handed over by an earlier node holds NaN or inf, so the
    error names the stage that made it rather than the one that received it."""
    if not _all_finite(values):
        raise StageOutputError(f"{what} holds NaN/inf values, so no video can come from it. {remedy}")


def check_not_flat(frames: torch.Tensor, source: torch.Tensor, stage: str, dtype: torch.dtype,
                   device: torch.device | str, remedy: str) -> None:
    """Raise StageOutputError if a batch element of ``frames`` (0..1, ``[B*F, H, W, 3]``, ``F`` frames per
    element) is one flat colour while its ``source`` element (``[B, ...]``) was not flat."""
    elements = source.shape[0]
    for index, (video, latent) in enumerate(zip(frames.reshape(elements, -1), source.reshape(elements, -1))):
        low, high = (float(v) for v in video.aminmax())  # whole-tensor reductions: one fast pass each
        src_low, src_high = (float(v) for v in latent.aminmax())
        if high - low < FLAT_RANGE and src_high - src_low > FLAT_LATENT_RANGE:
            break
    else:
        return
    raise StageOutputError(
        f"{stage} decoded batch element {index} to frames of one flat value ({low:.3f}) from a "
        f"latent that is not flat (ran in {dtype_name(dtype)} on {device}); the video would be "
        f"a single colour, so the run stops here. {remedy}"
    )
