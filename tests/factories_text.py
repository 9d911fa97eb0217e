"""Tiny random T5 / CLIP text encoders in the layouts users have: Hugging Face folders and single files.

The tokenizers are the tiny ones of the golden fixture (tests/golden_v1/text_encoders/hf/...), so the
vocabulary sizes here match them.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch
from safetensors.torch import save_file
from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

GOLDEN_TEXT = Path(__file__).resolve().parent / "golden_v1" / "text_encoders"
T5_TOKENIZER = GOLDEN_TEXT / "hf" / "google" / "t5-tiny"
CLIP_TOKENIZER = GOLDEN_TEXT / "hf" / "openai" / "clip-tiny"
T5_TOKENIZER_FILES = ("spiece.model", "special_tokens_map.json", "tokenizer_config.json", "added_tokens.json")
CLIP_TOKENIZER_FILES = ("vocab.json", "merges.txt", "special_tokens_map.json", "tokenizer_config.json")


def tiny_t5(seed: int = 0) -> T5EncoderModel:
    """A random 2-layer T5 v1.1-style encoder (gated-gelu, untied) over the tiny tokenizer's 231 ids."""
    torch.manual_seed(seed)
    config = T5Config(vocab_size=231, d_model=32, d_kv=8, d_ff=48, num_layers=2, num_heads=4,
                      feed_forward_proj="gated-gelu", dropout_rate=0.0, tie_word_embeddings=False)
    model = T5EncoderModel(config).eval()
    with torch.no_grad():  # T5's init leaves some weights tiny; spread them so differences show
        for p in model.parameters():
            p.normal_(0.0, 0.5)
    return model


def tiny_clip(seed: int = 0) -> CLIPTextModel:
    """A random CLIP text tower with 64-wide heads (as OpenAI's), over the tiny tokenizer's 634 ids."""
    torch.manual_seed(seed)
    config = CLIPTextConfig(vocab_size=634, hidden_size=128, intermediate_size=192, num_hidden_layers=2,
                            num_attention_heads=2, max_position_embeddings=77, hidden_act="quick_gelu",
                            projection_dim=128, bos_token_id=0, eos_token_id=2, pad_token_id=1)
    return CLIPTextModel(config).eval()


def copy_tokenizer(source: Path, target: Path, names: tuple[str, ...]) -> Path:
    target.mkdir(parents=True, exist_ok=True)
    for name in names:
        shutil.copy(source / name, target / name)
    return target


def write_t5_folder(folder: Path, model: T5EncoderModel, tokenizer: bool = True) -> Path:
    model.save_pretrained(folder, safe_serialization=True)
    if tokenizer:
        copy_tokenizer(T5_TOKENIZER, folder, T5_TOKENIZER_FILES)
    return folder


def write_clip_folder(folder: Path, model: CLIPTextModel, tokenizer: bool = True) -> Path:
    model.save_pretrained(folder, safe_serialization=True)
    if tokenizer:
        copy_tokenizer(CLIP_TOKENIZER, folder, CLIP_TOKENIZER_FILES)
    return folder


def t5_file_state(model: T5EncoderModel) -> dict[str, torch.Tensor]:
    """The keys of ComfyUI's t5xxl_*.safetensors: ``shared.weight`` + ``encoder.*`` (no tied copy)."""
    return {k: v.clone().contiguous() for k, v in model.state_dict().items() if k != "encoder.embed_tokens.weight"}


def write_t5_file(path: Path, model: T5EncoderModel, fp8: str | None = None) -> Path:
    """``fp8``: ``"plain"`` stores float8_e4m3fn weights; ``"scaled"`` adds ComfyUI's ``scale_weight``
    per linear layer and the ``scaled_fp8`` marker."""
    state = t5_file_state(model)
    if fp8 is not None:
        for key in [k for k in state if k.endswith(".weight") and "layer_norm" not in k]:
            weight = state[key].float()
            if fp8 == "scaled" and key.count(".") > 2 and "relative_attention_bias" not in key:
                scale = weight.abs().max() / 448.0
                state[key] = (weight / scale).to(torch.float8_e4m3fn)
                state[key[: -len("weight")] + "scale_weight"] = scale.reshape(())
            else:
                state[key] = weight.to(torch.float8_e4m3fn)
        if fp8 == "scaled":
            state["scaled_fp8"] = torch.empty(0, dtype=torch.float8_e4m3fn)
    save_file(state, str(path))
    return path


def write_clip_file(path: Path, model: CLIPTextModel, extras: bool = True) -> Path:
    """``clip_l.safetensors`` layout: ``text_model.*`` keys (plus the unused extras some files carry)."""
    state = {"text_model." + k: v.clone().contiguous() for k, v in model.state_dict().items()}
    if extras:
        state["text_model.embeddings.position_ids"] = torch.arange(77).reshape(1, 77)
        state["text_projection.weight"] = torch.randn(model.config.hidden_size, model.config.hidden_size)
    save_file(state, str(path))
    return path
