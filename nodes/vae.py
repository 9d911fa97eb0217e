"""Open-Sora autoencoder nodes: load a VAE, decode LATENT to IMAGE frames, convert native latents."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ..loaders.autoencoders import load_autoencoder
from ..models.autoencoder import TILING_MODES, VideoAutoencoder, choose_tiling, decode_to_frames
from ..models.dtypes import FLOAT_DTYPES
from ..models.hunyuan_vae import from_native_latent, pixel_size_of_latent, to_native_latent
from ..models.latent_space import HUNYUAN_VAE, AutoencoderKind
from ..parallel.joined import joined_group
from ..parallel.settings import ParallelSettings
from ..samplers.geometry import VideoGeometry
from ..samplers.latent import make_latent, read_latent
from .. import host
from .output_guard import check_finite, check_input_finite, check_not_flat, precision_remedy
from .parallel import decode_in_workers
from .spec import Input, NodeSpec, Output, register

host.register_folders()

VAE_DTYPES = FLOAT_DTYPES  # the VAE's dtype choices (no fp8)
# Tilings a worker group decodes (memory_budget plans with this process's free memory, not the group's).
GROUP_TILINGS = ("reference", "reference_temporal", "none")


@dataclass
class OpenSoraVAE:
    """The OPENSORA_VAE socket value: a managed autoencoder, its dtype and file.

    Use: ``host.load_models([vae.managed])`` then ``vae.module.encode(...)`` / ``decode_chunks(...)``.
    """

    managed: Any  # host.manage_model handle (a ModelPatcher inside ComfyUI)
    dtype: torch.dtype
    path: str

    @property
    def module(self) -> VideoAutoencoder:
        return host.unwrap_model(self.managed)

    @property
    def kind(self) -> AutoencoderKind:
        """The latent space the autoencoder encodes to (its model class says which)."""
        return self.module.kind


def check_latent_for_vae(samples: torch.Tensor, geometry: VideoGeometry, vae: OpenSoraVAE) -> None:
    """Raise a ValueError saying what to change unless ``vae`` can decode this latent."""
    if samples.shape[0] == 0:
        raise ValueError("The latent batch is empty (batch size 0): there is nothing to decode.")
    if geometry.autoencoder != vae.kind.name:
        raise ValueError(
            f"This latent belongs to the {geometry.kind.display_name}, but the VAE loaded is the "
            f"{vae.kind.display_name}. Load the autoencoder that matches the diffusion model "
            f"({'F32T4C128_AE.safetensors' if geometry.autoencoder == 'dc_ae' else 'hunyuan_vae.safetensors'})."
        )
    if samples.ndim != 5 or samples.shape[1] != vae.module.latent_channels:
        raise ValueError(
            f"The latent has shape {tuple(samples.shape)}, but the {vae.kind.display_name} decodes "
            f"[batch, {vae.module.latent_channels}, frames, height, width] latents."
        )


@register("OpenSoraVAELoader", "Open-Sora VAE Loader")
class OpenSoraVAELoader:
    """Load the HunyuanVideo VAE (or the Video DC-AE) from ComfyUI's vae folder."""

    SPEC = NodeSpec(
        inputs=(
            Input("vae_name", choices=lambda: host.list_files(host.VAE),
                  tooltip="A .safetensors file in models/vae: hunyuan_vae.safetensors from "
                          "hpcai-tech/Open-Sora-v2 (or the Video DC-AE for the high-compression model, or "
                          "flux1-dev-ae.safetensors / ae.safetensors for the t2i2v first frame). "
                          "Which autoencoder it is is read from its keys."),
            Input("dtype", choices=VAE_DTYPES, default="bf16",
                  tooltip="Precision the VAE runs in. bf16 is what the reference uses; fp32 is exact "
                          "but doubles memory and time; fp16 may overflow."),
        ),
        outputs=(Output("OPENSORA_VAE", "vae", "The autoencoder, kept on the offload device until a decode or "
                                               "encode needs it."),),
        description=(
            "Loads Open-Sora 2.0's video autoencoder with strict key checks: the HunyuanVideo causal VAE "
            "(16 latent channels, 4x8x8 compression), the Video DC-AE, or Flux's image autoencoder (t2i2v first "
            "frame). Files of other kinds are refused "
            "with an error saying what they look like."
        ),
    )

    def execute(self, vae_name: str, dtype: str) -> tuple[OpenSoraVAE]:
        if dtype not in VAE_DTYPES:
            raise ValueError(f"dtype must be one of {list(VAE_DTYPES)}, not {dtype!r}.")
        path = host.resolve_file(host.VAE, vae_name)
        module = load_autoencoder(path, dtype=VAE_DTYPES[dtype], device=host.offload_device())
        return (OpenSoraVAE(host.manage_model(module), VAE_DTYPES[dtype], str(path)),)


@register("OpenSoraVAEDecode", "Open-Sora VAE Decode")
class OpenSoraVAEDecode:
    """Decode an Open-Sora LATENT into IMAGE frames, streaming them to the CPU as they are finished."""

    SPEC = NodeSpec(
        inputs=(
            Input("vae", "OPENSORA_VAE", "The autoencoder from 'Open-Sora VAE Loader'."),
            Input("samples", "LATENT", "The latent from an Open-Sora sampler."),
            Input("tiling", choices=TILING_MODES, default="reference",
                  tooltip="reference: the reference pipeline's tiles, same pixels as Open-Sora "
                          "(HunyuanVideo VAE: 256 px spatial tiles, overlap 1/4; Video DC-AE: 256 px and "
                          "32 frames). reference_temporal: also 65-frame temporal tiles for the "
                          "HunyuanVideo VAE (the reference's stand-alone VAE config; about half the memory "
                          "for long clips). none: one pass (most memory). memory_budget: the least "
                          "tiling whose estimate fits the free device memory. causal_chunks (HunyuanVideo "
                          "VAE): the reference's spatial tiles, each decoded 8 frames at a time with a "
                          "causal cache; 0.42x the reference's memory at 33 frames, 0.14x at 129, at about "
                          "its speed; close to but not the same pixels (GroupNorm per chunk)."),
            Input("parallel", "OPENSORA_PARALLEL", optional=True,
                  tooltip="From 'Open-Sora Parallel Settings' (the sampler's, to reuse its warm worker group): "
                          "the HunyuanVideo VAE's tiles are decoded on the group's GPUs, same frames. Only with "
                          "tiling reference, reference_temporal or none; other tilings and other autoencoders "
                          "(Video DC-AE, Flux AE) decode in this process. Leave empty to decode here."),
        ),
        outputs=(Output("IMAGE", "frames", "One IMAGE per video of the batch (a list), each cut to the video's "
                                           "frame count: nodes after it run once per video, as the reference "
                                           "saves each sample on its own.", is_list=True),),
        description=(
            "Decodes an Open-Sora latent with its VAE. Frames are cut to the video's frame count and converted "
            "to 0..1 as the reference's saver does (clamp to [-1, 1], then (x+1)/2). A batch of N videos comes "
            "out as a list of N IMAGEs, so savers (this pack's, core Save Video, Video Combine) write N files."
        ),
    )

    def execute(self, vae: OpenSoraVAE, samples: dict, tiling: str,
                parallel: ParallelSettings | None = None) -> tuple[list[torch.Tensor]]:
        latent, geometry = read_latent(samples)
        check_latent_for_vae(latent, geometry, vae)
        check_input_finite(latent, "The latent given to Open-Sora VAE Decode",
                           "It was made by the node before it (usually the sampler, whose own check should have "
                           "stopped the run): re-run that node.")
        module, shape = vae.module, tuple(latent.shape)
        stage, remedy = "Open-Sora VAE Decode", precision_remedy(vae.dtype, "dtype on the Open-Sora VAE Loader")
        group_plan = choose_tiling(module, tiling, shape) if parallel is not None and tiling in GROUP_TILINGS else None
        if group_plan is not None and module.shares_passes(group_plan):
            frames = decode_in_workers(parallel, vae, latent, geometry, group_plan)
            check_finite(frames, stage, vae.dtype, "the worker group's GPUs", remedy)
            check_not_flat(frames, latent, stage, vae.dtype, "the worker group's GPUs", remedy)
            return (list(frames.split(geometry.num_frames)),)
        if tiling == "memory_budget":  # plan with what is free once the weights are in place
            host.load_models([vae.managed])
            plan = choose_tiling(module, tiling, shape, host.free_device_memory(vae.managed.load_device))
        else:
            plan = choose_tiling(module, tiling, shape)
            host.load_models([vae.managed], memory_required=module.decode_bytes(shape, plan, vae.dtype))
        # Progress and Cancel after every decoder convolution: within a tile, not only between chunks.
        group = joined_group()  # generate --sp-size: the decoder passes are spread over the group's ranks
        if group is not None and not module.shares_passes(plan):
            group = None  # every rank decodes everything
        work = (module.decode_work(shape, plan) if group is None
                else group.local_work(module.pass_work(shape, plan)))  # all passes, or this rank's share
        progress = host.Progress(latent.shape[0] * work)

        def on_work() -> None:
            progress.update()
            host.check_interrupt()

        frames = decode_to_frames(module, latent, geometry.num_frames, geometry.height, geometry.width, plan,
                                  host.intermediate_device(), on_work,
                                  None if group is None else group.pass_runner(module.device, module.dtype))
        host.empty_cache()
        check_finite(frames, stage, vae.dtype, module.device, remedy)
        check_not_flat(frames, latent, stage, vae.dtype, module.device, remedy)
        return (list(frames.split(geometry.num_frames)),)


@register("OpenSoraLatentToNative", "Open-Sora Latent To Native")
class OpenSoraLatentToNative:
    """Open-Sora Hunyuan latent -> ComfyUI's native HunyuanVideo LATENT (for native VAE Decode etc.)."""

    SPEC = NodeSpec(
        inputs=(Input("samples", "LATENT", "An Open-Sora latent (HunyuanVideo VAE space)."),),
        outputs=(Output("LATENT", "native_latent", "ComfyUI's HunyuanVideo latent: the unscaled VAE latent "
                                                   "(Open-Sora latent / 0.476986)."),),
        description=(
            "Converts an Open-Sora latent to ComfyUI's native HunyuanVideo latent so native nodes (VAE Decode "
            "with hunyuan_vae.safetensors, latent upscalers...) can use it. Native VAE Decode differs slightly "
            "from Open-Sora's on multi-frame clips (its mid-block attention is not causal)."
        ),
    )

    def execute(self, samples: dict) -> tuple[dict]:
        latent, geometry = read_latent(samples)
        if geometry.autoencoder != HUNYUAN_VAE.name:
            raise ValueError(
                f"Only HunyuanVideo VAE latents have a native ComfyUI format; this one belongs to the "
                f"{geometry.kind.display_name}."
            )
        return ({"samples": to_native_latent(latent.float()).to(host.intermediate_device())},)


@register("OpenSoraLatentFromNative", "Open-Sora Latent From Native")
class OpenSoraLatentFromNative:
    """ComfyUI's native HunyuanVideo LATENT -> Open-Sora latent."""

    SPEC = NodeSpec(
        inputs=(Input("native_latent", "LATENT",
                      "A native HunyuanVideo latent [batch, 16, frames, height, width] (e.g. from VAE Encode "
                      "with hunyuan_vae.safetensors). The video is taken to be 4(T-1)+1 frames of 8x the latent "
                      "size; height and width must be multiples of 16 pixels (even latent sizes)."),),
        outputs=(Output("LATENT", "samples", "The Open-Sora latent (native latent x 0.476986) with its video "
                                             "geometry."),),
        description=(
            "Converts ComfyUI's native HunyuanVideo latent into an Open-Sora latent. The frame count and pixel "
            "size are inferred from the shape: T latent frames -> 4(T-1)+1 frames, 8x height and width."
        ),
    )

    def execute(self, native_latent: dict) -> tuple[dict]:
        if not isinstance(native_latent, dict) or "samples" not in native_latent:
            raise TypeError(f"Expected a LATENT dict with 'samples', got {type(native_latent).__name__}.")
        latent = native_latent["samples"]
        if latent.ndim != 5 or latent.shape[1] != HUNYUAN_VAE.latent_channels:
            raise ValueError(
                f"Expected a native HunyuanVideo latent [batch, 16, frames, height, width], got shape "
                f"{tuple(latent.shape)} (an image latent or another model's latent?)."
            )
        frames, height, width = pixel_size_of_latent(*latent.shape[2:])
        if latent.shape[3] % 2 or latent.shape[4] % 2:
            raise ValueError(
                f"The native latent is {latent.shape[3]}x{latent.shape[4]} (height x width); Open-Sora packs "
                "2x2 latent patches, so both must be even (video sizes that are multiples of 16 pixels)."
            )
        geometry = VideoGeometry(height=height, width=width, num_frames=frames, autoencoder=HUNYUAN_VAE.name)
        return (make_latent(from_native_latent(latent.float()), geometry),)

