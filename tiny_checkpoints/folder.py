"""A whole ComfyUI ``models`` folder of tiny checkpoints under the released file names, for ``--smoke`` and
the workflow tests."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from .autoencoders import (
    TINY_DC_AE, TINY_FLUX_AE, TINY_HUNYUAN_VAE, write_tiny_dc_ae, write_tiny_flux_ae, write_tiny_hunyuan_vae,
)
from .mmdit import TINY_FLUX_MMDIT, TINY_MMDIT, TINY_MMDIT_DC_AE, write_tiny_mmdit
from .text import write_tiny_clip, write_tiny_t5

# File and folder names the example workflows expect (the released names).
MMDIT_FILE = "Open_Sora_v2.safetensors"
MMDIT_DC_AE_FILE = "Open_Sora_v2_Video_DC_AE.safetensors"
HUNYUAN_VAE_FILE = "hunyuan_vae.safetensors"
DC_AE_FILE = "F32T4C128_AE.safetensors"
T5_FILE = "t5xxl_fp16.safetensors"
CLIP_FILE = "clip_l.safetensors"
FLUX_FILE = "flux1-dev.safetensors"
FLUX_AE_FILE = "flux1-dev-ae.safetensors"
LORA_FOLDER = "open_sora_v2_lora"  # a PEFT adapter folder in loras/ (the LoRA example workflow)


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
    write_tiny_mmdit(root / "diffusion_models" / MMDIT_FILE, TINY_MMDIT, seed, with_metadata=False)
    files["mmdit"] = MMDIT_FILE
    write_tiny_hunyuan_vae(root / "vae" / HUNYUAN_VAE_FILE, TINY_HUNYUAN_VAE, seed + 1)
    files["vae"] = HUNYUAN_VAE_FILE
    write_tiny_t5(root / "text_encoders" / T5_FILE, seed + 4)
    files["t5"] = T5_FILE
    write_tiny_clip(root / "text_encoders" / CLIP_FILE, seed + 5)
    files["clip"] = CLIP_FILE
    if what in ("t2i2v", "high_compression"):  # both make their first frame with Flux-dev
        write_tiny_mmdit(root / "diffusion_models" / FLUX_FILE, TINY_FLUX_MMDIT, seed + 6, with_metadata=False)
        files["flux"] = FLUX_FILE
        write_tiny_flux_ae(root / "vae" / FLUX_AE_FILE, TINY_FLUX_AE, seed + 7)
        files["flux_ae"] = FLUX_AE_FILE
    if what == "high_compression":
        write_tiny_mmdit(root / "diffusion_models" / MMDIT_DC_AE_FILE, TINY_MMDIT_DC_AE, seed + 2,
                         with_metadata=False)
        files["mmdit_dc_ae"] = MMDIT_DC_AE_FILE
        write_tiny_dc_ae(root / "vae" / DC_AE_FILE, TINY_DC_AE, seed + 3)
        files["dc_ae"] = DC_AE_FILE
    return TinyModelFolder(root, files)
