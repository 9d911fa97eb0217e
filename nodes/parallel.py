"""Parallel Settings node, and the sampler's and VAE Decode's glue to the warm worker groups (multi-GPU)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

import torch

from .. import host
from ..models.autoencoder import Tiling
from ..parallel.attention import ParallelUnavailable, yunchang_installed
from ..parallel.group import DEVICE_TYPES, GroupSettings
from ..parallel.layout import TEXT_MODES, TEXT_SPLIT
from ..parallel.settings import ParallelSettings
from ..parallel.warm_groups import decode_on_warm_group, group_decode_work, sample_on_warm_group
from ..samplers.geometry import VideoGeometry
from ..samplers.request import SamplingRequest
from .spec import Input, NodeSpec, Output, register

if TYPE_CHECKING:
    from .vae import OpenSoraVAE


@register("OpenSoraParallelSettings", "Open-Sora Parallel Settings")
class OpenSoraParallelSettings:
    """Settings for sampling on several GPUs with sequence parallelism (a warm torchrun worker group)."""

    SPEC = NodeSpec(
        inputs=(
            Input("ranks", "INT", default=2, min=1, max=64,
                  tooltip="Worker processes, one per GPU (GPUs 0..ranks-1 of CUDA_VISIBLE_DEVICES). With hosts > 1: "
                          "per host (every host runs this many; the group has ranks x hosts)."),
            Input("cfg_degree", "INT", default=1, min=1, max=3,
                  tooltip="Split the guidance branches (positive / negative prompt passes) over this many "
                          "groups of ranks / cfg_degree GPUs each; they exchange only finished velocities, "
                          "which helps GPUs without NVLink. 1 = every GPU works on every branch."),
            Input("ulysses_degree", "INT", default=0, min=0, max=64,
                  tooltip="Ranks of a sequence group (ranks / cfg_degree) that exchange attention heads with "
                          "all-to-all (Ulysses); the others form rings (ring attention): ring degree = group "
                          "size / ulysses_degree. 0 = automatic (as many as the 24 heads allow)."),
            Input("text", choices=TEXT_MODES, default=TEXT_SPLIT,
                  tooltip="split: the text tokens are divided across ranks like the video tokens. replicated: "
                          "every rank keeps all text tokens (repeats the small text-stream work, fewer "
                          "transfers of text rows). Both give the same result."),
            Input("port", "INT", default=29600, min=1024, max=65534,
                  tooltip="TCP port of the control store (on 127.0.0.1 unless 'address' or "
                          "OPENSORA_PARALLEL_ADDRESS names another address; torchrun's rendezvous meets there too)."),
            Input("device", choices=DEVICE_TYPES, default="cuda",
                  tooltip="cuda: NCCL on GPUs. cpu: gloo on CPU processes (for testing; slow)."),
            Input("hosts", "INT", default=1, min=1, max=64,
                  tooltip="Machines in the group. This one starts its ranks; each other one must run the join "
                          "command (README 'Many GPUs and hosts'; an error shows it filled in when a host does not "
                          "come), with the same pack version and every checkpoint at the same path as here."),
            Input("address", "STRING", default="",
                  tooltip="Address of this machine that the control store listens on, for the other hosts to "
                          "reach. Empty: OPENSORA_PARALLEL_ADDRESS if set, else 127.0.0.1 (this machine only). "
                          "Another address exposes the store (no authentication) on that network: use a private "
                          "network or a firewall."),
            Input("join_timeout", "INT", default=300, min=10, max=86400,
                  tooltip="Seconds to wait for every rank (on every host) to join before reporting what is "
                          "missing."),
        ),
        outputs=(Output("OPENSORA_PARALLEL", "parallel", "Connect to the 'parallel' input of 'Open-Sora Sampler' and, "
                                                          "to decode on the same group, of 'Open-Sora VAE Decode'."),),
        description=(
            "Runs the Open-Sora Sampler on several GPUs: a group of worker processes (started once with torchrun "
            "and kept warm between runs) splits the video tokens across GPUs with Ulysses/ring sequence-parallel "
            "attention (the optional 'yunchang' package). Same result as one GPU up to float rounding. The same "
            "group can decode: connected to 'Open-Sora VAE Decode', the HunyuanVideo VAE's tiles are shared out "
            "among its ranks. With hosts > 1 the other machines join the group with a torchrun command."
        ),
    )

    def execute(self, ranks: int, cfg_degree: int, ulysses_degree: int, text: str, port: int, device: str,
                hosts: int = 1, address: str = "", join_timeout: int = 300) -> tuple[ParallelSettings]:
        if not yunchang_installed():
            raise ParallelUnavailable(
                "Multi-GPU sampling needs the 'yunchang' package: run `pip install yunchang` in ComfyUI's "
                "Python environment, or disconnect the parallel settings to sample on one GPU."
            )
        if text not in TEXT_MODES:
            raise ValueError(f"text must be one of {TEXT_MODES}, not {text!r}.")
        group = GroupSettings(ranks, device, port, hosts, address.strip(), join_timeout)
        group.validate()
        settings = ParallelSettings(group, ulysses_degree, text, cfg_degree)
        settings.check_degrees()  # the heads are checked when sampling, with the model
        return (settings,)


def sample_in_workers(settings: ParallelSettings, model, request: SamplingRequest,
                      preview: Callable[[torch.Tensor], Any] | None = None) -> torch.Tensor:
    """Run ``request`` on the worker group with the host's progress bar and Cancel; returns the final latent
    in the compute dtype on the CPU (the workers load ``model.path`` as the loader did). ``preview`` turns
    each step's first-frame estimate into the progress bar's picture."""
    if getattr(model, "adapters", ()):
        raise ValueError(f"Multi-GPU sampling loads the model file in each worker and cannot apply LoRA adapters "
                         f"({', '.join(model.adapters)}): sample on one GPU (disconnect the parallel input).")
    progress = host.Progress(request.num_steps)

    def on_progress(done: int, latent: torch.Tensor | None) -> None:
        progress.update(done - progress.value, None if latent is None else preview(latent))

    return sample_on_warm_group(settings, model.path, model.setup, model.config, request, on_progress,
                                host.check_interrupt, preview is not None)


def decode_in_workers(settings: ParallelSettings, vae: "OpenSoraVAE", latent: torch.Tensor, geometry: VideoGeometry,
                      tiling: Tiling) -> torch.Tensor:
    """Decode ``latent`` on the worker group (each rank loads ``vae.path`` in ``vae.dtype``) with the host's
    progress bar (rank 0's work units) and Cancel; returns the frames ``[B*F, H, W, 3]`` in 0..1 on the
    host's intermediate device."""
    total = group_decode_work(settings, latent.shape[0], vae.module.pass_work(tuple(latent.shape), tiling))
    progress = host.Progress(total)
    frames = decode_on_warm_group(settings, vae.path, vae.dtype, latent, tiling, geometry.num_frames,
                                  geometry.height, geometry.width, total,
                                  lambda done: progress.update(done - progress.value), host.check_interrupt)
    return frames.to(host.intermediate_device())
