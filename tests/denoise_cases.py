"""The golden denoise cases of the official code, read into the denoisers' inputs (shared by the denoiser
and step-cache tests)."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file

from comfyui_opensora.loaders.mmdit import load_mmdit
from comfyui_opensora.samplers import denoisers, geometry, packing, schedule

GOLDEN = Path(__file__).resolve().parent / "golden_v1"
# A denoise case: 64x96 pixels, 9 frames -> latent [16, 3, 8, 12], 12 steps (8 for distilled).
CASE_GEOMETRY = geometry.VideoGeometry(64, 96, 9)


def load_denoise_case(case: str):
    folder = GOLDEN / case
    manifest = json.loads((folder / "manifest.json").read_text())
    tensors = {k: v.clone() for k, v in load_file(folder / "tensors.safetensors").items()}
    model = load_mmdit((folder / manifest["model"]["weights"]).resolve(), dtype=torch.float32)
    return manifest, tensors, model


def text_inputs(tensors, prefix: str, prompts: list[str]) -> denoisers.TextInputs:
    txt = torch.cat([tensors[f"{prefix}text.t5[{p}]"] for p in prompts])
    y_vec = torch.cat([tensors[f"{prefix}text.clip[{p}]"] for p in prompts])
    n = len(prompts)
    neg_txt = tensors[f"{prefix}text.t5[]"].expand(n, -1, -1)
    neg_y_vec = tensors[f"{prefix}text.clip[]"].expand(n, -1)
    return denoisers.TextInputs(txt, y_vec, neg_txt, neg_y_vec)


def guidance_of(option: dict) -> denoisers.Guidance:
    return denoisers.Guidance(
        option["guidance"], option["guidance_img"], option["text_osci"], option["image_osci"],
        option["scale_temporal_osci"],
    )


def timesteps_of(option: dict, g: geometry.VideoGeometry) -> list[float]:
    return schedule.get_schedule(option["num_steps"], g.tokens_per_frame, g.latent_frames, option["shift"])


def case_noise(record: dict, tensors) -> torch.Tensor:
    packed = tensors[record["noise_packed"]["key"]]
    return packing.unpack(packed, CASE_GEOMETRY.latent_frames, CASE_GEOMETRY.latent_height, CASE_GEOMETRY.latent_width, 2)
