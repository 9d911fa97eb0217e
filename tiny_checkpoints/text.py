"""Tiny T5 v1.1 / CLIP text encoders and their tokenizers, in the layouts users have.

Single files as ComfyUI ships them (``t5xxl_fp16.safetensors``: ``shared.weight`` + ``encoder.*``;
``clip_l.safetensors``: ``text_model.*``), with a tokenizer folder beside each, or any model saved as a
Hugging Face folder with ``save_pretrained``.
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import torch
from safetensors.torch import save_file
from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

from .seeding import build_seeded

# Single-file loaders read head counts off the shapes assuming CLIP-L's 64-wide heads.
CLIP_HEAD_WIDTH = 64
TINY_T5_WIDTH = 32
TINY_CLIP_WIDTH = 64
T5_EXTRA_IDS = 100
TOKENIZER_SUFFIX = "_tokenizer"  # a single-file encoder's tokenizer: "<file stem>_tokenizer/" beside it

_TOKENIZER_WORDS = (
    "a an the of in on at and with through over under into red blue green white black small big tiny old "
    "young fox cat dog bird horse panda rides runs walks jumps flies swims crosses calm lake sea river forest "
    "snow rain sun night day city street boat sailboat bicycle camera slowly quickly moving water light sky "
    "FPS motion score video cinematic shot close up wide view"
).split()
_TOKENIZER_SYMBOLS = "0 1 2 3 4 5 6 7 8 9 . , ! ? : ; ' \" - ( ) / &"


def _tokenizer_corpus() -> list[str]:
    words = list(_TOKENIZER_WORDS)
    lines = [" ".join(words[i:] + words[:i]) for i in range(0, len(words), 3)]
    return lines + [_TOKENIZER_SYMBOLS, _TOKENIZER_SYMBOLS.upper()]


def write_tiny_t5_tokenizer(folder: str | os.PathLike, vocab_size: int = 120) -> int:
    """A SentencePiece unigram tokenizer trained here on a few English words, with T5's special ids
    (pad 0, ``</s>`` 1, ``<unk>`` 2, 100 sentinels after the pieces). Returns the model's vocab size."""
    import sentencepiece

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(_tokenizer_corpus()), model_writer=model, vocab_size=vocab_size,
        model_type="unigram", pad_id=0, eos_id=1, unk_id=2, bos_id=-1, pad_piece="<pad>", eos_piece="</s>",
        unk_piece="<unk>", character_coverage=1.0, hard_vocab_limit=False, num_threads=1, minloglevel=2,
    )
    (folder / "spiece.model").write_bytes(model.getvalue())
    pieces = sentencepiece.SentencePieceProcessor(model_proto=model.getvalue()).get_piece_size()
    config = {"extra_ids": T5_EXTRA_IDS, "eos_token": "</s>", "pad_token": "<pad>", "unk_token": "<unk>",
              "model_max_length": 512, "legacy": True, "tokenizer_class": "T5Tokenizer"}
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=1), encoding="utf-8")
    return pieces + T5_EXTRA_IDS


def _byte_symbols() -> list[str]:
    """CLIP's (GPT-2's) printable stand-in character for each of the 256 byte values."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("\u00a1"), ord("\u00ac") + 1),
                 *range(ord("\u00ae"), ord("\u00ff") + 1)]
    symbols, extra = {}, 0
    for byte in range(256):
        if byte in printable:
            symbols[byte] = chr(byte)
        else:
            symbols[byte] = chr(256 + extra)
            extra += 1
    return [symbols[b] for b in range(256)]


def write_tiny_clip_tokenizer(folder: str | os.PathLike) -> int:
    """A byte-level BPE tokenizer in CLIP's file format (vocab.json + merges.txt) with every byte, a few
    merges learned from letter pairs of common words, and the start/end tokens last (so the end token
    has the highest id, as in CLIP). Returns the vocab size."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    symbols = _byte_symbols()
    vocab = symbols + [s + "</w>" for s in symbols]
    merges: list[tuple[str, str]] = []
    for word in sorted({w.lower() for w in _TOKENIZER_WORDS if len(w) >= 2})[:40]:
        pair = (word[0], word[1] if len(word) > 2 else word[1] + "</w>")
        if pair not in merges:
            merges.append(pair)
            vocab.append(pair[0] + pair[1])
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges), encoding="utf-8")
    config = {"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>",
              "unk_token": "<|endoftext|>", "model_max_length": 77, "tokenizer_class": "CLIPTokenizer"}
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=1), encoding="utf-8")
    return len(vocab)


def tiny_t5_encoder(vocab_size: int, seed: int = 0) -> T5EncoderModel:
    """A random 2-layer T5 v1.1-style encoder (gated-gelu, untied embeddings). T5's initialisation leaves
    some weights tiny; all are drawn from N(0, 0.5²) so that differences show."""
    config = T5Config(vocab_size=vocab_size, d_model=TINY_T5_WIDTH, d_kv=8, d_ff=48, num_layers=2, num_heads=4,
                      feed_forward_proj="gated-gelu", dropout_rate=0.0, tie_word_embeddings=False)

    def build() -> T5EncoderModel:
        model = T5EncoderModel(config).eval()
        with torch.no_grad():
            for param in model.parameters():
                param.normal_(0.0, 0.5)
        return model

    return build_seeded(build, seed)


def tiny_clip_encoder(vocab_size: int, bos_id: int, eos_id: int, pad_id: int, width: int = TINY_CLIP_WIDTH,
                      intermediate_size: int = 2 * TINY_CLIP_WIDTH, seed: int = 0) -> CLIPTextModel:
    """A random 2-layer CLIP text tower with CLIP-L's 64-wide heads and the tokenizer's special ids."""
    config = CLIPTextConfig(vocab_size=vocab_size, hidden_size=width, intermediate_size=intermediate_size,
                            num_hidden_layers=2, num_attention_heads=width // CLIP_HEAD_WIDTH,
                            max_position_embeddings=77, hidden_act="quick_gelu", projection_dim=width,
                            bos_token_id=bos_id, eos_token_id=eos_id, pad_token_id=pad_id)
    return build_seeded(lambda: CLIPTextModel(config).eval(), seed)


def t5_file_state(model: T5EncoderModel) -> dict[str, torch.Tensor]:
    """The keys of ComfyUI's t5xxl_*.safetensors: ``shared.weight`` + ``encoder.*`` (no tied copy)."""
    return {k: v.clone().contiguous() for k, v in model.state_dict().items() if k != "encoder.embed_tokens.weight"}


def write_t5_file(path: str | os.PathLike, model: T5EncoderModel, fp8: str | None = None) -> Path:
    """``model`` as one T5 file. ``fp8``: ``"plain"`` stores float8_e4m3fn weights; ``"scaled"`` adds
    ComfyUI's ``scale_weight`` per linear layer and the ``scaled_fp8`` marker."""
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
    return Path(path)


def write_clip_file(path: str | os.PathLike, model: CLIPTextModel, extras: bool = True) -> Path:
    """``model`` in the ``clip_l.safetensors`` layout: ``text_model.*`` keys, plus (``extras``) the unused
    position ids and text projection some files carry."""
    state = {"text_model." + k: v.clone().contiguous() for k, v in model.state_dict().items()}
    if extras:
        state["text_model.embeddings.position_ids"] = torch.arange(77).reshape(1, 77)
        state["text_projection.weight"] = torch.randn(model.config.hidden_size, model.config.hidden_size)
    save_file(state, str(path))
    return Path(path)


def write_tiny_t5(path: str | os.PathLike, seed: int = 0) -> Path:
    """A tiny T5 encoder file with its own tokenizer in ``<stem>_tokenizer/`` beside it."""
    path = Path(path)
    vocab_size = write_tiny_t5_tokenizer(path.with_name(path.stem + TOKENIZER_SUFFIX))
    return write_t5_file(path, tiny_t5_encoder(vocab_size, seed))


def write_tiny_clip(path: str | os.PathLike, seed: int = 0) -> Path:
    """A tiny CLIP text tower file (no extras) with its own tokenizer in ``<stem>_tokenizer/`` beside it;
    the tokenizer's start and end tokens are its last two ids."""
    path = Path(path)
    vocab_size = write_tiny_clip_tokenizer(path.with_name(path.stem + TOKENIZER_SUFFIX))
    model = tiny_clip_encoder(vocab_size, bos_id=vocab_size - 2, eos_id=vocab_size - 1, pad_id=vocab_size - 1,
                              seed=seed)
    return write_clip_file(path, model, extras=False)
