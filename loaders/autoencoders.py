"""Autoencoder files -> modules: detect which autoencoder a safetensors file holds, check its keys
strictly, and build it without a second full copy of the weights in memory."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from ..models.autoencoder import VideoAutoencoder
from ..models.dc_ae import VideoDCAE, dc_ae_config_from_shapes
from ..models.flux_ae import FluxAEConfig, FluxImageAE
from ..models.hunyuan_vae import HunyuanVideoVAE, config_from_shapes
from .checkpoint import (
    CheckpointError,
    TensorInfo,
    assign_state_dict,
    check_keys,
    detect_kind,
    load_tensors,
    read_header,
)

HUNYUAN_NAME = "a HunyuanVideo causal VAE (hunyuan_vae.safetensors)"
DC_AE_NAME = "a Video DC-AE (F32T4C128_AE.safetensors)"
FLUX_AE_NAME = "the Flux image autoencoder (flux1-dev-ae.safetensors / ae.safetensors)"

# Where files other than autoencoders belong, for error messages.
_WHERE_INSTEAD = {
    "opensora_mmdit": "put it in models/diffusion_models and load it with the Open-Sora model loader",
    "flux_mmdit": "put it in models/diffusion_models and load it with the Open-Sora model loader",
    "t5": "put it in models/text_encoders and load it with the Open-Sora text encoder loader",
    "clip": "put it in models/text_encoders and load it with the Open-Sora text encoder loader",
}


def autoencoder_kind_of(path: str | os.PathLike, header: dict[str, TensorInfo] | None = None) -> str:
    """``"hunyuan_vae"``, ``"dc_ae"`` or ``"flux_ae"`` for an autoencoder file, else a CheckpointError saying what it is."""
    header = read_header(path) if header is None else header
    found = detect_kind(header)
    if found is not None and found[0] in ("hunyuan_vae", "dc_ae", "flux_ae"):
        return found[0]
    name = Path(path).name
    if found is None:
        raise CheckpointError(
            f"{name} is not an autoencoder this pack knows: its keys match no model this pack knows "
            f"(first keys: {', '.join(sorted(header)[:3])}). Expected {HUNYUAN_NAME}, {DC_AE_NAME} or {FLUX_AE_NAME}."
        )
    raise CheckpointError(
        f"{name} is not an autoencoder: it looks like {found[1]}; {_WHERE_INSTEAD.get(found[0], '')}. "
        f"Choose {HUNYUAN_NAME}, {DC_AE_NAME} or {FLUX_AE_NAME}."
    )


def _hunyuan_from_shapes(shapes: dict[str, tuple[int, ...]], name: str) -> HunyuanVideoVAE:
    try:
        config = config_from_shapes(shapes)
    except KeyError as missing:
        raise CheckpointError(f"{name} is not {HUNYUAN_NAME}: it lacks the key {missing}.") from None
    return HunyuanVideoVAE(config)


def _dc_ae_from_shapes(shapes: dict[str, tuple[int, ...]], name: str) -> VideoDCAE:
    try:
        config = dc_ae_config_from_shapes(shapes)
    except ValueError as problem:
        raise CheckpointError(f"{name} is not {DC_AE_NAME}: {problem}") from None
    return VideoDCAE(config)


# kind -> (module built from the file's shapes, the model name used in errors)
_BUILDERS = {"hunyuan_vae": (_hunyuan_from_shapes, HUNYUAN_NAME), "dc_ae": (_dc_ae_from_shapes, DC_AE_NAME)}


def load_autoencoder(path: str | os.PathLike, dtype: torch.dtype = torch.bfloat16,
                     device: str | torch.device = "cpu") -> VideoAutoencoder:
    """Build the autoencoder stored in ``path`` with weights in ``dtype`` on ``device`` (eval mode, no grads).

    The kind is detected from the keys; the architecture is read off the tensor shapes; keys and shapes
    are checked strictly before any tensor is read. The module is built on
    the meta device and the weights assigned as they are read, so memory holds one copy.
    """
    header = read_header(path)
    kind = autoencoder_kind_of(path, header)
    if kind == "flux_ae":
        return load_flux_ae(path, dtype, device, header)
    build, model_name = _BUILDERS[kind]
    with torch.device("meta"):
        module = build({key: info.shape for key, info in header.items()}, Path(path).name)
    expected = {key: tuple(value.shape) for key, value in module.state_dict().items()}
    check_keys(expected, header, model_name, path)
    module = assign_state_dict(module, load_tensors(path, dtype, device), model_name, path)
    return module.eval().requires_grad_(False)


def flux_ae_config_from_shapes(shapes: dict[str, tuple[int, ...]], name: str) -> FluxAEConfig:
    """Level widths, blocks per level and latent channels of a Flux AE file in Black Forest Labs' layout."""
    levels = 1 + max((int(k.split(".")[2]) for k in shapes if k.startswith("encoder.down.")), default=-1)
    if levels == 0:
        raise CheckpointError(f"{name} is not {FLUX_AE_NAME}: it has no encoder.down.* keys.")
    try:
        widths = tuple(shapes[f"encoder.down.{i}.block.0.conv1.weight"][0] for i in range(levels))
        blocks = 1 + max(int(k.split(".")[4]) for k in shapes if k.startswith("encoder.down.0.block."))
        latent = shapes["encoder.conv_out.weight"][0] // 2
    except (KeyError, ValueError) as problem:
        raise CheckpointError(f"{name} is not {FLUX_AE_NAME}: it lacks {problem}.") from None
    return FluxAEConfig(block_out_channels=widths, layers_per_block=blocks, latent_channels=latent)


def load_flux_ae(path: str | os.PathLike, dtype: torch.dtype = torch.bfloat16, device: str | torch.device = "cpu",
                 header: dict[str, TensorInfo] | None = None) -> FluxImageAE:
    """Load the Flux AE: Black Forest Labs' key layout converted by diffusers' own single-file converter.

    Strict: the file must hold exactly the released keys (missing and unexpected ones are named) and the
    converted weights must fit the diffusers module (wrong shapes named).
    """
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

    header = read_header(path) if header is None else header
    name = Path(path).name
    config = flux_ae_config_from_shapes({key: info.shape for key, info in header.items()}, name)
    with torch.device("meta"):
        module = FluxImageAE(config)
    # Keys in the released layout first (names the file's own keys), then diffusers' converter does the
    # renaming and the 1x1-conv -> linear reshape of the attention weights; assignment checks the shapes.
    check_keys({module.file_key(key) for key in module.vae.state_dict()}, header, FLUX_AE_NAME, path)
    converted = convert_ldm_vae_checkpoint(load_tensors(path, dtype, device), config.diffusers_kwargs())
    converted = {key: value.contiguous() for key, value in converted.items()}
    assign_state_dict(module.vae, converted, FLUX_AE_NAME, path)
    return module.eval().requires_grad_(False)
