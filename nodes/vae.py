"""Open-Sora autoencoder nodes: load a VAE, decode LATENT to IMAGE frames, convert native latents."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ..models.autoencoder import VideoAutoencoder
from ..samplers.geometry import AutoencoderKind
from . import host


@dataclass
class OpenSoraVAE:
    """The OPENSORA_VAE socket value: a managed autoencoder and what it is.

    Use: ``host.load_models([vae.managed])`` then ``vae.module.encode(...)`` / ``decode_chunks(...)``.
    """

    managed: Any  # host.manage_model handle (a ModelPatcher inside ComfyUI)
    kind: AutoencoderKind
    dtype: torch.dtype
    path: str

    @property
    def module(self) -> VideoAutoencoder:
        return host.unwrap_model(self.managed)


NODE_CLASS_MAPPINGS: dict[str, type] = {}
NODE_DISPLAY_NAME_MAPPINGS: dict[str, str] = {}
