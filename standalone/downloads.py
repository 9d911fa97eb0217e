"""``download``: the released weights each workflow family needs, placed in ComfyUI's model layout."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

MAIN_REPO = "hpcai-tech/Open-Sora-v2"
DC_AE_REPO = "hpcai-tech/Open-Sora-v2-Video-DC-AE"
FLUX_TEXT_REPO = "comfyanonymous/flux_text_encoders"


@dataclass(frozen=True)
class Download:
    """One file (or, with ``files``, some files of a repo folder) and where it goes under ``models/``."""

    repo: str
    source: str
    folder: str
    name: str
    files: tuple[str, ...] = ()


# T5 and CLIP as the single safetensors files ComfyUI users have (the Open-Sora-v2 repo's T5 folder holds
# pickled .bin shards, which this pack does not read); their tokenizers come from the Open-Sora-v2 folders
# (ComfyUI has its own; the command line needs these).
_VIDEO_FILES = (
    Download(MAIN_REPO, "Open_Sora_v2.safetensors", "diffusion_models", "Open_Sora_v2.safetensors"),
    Download(MAIN_REPO, "hunyuan_vae.safetensors", "vae", "hunyuan_vae.safetensors"),
    Download(FLUX_TEXT_REPO, "t5xxl_fp16.safetensors", "text_encoders", "t5xxl_fp16.safetensors"),
    Download(FLUX_TEXT_REPO, "clip_l.safetensors", "text_encoders", "clip_l.safetensors"),
    Download(MAIN_REPO, "google/t5-v1_1-xxl", "text_encoders", "t5xxl_fp16_tokenizer",
             ("spiece.model", "tokenizer_config.json", "special_tokens_map.json")),
    Download(MAIN_REPO, "openai/clip-vit-large-patch14", "text_encoders", "clip_l_tokenizer",
             ("vocab.json", "merges.txt", "tokenizer_config.json", "special_tokens_map.json")),
)
_FLUX_FILES = (  # the t2i2v first frame: Flux-dev and its AE (Model/VAE Loader, or ComfyUI's UNETLoader/VAELoader)
    Download(MAIN_REPO, "flux1-dev.safetensors", "diffusion_models", "flux1-dev.safetensors"),
    Download(MAIN_REPO, "flux1-dev-ae.safetensors", "vae", "flux1-dev-ae.safetensors"),
)
_DC_AE_FILES = (
    Download(DC_AE_REPO, "Open_Sora_v2_Video_DC_AE.safetensors", "diffusion_models",
             "Open_Sora_v2_Video_DC_AE.safetensors"),
    Download(DC_AE_REPO, "F32T4C128_AE.safetensors", "vae", "F32T4C128_AE.safetensors"),
)
_TEXT_FILES = tuple(item for item in _VIDEO_FILES if item.folder == "text_encoders")
DOWNLOADS: dict[str, tuple[Download, ...]] = {
    "t2v": _VIDEO_FILES,
    "i2v": _VIDEO_FILES,
    "t2i2v": _VIDEO_FILES + _FLUX_FILES,
    "high_compression": _TEXT_FILES + _FLUX_FILES + _DC_AE_FILES,  # its own model and autoencoder only
}


def download(what: str, models_dir: Path, log=print) -> list[Path]:
    """Fetch the released weights a workflow family needs into ``models_dir`` (ComfyUI's layout).

    Files already present are skipped. Needs ``pip install huggingface_hub`` (imported only here).
    """
    try:
        import huggingface_hub
    except ImportError:
        raise SystemExit("Downloading needs huggingface_hub: python3 -m pip install huggingface_hub") from None
    staging = models_dir / ".download"
    placed: list[Path] = []
    for item in DOWNLOADS[what]:
        target = models_dir / item.folder / item.name
        placed.append(target)
        if target.exists():
            log(f"have {target}")
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        log(f"downloading {item.repo}: {item.source} -> {target}")
        if not item.files:
            huggingface_hub.hf_hub_download(item.repo, item.source, local_dir=staging)
            (staging / item.source).rename(target)
            continue
        patterns = [f"{item.source}/{name}" for name in item.files]
        huggingface_hub.snapshot_download(item.repo, allow_patterns=patterns, local_dir=staging)
        target.mkdir()
        for name in item.files:
            if (staging / item.source / name).is_file():
                (staging / item.source / name).rename(target / name)
    shutil.rmtree(staging, ignore_errors=True)  # download metadata only: every file was moved out
    return placed
