"""How far two correct float32 evaluations of one computation may lie apart: the golden tolerances.

The golden files hold the official code's float32 results from one CPU. Another CPU, BLAS build or kernel
path (AVX2 or AVX-512 ATen kernels, MKL's code paths, oneDNN's ISA, thread count) sums the same terms in
another order or with fused multiply-adds, so a correct implementation lands near, not on, those values.
The bounds follow the probabilistic rounding error analysis of Higham and Mary ("A new approach to
probabilistic rounding error analysis", SIAM J. Sci. Comput. 41(5), 2019):

- A computation whose result passes through ``n`` float32 roundings (a dot product of ``K`` terms: ``K``;
  ``stages`` such reductions chained: ``K * stages``) has a relative error of at most
  ``lambda * sqrt(n) * u`` (``u = 2**-24``) with probability at least ``1 - 2 n exp(-lambda**2 / 2)``,
  when rounding errors are independent and of mean zero (the model under which every BLAS kernel's
  reordering is just another draw). ``lambda = 8`` makes a false alarm about ``n * 1e-14`` likely.
  The worst-case bound ``n u`` is never approached in practice and would accept real bugs.
- Two implementations can each be off by that: a factor 2. Activations are normalised, so the terms'
  magnitude is taken as the compared tensor's largest magnitude. ``stages`` counts every Linear and
  convolution on the way (parallel branches counted as chained: an over-estimate). Norm statistics use
  cascade summation (error growing with ``log K``) and are covered by that budget.
- Elementwise maths (``exp``, ``log``, ``cos``, divisions) is within a few ulp per operation in every
  vector math library PyTorch uses.

Every comparison records ``error / bound``; the terminal summary prints the worst (see ``conftest.py``),
which is how the README's Exactness table is measured.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

UNIT_ROUNDOFF = 2.0**-24  # float32: half the distance from 1 to the next float

# (test id, what, error, bound): filled by the assertions below, printed by conftest's terminal summary.
OBSERVED: list[tuple[str, str, float, float]] = []


CONFIDENCE = 8.0  # lambda of the probabilistic bound


def relative_error_bound(roundings: int) -> float:
    """The relative error of a result after ``roundings`` float32 roundings (probabilistic bound)."""
    return CONFIDENCE * math.sqrt(roundings) * UNIT_ROUNDOFF


@dataclass(frozen=True)
class Reductions:
    """The float32 budget of a computation: its longest dot product and how many are chained."""

    length: int  # the longest reduction: a matmul's inner size, a conv's C_in x kernel volume, attention keys
    stages: int  # dot-product reductions in sequence on the way to the compared value

    @classmethod
    def of_module(cls, module: torch.nn.Module, sequence_length: int = 0, repeats: float = 1) -> Reductions:
        """The budget of a network read from its layers: every Linear/Conv counts as one stage (parallel
        branches counted as if chained: an over-estimate); attention adds ``sequence_length`` keys.
        ``repeats`` multiplies the stages (loops over the network, guidance gain)."""
        lengths, stages = [sequence_length], 0
        for layer in module.modules():
            if isinstance(layer, torch.nn.Linear):
                lengths.append(layer.in_features)
            elif isinstance(layer, torch.nn.modules.conv._ConvNd):
                lengths.append(layer.in_channels // layer.groups * math.prod(layer.kernel_size))
            else:
                continue
            stages += 1
        return cls(max(lengths), math.ceil(stages * repeats))

    def bound(self, reference: torch.Tensor) -> float:
        magnitude = reference.detach().abs().max().item()
        return 2 * relative_error_bound(self.length * self.stages) * magnitude


def assert_within(actual: torch.Tensor, expected: torch.Tensor, bound: float | torch.Tensor, what: str) -> float:
    """Assert ``|actual - expected| <= bound`` (a number or a per-element tensor); record the margin."""
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    difference = (actual.detach().double() - expected.detach().double()).abs()
    bound_t = torch.as_tensor(bound, dtype=torch.float64)
    ratio = (difference / bound_t.clamp(min=1e-300)).max().item()
    error = difference.max().item()
    OBSERVED.append((_current_test(), what, error, ratio))
    assert ratio <= 1.0, f"{what}: max abs error {error:.3g} exceeds the float32 bound ({ratio:.2f}x the bound)"
    return error


def assert_matches(actual: torch.Tensor, expected: torch.Tensor, budget: Reductions, what: str) -> float:
    """Assert ``actual`` is within the float32 budget of the reference tensor ``expected``."""
    return assert_within(actual, expected, budget.bound(expected), what)


def elementwise_bound(expected: torch.Tensor, ulps: float) -> torch.Tensor:
    """Per element: ``ulps`` units in the last place of the value (at least of 1, for values near 0)."""
    return ulps * UNIT_ROUNDOFF * expected.detach().double().abs().clamp(min=1.0)


def gaussian_noise_bound(expected: torch.Tensor) -> torch.Tensor:
    """Per element, for ``r cos(2 pi v)`` normal samples drawn from the same random bits.

    The bits are integers (identical everywhere); the transform is not. The angle carries up to
    ``2 pi u`` absolute error and ``cos`` one ulp, both scaled by the radius ``r <= sqrt(2 * 24 ln 2)``
    (the smallest float32 uniform); ``log``, ``sqrt`` and the products add a few ulp of the value.
    """
    radius = math.sqrt(2 * 24 * math.log(2))
    return UNIT_ROUNDOFF * ((2 * math.pi + 1) * radius + 16 * expected.detach().double().abs())


def _current_test() -> str:
    import os

    return os.environ.get("PYTEST_CURRENT_TEST", "").split(" ")[0]
