"""Autoencoder files -> modules: detect which autoencoder a safetensors file holds, check its keys
strictly, and build it without a second full copy of the weights in memory."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from ..models.autoencoder import VideoAutoencoder
from ..models.dc_ae import VideoDCAE, dc_ae_config_from_shapes
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

# Where files other than autoencoders belong, for error messages.
_WHERE_INSTEAD = {
    "opensora_mmdit": "put it in models/diffusion_models and load it with the Open-Sora model loader",
    "flux_mmdit": "put it in models/diffusion_models and load it with the Open-Sora model loader",
    "t5": "put it in models/text_encoders and load it with the Open-Sora text encoder loader",
    "clip": "put it in models/text_encoders and load it with the Open-Sora text encoder loader",
    "flux_ae": "this 2-D image autoencoder is not a video autoencoder; Open-Sora 2.0 videos need "
               "hunyuan_vae.safetensors (or the Video DC-AE for the high-compression model)",
}


def autoencoder_kind_of(path: str | os.PathLike, header: dict[str, TensorInfo] | None = None) -> str:
    """``"hunyuan_vae"`` or ``"dc_ae"`` for an autoencoder file, else a CheckpointError saying what it is."""
    header = read_header(path) if header is None else header
    found = detect_kind(header)
    if found is not None and found[0] in ("hunyuan_vae", "dc_ae"):
        return found[0]
    name = Path(path).name
    if found is None:
        raise CheckpointError(
            f"{name} is not an autoencoder this pack knows: its keys match no model this pack knows "
            f"(first keys: {', '.join(sorted(header)[:3])}). Expected {HUNYUAN_NAME} or {DC_AE_NAME}."
        )
    raise CheckpointError(
        f"{name} is not an autoencoder: it looks like {found[1]}; {_WHERE_INSTEAD.get(found[0], '')}. "
        f"Choose {HUNYUAN_NAME} or {DC_AE_NAME}."
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
    build, model_name = _BUILDERS[autoencoder_kind_of(path, header)]
    with torch.device("meta"):
        module = build({key: info.shape for key, info in header.items()}, Path(path).name)
    expected = {key: tuple(value.shape) for key, value in module.state_dict().items()}
    check_keys(expected, header, model_name, path)
    module = assign_state_dict(module, load_tensors(path, dtype, device), model_name, path)
    return module.eval().requires_grad_(False)
