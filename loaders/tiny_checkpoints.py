"""Tiny random checkpoints in the official file formats, for install checks (``--smoke``) and tests.

Each writer builds the pack's own module with a tiny configuration and saves its state dict under the
official key layout, so the loaders read these files exactly like the released ones: nothing else in
the pipeline knows they are tiny. Outputs of such models are noise.

:func:`write_tiny_model_folder` lays out a whole ComfyUI-style ``models`` folder with the file names
the example workflows use.
"""

from __future__ import annotations

import io
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from safetensors.torch import save_file

from ..models.dc_ae import DCAEConfig, VideoDCAE
from ..models.flux_ae import FluxAEConfig, FluxImageAE
from ..models.hunyuan_vae import HunyuanVAEConfig, HunyuanVideoVAE
from ..models.mmdit import MMDiT, MMDiTConfig
from ..models.taehv import TinyDecoderConfig, TinyVideoDecoder

# Tiny text encoders. Single-file loaders read head counts off the shapes assuming CLIP-L's 64-wide heads,
# so the CLIP tower is one 64-wide head.
TINY_T5_WIDTH = 32
TINY_CLIP_WIDTH = 64
T5_EXTRA_IDS = 100

# The released video model's flags (split q/k/v, cond_in, rotate-half RoPE) with tiny sizes. Text widths
# match the tiny text encoders; head dim 16 gives RoPE axes (4, 6, 6).
TINY_MMDIT = MMDiTConfig(
    in_channels=64, vec_in_dim=TINY_CLIP_WIDTH, context_in_dim=TINY_T5_WIDTH, hidden_size=64, num_heads=4,
    depth=2, depth_single_blocks=2, axes_dim=(4, 6, 6),
)
# The high-compression model: Video DC-AE latents (128 channels), patch size 1.
TINY_MMDIT_DC_AE = TINY_MMDIT.with_changes(in_channels=128, patch_size=1)
# HunyuanVideo VAE with the released layout (4 blocks: 8x spatial, 4x temporal) and narrow widths.
TINY_HUNYUAN_VAE = HunyuanVAEConfig(block_out_channels=(8, 16, 16, 16), layers_per_block=1, norm_num_groups=4)
# Video DC-AE with the released structure (6 stages: 32x spatial, 4x temporal, 128 latent channels). The
# last stage is as wide as the latent: the channel-averaging shortcuts need width >= latent channels.
TINY_DC_AE = DCAEConfig(
    latent_channels=128,
    encoder_widths=(8, 16, 16, 32, 64, 128),
    encoder_depths=(1, 1, 1, 1, 1, 1),
    decoder_widths=(8, 16, 16, 32, 64, 128),
    decoder_depths=(1, 1, 1, 1, 1, 1),
)

# Flux-dev's flags (guidance embedding, fused q/k/v, interleaved RoPE, no image condition input) for the
# t2i2v first frame, with the tiny text widths.
TINY_FLUX_MMDIT = TINY_MMDIT.with_changes(
    guidance_embed=True, cond_embed=False, fused_qkv=True, rope_layout="interleaved", depth=1, depth_single_blocks=1,
)
# Flux's image autoencoder with the released structure (4 levels, 2 blocks, 16 latent channels), narrow
# (32 channels: the GroupNorms have 32 groups, which the file cannot say).
TINY_FLUX_AE = FluxAEConfig(block_out_channels=(32, 32, 32, 32))
# TAEHV's preview decoder with the released layers and time strides, narrow.
TINY_TAEHV = TinyDecoderConfig(widths=(16, 8, 8, 8))

# File and folder names the example workflows expect (the released names).
MMDIT_FILE = "Open_Sora_v2.safetensors"
MMDIT_DC_AE_FILE = "Open_Sora_v2_Video_DC_AE.safetensors"
HUNYUAN_VAE_FILE = "hunyuan_vae.safetensors"
DC_AE_FILE = "F32T4C128_AE.safetensors"
T5_FILE = "t5xxl_fp16.safetensors"
CLIP_FILE = "clip_l.safetensors"
FLUX_FILE = "flux1-dev.safetensors"
FLUX_AE_FILE = "flux1-dev-ae.safetensors"
TAEHV_FILE = "taehv.safetensors"  # in vae_approx/
LORA_FOLDER = "open_sora_v2_lora"  # a PEFT adapter folder in loras/ (the LoRA example workflow)
TOKENIZER_SUFFIX = "_tokenizer"  # a single-file encoder's tokenizer: "<file stem>_tokenizer/" beside it


def _seeded_state_dict(build: Callable[[], torch.nn.Module], seed: int) -> dict[str, torch.Tensor]:
    """State dict of ``build()`` created under ``seed`` without touching the global RNG."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        module = build()
    return {key: value.detach().contiguous() for key, value in module.state_dict().items()}


def write_tiny_mmdit(path: str | os.PathLike, config: MMDiTConfig = TINY_MMDIT, seed: int = 0) -> Path:
    """A tiny MMDiT under the official keys (no metadata, like ``Open_Sora_v2.safetensors``)."""
    tensors = _seeded_state_dict(lambda: MMDiT(config), seed)
    save_file(tensors, str(path))
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
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        module = FluxImageAE(config)
    save_file(flux_ae_file_tensors(module), str(path))
    return Path(path)


def write_tiny_lora(folder: str | os.PathLike, config: MMDiTConfig = TINY_MMDIT, rank: int = 2, seed: int = 0,
                    targets: tuple[str, ...] = ("img_attn.q_proj", "img_attn.v_proj", "linear2")) -> Path:
    """A PEFT LoRA folder (``adapter_config.json`` + ``adapter_model.safetensors``, the layout peft's
    ``save_pretrained`` writes) adapting every block module whose name ends with one of ``targets``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with torch.device("meta"):  # shapes only
        names = {n: m for n, m in MMDiT(config).named_modules() if isinstance(m, torch.nn.Linear) and n.endswith(targets)}
    generator = torch.Generator().manual_seed(seed)
    tensors = {}
    for name, linear in sorted(names.items()):
        prefix = f"base_model.model.{name}"
        tensors[f"{prefix}.lora_A.weight"] = 0.3 * torch.randn(rank, linear.in_features, generator=generator)
        tensors[f"{prefix}.lora_B.weight"] = 0.3 * torch.randn(linear.out_features, rank, generator=generator)
    save_file(tensors, str(folder / "adapter_model.safetensors"))
    settings = {"peft_type": "LORA", "r": rank, "lora_alpha": 2 * rank, "lora_dropout": 0.0, "bias": "none",
                "target_modules": sorted(set(targets)), "task_type": None}
    (folder / "adapter_config.json").write_text(json.dumps(settings, indent=2), encoding="utf-8")
    return folder


def write_tiny_hunyuan_vae(path: str | os.PathLike, config: HunyuanVAEConfig = TINY_HUNYUAN_VAE,
                           seed: int = 0) -> Path:
    """A tiny HunyuanVideo causal VAE under the official keys of ``hunyuan_vae.safetensors``."""
    tensors = _seeded_state_dict(lambda: HunyuanVideoVAE(config), seed)
    save_file(tensors, str(path))
    return Path(path)


def write_tiny_taehv(path: str | os.PathLike, config: TinyDecoderConfig = TINY_TAEHV, seed: int = 0) -> Path:
    """A tiny TAEHV preview decoder under the released ``taehv.safetensors`` decoder keys (no encoder)."""
    save_file(_seeded_state_dict(lambda: TinyVideoDecoder(config), seed), str(path))
    return Path(path)


def write_tiny_dc_ae(path: str | os.PathLike, config: DCAEConfig = TINY_DC_AE, seed: int = 0) -> Path:
    """A tiny Video DC-AE under the official keys of ``F32T4C128_AE.safetensors``."""
    tensors = _seeded_state_dict(lambda: VideoDCAE(config), seed)
    save_file(tensors, str(path))
    return Path(path)


# ------------------------------------------------------------------------------------ text encoders

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


def write_tiny_t5(path: str | os.PathLike, seed: int = 0) -> Path:
    """A tiny T5 v1.1 encoder as one file in the layout of ``t5xxl_fp16.safetensors`` (``shared.weight`` +
    ``encoder.*``), with its tokenizer in ``<stem>_tokenizer/`` beside it."""
    from transformers import T5Config, T5EncoderModel

    path = Path(path)
    vocab_size = write_tiny_t5_tokenizer(path.with_name(path.stem + TOKENIZER_SUFFIX))
    config = T5Config(vocab_size=vocab_size, d_model=TINY_T5_WIDTH, d_kv=8, d_ff=48, num_layers=2, num_heads=4,
                      feed_forward_proj="gated-gelu", dropout_rate=0.0, tie_word_embeddings=False)
    tensors = _seeded_state_dict(lambda: T5EncoderModel(config), seed)
    tensors.pop("encoder.embed_tokens.weight", None)  # tied to shared.weight; the released files omit it
    save_file(tensors, str(path))
    return path


def write_tiny_clip(path: str | os.PathLike, seed: int = 0) -> Path:
    """A tiny CLIP text tower as one file in the layout of ``clip_l.safetensors`` (``text_model.*``), with
    its tokenizer in ``<stem>_tokenizer/`` beside it."""
    from transformers import CLIPTextConfig, CLIPTextModel

    path = Path(path)
    vocab_size = write_tiny_clip_tokenizer(path.with_name(path.stem + TOKENIZER_SUFFIX))
    config = CLIPTextConfig(vocab_size=vocab_size, hidden_size=TINY_CLIP_WIDTH, intermediate_size=128,
                            num_hidden_layers=2, num_attention_heads=1, max_position_embeddings=77,
                            hidden_act="quick_gelu", projection_dim=TINY_CLIP_WIDTH, bos_token_id=vocab_size - 2,
                            eos_token_id=vocab_size - 1, pad_token_id=vocab_size - 1)
    tensors = _seeded_state_dict(lambda: CLIPTextModel(config), seed)
    save_file({"text_model." + k: v for k, v in tensors.items()}, str(path))
    return path


@dataclass(frozen=True)
class TinyModelFolder:
    """Where :func:`write_tiny_model_folder` put each file (names relative to their model folder)."""

    root: Path
    files: dict[str, str]


def write_tiny_model_folder(root: str | os.PathLike, what: str = "t2v", seed: int = 0) -> TinyModelFolder:
    """Write tiny models for a workflow family into a ComfyUI ``models`` folder layout under ``root``.

    ``what``: ``"t2v"`` / ``"i2v"`` (video MMDiT, Hunyuan VAE, T5 and CLIP files with tokenizers),
    ``"t2i2v"`` (adds the Flux-dev transformer and the Flux AE) or ``"high_compression"`` (adds those and
    the DC-AE MMDiT and the Video DC-AE).
    """
    if what not in ("t2v", "i2v", "t2i2v", "high_compression"):
        raise ValueError(f"Unknown model family '{what}'; choose t2v, i2v, t2i2v or high_compression.")
    root = Path(root)
    for folder in ("diffusion_models", "vae", "text_encoders"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    files: dict[str, str] = {}
    write_tiny_mmdit(root / "diffusion_models" / MMDIT_FILE, TINY_MMDIT, seed)
    files["mmdit"] = MMDIT_FILE
    write_tiny_hunyuan_vae(root / "vae" / HUNYUAN_VAE_FILE, TINY_HUNYUAN_VAE, seed + 1)
    files["vae"] = HUNYUAN_VAE_FILE
    write_tiny_t5(root / "text_encoders" / T5_FILE, seed + 4)
    files["t5"] = T5_FILE
    write_tiny_clip(root / "text_encoders" / CLIP_FILE, seed + 5)
    files["clip"] = CLIP_FILE
    if what in ("t2i2v", "high_compression"):  # both make their first frame with Flux-dev
        write_tiny_mmdit(root / "diffusion_models" / FLUX_FILE, TINY_FLUX_MMDIT, seed + 6)
        files["flux"] = FLUX_FILE
        write_tiny_flux_ae(root / "vae" / FLUX_AE_FILE, TINY_FLUX_AE, seed + 7)
        files["flux_ae"] = FLUX_AE_FILE
    if what == "high_compression":
        write_tiny_mmdit(root / "diffusion_models" / MMDIT_DC_AE_FILE, TINY_MMDIT_DC_AE, seed + 2)
        files["mmdit_dc_ae"] = MMDIT_DC_AE_FILE
        write_tiny_dc_ae(root / "vae" / DC_AE_FILE, TINY_DC_AE, seed + 3)
        files["dc_ae"] = DC_AE_FILE
    return TinyModelFolder(root, files)
