"""Tokenizers that give exactly the token ids of the reference text conditioner.

The reference tokenises T5 prompts with transformers 4.x's slow SentencePiece ``T5Tokenizer(legacy=True)``:
the text is cut at special tokens (``<pad>``, ``</s>``, ``<unk>``, ``<extra_id_N>``), every piece between
them is encoded by SentencePiece on its own (normalise, strip, collapse spaces, prefix "▁"), ``</s>`` is
appended unless the ids already end with it, and the result is truncated and padded to 512.
transformers 5.x no longer has that slow class (``T5Tokenizer`` is the ``tokenizers``-backed one, and the
``tokenizer.json`` ComfyUI ships is the non-legacy variant), so :class:`T5PromptTokenizer` rebuilds the
legacy rules around one of two piece encoders:

* ``spiece.model`` (Hugging Face folders): SentencePiece itself, the reference's own code path;
* ``tokenizer.json`` (e.g. ComfyUI's ``t5_tokenizer``): its Unigram vocabulary and normalisation
  charsmap run in the ``tokenizers`` library with SentencePiece's whitespace rules applied around them
  (tests compare both on a table of tricky prompts).

CLIP uses transformers' ``CLIPTokenizer`` (vocab.json + merges.txt) called as the reference calls it.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import re
from pathlib import Path
from typing import Callable, Sequence

import torch

T5_MAX_LENGTH = 512
CLIP_MAX_LENGTH = 77

_PAD, _EOS, _UNK = "<pad>", "</s>", "<unk>"
_T5_EXTRA_IDS = 100


class TokenizerError(ValueError):
    """Tokenizer files that are missing or not the expected kind; the message says what to change."""


class T5PromptTokenizer:
    """T5 tokenisation with the reference's rules; ``encode_piece`` turns special-token-free text into ids."""

    def __init__(self, encode_piece: Callable[[str], list[int]], special_ids: dict[str, int], source: str):
        for token in (_PAD, _EOS, _UNK):
            if token not in special_ids:
                raise TokenizerError(f"The T5 tokenizer in {source} has no '{token}' token.")
        self._encode_piece = encode_piece
        self.special_ids = dict(special_ids)
        self.pad_id = special_ids[_PAD]
        self.eos_id = special_ids[_EOS]
        self.source = source
        alternatives = sorted(special_ids, key=len, reverse=True)
        self._special_pattern = re.compile("(" + "|".join(re.escape(t) for t in alternatives) + ")")

    @classmethod
    def from_sentencepiece(cls, model_file: str | os.PathLike, extra_ids: int = _T5_EXTRA_IDS) -> "T5PromptTokenizer":
        """The reference path: SentencePiece on ``spiece.model``, sentinels numbered after its pieces."""
        import sentencepiece

        processor = sentencepiece.SentencePieceProcessor()
        try:
            processor.Load(str(model_file))
        except (OSError, RuntimeError) as error:
            raise TokenizerError(f"{model_file} is not a SentencePiece model ({error}).") from None
        size = processor.get_piece_size()
        special = {t: processor.piece_to_id(t) for t in (_PAD, _EOS, _UNK)}
        special = {t: i for t, i in special.items() if i != processor.unk_id() or t == _UNK}
        special.update({f"<extra_id_{i}>": size + extra_ids - 1 - i for i in range(extra_ids)})

        def encode_piece(text: str) -> list[int]:
            return [processor.piece_to_id(p) for p in processor.encode(text, out_type=str)]

        return cls(encode_piece, special, str(model_file))

    @classmethod
    def from_tokenizer_json(cls, path: str | os.PathLike) -> "T5PromptTokenizer":
        """A ``tokenizer.json`` holding a T5 Unigram vocabulary (legacy rules applied, whatever the file's
        pre-tokenizer and post-processor say)."""
        from tokenizers import Tokenizer, normalizers, pre_tokenizers
        from tokenizers.models import Unigram

        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            model = data["model"]
        except (OSError, ValueError, KeyError, TypeError):
            raise TokenizerError(f"{path} is not a tokenizers JSON file.") from None
        if model.get("type") != "Unigram":
            raise TokenizerError(f"{path} is not a T5 tokenizer (its model is {model.get('type')}, not Unigram).")
        charsmap = _find_precompiled_charsmap(data.get("normalizer"))
        if charsmap is None:
            raise TokenizerError(f"{path} has no SentencePiece normalisation map, so it is not a T5 tokenizer.")
        normalizer = normalizers.Precompiled(base64.b64decode(charsmap))
        unigram = Tokenizer(Unigram([(p, s) for p, s in model["vocab"]], model.get("unk_id", 2), False))
        unigram.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always", split=True)
        special = {t["content"]: t["id"] for t in data.get("added_tokens", []) if t.get("special")}

        def encode_piece(text: str) -> list[int]:
            text = re.sub(" +", " ", normalizer.normalize_str(text)).strip(" ")
            return unigram.encode(text, add_special_tokens=False).ids if text else []

        return cls(encode_piece, special, str(path))

    def token_ids(self, text: str, max_length: int = T5_MAX_LENGTH) -> list[int]:
        """Ids of one prompt: pieces, ``</s>`` unless already last, truncated to ``max_length``, unpadded."""
        ids: list[int] = []
        for part in self._special_pattern.split(text):
            if not part:
                continue
            if part in self.special_ids:
                ids.append(self.special_ids[part])
            else:
                ids.extend(self._encode_piece(part))
        ids = ids[: max_length - 1]
        if not ids or ids[-1] != self.eos_id:
            ids.append(self.eos_id)
        return ids

    def token_count(self, text: str) -> int:
        """How many ids the prompt has before truncation (with its ``</s>``), to tell users what is cut."""
        return len(self.token_ids(text, max_length=1 << 30))

    def __call__(self, texts: Sequence[str], max_length: int = T5_MAX_LENGTH) -> torch.Tensor:
        """``[N, max_length]`` int64 ids, right-padded with ``<pad>`` (the reference's ``padding="max_length"``)."""
        out = torch.full((len(texts), max_length), self.pad_id, dtype=torch.long)
        for row, text in enumerate(texts):
            ids = self.token_ids(text, max_length)
            out[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        return out


def _find_precompiled_charsmap(normalizer: dict | None) -> str | None:
    if not isinstance(normalizer, dict):
        return None
    if normalizer.get("type") == "Precompiled":
        return normalizer.get("precompiled_charsmap")
    for child in normalizer.get("normalizers", []) or []:
        found = _find_precompiled_charsmap(child)
        if found is not None:
            return found
    return None


def load_t5_tokenizer(folder: str | os.PathLike) -> T5PromptTokenizer:
    """The T5 tokenizer of a folder: ``spiece.model`` (the reference's) if present, else ``tokenizer.json``."""
    folder = Path(folder)
    if (folder / "spiece.model").is_file():
        return T5PromptTokenizer.from_sentencepiece(folder / "spiece.model", _t5_extra_ids(folder))
    if (folder / "tokenizer.json").is_file():
        return T5PromptTokenizer.from_tokenizer_json(folder / "tokenizer.json")
    raise TokenizerError(
        f"No T5 tokenizer in {folder}: it needs spiece.model (SentencePiece) or tokenizer.json."
    )


def _t5_extra_ids(folder: Path) -> int:
    config = folder / "tokenizer_config.json"
    if config.is_file():
        try:
            return int(json.loads(config.read_text(encoding="utf-8")).get("extra_ids", _T5_EXTRA_IDS))
        except (ValueError, TypeError, AttributeError):
            pass
    return _T5_EXTRA_IDS


def clean_clip_text(text: str) -> str:
    """The text cleaning of the reference's slow CLIP tokenizer (Open-Sora requires ``ftfy``):
    ``ftfy.fix_text`` (curly quotes, ligatures, full-width letters, line separators...) then collapsed
    whitespace. Without ``ftfy`` installed only the whitespace step runs (identical for plain text)."""
    if _ftfy is not None:
        text = _ftfy.fix_text(text)
    return re.sub(r"\s+", " ", text).strip()


try:
    import ftfy as _ftfy
except ImportError:  # optional: plain prompts tokenise identically without it
    _ftfy = None

FTFY_AVAILABLE = _ftfy is not None


class ClipPromptTokenizer:
    """CLIP tokenisation as the reference calls it: truncate and pad to 77 with the pad token.

    transformers 5's ``CLIPTokenizer`` (the ``tokenizers`` backend) gives the reference's ids once the
    text went through :func:`clean_clip_text`, as the reference's slow tokenizer does with ``ftfy``.
    """

    def __init__(self, folder: str | os.PathLike):
        from transformers import CLIPTokenizer

        folder = Path(folder)
        missing = [n for n in ("vocab.json", "merges.txt") if not (folder / n).is_file()]
        if missing:
            raise TokenizerError(f"No CLIP tokenizer in {folder}: {', '.join(missing)} missing.")
        try:
            self._tokenizer = CLIPTokenizer.from_pretrained(str(folder), max_length=CLIP_MAX_LENGTH)
        except (OSError, ValueError) as error:
            raise TokenizerError(f"The CLIP tokenizer in {folder} cannot be read: {error}") from None
        self.source = str(folder)
        if not FTFY_AVAILABLE:
            logging.getLogger(__name__).warning(
                "ftfy is not installed: CLIP prompts with curly quotes, ligatures or full-width characters are "
                "tokenised differently from the Open-Sora reference (pip install ftfy).")

    def token_count(self, text: str) -> int:
        """How many ids the prompt has before truncation (with start and end tokens)."""
        return len(self._tokenizer(clean_clip_text(text), truncation=False, verbose=False)["input_ids"])

    def __call__(self, texts: Sequence[str], max_length: int = CLIP_MAX_LENGTH) -> torch.Tensor:
        """``[N, max_length]`` int64 ids."""
        encoding = self._tokenizer(
            [clean_clip_text(t) for t in texts],
            truncation=True,
            max_length=max_length,
            return_length=False,
            return_overflowing_tokens=False,
            padding="max_length",
            return_tensors="pt",
        )
        return encoding["input_ids"]


def load_clip_tokenizer(folder: str | os.PathLike) -> ClipPromptTokenizer:
    """The CLIP tokenizer (vocab.json + merges.txt) of a folder."""
    return ClipPromptTokenizer(folder)
