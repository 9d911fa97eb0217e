"""Inputs for the sampling nodes' tests: noise latents, the golden cases as node inputs, and a VAE double
that returns given latents."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file

from comfyui_opensora.models import latent_space
from comfyui_opensora.models.autoencoder import NO_TILING, VideoAutoencoder
from comfyui_opensora.nodes.noise import OpenSoraNoise
from comfyui_opensora.nodes.vae import OpenSoraVAE
from comfyui_opensora.samplers.conditioning import TextConditioning

GOLDEN = Path(__file__).resolve().parent / "golden_v1"

SAMPLER_DEFAULTS = dict(method="i2v", steps=12, guidance=7.5, guidance_img=3.0, text_osci=True, image_osci=True,
                        scale_temporal_osci=True, shift=True, flow_shift=0.0, branch_mode="fast")


def noise_latent(width=96, height=64, num_frames=9, seed=42, batch_size=1, autoencoder="hunyuan_vae",
           resolution="custom", aspect_ratio="16:9", noise_device="cpu", noise_dtype="fp32", **optional) -> dict:
    (latent,) = OpenSoraNoise().execute(autoencoder, resolution, aspect_ratio, width, height, num_frames,
                                        batch_size, seed, noise_device, noise_dtype, **optional)
    return latent


def golden_case(name: str):
    folder = GOLDEN / name
    manifest = json.loads((folder / "manifest.json").read_text())
    return manifest, {k: v.clone() for k, v in load_file(folder / "tensors.safetensors").items()}


def golden_conditioning(tensors, prefix: str, prompts: list[str]) -> TextConditioning:
    return TextConditioning(
        t5=torch.cat([tensors[f"{prefix}text.t5[{p}]"] for p in prompts]),
        clip=torch.cat([tensors[f"{prefix}text.clip[{p}]"] for p in prompts]),
        neg_t5=tensors[f"{prefix}text.t5[]"], neg_clip=tensors[f"{prefix}text.clip[]"],
        prompts=tuple(prompts), negative_prompts=("",),
    )


class FixedLatentVAE(VideoAutoencoder):
    """A test double: 'encodes' every clip to the next of a list of given latents and records the pixels."""

    kind = latent_space.HUNYUAN_VAE

    def __init__(self, latents: list[torch.Tensor]):
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(1))
        self.latents = list(latents)
        self.pixels: list[torch.Tensor] = []
        self.samples: list[bool] = []

    def reference_tiling(self, temporal=False):
        return NO_TILING  # nothing to tile: the latent is given

    def encode(self, x, sample=False, generator=None, tiling=None):
        self.pixels.append(x)
        self.samples.append(sample)
        latent = self.latents.pop(0)[None]
        if sample:
            latent = latent + torch.randn(latent.shape, generator=generator)
        return latent


def fixed_vae(host, latents) -> OpenSoraVAE:
    module = FixedLatentVAE(latents)
    return OpenSoraVAE(host.manage_model(module), torch.float32, "fixed")
