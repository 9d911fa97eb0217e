"""Step caching: reuse the model outputs of the last computed step while the latent has barely moved.

A runtime-adaptive cache in the spirit of EasyCache/TeaCache that needs no per-model calibration. After
each computed step it measures how strongly the model reacts to its input,
``k = rel_change(output) / rel_change(input)`` between the last two computed steps (relative L1
changes). On a later step inside the ``[start, end)`` window (fractions of the steps) it predicts the
output change as ``k * rel_change(input since the last computed step)`` and, while that stays below
``threshold``, reuses the cached outputs instead of running the model. Every guidance branch is cached
together: a step reuses only when all the branches it needs were computed at the same earlier step, so
the branches always come from one model state. ``threshold = 0`` never reuses (the uncached result).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass(frozen=True)
class StepCacheSettings:
    """When the cache may reuse: ``threshold`` on the predicted relative output change (0 = off) and the
    window of steps, as fractions of the step count, in which reuse is allowed."""

    threshold: float = 0.0
    start: float = 0.2
    end: float = 0.9

    def __post_init__(self) -> None:
        if self.threshold < 0:
            raise ValueError(f"The step-cache threshold must be >= 0 (0 turns caching off), not {self.threshold}.")
        if not 0 <= self.start <= self.end <= 1:
            raise ValueError(
                f"The step-cache window must satisfy 0 <= start <= end <= 1 (fractions of the steps); "
                f"got start={self.start}, end={self.end}."
            )

    @property
    def enabled(self) -> bool:
        return self.threshold > 0


def _relative_change(new: torch.Tensor, old: torch.Tensor) -> float:
    return ((new - old).abs().mean() / old.abs().mean().clamp_min(1e-12)).item()


@dataclass
class StepCache:
    """The state of one sampling run: cached branch outputs, the input they were computed from and the
    model's measured output/input change ratio. ``skipped`` lists the steps that reused the cache."""

    settings: StepCacheSettings
    num_steps: int
    skipped: list[int] = field(default_factory=list)
    _input: torch.Tensor | None = None
    _outputs: dict[str, torch.Tensor] = field(default_factory=dict)
    _ratio: float | None = None

    def lookup(self, step: int, x: torch.Tensor, names: tuple[str, ...]) -> list[torch.Tensor] | None:
        """The cached outputs of ``names`` if step ``step`` with input ``x`` may reuse them, else None."""
        if not self.settings.enabled or self._ratio is None or self._input is None:
            return None
        if not self.settings.start * self.num_steps <= step < self.settings.end * self.num_steps:
            return None
        if not set(names) <= set(self._outputs):
            return None
        if self._ratio * _relative_change(x, self._input) >= self.settings.threshold:
            return None
        self.skipped.append(step)
        return [self._outputs[name] for name in names]

    def store(self, x: torch.Tensor, outputs: dict[str, torch.Tensor]) -> None:
        """Record a computed step: update the output/input change ratio from the previous computed step
        (using a branch both computed) and keep ``outputs`` for reuse."""
        if not self.settings.enabled:
            return
        shared = [name for name in outputs if name in self._outputs]
        if self._input is not None and shared:
            input_change = _relative_change(x, self._input)
            if input_change > 0:
                self._ratio = _relative_change(outputs[shared[0]], self._outputs[shared[0]]) / input_change
        self._input = x
        self._outputs = dict(outputs)
