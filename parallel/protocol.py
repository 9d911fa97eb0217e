"""What the sampler hands the worker group, and the TCPStore keys both sides use.

A job is written with ``torch.save`` as plain tensors and numbers into the group's private
temporary folder (loaded back with ``weights_only=True``); the store only carries small signals:
which job to run, progress, the cancel flag and the outcome.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from ..loaders.mmdit_setup import MMDiTSetup
from ..samplers.denoisers import BranchPolicy, Guidance, TextInputs
from ..samplers.geometry import VideoGeometry
from ..samplers.image_condition import ImageCondition
from ..samplers.request import SamplingRequest
from ..samplers.step_cache import StepCacheSettings
from .layout import ParallelLayout

POLL_SECONDS = 0.02  # how often both sides look at the store

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


class SamplingCancelled(Exception):
    """The job stopped on a cancel request (all ranks at the same step)."""

    def __init__(self, steps_done: int):
        super().__init__(f"Sampling cancelled after {steps_done} steps.")
        self.steps_done = steps_done


@dataclass(frozen=True)
class WorkerJob:
    """One job for the group: the checkpoint and how the loader prepared it (every rank loads it the same
    way), the token layout, and the sampling request. With ``preview`` rank 0 writes each step's
    estimate of frame 0 for latent previews. The result comes back in the compute dtype."""

    checkpoint: str
    setup: MMDiTSetup
    layout: ParallelLayout
    sampling: SamplingRequest
    preview: bool = False

    @property
    def num_steps(self) -> int:
        return self.sampling.num_steps

    def save(self, path: Path) -> None:
        request = self.sampling
        condition = None
        if request.condition is not None:
            c = request.condition
            condition = {"cond_type": c.cond_type, "geometry": asdict(c.geometry), "mask": c.mask,
                         "masked_ref": c.masked_ref}
        text = request.text
        torch.save({
            "checkpoint": self.checkpoint, "setup": asdict(self.setup), "layout": asdict(self.layout),
            "preview": self.preview, "method": request.method, "noise": request.noise.cpu(),
            "text": [t.cpu() for t in (text.txt, text.y_vec, text.neg_txt, text.neg_y_vec)],
            "timesteps": [float(t) for t in request.timesteps], "guidance": asdict(request.guidance),
            "distilled_guidance": float(request.distilled_guidance), "policy": asdict(request.policy),
            "condition": condition, "cache": asdict(request.cache),
        }, path)

    @classmethod
    def load(cls, path: Path) -> "WorkerJob":
        data: dict[str, Any] = torch.load(path, weights_only=True)
        condition = data["condition"]
        if condition is not None:
            condition = ImageCondition(condition["cond_type"], VideoGeometry(**condition["geometry"]),
                                       condition["mask"], condition["masked_ref"])
        request = SamplingRequest(data["method"], data["noise"], TextInputs(*data["text"]), data["timesteps"],
                                  Guidance(**data["guidance"]), data["distilled_guidance"],
                                  BranchPolicy(**data["policy"]), condition, StepCacheSettings(**data["cache"]))
        return cls(data["checkpoint"], MMDiTSetup(**data["setup"]), ParallelLayout(**data["layout"]), request,
                   data["preview"])


def encode(value: dict) -> str:
    return json.dumps(value)


def decode(raw: bytes) -> dict:
    return json.loads(raw.decode())
