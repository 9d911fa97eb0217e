"""The text conditioning value handed from the prompt encoder to the sampler."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class TextConditioning:
    """Encoded prompts: T5 hidden states and CLIP pooled vectors, positive and negative.

    ``t5`` is ``[N, L, 4096]`` (L = 512 for the reference), ``clip`` is ``[N, 768]``; the negative
    tensors have the same shapes (the reference's negative prompt is ``""``). ``prompts`` are the final
    strings fed to the encoders (with the fps / motion-score suffix), kept for the ``.txt`` sidecar.
    """

    t5: torch.Tensor
    clip: torch.Tensor
    neg_t5: torch.Tensor
    neg_clip: torch.Tensor
    prompts: tuple[str, ...]
    negative_prompts: tuple[str, ...]

    def __post_init__(self) -> None:
        n = self.t5.shape[0]
        if self.clip.shape[0] != n or len(self.prompts) != n:
            raise ValueError("T5 states, CLIP vectors and prompts must have the same batch size.")
        if self.neg_t5.shape[0] != self.neg_clip.shape[0] or len(self.negative_prompts) != self.neg_t5.shape[0]:
            raise ValueError("Negative T5 states, CLIP vectors and prompts must have the same batch size.")

    @property
    def batch_size(self) -> int:
        return self.t5.shape[0]
