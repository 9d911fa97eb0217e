"""Safetensors checkpoints: header reading, file-kind detection, strict key checks, streaming load.

Nothing here unpickles: only the safetensors format is accepted.
"""

from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Mapping

import torch
from safetensors import safe_open

from ..models.dtypes import SAFETENSORS_DTYPES



class CheckpointError(ValueError):
    """A file that is not the checkpoint the user asked for; the message says what to change."""


@dataclass(frozen=True)
class TensorInfo:
    """Shape and dtype of one tensor as stored in the file header."""

    shape: tuple[int, ...]
    dtype: str

    @property
    def numel(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n


def read_header(path: str | os.PathLike) -> dict[str, TensorInfo]:
    """Read a safetensors header without loading tensors; clear errors for other or broken files."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path} does not exist or is not a file.")
    size = path.stat().st_size
    with path.open("rb") as f:
        prefix = f.read(8)
        if len(prefix) < 8:
            raise CheckpointError(f"{path.name} is not a safetensors file (only {size} bytes).")
        (header_len,) = struct.unpack("<Q", prefix)
        if header_len == 0 or header_len > 100 << 20 or f.read(1) != b"{":
            raise CheckpointError(
                f"{path.name} is not a safetensors file (a .ckpt/.pt/.bin pickle or another format?). "
                "This pack only reads .safetensors files."
            )
        if header_len > size - 8:
            raise CheckpointError(f"{path.name} is truncated (it ends inside its header). Download it again.")
        f.seek(8)
        raw = f.read(header_len)
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise CheckpointError(f"{path.name} is not a safetensors file (its header is not JSON).") from None
    infos: dict[str, TensorInfo] = {}
    data_end = 0
    for key, value in header.items():
        if key == "__metadata__":
            continue
        try:
            infos[key] = TensorInfo(tuple(value["shape"]), value["dtype"])
            data_end = max(data_end, int(value["data_offsets"][1]))
        except (KeyError, TypeError, IndexError, ValueError):
            raise CheckpointError(f"{path.name} has a malformed safetensors header (entry '{key}').") from None
    if 8 + header_len + data_end > size:
        raise CheckpointError(
            f"{path.name} is truncated: the header describes {8 + header_len + data_end} bytes but the file "
            f"has {size}. Download it again."
        )
    return infos


def read_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The ``__metadata__`` block of a safetensors file (empty if none)."""
    with safe_open(str(path), framework="pt") as f:
        return dict(f.metadata() or {})


# Marker keys of checkpoint kinds users may pick by mistake: (kind, human description, predicate).
_KINDS: list[tuple[str, str, Callable[[set[str]], bool]]] = [
    ("opensora_mmdit", "an Open-Sora 2.0 video MMDiT (diffusion model)",
     lambda k: "cond_in.weight" in k and "double_blocks.0.img_attn.q_proj.weight" in k),
    ("flux_mmdit", "a Flux image transformer (diffusion model)",
     lambda k: "double_blocks.0.img_attn.qkv.weight" in k
     or "model.diffusion_model.double_blocks.0.img_attn.qkv.weight" in k
     or "double_blocks.0.img_attn.q_proj.weight" in k and "cond_in.weight" not in k),
    ("hunyuan_vae", "a HunyuanVideo causal VAE (autoencoder)",
     lambda k: "decoder.conv_in.conv.weight" in k and "decoder.mid_block.attentions.0.to_q.weight" in k),
    ("dc_ae", "a Video DC-AE (autoencoder)",
     lambda k: "decoder.project_in.main.conv.weight" in k or "encoder.project_in.conv.weight" in k),
    ("flux_ae", "a Flux/SD 2-D VAE (autoencoder)",
     lambda k: "decoder.conv_in.weight" in k and "encoder.conv_in.weight" in k),
    ("t5", "a T5 text encoder",
     lambda k: any(x.startswith(("encoder.block.0.layer.0.SelfAttention", "shared.")) for x in k)),
    ("clip", "a CLIP text encoder",
     lambda k: any("text_model.encoder.layers.0." in x for x in k)),
]


def detect_kind(keys: Iterable[str]) -> tuple[str, str] | None:
    """``(kind, description)`` of the checkpoint these keys come from, or ``None`` if unknown."""
    keyset = set(keys)
    for kind, description, test in _KINDS:
        if test(keyset):
            return kind, description
    return None


def describe_file(keys: Iterable[str]) -> str:
    """A phrase for error messages: what this file looks like."""
    found = detect_kind(keys)
    return f"it looks like {found[1]}" if found else "its keys match no model this pack knows"


def check_keys(
    expected: Mapping[str, tuple[int, ...]] | Iterable[str],
    found: Mapping[str, TensorInfo] | Iterable[str],
    model_name: str,
    path: str | os.PathLike,
    limit: int = 5,
) -> None:
    """Raise CheckpointError unless ``found`` has exactly the ``expected`` keys (and shapes, when given).

    The message names the model expected, the first missing and unexpected keys, and what the file
    looks like instead (e.g. "it looks like a HunyuanVideo causal VAE").
    """
    expected_keys = set(expected)
    found_keys = set(found)
    missing = sorted(expected_keys - found_keys)
    unexpected = sorted(found_keys - expected_keys)
    problems: list[str] = []
    if missing:
        problems.append(f"{len(missing)} missing key(s), first: {', '.join(missing[:limit])}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected key(s), first: {', '.join(unexpected[:limit])}")
    if isinstance(expected, Mapping) and isinstance(found, Mapping):
        wrong = [
            f"{k} {tuple(found[k].shape)} (expected {tuple(expected[k])})"
            for k in sorted(expected_keys & found_keys)
            if tuple(found[k].shape) != tuple(expected[k])
        ]
        if wrong:
            problems.append(f"{len(wrong)} tensor(s) with the wrong shape, first: {'; '.join(wrong[:limit])}")
    if problems:
        raise CheckpointError(
            f"{Path(path).name} is not {model_name}: {describe_file(found_keys)}. "
            + "; ".join(problems)
            + "."
        )


def _data_offsets(path: str | os.PathLike) -> tuple[int, dict[str, tuple[int, int]]]:
    """Start of the data section and each tensor's ``(begin, end)`` inside it (header checked by read_header)."""
    with open(path, "rb") as f:
        (header_len,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(header_len))
    offsets = {k: tuple(v["data_offsets"]) for k, v in header.items() if k != "__metadata__"}
    return 8 + header_len, offsets


def _read_cast(file, start: int, stored: torch.dtype, shape: list[int], target: torch.dtype,
               chunk_bytes: int = 16 << 20) -> torch.Tensor:
    """One tensor read with plain file reads in chunks, each cast into the result as it arrives.

    The page cache the reads pass through is not this process's memory, and only one chunk of the
    stored dtype exists at a time, so the result is all that stays.
    """
    out = torch.empty(shape, dtype=target)
    flat = out.view(-1)
    per_chunk = max(1, chunk_bytes // stored.itemsize)
    buffer = torch.empty(min(flat.numel(), per_chunk) * stored.itemsize, dtype=torch.uint8)
    file.seek(start)
    for first in range(0, flat.numel(), per_chunk):
        count = min(per_chunk, flat.numel() - first)
        chunk = buffer[: count * stored.itemsize]
        if file.readinto(chunk.numpy()) != chunk.numel():
            raise CheckpointError(f"{Path(file.name).name} ended early while reading a tensor. Download it again.")
        flat[first:first + count] = chunk.view(stored)
    return out


def load_tensors(
    path: str | os.PathLike,
    dtype: torch.dtype | Callable[[str, torch.dtype], torch.dtype] | None = None,
    device: str | torch.device = "cpu",
    rename: Callable[[str], str] | None = None,
    keys: Iterable[str] | None = None,
) -> dict[str, torch.Tensor]:
    """Read the tensors of a safetensors file (all, or only ``keys``) one at a time, cast as read.

    ``dtype`` is a dtype for all floating tensors, a function ``(key, stored_dtype) -> dtype``, or
    ``None`` to keep the stored dtypes. Tensors kept in their stored dtype are memory-mapped (no
    copy); tensors that are cast are read with plain file reads, so host memory peaks at the loaded
    result plus one tensor, never the mapped file plus its cast copy.
    """
    out: dict[str, torch.Tensor] = {}
    data_start, offsets = _data_offsets(path)
    with safe_open(str(path), framework="pt", device=str(device)) as f, open(path, "rb") as raw:
        for key in f.keys() if keys is None else keys:
            view = f.get_slice(key)
            stored = SAFETENSORS_DTYPES.get(view.get_dtype())
            target = dtype(key, stored) if callable(dtype) and stored is not None else dtype
            if target is None or stored is None or target == stored or not stored.is_floating_point:
                tensor = f.get_tensor(key)
            else:
                tensor = _read_cast(raw, data_start + offsets[key][0], stored, view.get_shape(), target)
                tensor = tensor.to(device)
            out[rename(key) if rename else key] = tensor
    return out


def assign_state_dict(module: torch.nn.Module, state_dict: Mapping[str, torch.Tensor], model_name: str,
                      path: str | os.PathLike) -> torch.nn.Module:
    """Put ``state_dict`` into ``module`` (built on the meta device or not) strictly, without copying.

    Key and shape mismatches raise :class:`CheckpointError` naming the keys.
    """
    expected = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    found = {k: TensorInfo(tuple(v.shape), str(v.dtype)) for k, v in state_dict.items()}
    check_keys(expected, found, model_name, path)
    module.load_state_dict(dict(state_dict), strict=True, assign=True)
    return module

