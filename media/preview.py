"""Cheap latent -> RGB previews of the sampler's current clean-latent estimate.

The HunyuanVideo factors are ComfyUI's ``latent_formats.HunyuanVideo.latent_rgb_factors`` (facts). ComfyUI
applies them to the model-space latent (after ``process_in``, i.e. raw VAE latent x 0.476986), which is
exactly the Open-Sora latent this pack samples, so no rescaling is needed here.
"""

from __future__ import annotations

import torch
from PIL import Image

from ..models.latent_space import HUNYUAN_VAE, AutoencoderKind

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
    pixels = ((rgb + 1.0) / 2.0).clamp(0, 1).mul(255).to(torch.uint8)
    return Image.fromarray(pixels.numpy())
