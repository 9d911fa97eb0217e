"""Parallel Settings node and the sampler's warm worker groups (multi-GPU sequence-parallel sampling)."""

from __future__ import annotations

import atexit
import logging
import math
from dataclasses import dataclass
from typing import Any, Callable

import torch

from ..models.fp8 import is_fp8
from ..samplers.denoisers import BranchPolicy, Guidance, TextInputs
from ..samplers.image_condition import ImageCondition
from ..parallel.attention import ParallelUnavailable, yunchang_installed
from ..parallel.group import (
    DEVICE_TYPES, GroupSettings, SamplingCancelled, WorkerGroup, WorkerGroupDied,
)
from ..parallel.layout import TEXT_MODES, TEXT_SPLIT, ParallelLayout, check_sequence_fits
from ..parallel.protocol import SamplingRequest, dtype_name
from . import host


@dataclass(frozen=True)
class ParallelSettings:
    """The OPENSORA_PARALLEL socket value: which worker group to use and how to divide the work.

    ``cfg_degree`` groups of ``ranks / cfg_degree`` ranks share the guidance branches; inside a group
    ``ulysses_degree`` (0 = automatic: ``gcd(group size, heads)``) ranks exchange heads and the ring
    degree is ``group size / ulysses_degree``.
    """

    group: GroupSettings
    ulysses_degree: int = 0
    text: str = TEXT_SPLIT
    cfg_degree: int = 1

    def check_degrees(self) -> int:
        """Raise if the degrees do not divide the ranks; returns the sequence group size."""
        ranks = self.group.ranks
        if self.cfg_degree < 1 or ranks % self.cfg_degree:
            raise ValueError(f"cfg_degree={self.cfg_degree} does not divide ranks={ranks}: choose a divisor of "
                             f"{ranks}.")
        size = ranks // self.cfg_degree
        if self.ulysses_degree and size % self.ulysses_degree:
            raise ValueError(f"ulysses_degree={self.ulysses_degree} does not divide the {size} ranks of a sequence "
                             f"group (ranks / cfg_degree): choose a divisor of {size} (or 0 for automatic).")
        return size

    def layout(self, num_heads: int) -> ParallelLayout:
        """The layout for a model with ``num_heads`` heads (resolves the automatic Ulysses degree)."""
        size = self.check_degrees()
        ulysses = self.ulysses_degree or math.gcd(size, num_heads)
        if size % ulysses:
            raise ValueError(f"ulysses_degree={ulysses} does not divide the {size} ranks of a sequence group "
                             f"(ranks / cfg_degree): choose a divisor of {size} (or 0 for automatic).")
        layout = ParallelLayout(ulysses, size // ulysses, self.text, self.cfg_degree)
        layout.validate(self.group.ranks, num_heads)
        return layout


class OpenSoraParallelSettings:
    """Settings for sampling on several GPUs with sequence parallelism (a warm torchrun worker group)."""

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {
            "required": {
                "ranks": ("INT", {"default": 2, "min": 1, "max": 64,
                                  "tooltip": "Worker processes, one per GPU (GPUs 0..ranks-1 of "
                                             "CUDA_VISIBLE_DEVICES)."}),
                "cfg_degree": ("INT", {
                    "default": 1, "min": 1, "max": 3,
                    "tooltip": "Split the guidance branches (positive / negative prompt passes) over this many "
                               "groups of ranks / cfg_degree GPUs each; they exchange only finished velocities, "
                               "which helps GPUs without NVLink. 1 = every GPU works on every branch."}),
                "ulysses_degree": ("INT", {
                    "default": 0, "min": 0, "max": 64,
                    "tooltip": "Ranks of a sequence group (ranks / cfg_degree) that exchange attention heads with "
                               "all-to-all (Ulysses); the others form rings (ring attention): ring degree = group "
                               "size / ulysses_degree. 0 = automatic (as many as the 24 heads allow)."}),
                "text": (list(TEXT_MODES), {
                    "default": TEXT_SPLIT,
                    "tooltip": "split: the text tokens are divided across ranks like the video tokens. replicated: "
                               "every rank keeps all text tokens (repeats the small text-stream work, fewer "
                               "transfers of text rows). Both give the same result."}),
                "port": ("INT", {"default": 29600, "min": 1024, "max": 65534,
                                 "tooltip": "TCP port of the control store (on 127.0.0.1 only; torchrun's "
                                            "rendezvous meets there too)."}),
                "device": (list(DEVICE_TYPES), {
                    "default": "cuda",
                    "tooltip": "cuda: NCCL on GPUs. cpu: gloo on CPU processes (for testing; slow)."}),
            }
        }

    RETURN_TYPES = ("OPENSORA_PARALLEL",)
    RETURN_NAMES = ("parallel",)
    OUTPUT_TOOLTIPS = ("Connect to the 'parallel' input of 'Open-Sora Sampler'.",)
    FUNCTION = "execute"
    CATEGORY = "Open-Sora"
    DESCRIPTION = (
        "Runs the Open-Sora Sampler on several GPUs: a group of worker processes (started once with torchrun "
        "and kept warm between runs) splits the video tokens across GPUs with Ulysses/ring sequence-parallel "
        "attention (the optional 'yunchang' package). Same result as one GPU up to float rounding."
    )

    def execute(self, ranks: int, cfg_degree: int, ulysses_degree: int, text: str, port: int, device: str
                ) -> tuple[ParallelSettings]:
        if not yunchang_installed():
            raise ParallelUnavailable(
                "Multi-GPU sampling needs the 'yunchang' package: run `pip install yunchang` in ComfyUI's "
                "Python environment, or disconnect the parallel settings to sample on one GPU."
            )
        if text not in TEXT_MODES:
            raise ValueError(f"text must be one of {TEXT_MODES}, not {text!r}.")
        group = GroupSettings(ranks, device, port)
        group.validate()
        settings = ParallelSettings(group, ulysses_degree, text, cfg_degree)
        settings.check_degrees()  # the heads are checked when sampling, with the model
        return (settings,)


# ------------------------------------------------------------------------------ warm worker groups

_GROUPS: dict[GroupSettings, WorkerGroup] = {}
_log = logging.getLogger(__name__)


def worker_group(settings: GroupSettings) -> WorkerGroup:
    """The warm group for ``settings``; started (after stopping any other group) when absent or dead."""
    group = _GROUPS.get(settings)
    if group is not None and not group.alive():
        _log.warning("The parallel worker group stopped; starting it again. Last output:\n%s", group.log_tail(10))
        _GROUPS.pop(settings).shutdown()
        group = None
    if group is None:
        shutdown_worker_groups()  # one warm group at a time: the GPUs are shared
        group = WorkerGroup(settings).start()
        _GROUPS[settings] = group
    return group


def shutdown_worker_groups() -> None:
    """Stop every warm worker group (also run when the Python process exits)."""
    while _GROUPS:
        _GROUPS.popitem()[1].shutdown()


atexit.register(shutdown_worker_groups)


def sample_in_workers(settings: ParallelSettings, model, noise: torch.Tensor, text: TextInputs, timesteps: list[float],
                      method: str, guidance: Guidance, distilled_guidance: float, policy: BranchPolicy,
                      condition: ImageCondition | None, preview: Callable[[torch.Tensor], Any] | None = None
                      ) -> torch.Tensor:
    """Denoise on the worker group with the host's progress bar and Cancel; returns the final latent in
    the compute dtype on the CPU (the workers load ``model.path`` themselves). ``preview`` turns each
    step's first-frame estimate ``[1, C, 1, H', W']`` into the progress bar's picture."""
    if getattr(model, "adapters", ()):
        raise ValueError(f"Multi-GPU sampling loads the model file in each worker and cannot apply LoRA adapters "
                         f"({', '.join(model.adapters)}): sample on one GPU (disconnect the parallel input).")
    layout = settings.layout(model.config.num_heads)
    check_sequence_fits(noise[0, 0].numel() // model.config.patch_size**2, layout.sequence_size)
    request = SamplingRequest(model.path, dtype_name(_storage_dtype(model)), method, noise, text, timesteps, layout,
                              guidance, distilled_guidance, policy, condition, preview is not None)
    group = worker_group(settings.group)
    progress = host.Progress(request.num_steps)
    interrupts: list[Exception] = []

    def on_progress(done: int, latent: torch.Tensor | None) -> None:
        try:
            progress.update(done - progress.value, None if latent is None else preview(latent))
        except Exception as exc:  # Cancel raised by the host's progress bar outside ComfyUI
            interrupts.append(exc)

    def cancel_requested() -> bool:
        if not interrupts:
            try:
                host.check_interrupt()
            except Exception as exc:
                interrupts.append(exc)
        return bool(interrupts)

    try:
        return group.run(request, on_progress, cancel_requested)
    except SamplingCancelled:
        raise interrupts[0] from None
    except WorkerGroupDied:
        _GROUPS.pop(settings.group, None)
        group.shutdown()
        raise


def _storage_dtype(model) -> torch.dtype:
    """The dtype the loader stored the weights in (fp8 block weights, else the compute dtype), so the
    workers load the same model."""
    module = getattr(model, "module", None)
    if module is not None:
        for parameter in module.parameters():
            if is_fp8(parameter.dtype):
                return parameter.dtype
    return model.dtype


NODE_CLASS_MAPPINGS = {"OpenSoraParallelSettings": OpenSoraParallelSettings}
NODE_DISPLAY_NAME_MAPPINGS = {"OpenSoraParallelSettings": "Open-Sora Parallel Settings"}
