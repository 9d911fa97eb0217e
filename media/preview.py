"""Latent -> RGB previews of the sampler's current clean-latent estimate.

Two ways, chosen by :func:`preview_function`: TAEHV (a tiny learned decoder, a real picture at full size) when
its file is given, else a linear projection (one pixel per latent pixel, blurry colours). The TAEHV decoder is
loaded once per file and kept; it runs on the latent's device. Both read the model-space latent as it is.

The HunyuanVideo factors are ComfyUI's ``latent_formats.HunyuanVideo.latent_rgb_factors`` (facts). ComfyUI
applies them to the model-space latent (after ``process_in``, i.e. raw VAE latent x 0.476986), which is
exactly the Open-Sora latent this pack samples, so no rescaling is needed here.
"""

from __future__ import annotations

import logging
from functools import partial
from pathlib import Path
from typing import Callable

import torch
from PIL import Image

from ..loaders.checkpoint import CheckpointError
from ..loaders.taehv import load_taehv_decoder
from ..models.latent_space import HUNYUAN_VAE, AutoencoderKind
from ..models.taehv import TinyVideoDecoder
from .pixels import to_uint8

# The file names ComfyUI users keep in models/vae_approx (madebyollin/taehv's safetensors/taehv.safetensors).
# Not a prefix match: taehv1_5* files hold HunyuanVideo 1.5's 32-channel latent space.
TAEHV_FILE_NAMES = ("taehv.safetensors", "taehv.sft")
TAEHV_PICKLE_NAME = "taehv.pth"

# [latent channel][r, g, b]
HUNYUAN_RGB_FACTORS = (
    (-0.0395, -0.0331, 0.0445),
    (0.0696, 0.0795, 0.0518),
    (0.0135, -0.0945, -0.0282),
    (0.0108, -0.0250, -0.0765),
    (-0.0209, 0.0032, 0.0224),
    (-0.0804, -0.0254, -0.0639),
    (-0.0991, 0.0271, -0.0669),
    (-0.0646, -0.0422, -0.0400),
    (-0.0696, -0.0595, -0.0894),
    (-0.0799, -0.0208, -0.0375),
    (0.1166, 0.1627, 0.0962),
    (0.1165, 0.0432, 0.0407),
    (-0.2315, -0.1920, -0.1355),
    (-0.0270, 0.0401, -0.0821),
    (-0.0616, -0.0997, -0.0727),
    (0.0249, -0.0469, -0.1703),
)
HUNYUAN_RGB_BIAS = (0.0259, -0.0192, -0.0761)

_FACTORS = {HUNYUAN_VAE.name: (HUNYUAN_RGB_FACTORS, HUNYUAN_RGB_BIAS)}


def has_preview(kind: AutoencoderKind) -> bool:
    """Whether a latent -> RGB projection is known for this autoencoder (none for the Video DC-AE)."""
    return kind.name in _FACTORS


def latent_preview(latent: torch.Tensor, kind: AutoencoderKind) -> Image.Image | None:
    """RGB picture of the first frame of batch element 0 of ``latent`` ``[B, C, T, H', W']`` (one pixel
    per latent pixel), or ``None`` when the autoencoder has no known projection."""
    if kind.name not in _FACTORS:
        return None
    factors, bias = _FACTORS[kind.name]
    frame = latent[0, :, 0].detach().float().cpu()  # [C, H', W']
    rgb = torch.einsum("chw,cr->hwr", frame, torch.tensor(factors)) + torch.tensor(bias)
    return Image.fromarray(to_uint8((rgb + 1.0) / 2.0).numpy())


def taehv_preview(latent: torch.Tensor, decoder: TinyVideoDecoder) -> Image.Image:
    """RGB picture of the first frame of batch element 0, decoded by TAEHV from latent frame 0 alone (8x the
    latent's size). Runs on the latent's device in its dtype (float32 on the CPU, where half-precision
    convolutions are slow)."""
    frame = latent[:1, :, :1].detach()
    if frame.device.type == "cpu" or frame.dtype not in (torch.float16, torch.bfloat16):
        frame = frame.float()
    decoder = decoder.to(device=frame.device, dtype=frame.dtype)
    with torch.inference_mode():
        rgb = decoder(frame)[0, :, 0]  # [3, 8H', 8W'] in [0, 1]
    return Image.fromarray(to_uint8(rgb.permute(1, 2, 0)).numpy())


_log = logging.getLogger(__name__)
_decoders: dict[tuple[str, int, int], TinyVideoDecoder | None] = {}  # (path, mtime, size) -> decoder (None: bad file)


def _cached_decoder(path: Path) -> TinyVideoDecoder | None:
    """The decoder in ``path``, loaded once per file version; a wrong file is named in the log once and gives
    ``None`` (the preview then falls back to the projection rather than stopping the sampling)."""
    stat = path.stat()
    key = (str(path), stat.st_mtime_ns, stat.st_size)
    if key not in _decoders:
        _decoders.clear()  # one file at a time: a replaced file drops the old weights
        try:
            _decoders[key] = load_taehv_decoder(path)
        except CheckpointError as error:
            _log.warning("Previews use the linear projection: %s", error)
            _decoders[key] = None
    return _decoders[key]


def preview_function(kind: AutoencoderKind, taehv_file: Path | None = None
                     ) -> Callable[[torch.Tensor], Image.Image | None] | None:
    """What turns a step's latent ``[B, C, T, H', W']`` into the progress bar's picture: TAEHV when
    ``taehv_file`` is given and holds it (HunyuanVideo latents only), else the linear projection; ``None``
    when this latent space has neither (the Video DC-AE)."""
    if not has_preview(kind):
        return None
    decoder = _cached_decoder(taehv_file) if taehv_file is not None and kind.name == HUNYUAN_VAE.name else None
    if decoder is not None:
        return partial(taehv_preview, decoder=decoder)
    return partial(latent_preview, kind=kind)
