"""T5-v1.1-XXL and CLIP-L text encoders: files -> transformers modules + tokenizers -> embeddings.

Two layouts are read for each encoder:

* a Hugging Face folder (``config.json``, ``*.safetensors`` weights, tokenizer files), e.g. the
  ``google/t5-v1_1-xxl/`` and ``openai/clip-vit-large-patch14/`` folders of hpcai-tech/Open-Sora-v2;
* one safetensors file as ComfyUI users keep them for Flux (``t5xxl_fp16.safetensors``,
  ``t5xxl_fp8_e4m3fn.safetensors``, ``clip_l.safetensors``): the architecture is read from the tensor
  shapes; fp8 weights (with or without ComfyUI's per-layer ``scale_weight``) are upcast to the chosen dtype.
  Its tokenizer comes from ``<file stem>_tokenizer/`` next to the file or from a fallback folder
  (inside ComfyUI: the tokenizer files ComfyUI ships).

Models are built on the meta device and receive the file's tensors cast one at a time, so a 9.5 GB
T5-XXL never exists twice in memory. Encoding follows the reference conditioner exactly: T5 ids padded
to 512, no attention mask, ``last_hidden_state``; CLIP ids padded to 77, ``pooler_output``.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Callable, Sequence

import torch
from safetensors import safe_open
from transformers import AttentionInterface, CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

from .checkpoint import (
    CheckpointError,
    TensorInfo,
    check_keys,
    describe_file,
    detect_kind,
    load_tensors,
    read_header,
)
from .tokenizers import (
    CLIP_MAX_LENGTH,
    T5_MAX_LENGTH,
    ClipPromptTokenizer,
    T5PromptTokenizer,
    TokenizerError,
    load_clip_tokenizer,
    load_t5_tokenizer,
)

TOKENIZER_SUFFIX = "_tokenizer"
WEIGHT_EXTENSIONS = (".safetensors", ".sft")
# Keys of ComfyUI's scaled-fp8 files that are folded into the weights or carry no weight.
_SCALE_SUFFIXES = (".scale_weight", ".weight_scale")
_DROPPED_SUFFIXES = (".scale_input", ".input_scale")
_DROPPED_KEYS = {"scaled_fp8", "logit_scale", "text_projection.weight", "text_model.embeddings.position_ids"}


# ------------------------------------------------------------------------------------ attention

def _reference_t5_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0,
                            position_bias=None, **kwargs):
    """T5 attention as transformers 4.x (the reference) computes it: softmax in float32, no scaling."""
    scores = torch.matmul(query, key.transpose(2, 3))
    if scaling is not None and scaling != 1.0:
        scores = scores * scaling
    if position_bias is not None:
        scores = scores + position_bias
    if attention_mask is not None:
        scores = scores + attention_mask
    weights = torch.softmax(scores.float(), dim=-1).type_as(scores)
    output = torch.matmul(weights, value).transpose(1, 2).contiguous()
    return output, weights


T5_ATTENTION = "opensora_t5_reference"
AttentionInterface.register(T5_ATTENTION, _reference_t5_attention)


# -------------------------------------------------------------------------------------- encoders

class _TextEncoder(torch.nn.Module):
    """A transformers encoder with its tokenizer; a plain module so host memory managers (ComfyUI's
    ModelPatcher sets ``.device`` on what it manages) can move it."""

    def __init__(self, model: torch.nn.Module, tokenizer, max_length: int):
        super().__init__()
        self.model = model
        self.tokenizer = tokenizer
        self.max_length = max_length

    def _run(self, texts: Sequence[str]):
        device = next(self.model.parameters()).device
        ids = self.tokenizer(texts, self.max_length).to(device)
        with torch.inference_mode():
            return self.model(input_ids=ids, attention_mask=None, output_hidden_states=False)


class T5TextEncoder(_TextEncoder):
    """T5 encoder + tokenizer; ``encode`` gives the reference's ``[N, 512, d_model]`` hidden states."""

    def __init__(self, model: T5EncoderModel, tokenizer: T5PromptTokenizer, max_length: int = T5_MAX_LENGTH):
        super().__init__(model, tokenizer, max_length)

    def encode(self, texts: Sequence[str]) -> torch.Tensor:
        return self._run(texts).last_hidden_state


class ClipTextEncoder(_TextEncoder):
    """CLIP text encoder + tokenizer; ``encode`` gives the reference's ``[N, hidden]`` pooled vectors."""

    def __init__(self, model: CLIPTextModel, tokenizer: ClipPromptTokenizer, max_length: int = CLIP_MAX_LENGTH):
        super().__init__(model, tokenizer, max_length)

    def encode(self, texts: Sequence[str]) -> torch.Tensor:
        return self._run(texts).pooler_output


# ------------------------------------------------------------------------------------ weight files

def _weight_files(folder: Path) -> list[Path]:
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        weight_map = json.loads(index.read_text(encoding="utf-8")).get("weight_map", {})
        return [folder / name for name in sorted(set(weight_map.values()))]
    files = sorted(p for p in folder.iterdir() if p.suffix in WEIGHT_EXTENSIONS and p.is_file())
    if not files:
        pickled = [p.name for p in folder.iterdir() if p.suffix in (".bin", ".pt", ".pth", ".ckpt")]
        hint = (f" It has {', '.join(pickled)}: this pack reads only .safetensors (pick the single-file "
                "t5xxl_fp16.safetensors / clip_l.safetensors instead, or convert the folder).") if pickled else ""
        raise CheckpointError(f"{folder} has no .safetensors weights.{hint}")
    return files


def _headers(files: Sequence[Path]) -> dict[str, tuple[Path, TensorInfo]]:
    found: dict[str, tuple[Path, TensorInfo]] = {}
    for path in files:
        for key, info in read_header(path).items():
            found[key] = (path, info)
    return found


def _read_state_dict(found: dict[str, tuple[Path, TensorInfo]], rename: dict[str, str],
                     dtype_of: Callable[[str], torch.dtype]) -> dict[str, torch.Tensor]:
    """Read the renamed tensors file by file, cast one at a time; fp8 scales are folded into weights."""
    scales = {key[: -len(s)] + ".weight": key for key in found for s in _SCALE_SUFFIXES if key.endswith(s)}
    by_file: dict[Path, list[str]] = {}
    for key in rename:
        by_file.setdefault(found[key][0], []).append(key)
    out: dict[str, torch.Tensor] = {}
    for path, keys in by_file.items():
        # scaled fp8 weights are read as stored and cast after their scale is folded in
        tensors = load_tensors(path, dtype=lambda key, stored: stored if key in scales else dtype_of(rename[key]),
                               keys=keys)
        for key in keys:
            tensor = tensors.pop(key)
            if key in scales:
                scale = _read_tensor(found[scales[key]][0], scales[key])
                tensor = (tensor.to(torch.float32) * scale.to(torch.float32)).to(dtype_of(rename[key]))
            out[rename[key]] = tensor
    return out


def _read_tensor(path: Path, key: str) -> torch.Tensor:
    with safe_open(str(path), framework="pt") as f:
        return f.get_tensor(key)


def _is_weight_key(key: str) -> bool:
    return key not in _DROPPED_KEYS and not key.endswith(_SCALE_SUFFIXES + _DROPPED_SUFFIXES)


# ---------------------------------------------------------------------------------------------- T5

_T5_BLOCK = re.compile(r"^encoder\.block\.(\d+)\.")


def _t5_key(key: str) -> str | None:
    """Our key for a T5 checkpoint key; ``None`` for keys T5EncoderModel does not use (decoder, lm head)."""
    if key.startswith(("decoder.", "lm_head.")) or not _is_weight_key(key):
        return None
    return key


def _t5_config_from_shapes(found: dict[str, tuple[Path, TensorInfo]], path: Path) -> T5Config:
    shape = {k: v[1].shape for k, v in found.items()}
    embed = shape.get("shared.weight") or shape.get("encoder.embed_tokens.weight")
    bias = shape.get("encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight")
    query = shape.get("encoder.block.0.layer.0.SelfAttention.q.weight")
    if embed is None or bias is None or query is None:
        raise CheckpointError(f"{path.name} is not a T5 encoder: {describe_file(found)} "
                              "(no shared.weight / encoder.block.0 attention weights).")
    gated = "encoder.block.0.layer.1.DenseReluDense.wi_0.weight" in shape
    ff = shape["encoder.block.0.layer.1.DenseReluDense." + ("wi_0" if gated else "wi") + ".weight"]
    num_layers = 1 + max(int(m.group(1)) for k in shape if (m := _T5_BLOCK.match(k)))
    heads = bias[1]
    return T5Config(
        vocab_size=embed[0], d_model=embed[1], d_kv=query[0] // heads, d_ff=ff[0], num_layers=num_layers,
        num_heads=heads, relative_attention_num_buckets=bias[0], relative_attention_max_distance=128,
        feed_forward_proj="gated-gelu" if gated else "relu", layer_norm_epsilon=1e-6, dropout_rate=0.0,
        tie_word_embeddings=False, is_encoder_decoder=False, use_cache=False,
        pad_token_id=0, eos_token_id=1, decoder_start_token_id=0,
    )


def _build_t5(config: T5Config, found: dict[str, tuple[Path, TensorInfo]], dtype: torch.dtype,
              path: Path) -> T5EncoderModel:
    config._attn_implementation = T5_ATTENTION
    with torch.device("meta"):
        model = T5EncoderModel(config)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items() if k != "encoder.embed_tokens.weight"}
    rename = {k: new for k in found if (new := _t5_key(k)) is not None}
    if "shared.weight" not in rename.values():
        rename = {k: ("shared.weight" if v == "encoder.embed_tokens.weight" else v) for k, v in rename.items()}
    rename = {k: v for k, v in rename.items() if v != "encoder.embed_tokens.weight"}
    check_keys(expected, {v: found[k][1] for k, v in rename.items()}, "a T5 text encoder", path)
    # transformers keeps the feed-forward output projection in fp32 when loading T5 in fp16.
    keep_fp32 = dtype == torch.float16

    def dtype_of(key: str) -> torch.dtype:
        return torch.float32 if keep_fp32 and ".DenseReluDense.wo." in key else dtype

    state = _read_state_dict(found, rename, dtype_of)
    state["encoder.embed_tokens.weight"] = state["shared.weight"]  # tied to the shared embedding
    model.load_state_dict(state, strict=True, assign=True)
    model.encoder.embed_tokens = model.shared
    return model.eval().requires_grad_(False)


def load_t5(path: str | os.PathLike, dtype: torch.dtype, fallback_tokenizer: str | os.PathLike | None = None
            ) -> T5TextEncoder:
    """Load a T5 encoder from a Hugging Face folder or a single safetensors file (see module docs)."""
    path = Path(path)
    if path.is_dir():
        config = _read_config(path)
        if config.get("model_type") != "t5":
            raise CheckpointError(f"{path.name} is not a T5 folder: its config.json says model_type "
                                  f"'{config.get('model_type')}'.")
        t5_config = T5Config.from_dict({k: v for k, v in config.items() if k != "torch_dtype"})
        found = _headers(_weight_files(path))
        _require_kind(found, "t5", "a T5 text encoder", path)
        return T5TextEncoder(_build_t5(t5_config, found, dtype, path), _folder_tokenizer(path, load_t5_tokenizer))
    found = _headers([path])
    _require_kind(found, "t5", "a T5 text encoder", path)
    tokenizer = _file_tokenizer(path, fallback_tokenizer, load_t5_tokenizer, "T5")
    return T5TextEncoder(_build_t5(_t5_config_from_shapes(found, path), found, dtype, path), tokenizer)


# -------------------------------------------------------------------------------------------- CLIP

_CLIP_LAYER = re.compile(r"^encoder\.layers\.(\d+)\.")
_CLIP_PREFIX = re.compile(r"^(?:.*\.)?text_model\.")


def _clip_key(key: str) -> str | None:
    """Our key (transformers 5's ``CLIPTextModel`` has no ``text_model.`` level) or ``None`` if unused."""
    if (not _is_weight_key(key) or key.endswith("embeddings.position_ids")
            or key.startswith(("text_projection.", "vision_model.", "visual_projection."))):
        return None
    return _CLIP_PREFIX.sub("", key, count=1)


def _clip_config_from_shapes(shape: dict[str, tuple[int, ...]], path: Path) -> CLIPTextConfig:
    embed = shape.get("embeddings.token_embedding.weight")
    positions = shape.get("embeddings.position_embedding.weight")
    fc1 = shape.get("encoder.layers.0.mlp.fc1.weight")
    if embed is None or positions is None or fc1 is None:
        raise CheckpointError(f"{path.name} is not a CLIP text encoder (no text_model.embeddings / "
                              "encoder.layers.0 weights).")
    num_layers = 1 + max(int(m.group(1)) for k in shape if (m := _CLIP_LAYER.match(k)))
    hidden = embed[1]
    if hidden % 64:
        raise CheckpointError(f"{path.name}: CLIP width {hidden} is not a multiple of 64 (the head size of "
                              "OpenAI CLIP text towers); use the Hugging Face folder with its config.json.")
    # Values of openai/clip-vit-large-patch14's text config; heads follow from the 64-wide heads.
    return CLIPTextConfig(
        vocab_size=embed[0], hidden_size=hidden, intermediate_size=fc1[0], num_hidden_layers=num_layers,
        num_attention_heads=hidden // 64, max_position_embeddings=positions[0], hidden_act="quick_gelu",
        layer_norm_eps=1e-5, projection_dim=hidden, bos_token_id=0, eos_token_id=2, pad_token_id=1,
    )


def _build_clip(config: CLIPTextConfig, found: dict[str, tuple[Path, TensorInfo]], dtype: torch.dtype,
                path: Path) -> CLIPTextModel:
    with torch.device("meta"):
        model = CLIPTextModel(config)
    rename = {k: new for k in found if (new := _clip_key(k)) is not None}
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    check_keys(expected, {v: found[k][1] for k, v in rename.items()}, "a CLIP text encoder", path)
    state = _read_state_dict(found, rename, lambda key: dtype)
    model.load_state_dict(state, strict=True, assign=True)
    model.embeddings.position_ids = torch.arange(config.max_position_embeddings).expand((1, -1))
    return model.eval().requires_grad_(False)


def load_clip(path: str | os.PathLike, dtype: torch.dtype, fallback_tokenizer: str | os.PathLike | None = None
              ) -> ClipTextEncoder:
    """Load a CLIP text encoder from a Hugging Face folder or a single safetensors file."""
    path = Path(path)
    if path.is_dir():
        config = _read_config(path)
        if config.get("model_type") == "clip":  # a full CLIP folder: take its text tower
            text = {**(config.get("text_config") or {}), **(config.get("text_config_dict") or {})}
            config = {**text, "model_type": "clip_text_model"}
        if config.get("model_type") != "clip_text_model":
            raise CheckpointError(f"{path.name} is not a CLIP folder: its config.json says model_type "
                                  f"'{config.get('model_type')}'.")
        clip_config = CLIPTextConfig.from_dict({k: v for k, v in config.items() if k != "torch_dtype"})
        found = _headers(_weight_files(path))
        _require_kind(found, "clip", "a CLIP text encoder", path)
        encoder = _build_clip(clip_config, found, dtype, path)
        return ClipTextEncoder(encoder, _folder_tokenizer(path, load_clip_tokenizer))
    found = _headers([path])
    _require_kind(found, "clip", "a CLIP text encoder", path)
    shapes = {new: found[k][1].shape for k in found if (new := _clip_key(k)) is not None}
    tokenizer = _file_tokenizer(path, fallback_tokenizer, load_clip_tokenizer, "CLIP")
    return ClipTextEncoder(_build_clip(_clip_config_from_shapes(shapes, path), found, dtype, path), tokenizer)


# ------------------------------------------------------------------------------------------ shared

def _read_config(folder: Path) -> dict:
    config = folder / "config.json"
    if not config.is_file():
        raise CheckpointError(f"{folder} is a folder without config.json, so it is not a Hugging Face model "
                              "folder. Pick the folder that holds config.json and the weights.")
    try:
        return json.loads(config.read_text(encoding="utf-8"))
    except ValueError:
        raise CheckpointError(f"{config} is not valid JSON.") from None


def _require_kind(found: dict, kind: str, name: str, path: Path) -> None:
    if kind == "clip":  # transformers 5 saves CLIPTextModel without the "text_model." level
        keys = {_clip_key(k) for k in found}
        ok = "embeddings.token_embedding.weight" in keys and any(k.startswith("encoder.layers.0.") for k in keys
                                                                  if k)
    else:
        ok = (detect_kind(found) or ("",))[0] == kind
    if not ok:
        raise CheckpointError(f"{path.name} is not {name}: {describe_file(found)}.")


def _folder_tokenizer(folder: Path, load):
    try:
        return load(folder)
    except TokenizerError as error:
        raise TokenizerError(f"{error} A Hugging Face folder must carry its own tokenizer files.") from None


def tokenizer_folder_for(weights: str | os.PathLike) -> Path:
    """Where a single-file encoder's own tokenizer goes: ``<file stem>_tokenizer/`` next to the file."""
    weights = Path(weights)
    return weights.with_name(weights.stem + TOKENIZER_SUFFIX)


def _file_tokenizer(path: Path, fallback: str | os.PathLike | None, load, kind: str):
    own = tokenizer_folder_for(path)
    if own.is_dir():
        return load(own)
    if fallback is not None and Path(fallback).is_dir():
        return load(fallback)
    raise TokenizerError(
        f"No {kind} tokenizer for {path.name}: put the tokenizer files in {own.name}/ next to it "
        "(or run inside ComfyUI, whose own tokenizer files are used)."
    )


def load_text_encoders(t5_path: str | os.PathLike, clip_path: str | os.PathLike, dtype: torch.dtype,
                       t5_fallback_tokenizer: str | os.PathLike | None = None,
                       clip_fallback_tokenizer: str | os.PathLike | None = None
                       ) -> tuple[T5TextEncoder, ClipTextEncoder]:
    """Both encoders; a T5 offered as CLIP (or the reverse) is refused by the key check."""
    t5 = load_t5(t5_path, dtype, t5_fallback_tokenizer)
    clip = load_clip(clip_path, dtype, clip_fallback_tokenizer)
    return t5, clip


def list_encoder_choices(roots: Sequence[Path], max_depth: int = 4) -> list[str]:
    """Names (``/``-separated, relative to a root) of single weight files and Hugging Face folders.

    Files inside a model folder or a ``*_tokenizer`` folder are not listed on their own.
    """
    names: set[str] = set()

    def walk(root: Path, folder: Path, depth: int) -> None:
        for entry in sorted(folder.iterdir()):
            if entry.name.startswith("."):
                continue
            if entry.is_dir():
                if (entry / "config.json").is_file():
                    names.add(entry.relative_to(root).as_posix())
                elif depth < max_depth and not entry.name.endswith(TOKENIZER_SUFFIX):
                    walk(root, entry, depth + 1)
            elif entry.suffix.lower() in WEIGHT_EXTENSIONS:
                names.add(entry.relative_to(root).as_posix())

    for root in roots:
        if root.is_dir():
            walk(root, root, 1)
    return sorted(names)
