"""The Open-Sora 2.0 denoising loops: the three-branch i2v sampler (t2v, i2v, v2v) and the
guidance-distilled single-branch sampler (Flux-dev first frame).

Facts: docs/reference.md#denoising (``I2VDenoiser`` / ``DistilledDenoiser``, ``sampling.py:159-281``).
Numerics follow the reference: the latent, the model output and the guidance combination stay in the
latent's dtype (the model dtype), timesteps enter the model as tensors of that dtype, and the Euler step
size ``t_next - t`` is a Python float.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from ..models.mmdit import MMDiTConfig

from .conditioning import TextConditioning
from .image_condition import ImageCondition
from .packing import image_ids, pack, text_ids, unpack
from .schedule import guidance_scales, temporal_image_scales
from .step_cache import StepCache, StepCacheSettings

# Branch names: text + image condition, negative text + image condition, negative text alone.
CONDITIONAL, UNCONDITIONAL, UNCONDITIONAL_NO_IMAGE = "cond", "uncond", "uncond_no_image"
ALL_BRANCHES = (CONDITIONAL, UNCONDITIONAL, UNCONDITIONAL_NO_IMAGE)


@dataclass(frozen=True)
class TextInputs:
    """Encoded prompts per batch element: T5 states ``[B, L, D]`` and CLIP vectors ``[B, V]``, positive
    and negative (the reference's negative prompt is ``""``)."""

    txt: torch.Tensor
    y_vec: torch.Tensor
    neg_txt: torch.Tensor
    neg_y_vec: torch.Tensor

    def to(self, device: torch.device | str, dtype: torch.dtype) -> "TextInputs":
        return TextInputs(*(t.to(device=device, dtype=dtype) for t in (self.txt, self.y_vec, self.neg_txt, self.neg_y_vec)))


@dataclass(frozen=True)
class Guidance:
    """Guidance settings of the i2v sampler (the reference's ``SamplingOption`` fields)."""

    text_scale: float = 7.5
    image_scale: float = 3.0
    text_oscillation: bool = True
    image_oscillation: bool = True
    temporal_image_scaling: bool = True  # takes effect for i2v condition types only, as in the reference


@dataclass(frozen=True)
class BranchPolicy:
    """How the guidance branches are run.

    ``skip_redundant``: leave out passes that cannot change the result (the image-free branch when no
    image condition is given or the image scale is 1; both unconditional branches when both scales
    are 1). ``batched``: run the remaining branches as one batch instead of one forward each.
    Neither changes results beyond float rounding; ``REFERENCE_BRANCHES`` runs exactly what the
    reference runs.
    """

    skip_redundant: bool = True
    batched: bool = True


REFERENCE_BRANCHES = BranchPolicy(skip_redundant=False, batched=True)


@dataclass(frozen=True)
class StepResult:
    """Handed to the per-step callback after each Euler step."""

    step: int  # 0-based index of the finished step
    total: int
    time: float
    _state: torch.Tensor  # packed latent entering the step
    _velocity: torch.Tensor
    _shape: tuple[int, int, int, int]  # T, H', W', patch size

    def denoised(self) -> torch.Tensor:
        """The step's estimate of the clean latent ``x - t * v`` as ``[B, C, T, H', W']``."""
        return unpack(self._state - self.time * self._velocity, *self._shape)

    def velocity(self) -> torch.Tensor:
        """The guided velocity of the step (packed tokens), e.g. for a NaN/inf check."""
        return self._velocity


StepCallback = Callable[[StepResult], None]


def _euler_step(x: torch.Tensor, velocity: torch.Tensor, step: int, num_steps: int, t: float, t_next: float,
                shape: tuple[int, int, int, int], callback: StepCallback | None) -> torch.Tensor:
    """``x + (t_next - t) * v`` (the reference's Euler update, ``t_next - t`` a Python float); reports the step."""
    x_next = x + (t_next - t) * velocity
    if callback is not None:
        callback(StepResult(step, num_steps, t, x, velocity, shape))
    return x_next


class _ModelRunner:
    """Calls the MMDiT with the constant inputs of one sampling run."""

    def __init__(self, model: nn.Module, shape: tuple[int, int, int, int], dtype: torch.dtype, device: torch.device):
        self.model = model
        self.config = model.config
        self.dtype, self.device = dtype, device
        self.img_ids = image_ids(1, *shape, dtype=dtype, device=device)

    def __call__(self, x: torch.Tensor, txt: torch.Tensor, y_vec: torch.Tensor, cond: torch.Tensor | None,
                 time: float, guidance: float | None) -> torch.Tensor:
        rows = txt.shape[0]
        img = x if x.shape[0] == rows else x.repeat(rows // x.shape[0], 1, 1)
        timesteps = torch.full((rows,), time, dtype=self.dtype, device=self.device)
        guidance_vec = None
        if self.config.guidance_embed:
            guidance_vec = torch.full((rows,), guidance, dtype=self.dtype, device=self.device)
        return self.model(
            img=img,
            img_ids=self.img_ids.expand(rows, -1, -1),
            txt=txt,
            txt_ids=text_ids(rows, txt.shape[1], self.dtype, self.device),
            timesteps=timesteps,
            y_vec=y_vec,
            cond=cond if self.config.cond_embed else None,
            guidance=guidance_vec,
        )


def _check_latent(model: nn.Module, noise: torch.Tensor) -> int:
    config = model.config
    if noise.ndim != 5:
        raise ValueError(f"The noise must be a video latent [B, C, T, H', W']; got shape {tuple(noise.shape)}.")
    p = config.patch_size
    if noise.shape[1] * p * p != config.in_channels or noise.shape[-1] % p or noise.shape[-2] % p:
        raise ValueError(
            f"This model takes {config.in_channels} features per token (latent channels x {p}x{p} patches); "
            f"the latent has {noise.shape[1]} channels and size {noise.shape[-2]}x{noise.shape[-1]}. Make the "
            "noise for the autoencoder this model was trained with."
        )
    return p


def _check_steps(timesteps: list[float]) -> None:
    if len(timesteps) < 2:
        raise ValueError("The schedule needs at least 2 times (1 step).")


def denoise_i2v(
    model: nn.Module,
    noise: torch.Tensor,
    text: TextInputs,
    timesteps: list[float],
    guidance: Guidance = Guidance(),
    condition: ImageCondition | None = None,
    policy: BranchPolicy = BranchPolicy(),
    callback: StepCallback | None = None,
    cache: StepCacheSettings = StepCacheSettings(),
) -> torch.Tensor:
    """Sample with the reference's three-branch guidance and return the final latent ``[B, C, T, H', W']``.

    ``noise`` is on the model's device in the model dtype; ``text`` tensors have ``B`` rows; without a
    ``condition`` this is text-to-video (the model still receives an all-zero condition).
    Velocity: ``v_u2 + s_img * (v_u - v_u2) + s_txt * (v_c - v_u)`` (docs/reference.md#denoising), where the image
    scale may ramp over latent frames for i2v types. ``cache`` may reuse the branch outputs of an
    earlier step (:mod:`.step_cache`; off by default).
    """
    p = _check_latent(model, noise)
    _check_steps(timesteps)
    config = model.config
    if condition is not None and not config.cond_embed:
        raise ValueError("This model has no image-condition input (cond_in); it cannot use an image condition.")
    batch, _, frames, height, width = noise.shape
    dtype, device = noise.dtype, noise.device
    shape = (frames, height, width, p)
    x = pack(noise, p)
    run = _ModelRunner(model, shape, dtype, device)
    text = text.to(device, dtype)

    cond = zero_cond = None
    if config.cond_embed:
        if condition is not None:
            cond = condition.tokens(p, dtype, device)
        else:
            cond = torch.zeros(batch, x.shape[1], config.cond_in_channels, dtype=dtype, device=device)
        zero_cond = torch.zeros_like(cond)
    branch_inputs = {
        CONDITIONAL: (text.txt, text.y_vec, cond),
        UNCONDITIONAL: (text.neg_txt, text.neg_y_vec, cond),
        UNCONDITIONAL_NO_IMAGE: (text.neg_txt, text.neg_y_vec, zero_cond),
    }
    temporal = guidance.temporal_image_scaling and condition is not None and condition.temporal_image_guidance
    tokens_per_frame = x.shape[1] // frames
    num_steps = len(timesteps) - 1
    step_cache = StepCache(cache, num_steps)

    for step, (t, t_next) in enumerate(zip(timesteps[:-1], timesteps[1:])):
        text_scale, image_scale = guidance_scales(
            step, guidance.text_scale, guidance.image_scale, guidance.text_oscillation, guidance.image_oscillation
        )
        names = _needed_branches(text_scale, image_scale, condition is not None, policy.skip_redundant)
        outputs = step_cache.lookup(step, x, names)
        if outputs is None:
            outputs = _run_branches(run, x, [branch_inputs[n] for n in names], t, guidance.text_scale,
                                    policy.batched)
            step_cache.store(x, dict(zip(names, outputs)))
        v = dict(zip(names, outputs))
        if len(names) == 1:
            velocity = v[CONDITIONAL]
        elif len(names) == 2:
            velocity = v[UNCONDITIONAL] + text_scale * (v[CONDITIONAL] - v[UNCONDITIONAL])
        else:
            scale: float | torch.Tensor = image_scale
            if image_scale > 1.0 and temporal:
                ramp = temporal_image_scales(image_scale, step, num_steps, frames)
                scale = ramp.repeat_interleave(tokens_per_frame)[None, :, None].to(device=device, dtype=dtype)
            velocity = (
                v[UNCONDITIONAL_NO_IMAGE]
                + scale * (v[UNCONDITIONAL] - v[UNCONDITIONAL_NO_IMAGE])
                + text_scale * (v[CONDITIONAL] - v[UNCONDITIONAL])
            )
        del outputs, v
        x = _euler_step(x, velocity, step, num_steps, t, t_next, shape, callback)
    return unpack(x, *shape)


def _needed_branches(text_scale: float, image_scale: float, has_image: bool, skip_redundant: bool) -> tuple[str, ...]:
    if not skip_redundant:
        return ALL_BRANCHES
    if text_scale == 1.0 and image_scale == 1.0:
        return (CONDITIONAL,)
    if not has_image or image_scale == 1.0:
        return (CONDITIONAL, UNCONDITIONAL)
    return ALL_BRANCHES


def branches_per_forward(guidance: Guidance, has_image: bool, policy: BranchPolicy) -> int:
    """Branches the widest forward of :func:`denoise_i2v` runs together (for memory estimates): the steps
    at full guidance scales need the most; unbatched branches run one at a time."""
    if not policy.batched:
        return 1
    return len(_needed_branches(guidance.text_scale, guidance.image_scale, has_image, policy.skip_redundant))


def _run_branches(run: _ModelRunner, x, inputs, time: float, guidance: float, batched: bool) -> list[torch.Tensor]:
    """One forward per branch, or one forward over all branches when their text lengths agree."""
    if batched and len(inputs) > 1 and len({txt.shape[1] for txt, _, _ in inputs}) == 1:
        txt = torch.cat([i[0] for i in inputs])
        y_vec = torch.cat([i[1] for i in inputs])
        cond = None if inputs[0][2] is None else torch.cat([i[2] for i in inputs])
        return list(run(x, txt, y_vec, cond, time, guidance).chunk(len(inputs)))
    return [run(x, txt, y_vec, cond, time, guidance) for txt, y_vec, cond in inputs]


def denoise_distilled(
    model: nn.Module,
    noise: torch.Tensor,
    txt: torch.Tensor,
    y_vec: torch.Tensor,
    timesteps: list[float],
    guidance: float = 4.0,
    callback: StepCallback | None = None,
    cache: StepCacheSettings = StepCacheSettings(),
) -> torch.Tensor:
    """Single-branch sampling of a guidance-distilled model (Flux-dev): ``guidance`` enters through the
    model's guidance embedding; no negative prompt. ``cache`` as in :func:`denoise_i2v`. Returns
    ``[B, C, T, H', W']``."""
    p = _check_latent(model, noise)
    _check_steps(timesteps)
    config = model.config
    if not config.guidance_embed:
        raise ValueError(
            "Method 'distill' needs a guidance-distilled model (Flux-dev, with guidance_in); this model has "
            "no guidance embedding. Use method 'i2v'."
        )
    batch, _, frames, height, width = noise.shape
    dtype, device = noise.dtype, noise.device
    shape = (frames, height, width, p)
    x = pack(noise, p)
    run = _ModelRunner(model, shape, dtype, device)
    txt, y_vec = txt.to(device=device, dtype=dtype), y_vec.to(device=device, dtype=dtype)
    cond = None
    if config.cond_embed:
        cond = torch.zeros(batch, x.shape[1], config.cond_in_channels, dtype=dtype, device=device)
    num_steps = len(timesteps) - 1
    step_cache = StepCache(cache, num_steps)
    for step, (t, t_next) in enumerate(zip(timesteps[:-1], timesteps[1:])):
        cached = step_cache.lookup(step, x, (CONDITIONAL,))
        if cached is None:
            velocity = run(x, txt, y_vec, cond, t, guidance)
            step_cache.store(x, {CONDITIONAL: velocity})
        else:
            velocity = cached[0]
        x = _euler_step(x, velocity, step, num_steps, t, t_next, shape, callback)
    return unpack(x, *shape)


def text_inputs_for_batch(conditioning: TextConditioning, batch_size: int) -> TextInputs:
    """The prompts of ``conditioning`` for a latent batch: one prompt is shared by every element,
    otherwise there must be one prompt per element (the reference's ``len(text) == B``)."""

    def rows(tensor: torch.Tensor, what: str) -> torch.Tensor:
        if tensor.shape[0] == batch_size:
            return tensor
        if tensor.shape[0] == 1:
            return tensor.expand(batch_size, *tensor.shape[1:])
        raise ValueError(
            f"The conditioning has {tensor.shape[0]} {what} but the noise batch is {batch_size}: use one "
            "prompt, or as many prompts as the noise batch size."
        )

    return TextInputs(
        rows(conditioning.t5, "prompts"),
        rows(conditioning.clip, "prompts"),
        rows(conditioning.neg_t5, "negative prompts"),
        rows(conditioning.neg_clip, "negative prompts"),
    )


def check_text_fits(conditioning: TextConditioning, config: MMDiTConfig) -> None:
    """Raise if the text encoders' widths are not what the model takes (T5 states, CLIP vectors)."""
    for name, tensor, expected in (
        ("T5 states", conditioning.t5, config.context_in_dim),
        ("CLIP vectors", conditioning.clip, config.vec_in_dim),
        ("negative T5 states", conditioning.neg_t5, config.context_in_dim),
        ("negative CLIP vectors", conditioning.neg_clip, config.vec_in_dim),
    ):
        if tensor.shape[-1] != expected:
            raise ValueError(
                f"The conditioning's {name} have {tensor.shape[-1]} features but the model takes {expected}; "
                "encode the prompt with the text encoders that belong to this model."
            )


def activation_bytes(config: MMDiTConfig, rows: int, image_tokens: int, text_tokens: int, dtype: torch.dtype) -> int:
    """Rough device memory one forward of ``rows`` sequences needs besides the weights (for the host's
    memory manager): the widest activations are the single blocks' MLP and attention inputs."""
    width = config.hidden_size * (3 + config.mlp_ratio)
    element = torch.empty((), dtype=dtype).element_size()
    return int(rows * (image_tokens + text_tokens) * width * element * 2)
