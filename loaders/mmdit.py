"""Load Open-Sora 2.0 MMDiT checkpoints (and Flux-dev for the t2i2v image step) from safetensors.

The configuration is read from tensor shapes alone (see :func:`infer_mmdit_config`); weights are
streamed into a module built on the meta device, cast tensor by tensor, and checked strictly.
"""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path
from typing import Mapping

import torch

from ..models.dtypes import WEIGHT_DTYPES, is_fp8
from ..models.fp8 import convert_blocks_to_fp8, storage_dtypes
from ..models.mmdit import MMDiT, MMDiTConfig
from .checkpoint import (
    CheckpointError,
    TensorInfo,
    assign_state_dict,
    check_keys,
    describe_file,
    detect_kind,
    load_tensors,
    read_header,
    read_metadata,
)

MODEL_NAME = "an Open-Sora 2.0 / Flux MMDiT diffusion model"
SUPPORTED_DTYPES = tuple(WEIGHT_DTYPES.values())
# ComfyUI saves diffusion models (and bundles them in checkpoints) under this prefix.
COMFY_PREFIX = "model.diffusion_model."
# Optional safetensors metadata entries for what shapes cannot tell.
METADATA_AXES_DIM = "axes_dim"
METADATA_THETA = "theta"
METADATA_ROPE_LAYOUT = "rope_layout"

_MMDIT_KINDS = ("opensora_mmdit", "flux_mmdit")


def strip_comfy_prefix(key: str) -> str:
    """``model.diffusion_model.img_in.weight`` -> ``img_in.weight``; other keys unchanged."""
    return key[len(COMFY_PREFIX):] if key.startswith(COMFY_PREFIX) else key


def default_axes_dim(head_dim: int) -> tuple[int, int, int]:
    """RoPE (t, h, w) sizes for a head dim, when the file does not say.

    The released models use (16, 56, 56) for head dim 128, i.e. each spatial axis gets 7/16 of the
    head. Rule: each spatial axis gets ``2 * floor(7 * head_dim / 32)`` dimensions (7/16 of the head,
    rounded down to an even count) and time gets the rest. Head dim 128 -> (16, 56, 56); head dim
    16 -> (4, 6, 6), the tiny reference configurations.
    """
    spatial = 2 * (7 * head_dim // 32)
    temporal = head_dim - 2 * spatial
    if head_dim % 2 or spatial < 2 or temporal < 2:
        raise CheckpointError(
            f"Cannot choose RoPE axes for head dim {head_dim}; store 'axes_dim' in the file's metadata."
        )
    return temporal, spatial, spatial


def _shape(header: Mapping[str, TensorInfo], key: str) -> tuple[int, ...]:
    try:
        return tuple(header[key].shape)
    except KeyError:
        raise CheckpointError(
            f"This file is not {MODEL_NAME}: it has no '{key}' tensor ({describe_file(header)})."
        ) from None


def _count_blocks(keys: set[str], prefix: str) -> int:
    pattern = re.compile(rf"^{re.escape(prefix)}\.(\d+)\.")
    indices = {int(m.group(1)) for k in keys if (m := pattern.match(k))}
    if indices != set(range(len(indices))):
        raise CheckpointError(f"The {prefix} of this file are not numbered 0..n-1: {sorted(indices)}.")
    return len(indices)


def _mlp_ratio(hidden_size: int, mlp_hidden: int) -> float:
    """The ratio whose ``int(hidden_size * ratio)`` (how the model sizes its MLP) gives ``mlp_hidden``."""
    ratio = mlp_hidden / hidden_size
    while int(hidden_size * ratio) < mlp_hidden:
        ratio = math.nextafter(ratio, math.inf)
    return ratio


def _metadata_overrides(metadata: Mapping[str, str]) -> dict:
    overrides: dict = {}
    try:
        if METADATA_AXES_DIM in metadata:
            overrides["axes_dim"] = tuple(int(d) for d in json.loads(metadata[METADATA_AXES_DIM]))
        if METADATA_THETA in metadata:
            overrides["theta"] = int(metadata[METADATA_THETA])
        if METADATA_ROPE_LAYOUT in metadata:
            overrides["rope_layout"] = metadata[METADATA_ROPE_LAYOUT]
    except (ValueError, TypeError) as error:
        raise CheckpointError(f"Unreadable MMDiT settings in the file's metadata: {error}.") from None
    return overrides


def infer_mmdit_config(header: Mapping[str, TensorInfo], metadata: Mapping[str, str] | None = None
                       ) -> MMDiTConfig:
    """The :class:`MMDiTConfig` of a checkpoint, from its tensor shapes (keys with or without the
    ``model.diffusion_model.`` prefix).

    Shapes give every size and flag: hidden size and in_channels (``img_in``), head dim (QK-norm
    scale), depths, vec/context dims, ``cond_in`` (present -> cond_embed; its width
    ``in_channels + patch_size**2`` gives the patch size), ``guidance_in``, fused ``qkv`` and qkv bias.
    Fused-qkv files are BFL Flux (interleaved RoPE), split files are Open-Sora (rotate-half RoPE).
    RoPE axes and theta cannot be seen in shapes: they come from ``metadata`` (``axes_dim`` as a JSON
    list, ``theta``, ``rope_layout``) when present, else :func:`default_axes_dim` and 10000.
    """
    header = {strip_comfy_prefix(k): v for k, v in header.items()}
    keys = set(header)
    hidden_size, in_channels = _shape(header, "img_in.weight")
    head_dim = _shape(header, "double_blocks.0.img_attn.norm.query_norm.scale")[0]
    if hidden_size % head_dim:
        raise CheckpointError(f"Hidden size {hidden_size} is not a multiple of the head dim {head_dim}.")
    fused_qkv = "double_blocks.0.img_attn.qkv.weight" in keys
    qkv_bias = ("double_blocks.0.img_attn.qkv.bias" if fused_qkv else "double_blocks.0.img_attn.q_proj.bias") in keys
    mlp_hidden = _shape(header, "double_blocks.0.img_mlp.0.weight")[0]
    cond_embed = "cond_in.weight" in keys
    patch_size = 2
    if cond_embed:
        extra = _shape(header, "cond_in.weight")[1] - in_channels
        patch_size = math.isqrt(max(extra, 0))
        if patch_size < 1 or patch_size**2 != extra:
            raise CheckpointError(
                f"cond_in takes {extra + in_channels} features; expected in_channels {in_channels} + patch_size**2."
            )
    overrides = _metadata_overrides(metadata or {})
    settings = dict(
        in_channels=in_channels,
        vec_in_dim=_shape(header, "vector_in.in_layer.weight")[1],
        context_in_dim=_shape(header, "txt_in.weight")[1],
        hidden_size=hidden_size,
        mlp_ratio=_mlp_ratio(hidden_size, mlp_hidden),
        num_heads=hidden_size // head_dim,
        depth=_count_blocks(keys, "double_blocks"),
        depth_single_blocks=_count_blocks(keys, "single_blocks"),
        axes_dim=overrides.get("axes_dim") or default_axes_dim(head_dim),
        theta=10000,
        qkv_bias=qkv_bias,
        guidance_embed="guidance_in.in_layer.weight" in keys,
        cond_embed=cond_embed,
        fused_qkv=fused_qkv,
        rope_layout="interleaved" if fused_qkv else "rotate_half",
        patch_size=patch_size,
    )
    settings.update(overrides)
    try:
        return MMDiTConfig(**settings)
    except ValueError as error:
        raise CheckpointError(f"Inconsistent MMDiT settings in this file: {error}.") from None


_WHERE_IT_BELONGS = {
    "hunyuan_vae": " Put it in models/vae and load it with the VAE loader.",
    "dc_ae": " Put it in models/vae and load it with the VAE loader.",
    "flux_ae": " Put it in models/vae.",
    "t5": " Put it in models/text_encoders and load it with the text encoder loader.",
    "clip": " Put it in models/text_encoders and load it with the text encoder loader.",
}


def _refuse_other_kinds(raw_keys: set[str], header: Mapping[str, TensorInfo], path: Path) -> None:
    found = detect_kind(header)
    if found is None or found[0] not in _MMDIT_KINDS:
        hint = _WHERE_IT_BELONGS.get(found[0], "") if found else ""
        raise CheckpointError(
            f"{path.name} is not {MODEL_NAME}: {describe_file(header)}.{hint} Choose the Open-Sora 2.0 model "
            "file (e.g. Open_Sora_v2.safetensors) or a Flux-dev transformer in the diffusion_models folder."
        )
    prefixed = {k for k in raw_keys if k.startswith(COMFY_PREFIX)}
    if prefixed and len(prefixed) != len(raw_keys):
        other = sorted(raw_keys - prefixed)
        raise CheckpointError(
            f"{path.name} bundles the diffusion model with {len(other)} tensors of other models (first: "
            f"{', '.join(other[:3])}); this loader reads diffusion-model-only files. Use the separate "
            "transformer file (e.g. flux1-dev.safetensors) in the diffusion_models folder."
        )


def read_mmdit_config(path: str | os.PathLike) -> MMDiTConfig:
    """The architecture of an MMDiT file, read off its header and metadata (no tensor is read)."""
    header = {strip_comfy_prefix(k): v for k, v in read_header(path).items()}
    return infer_mmdit_config(header, read_metadata(path))


def load_mmdit(path: str | os.PathLike, dtype: torch.dtype = torch.bfloat16,
               device: str | torch.device = "cpu") -> MMDiT:
    """Build the MMDiT a safetensors file describes and load its weights, cast to ``dtype``.

    With an fp8 ``dtype`` the block Linear weights are stored in fp8 and everything else in bf16,
    the compute dtype (:mod:`models.fp8`).

    The module is built on the meta device and receives the streamed tensors directly (host memory
    peaks at one copy of the weights plus one tensor). Keys and shapes are checked strictly; VAEs,
    text encoders, unknown, truncated and non-safetensors files raise :class:`CheckpointError`.
    """
    if dtype not in SUPPORTED_DTYPES:
        raise ValueError(f"Unsupported MMDiT weight dtype {dtype}; choose one of {SUPPORTED_DTYPES}.")
    path = Path(path)
    raw_header = read_header(path)
    header = {strip_comfy_prefix(k): v for k, v in raw_header.items()}
    _refuse_other_kinds(set(raw_header), header, path)
    config = infer_mmdit_config(header, read_metadata(path))
    with torch.device("meta"):
        model = MMDiT(config)
        if is_fp8(dtype):
            convert_blocks_to_fp8(model, dtype)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    check_keys(expected, header, MODEL_NAME, path)
    dtype_of = storage_dtypes(model, dtype)
    state_dict = load_tensors(path, dtype=lambda key, _stored: dtype_of(strip_comfy_prefix(key)), device=device,
                              rename=strip_comfy_prefix)
    assign_state_dict(model, state_dict, MODEL_NAME, path)
    return model.eval().requires_grad_(False)
