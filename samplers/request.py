"""One sampling run as a validated request, and the one function that runs it.

The sampler node (in ComfyUI's process) and the parallel workers (``parallel/serve.py``) both build a
:class:`SamplingRequest` and call :func:`run_sampling`, so the method dispatch and the guidance
settings exist once.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from .denoisers import (
    BranchPolicy, Guidance, StepCallback, TextInputs, branches_per_forward, denoise_distilled, denoise_i2v,
)
from .image_condition import ImageCondition
from .step_cache import StepCacheSettings

METHOD_I2V, METHOD_DISTILL = "i2v", "distill"
# i2v: the reference's three-branch guidance (also text-to-video); distill: one branch, guidance embedding.
METHODS = (METHOD_I2V, METHOD_DISTILL)


@dataclass(frozen=True)
class SamplingRequest:
    """Everything one denoising run takes besides the model; checked when it is made.

    ``noise`` is the starting latent ``[B, C, T, H', W']``; ``guidance`` applies to ``i2v``,
    ``distilled_guidance`` (the strength fed to the guidance embedding) to ``distill``.
    """

    method: str
    noise: torch.Tensor
    text: TextInputs
    timesteps: list[float]
    guidance: Guidance = field(default_factory=Guidance)
    distilled_guidance: float = 4.0
    policy: BranchPolicy = field(default_factory=BranchPolicy)
    condition: ImageCondition | None = None
    cache: StepCacheSettings = field(default_factory=StepCacheSettings)

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, not {self.method!r}.")
        if self.condition is not None and self.method != METHOD_I2V:
            raise ValueError("An image condition needs method 'i2v'; 'distill' takes text only.")

    @property
    def num_steps(self) -> int:
        return len(self.timesteps) - 1

    @property
    def forward_rows(self) -> int:
        """Sequences in the widest model forward: the batch times the guidance branches run together."""
        batch = self.noise.shape[0]
        if self.method == METHOD_DISTILL:
            return batch
        return batch * branches_per_forward(self.guidance, self.condition is not None, self.policy)


def run_sampling(model: nn.Module, request: SamplingRequest, device: torch.device, dtype: torch.dtype,
                 callback: StepCallback | None = None) -> torch.Tensor:
    """Denoise ``request`` with ``model`` (an MMDiT, or the workers' sharded one) in ``dtype`` on ``device``
    and return the final latent ``[B, C, T, H', W']`` (references not pasted yet)."""
    x = request.noise.to(device=device, dtype=dtype)
    with torch.inference_mode():
        if request.method == METHOD_I2V:
            return denoise_i2v(model, x, request.text, request.timesteps, request.guidance, request.condition,
                               request.policy, callback, request.cache)
        return denoise_distilled(model, x, request.text.txt, request.text.y_vec, request.timesteps,
                                 request.distilled_guidance, callback, request.cache)
