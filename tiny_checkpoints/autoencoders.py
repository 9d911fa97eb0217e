"""Tiny autoencoder checkpoints: HunyuanVideo VAE, Video DC-AE and Flux's image AE, in the released layouts."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from safetensors.torch import save_file

from ..models.dc_ae import DCAEConfig, VideoDCAE
from ..models.flux_ae import FluxAEConfig, FluxImageAE
from ..models.hunyuan_vae import HunyuanVAEConfig, HunyuanVideoVAE
from ..models.taehv import TinyDecoderConfig, TinyVideoDecoder
from .seeding import build_seeded, file_tensors

# HunyuanVideo VAE with the released layout (4 blocks: 8x spatial, 4x temporal) and narrow widths; the
# golden fixture's shape.
TINY_HUNYUAN_VAE = HunyuanVAEConfig(block_out_channels=(8, 16, 16, 16), layers_per_block=1, norm_num_groups=4)
# Flux's image autoencoder with the released structure (4 levels, 2 blocks, 16 latent channels), narrow
# (32 channels: the GroupNorms have 32 groups, which the file cannot say).
TINY_FLUX_AE = FluxAEConfig(block_out_channels=(32, 32, 32, 32))
# TAEHV's preview decoder with the released layers and time strides, narrow.
TINY_TAEHV = TinyDecoderConfig(widths=(16, 8, 8, 8))
TAEHV_FILE = "taehv.safetensors"  # in vae_approx/


def tiny_dc_ae_config(latent_channels: int = 128) -> DCAEConfig:
    """The Video DC-AE's released structure (6 stages: 32x spatial, 4x temporal) at CPU-test widths.

    128 latent channels feed the high-compression MMDiT (the ``--smoke`` default); fewer make a faster
    autoencoder for tests of the autoencoder alone. The last stages are at least as wide as the latent:
    the channel-averaging shortcuts need width >= latent channels.
    """
    widths = (8, 16, 16, 32, max(32, latent_channels // 2), max(32, latent_channels))
    return DCAEConfig(latent_channels=latent_channels, encoder_widths=widths, encoder_depths=(1,) * 6,
                      decoder_widths=widths, decoder_depths=(1,) * 6)


TINY_DC_AE = tiny_dc_ae_config()


def _random_like_official(shapes: dict[str, torch.Size], seed: int, is_norm_weight, bias_scale: float
                          ) -> dict[str, torch.Tensor]:
    """Weights ~ N(0, 1/fan_in), norm weights 1 + N(0, 0.1²), other vectors ``bias_scale``·N(0, 1), drawn in
    ``shapes``' order from a private generator."""
    generator = torch.Generator().manual_seed(seed)
    tensors = {}
    for key, shape in shapes.items():
        noise = torch.randn(shape, generator=generator)
        if len(shape) > 1:
            tensors[key] = noise / shape[1:].numel() ** 0.5
        elif is_norm_weight(key):
            tensors[key] = 1 + 0.1 * noise
        else:
            tensors[key] = bias_scale * noise
    return tensors


def tiny_hunyuan_state_dict(config: HunyuanVAEConfig = TINY_HUNYUAN_VAE, seed: int = 0,
                            dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """Random weights for ``config`` under the keys of ``hunyuan_vae.safetensors``."""
    with torch.device("meta"):
        shapes = {k: v.shape for k, v in HunyuanVideoVAE(config).state_dict().items()}
    tensors = _random_like_official(shapes, seed, lambda key: "norm" in key and key.endswith("weight"), 0.05)
    return {k: v.to(dtype).contiguous() for k, v in tensors.items()}


def write_tiny_hunyuan_vae(path: str | os.PathLike, config: HunyuanVAEConfig = TINY_HUNYUAN_VAE,
                           seed: int = 0, dtype: torch.dtype = torch.float32) -> Path:
    """A tiny HunyuanVideo causal VAE under the official keys."""
    save_file(tiny_hunyuan_state_dict(config, seed, dtype), str(path))
    return Path(path)


def tiny_dc_ae_state_dict(config: DCAEConfig = TINY_DC_AE, seed: int = 0,
                          dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """Random weights for ``config`` under the keys of ``F32T4C128_AE.safetensors``."""
    with torch.device("meta"):
        shapes = {k: v.shape for k, v in sorted(VideoDCAE(config).state_dict().items())}
    tensors = _random_like_official(shapes, seed, lambda key: key.endswith("norm.weight") or ".op_list.0.weight" in key,
                                    0.1)
    return {k: v.to(dtype) for k, v in tensors.items()}


def write_tiny_dc_ae(path: str | os.PathLike, config: DCAEConfig = TINY_DC_AE, seed: int = 0,
                     dtype: torch.dtype = torch.float32) -> Path:
    """A tiny Video DC-AE under the official keys."""
    save_file(tiny_dc_ae_state_dict(config, seed, dtype), str(path))
    return Path(path)


def flux_ae_file_tensors(module: FluxImageAE) -> dict[str, torch.Tensor]:
    """``module``'s weights under the released Flux AE file's keys (attention projections as 1x1 convs)."""
    tensors = {}
    for key, value in module.vae.state_dict().items():
        name = module.file_key(key)
        if ".attn_1." in name and name.endswith("weight") and value.ndim == 2:
            value = value[:, :, None, None]
        tensors[name] = value.detach().contiguous()
    return tensors


def write_tiny_flux_ae(path: str | os.PathLike, config: FluxAEConfig = TINY_FLUX_AE, seed: int = 0) -> Path:
    """A Flux AE file in the released key layout, with seeded random weights."""
    save_file(flux_ae_file_tensors(build_seeded(lambda: FluxImageAE(config), seed)), str(path))
    return Path(path)


def write_tiny_taehv(path: str | os.PathLike, config: TinyDecoderConfig = TINY_TAEHV, seed: int = 0) -> Path:
    """A tiny TAEHV preview decoder under the released ``taehv.safetensors`` decoder keys (no encoder)."""
    save_file(file_tensors(build_seeded(lambda: TinyVideoDecoder(config), seed)), str(path))
    return Path(path)
