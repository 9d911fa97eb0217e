"""What the sampler hands the worker group, and the TCPStore keys both sides use.

A request is written with ``torch.save`` as plain tensors and numbers into the group's private
temporary folder (loaded back with ``weights_only=True``); the store only carries small signals:
which job to run, progress, the cancel flag and the outcome.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..models.fp8 import FP8_DTYPES, compute_dtype
from ..samplers.denoisers import BranchPolicy, Guidance, StepCallback, TextInputs, denoise_distilled, denoise_i2v
from ..samplers.geometry import VideoGeometry
from ..samplers.image_condition import ImageCondition
from .layout import ParallelLayout

METHOD_I2V, METHOD_DISTILL = "i2v", "distill"
# Weight storage dtypes a request may name (fp8: block weights in 8 bits, computed in bf16).
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32, **FP8_DTYPES}

# Store keys.
SHUTDOWN = "shutdown"
PROCESS_GROUP_PREFIX = "process_group"  # where the workers' gloo/NCCL group exchanges its addresses


def ready_key(rank: int) -> str:
    return f"ready/{rank}"


def pid_key(rank: int) -> str:
    return f"pid/{rank}"


def job_key(job: int) -> str:
    return f"job/{job}"


def progress_key(job: int) -> str:
    return f"job/{job}/progress"


def cancel_key(job: int) -> str:
    return f"job/{job}/cancel"


def done_key(job: int) -> str:
    return f"job/{job}/done"


def error_key(job: int, rank: int) -> str:
    return f"job/{job}/error/{rank}"


# Outcomes written under done_key.
OK, CANCELLED, FAILED = "ok", "cancelled", "failed"


def dtype_name(dtype: torch.dtype) -> str:
    for name, value in DTYPES.items():
        if value == dtype:
            return name
    raise ValueError(f"Weights in {dtype} cannot be sampled in the worker group; use bf16, fp16, fp32 or fp8.")


@dataclass
class SamplingRequest:
    """One denoising run: the checkpoint to load and everything the denoiser takes.

    ``noise`` is the starting latent ``[B, C, T, H', W']``; the result comes back in the compute dtype
    (references are pasted by the caller, as in-process). ``weight_dtype`` names the storage dtype.
    """

    checkpoint: str
    weight_dtype: str
    method: str
    noise: torch.Tensor
    text: TextInputs
    timesteps: list[float]
    layout: ParallelLayout
    guidance: Guidance = field(default_factory=Guidance)
    distilled_guidance: float = 4.0
    policy: BranchPolicy = field(default_factory=BranchPolicy)
    condition: ImageCondition | None = None
    preview: bool = False  # rank 0 writes each step's estimate of frame 0 for latent previews

    @property
    def num_steps(self) -> int:
        return len(self.timesteps) - 1

    def save(self, path: Path) -> None:
        condition = None
        if self.condition is not None:
            c = self.condition
            condition = {"cond_type": c.cond_type, "geometry": asdict(c.geometry), "mask": c.mask,
                         "masked_ref": c.masked_ref}
        torch.save({
            "checkpoint": self.checkpoint, "weight_dtype": self.weight_dtype, "method": self.method,
            "noise": self.noise.cpu(), "text": [t.cpu() for t in _text_tensors(self.text)],
            "timesteps": [float(t) for t in self.timesteps], "layout": asdict(self.layout),
            "guidance": asdict(self.guidance), "distilled_guidance": float(self.distilled_guidance),
            "policy": asdict(self.policy), "condition": condition, "preview": self.preview,
        }, path)

    @classmethod
    def load(cls, path: Path) -> "SamplingRequest":
        data: dict[str, Any] = torch.load(path, weights_only=True)
        condition = data["condition"]
        if condition is not None:
            condition = ImageCondition(condition["cond_type"], VideoGeometry(**condition["geometry"]),
                                       condition["mask"], condition["masked_ref"])
        return cls(data["checkpoint"], data["weight_dtype"], data["method"], data["noise"], TextInputs(*data["text"]),
                   data["timesteps"], ParallelLayout(**data["layout"]), Guidance(**data["guidance"]),
                   data["distilled_guidance"], BranchPolicy(**data["policy"]), condition, data["preview"])


def _text_tensors(text: TextInputs) -> tuple[torch.Tensor, ...]:
    return (text.txt, text.y_vec, text.neg_txt, text.neg_y_vec)


def run_request(model: nn.Module | Any, request: SamplingRequest, device: torch.device,
                callback: StepCallback | None = None) -> torch.Tensor:
    """Denoise ``request`` with ``model`` (an MMDiT or a :class:`ShardedMMDiT`), exactly as the sampler
    node does in-process; returns the final latent in the compute dtype on ``device``."""
    dtype = compute_dtype(DTYPES[request.weight_dtype])
    x = request.noise.to(device=device, dtype=dtype)
    with torch.inference_mode():
        if request.method == METHOD_I2V:
            return denoise_i2v(model, x, request.text, request.timesteps, request.guidance, request.condition,
                               request.policy, callback)
        if request.method == METHOD_DISTILL:
            return denoise_distilled(model, x, request.text.txt, request.text.y_vec, request.timesteps,
                                     request.distilled_guidance, callback)
    raise ValueError(f"Unknown sampling method {request.method!r}.")


def encode(value: dict) -> str:
    return json.dumps(value)


def decode(raw: bytes) -> dict:
    return json.loads(raw.decode())
