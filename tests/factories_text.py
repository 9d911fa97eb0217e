"""Text-encoder test helpers bound to the golden fixture's tiny tokenizers (tests/golden_v1/text_encoders/hf/...).

The encoders and file writers come from the pack's ``tiny_checkpoints.text``; here they get the
vocabularies and special ids of the golden tokenizers.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from transformers import CLIPTextModel, T5EncoderModel

from comfyui_opensora.tiny_checkpoints.text import (  # noqa: F401  (the writers are re-exported for the tests)
    tiny_clip_encoder,
    tiny_t5_encoder,
    write_clip_file,
    write_t5_file,
)

GOLDEN_TEXT = Path(__file__).resolve().parent / "golden_v1" / "text_encoders"
T5_TOKENIZER = GOLDEN_TEXT / "hf" / "google" / "t5-tiny"
CLIP_TOKENIZER = GOLDEN_TEXT / "hf" / "openai" / "clip-tiny"
T5_TOKENIZER_FILES = ("spiece.model", "special_tokens_map.json", "tokenizer_config.json", "added_tokens.json")
CLIP_TOKENIZER_FILES = ("vocab.json", "merges.txt", "special_tokens_map.json", "tokenizer_config.json")


def tiny_t5(seed: int = 0) -> T5EncoderModel:
    """A random tiny T5 encoder over the golden tokenizer's 231 ids."""
    return tiny_t5_encoder(vocab_size=231, seed=seed)


def tiny_clip(seed: int = 0) -> CLIPTextModel:
    """A random tiny CLIP text tower (two 64-wide heads) over the golden tokenizer's 634 ids."""
    return tiny_clip_encoder(vocab_size=634, bos_id=0, eos_id=2, pad_id=1, width=128, intermediate_size=192, seed=seed)


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
