"""The sampler's live preview: off, TAEHV (``models/vae_approx/taehv.safetensors``) or the linear projection."""

from __future__ import annotations

import logging
from pathlib import Path, PurePosixPath
from typing import Callable

import torch
from PIL import Image

from ..media.preview import TAEHV_FILE_NAMES, TAEHV_PICKLE_NAME, preview_function
from ..models.latent_space import HUNYUAN_VAE, AutoencoderKind
from .. import host

_log = logging.getLogger(__name__)


def sampler_preview(kind: AutoencoderKind) -> Callable[[torch.Tensor], Image.Image | None] | None:
    """The step latent -> picture function for this run, or ``None`` when previews are off or this latent
    space has none. TAEHV unless ComfyUI's preview method is latent2rgb. Looked up once per run, so a TAEHV
    file added between runs is used by the next one."""
    if not host.previews_enabled():
        return None
    wanted = kind.name == HUNYUAN_VAE.name and host.preview_decoders_allowed()
    return preview_function(kind, taehv_file() if wanted else None)


def taehv_file() -> Path | None:
    """The TAEHV file in the ``vae_approx`` model folder (any sub-folder), if there is one."""
    try:
        names = host.list_files(host.VAE_APPROX, (".safetensors", ".sft", ".pth"))
    except RuntimeError:  # outside ComfyUI with no model folder configured
        return None
    found = [name for name in names if PurePosixPath(name).name in TAEHV_FILE_NAMES]
    if found:
        return host.resolve_file(host.VAE_APPROX, found[0])
    if any(PurePosixPath(name).name == TAEHV_PICKLE_NAME for name in names):
        _log.warning("Found %s in %s but this pack reads only safetensors: put taehv.safetensors (the safetensors/ "
                     "folder of github.com/madebyollin/taehv) there for TAEHV previews.", TAEHV_PICKLE_NAME,
                     host.VAE_APPROX)
    return None
