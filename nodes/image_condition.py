"""Image Condition node: reference frames (i2v / v2v) -> OPENSORA_IMAGE_COND for the sampler."""

from __future__ import annotations

import torch

from ..models.autoencoder import ENCODE_TILING_MODES, choose_tiling, reporting_work, work_modules
from ..samplers import image_condition
from ..samplers.latent import read_latent
from .. import host
from .output_guard import check_finite, precision_remedy
from .spec import Input, NodeSpec, Output, register

POSTERIORS = ("mean", "sample")


@register("OpenSoraImageCondition", "Open-Sora Image Condition")
class OpenSoraImageCondition:
    """Encode reference frames with the VAE into the masks and latents the i2v sampler conditions on."""

    SPEC = NodeSpec(
        inputs=(
            Input("vae", "OPENSORA_VAE", "The autoencoder the noise was made for."),
            Input("image", "IMAGE",
                  "Reference frames from any node (LoadImage, a Flux first frame, a video loader). "
                  "One frame is resized like the reference reads an image file (bicubic); several "
                  "frames like a video file (bilinear), also when i2v takes one frame of them."),
            Input("noise", "LATENT",
                  "The noise from 'Open-Sora Noise' that the sampler will use: the condition is "
                  "built for its size, frame count and batch."),
            Input("cond_type", choices=image_condition.COND_TYPES, default="i2v_head",
                  tooltip="i2v_head: first frame = image; i2v_tail: last frame = last frame of image (or "
                          "last_image); i2v_loop: first and last; v2v_head / v2v_tail: continue from the "
                          "first / last 33 frames of a video (9 latent frames); *_easy: 65 frames."),
            Input("posterior", choices=POSTERIORS, default="mean",
                  tooltip="mean: deterministic encoding. sample: draw from the VAE posterior with seed "
                          "(the official script samples, with its global random state)."),
            Input("seed", "INT", default=0, min=0, max=0xFFFFFFFFFFFFFFFF,
                  tooltip="Seed of the posterior sample (posterior 'sample' only)."),
            Input("last_image", "IMAGE", optional=True,
                  tooltip="Optional frames whose last frame is the end frame for i2v_loop and i2v_tail."),
            Input("tiling", choices=ENCODE_TILING_MODES, default="reference", optional=True,
                  tooltip="How the encoder is split to bound its memory. reference: the official spatial tiles "
                          "(256 px, results as the official code). none: whole frames. causal_chunks "
                          "(HunyuanVideo VAE): the reference's spatial tiles, and a video's full-frame-rate "
                          "layers a few frames at a time with a causal cache; a fraction of the reference's "
                          "memory for v2v clips, a single image encodes exactly as with reference."),
        ),
        outputs=(Output("OPENSORA_IMAGE_COND", "image_condition",
                        "Masks and reference latents for 'Open-Sora Sampler' (image_condition input)."),),
        description=(
            "Builds an Open-Sora image/video condition like the official script: resizes and centre-crops the "
            "reference to the video size, encodes it with the VAE and marks the conditioned latent frames. "
            "After sampling the first/last latent frame of batch element 0 is replaced by the reference (i2v)."
        ),
    )

    def execute(self, vae, image: torch.Tensor, noise: dict, cond_type: str, posterior: str, seed: int,
                last_image: torch.Tensor | None = None, tiling: str = "reference"
                ) -> tuple[image_condition.ImageCondition]:
        samples, geometry = read_latent(noise)
        if vae.kind.name != geometry.kind.name:
            raise ValueError(
                f"The VAE is the {vae.kind.display_name} but the noise was made for the "
                f"{geometry.kind.display_name}; choose the matching autoencoder on the noise node."
            )
        if posterior not in POSTERIORS:
            raise ValueError(f"posterior must be one of {POSTERIORS}, not {posterior!r}.")
        if tiling not in ENCODE_TILING_MODES:
            raise ValueError(f"tiling must be one of {list(ENCODE_TILING_MODES)}, not {tiling!r}.")
        plan = choose_tiling(vae.module, tiling)
        generator: list[torch.Generator] = []

        def encode(pixels: torch.Tensor) -> torch.Tensor:
            host.check_interrupt()
            host.load_models([vae.managed])
            module = vae.module
            if posterior == "sample" and not generator:
                generator.append(torch.Generator(device=module.device).manual_seed(int(seed)))
            # Cancel is honoured after every encoder convolution, not only between references.
            with torch.inference_mode(), reporting_work(work_modules(module), host.check_interrupt):
                latent = module.encode(pixels.to(module.device, module.dtype), sample=posterior == "sample",
                                       generator=generator[0] if generator else None, tiling=plan)
            check_finite(latent, "Open-Sora Image Condition (VAE encode)", vae.dtype, module.device,
                         precision_remedy(vae.dtype, "dtype on the Open-Sora VAE Loader"))
            return latent

        condition = image_condition.encode_image_condition(
            encode, image, last_image, cond_type, geometry, samples.shape[0]
        )
        return (condition,)

