"""The LATENT value the pack's nodes pass around: ComfyUI's ``{"samples": ...}`` dict plus geometry.

``samples`` are ``[B, C, T, H', W']`` in the diffusion model's latent space (Open-Sora's scaling, which
differs from ComfyUI's native video latents; see the latent conversion nodes).
"""

from __future__ import annotations

from typing import Any

import torch

from .geometry import VideoGeometry

GEOMETRY_KEY = "opensora_geometry"
LATENT_TYPE = "opensora"


def make_latent(samples: torch.Tensor, geometry: VideoGeometry, **extra: Any) -> dict[str, Any]:
    """Build a LATENT dict carrying ``samples`` and the video geometry they belong to."""
    expected = geometry.latent_shape(samples.shape[0])
    if tuple(samples.shape) != expected:
        raise ValueError(f"Latent shape {tuple(samples.shape)} does not match {geometry} (expected {expected}).")
    return {"samples": samples, "type": LATENT_TYPE, GEOMETRY_KEY: geometry, **extra}


def read_latent(latent: dict[str, Any]) -> tuple[torch.Tensor, VideoGeometry]:
    """Return ``(samples, geometry)`` of an Open-Sora LATENT, or explain what was given instead."""
    if not isinstance(latent, dict) or "samples" not in latent:
        raise TypeError(f"Expected a LATENT dict with 'samples', got {type(latent).__name__}.")
    geometry = latent.get(GEOMETRY_KEY)
    if not isinstance(geometry, VideoGeometry):
        raise ValueError(
            "This LATENT does not come from an Open-Sora node (it has no Open-Sora geometry). Start from "
            "'Open-Sora Noise', or convert a native video latent with 'Open-Sora Latent From Native'."
        )
    return latent["samples"], geometry
