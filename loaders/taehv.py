"""TAEHV files (``models/vae_approx/taehv.safetensors``) -> the tiny preview decoder.

The released file holds the encoder too; only the ``decoder.*`` keys are read, checked strictly against the
module built from their shapes (missing, unexpected and mis-shaped keys are named).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from ..models.taehv import TinyVideoDecoder, config_from_shapes
from .checkpoint import CheckpointError, assign_state_dict, check_keys, load_tensors, read_header

TAEHV_NAME = "a TAEHV tiny autoencoder for HunyuanVideo (taehv.safetensors from github.com/madebyollin/taehv)"
_ENCODER_PREFIX = "encoder."


def load_taehv_decoder(path: str | os.PathLike, dtype: torch.dtype = torch.float32,
                       device: str | torch.device = "cpu") -> TinyVideoDecoder:
    """The decoder half of a TAEHV file with weights in ``dtype`` on ``device`` (eval mode, no grads)."""
    header = {key: info for key, info in read_header(path).items() if not key.startswith(_ENCODER_PREFIX)}
    try:
        config = config_from_shapes({key: info.shape for key, info in header.items()})
    except (KeyError, ValueError, ZeroDivisionError):  # not TAEHV-shaped: let the key check name the keys
        config = None
    with torch.device("meta"):
        module = TinyVideoDecoder() if config is None else TinyVideoDecoder(config)
    expected = {key: tuple(value.shape) for key, value in module.state_dict().items()}
    check_keys(expected, header, TAEHV_NAME, path)
    if config.latent_channels != 16 or config.time_upscale != 4:
        raise CheckpointError(
            f"{Path(path).name} is a TAEHV-format decoder for another latent space ({config.latent_channels} "
            f"channels, {config.time_upscale}x in time); HunyuanVideo previews need taehv.safetensors."
        )
    module = assign_state_dict(module, load_tensors(path, dtype, device, keys=list(header)), TAEHV_NAME, path)
    return module.eval().requires_grad_(False)
