"""Noise node: the seeded initial latent of a video (size preset or custom size, frames, batch)."""

from __future__ import annotations

import logging

import torch

from ..models import latent_space
from ..models.dtypes import dtypes_named
from ..samplers import geometry
from ..samplers.latent import make_latent
from ..samplers.noise import get_noise
from ..samplers.seeds import open_sora_sampling_seeds
from .. import host
from .spec import Input, NodeSpec, Output, register

log = logging.getLogger(__name__)

CUSTOM = "custom"
NOISE_DEVICES = ("cpu", "gpu")
NOISE_DTYPES = dtypes_named("fp32", "bf16")
MAX_SEED = 0xFFFFFFFFFFFFFFFF
SEED_FIXED = "fixed"
SEED_OPEN_SORA_DEFAULT = "open_sora_default"
SEED_MODES = (SEED_FIXED, SEED_OPEN_SORA_DEFAULT)


@register("OpenSoraNoise", "Open-Sora Noise")
class OpenSoraNoise:
    """Seeded Gaussian noise ``[B, C, T, H', W']`` for a video size, as the reference draws it."""

    SPEC = NodeSpec(
        inputs=(
            Input("autoencoder", choices=latent_space.AUTOENCODERS, default=latent_space.HUNYUAN_VAE.name,
                  tooltip="The latent space to make noise for: hunyuan_vae (HunyuanVideo causal VAE, 16 "
                          "channels, 4x8x8, used by Open_Sora_v2) or dc_ae (Video DC-AE, 128 channels, "
                          "4x32x32, used by the high-compression model)."),
            Input("resolution", choices=(*geometry.RESOLUTIONS, CUSTOM), default="256px",
                  tooltip="Size name as the reference reads it, with aspect_ratio: <N>px is N*N pixels "
                          "(256px, 768px: the trained sizes), <N>p a 16:9 frame N pixels high (720p 16:9 "
                          "= 1280x720). 'custom' uses width and height."),
            Input("aspect_ratio", choices=geometry.all_aspect_ratios, default="16:9",
                  tooltip="Width:height of the preset, from the reference's size table (e.g. 256px 16:9 "
                          "= 336x192, 768px 16:9 = 1024x576). Ignored for 'custom'."),
            Input("width", "INT", default=336, min=16, max=8192, step=16,
                  tooltip="Pixel width for resolution 'custom': a multiple of 16 (hunyuan_vae) or 32 (dc_ae)."),
            Input("height", "INT", default=192, min=16, max=8192, step=16,
                  tooltip="Pixel height for resolution 'custom': a multiple of 16 (hunyuan_vae) or 32 (dc_ae)."),
            Input("num_frames", "INT", default=129, min=1, max=1025, step=1,
                  tooltip="Video frames (129 = reference default, 1 = an image). Any count is accepted as "
                          "the reference does: hunyuan_vae makes (n-1)//4+1 latent frames and writes "
                          "4k+1 frames (16 -> 13, shown on the node); dc_ae writes n (it uses 128)."),
            Input("batch_size", "INT", default=1, min=1, max=64,
                  tooltip="Videos sampled together (the reference's number of prompts in a batch)."),
            Input("seed", "INT", default=42, min=0, max=MAX_SEED, control_after_generate=True,
                  tooltip="Seed of the noise generator (the reference's configs use 42)."),
            Input("noise_device", choices=NOISE_DEVICES, default="cpu",
                  tooltip="Where the generator runs. cpu: the same noise on every machine. gpu: what the "
                          "official script does (with noise_dtype bf16 for bf16 weights); the numbers "
                          "depend on the GPU generator."),
            Input("noise_dtype", choices=NOISE_DTYPES, default="fp32",
                  tooltip="Precision the noise is drawn in. The official script draws in the model dtype "
                          "(bf16); on the CPU bf16 noise equals fp32 noise rounded, so this matters for gpu."),
            Input("seed_mode", choices=SEED_MODES, default=SEED_FIXED, optional=True,
                  tooltip="fixed: seed is the noise seed (the reference's sampling_option.seed, e.g. 1234). "
                          "open_sora_default: seed is the script's global seed (42 in every config) and the "
                          "noise seed is what the official script draws from it when no sampling seed is "
                          "set (random.seed(seed); random.randint(0, 2**32-1): 42 -> 2746317213), i.e. its "
                          "first video of a t2v or i2v run."),
        ),
        outputs=(Output("LATENT", "noise", "Initial noise with the video's size, frame count and autoencoder, "
                                            "for the sampler."),),
        description=(
            "Makes the seeded starting noise of an Open-Sora video exactly as the official inference script "
            "does (torch.randn with a seeded generator, [batch, channels, latent frames, H/8, W/8] for the "
            "HunyuanVideo VAE). Checks that the autoencoder can produce the requested size and frame count."
        ),
    )

    def execute(self, autoencoder: str, resolution: str, aspect_ratio: str, width: int, height: int,
                num_frames: int, batch_size: int, seed: int, noise_device: str, noise_dtype: str,
                seed_mode: str = SEED_FIXED) -> tuple[dict]:
        kind = latent_space.autoencoder_kind(autoencoder)
        if resolution != CUSTOM:  # a Flux image is the t2i2v first frame: the reference sizes it from its training table
            height, width = geometry.image_size(resolution, aspect_ratio, kind, training=kind is latent_space.FLUX_AE)
        if num_frames < 1:
            raise ValueError(f"num_frames={num_frames}: at least 1 frame is needed (1 = an image).")
        change = latent_space.describe_frame_change(num_frames, kind)
        if change is not None:
            log.info("Open-Sora Noise: %s", change)
        video = geometry.VideoGeometry(height, width, latent_space.output_num_frames(num_frames, kind), kind.name)
        video.validate()
        if noise_device not in NOISE_DEVICES or noise_dtype not in NOISE_DTYPES:
            raise ValueError(f"noise_device must be one of {NOISE_DEVICES} and noise_dtype one of {list(NOISE_DTYPES)}.")
        if seed_mode not in SEED_MODES:
            raise ValueError(f"seed_mode must be one of {SEED_MODES}, not {seed_mode!r}.")
        if seed_mode == SEED_OPEN_SORA_DEFAULT:
            (drawn,) = open_sora_sampling_seeds(seed)
            log.info("Open-Sora Noise: global seed %d -> noise seed %d (as the official script)", seed, drawn)
            seed = drawn
        device = torch.device("cpu") if noise_device == "cpu" else host.torch_device()
        noise = get_noise(video, batch_size, seed, device, NOISE_DTYPES[noise_dtype])
        samples = noise.to(device=host.intermediate_device(), dtype=torch.float32)
        return (make_latent(samples, video, seed=seed),)

