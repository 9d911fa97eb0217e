"""Sampler node: denoise an Open-Sora noise LATENT with the MMDiT (t2v, i2v, v2v, distilled)."""

from __future__ import annotations

import torch

from ..parallel.joined import joined_group
from ..parallel.settings import ParallelSettings
from ..samplers import denoisers
from ..samplers.conditioning import TextConditioning
from ..samplers.image_condition import ImageCondition, paste_references
from ..samplers.latent import GEOMETRY_KEY, make_latent, read_latent
from ..samplers.request import METHODS, SamplingRequest, run_sampling
from ..samplers.schedule import get_schedule
from .. import host
from .output_guard import check_finite, check_input_finite, precision_remedy
from .parallel import sample_in_workers
from .previews import sampler_preview
from .spec import Input, NodeSpec, Output, register

# Widget value -> how the guidance branches run.
BRANCH_MODES = {
    "fast": denoisers.BranchPolicy(skip_redundant=True, batched=True),
    "low memory": denoisers.BranchPolicy(skip_redundant=True, batched=False),
    "reference": denoisers.REFERENCE_BRANCHES,
}


@register("OpenSoraSampler", "Open-Sora Sampler")
class OpenSoraSampler:
    """Flow-matching Euler sampler of Open-Sora 2.0 with the reference's guidance."""

    SPEC = NodeSpec(
        inputs=(
            Input("model", "OPENSORA_MODEL", "The MMDiT from 'Open-Sora Model Loader'."),
            Input("conditioning", "OPENSORA_COND", "Encoded prompt and negative prompt."),
            Input("noise", "LATENT", "Starting noise from 'Open-Sora Noise' (sets size, frames, batch)."),
            Input("method", choices=METHODS, default="i2v",
                  tooltip="i2v: the reference's three-branch guidance (text and image scales), used for "
                          "text-to-video too. distill: one branch with the guidance embedding, for "
                          "guidance-distilled Flux-dev weights (t2i2v first frame)."),
            Input("steps", "INT", default=50, min=1, max=1000, tooltip="Euler steps (reference: 50)."),
            Input("guidance", "FLOAT", default=7.5, min=0.0, max=100.0, step=0.1,
                  tooltip="Text guidance scale (reference: 7.5). For 'distill' the distilled guidance "
                          "strength (the reference uses 4.0 for Flux-dev)."),
            Input("guidance_img", "FLOAT", default=3.0, min=0.0, max=100.0, step=0.1,
                  tooltip="Image guidance scale for 'i2v' (reference: 3.0); 1 turns image guidance off."),
            Input("text_osci", "BOOLEAN", default=True,
                  tooltip="Oscillating text guidance: full scale for the first 10 steps and on even "
                          "steps, 1 on odd steps (reference: on)."),
            Input("image_osci", "BOOLEAN", default=True,
                  tooltip="Oscillating image guidance, like text_osci (reference: on)."),
            Input("scale_temporal_osci", "BOOLEAN", default=True,
                  tooltip="For i2v condition types: image guidance ramps from 1 at the first latent frame "
                          "to a bound that decays over the steps (reference: on)."),
            Input("shift", "BOOLEAN", default=True,
                  tooltip="Shift the schedule towards noise by resolution and length (reference: on)."),
            Input("flow_shift", "FLOAT", default=0.0, min=0.0, max=100.0, step=0.1,
                  tooltip="Fixed shift factor instead of the computed one (with shift on); 0 = computed "
                          "(reference)."),
            Input("branch_mode", choices=BRANCH_MODES, default="fast",
                  tooltip="fast: skip guidance passes that cannot change the result and batch the rest in "
                          "one forward. low memory: skip them and run passes one at a time. reference: "
                          "always run all three branches in one batch like the official script (same "
                          "result up to float rounding, up to 1.7x slower)."),
            Input("image_condition", "OPENSORA_IMAGE_COND", optional=True,
                  tooltip="From 'Open-Sora Image Condition' (i2v / v2v); leave empty for text-to-video."),
            Input("parallel", "OPENSORA_PARALLEL", optional=True,
                  tooltip="From 'Open-Sora Parallel Settings': sample on several GPUs with a warm worker "
                          "group (same result); leave empty to sample in ComfyUI's process."),
            Input("cache_threshold", "FLOAT", default=0.0, min=0.0, max=1.0, step=0.01, optional=True,
                  tooltip="Step caching (off at 0): skip the model on a step and reuse the previous "
                          "outputs (all guidance branches together) while the predicted relative change "
                          "of the model output stays below this. Larger = faster, further from the "
                          "uncached video; try 0.05-0.2. Needs no calibration; quality on the released "
                          "weights is not measured yet."),
            Input("cache_start", "FLOAT", default=0.2, min=0.0, max=1.0, step=0.05, optional=True,
                  tooltip="Step caching never skips before this fraction of the steps (the layout forms early)."),
            Input("cache_end", "FLOAT", default=0.9, min=0.0, max=1.0, step=0.05, optional=True,
                  tooltip="Step caching never skips from this fraction of the steps on (fine detail at the end)."),
        ),
        outputs=(Output("LATENT", "latent", "The denoised latent for 'Open-Sora VAE Decode' (same size and "
                                             "frames as the noise)."),),
        description=(
            "Samples an Open-Sora 2.0 video (or image) from noise like the official inference script: shifted "
            "flow-matching schedule, Euler steps, three-branch text/image guidance with oscillation. With an "
            "image condition the first/last latent frame of batch element 0 is replaced by the reference "
            "afterwards, as the reference does."
        ),
    )

    def execute(self, model, conditioning: TextConditioning, noise: dict, method: str, steps: int,
                guidance: float, guidance_img: float, text_osci: bool, image_osci: bool,
                scale_temporal_osci: bool, shift: bool, flow_shift: float, branch_mode: str,
                image_condition: ImageCondition | None = None, parallel: ParallelSettings | None = None,
                cache_threshold: float = 0.0, cache_start: float = 0.2, cache_end: float = 0.9) -> tuple[dict]:
        samples, geometry = read_latent(noise)
        geometry.validate()
        batch = samples.shape[0]
        if branch_mode not in BRANCH_MODES:
            raise ValueError(f"branch_mode must be one of {list(BRANCH_MODES)}, not {branch_mode!r}.")
        if steps < 1:
            raise ValueError(f"steps={steps}: at least 1 sampling step is needed.")
        cache = denoisers.StepCacheSettings(cache_threshold, cache_start, cache_end)
        if cache.enabled and parallel is not None:
            raise ValueError("Step caching runs in ComfyUI's process only: set cache_threshold to 0 or disconnect "
                             "the parallel settings.")
        _check_model_fits(model.config, geometry)
        denoisers.check_text_fits(conditioning, model.config)
        _check_inputs_finite(samples, conditioning, image_condition)
        stage, remedy = "Open-Sora Sampler", precision_remedy(model.dtype, "weight_dtype on the Open-Sora Model Loader")
        text = denoisers.text_inputs_for_batch(conditioning, batch)
        if image_condition is not None:
            if not model.config.cond_embed:
                raise ValueError("This model has no image-condition input (e.g. Flux-dev); disconnect the image condition.")
            image_condition.check_matches(geometry, batch)
        timesteps = get_schedule(steps, geometry.tokens_per_frame, geometry.latent_frames, shift,
                                 flow_shift if flow_shift > 0 else None)
        request = SamplingRequest(
            method, samples, text, timesteps,
            denoisers.Guidance(guidance, guidance_img, text_osci, image_osci, scale_temporal_osci),
            distilled_guidance=guidance, policy=BRANCH_MODES[branch_mode], condition=image_condition, cache=cache)
        preview = sampler_preview(geometry.kind)
        if parallel is not None:  # a warm worker group on several GPUs loads model.path itself
            x = sample_in_workers(parallel, model, request, preview)
            check_finite(x, stage, model.dtype, "the worker group's GPUs", remedy)
            return (_output_latent(x, image_condition, geometry, noise),)

        image_tokens = geometry.latent_frames * geometry.tokens_per_frame
        host.load_models([model.managed], memory_required=denoisers.activation_bytes(
            model.config, request.forward_rows, image_tokens, conditioning.t5.shape[1], model.dtype))
        device = host.torch_device()
        progress = host.Progress(steps)

        def on_step(result: denoisers.StepResult) -> None:
            check_finite(result.velocity(), f"{stage} (step {result.step + 1} of {result.total})", model.dtype,
                         device, remedy)
            progress.update(1, preview(result.denoised()) if preview else None)
            host.check_interrupt()

        host.check_interrupt()
        group = joined_group()  # generate --sp-size: the MMDiT runs over the group's ranks
        network = model.module if group is None else group.sharded(model.module)
        x = run_sampling(network, request, device, model.dtype, on_step)
        check_finite(x, stage, model.dtype, device, remedy)
        return (_output_latent(x, image_condition, geometry, noise),)


def _output_latent(x: torch.Tensor, image_condition: ImageCondition | None, geometry, noise: dict) -> dict:
    """The LATENT output: references pasted (as the reference does), float32 on the host's device."""
    if image_condition is not None:
        with torch.inference_mode():
            x = paste_references(x, image_condition)
    result = x.to(device=host.intermediate_device(), dtype=torch.float32)
    extra = {k: v for k, v in noise.items() if k not in ("samples", "type", GEOMETRY_KEY)}
    return make_latent(result, geometry, **extra)


def _check_inputs_finite(samples: torch.Tensor, conditioning: TextConditioning,
                         image_condition: ImageCondition | None) -> None:
    """Refuse NaN/inf inputs, naming the node that made them."""
    check_input_finite(samples, "The noise latent", "Re-run 'Open-Sora Noise' (or the node that made it).")
    for values in (conditioning.t5, conditioning.clip, conditioning.neg_t5, conditioning.neg_clip):
        check_input_finite(values, "The text conditioning",
                           "Encode the prompt again in fp32 or bf16 (set weight_dtype on the Text Encoder Loader).")
    if image_condition is not None:
        check_input_finite(image_condition.masked_ref, "The image condition",
                           "Set dtype to fp32 on the Open-Sora VAE Loader that encoded it.")


def _check_model_fits(config, geometry) -> None:
    kind = geometry.kind
    if (config.in_channels, config.patch_size) != (kind.model_in_channels, kind.patch_size):
        raise ValueError(
            f"The model takes {config.in_channels} features per token (patch size {config.patch_size}) but the "
            f"noise is for the {kind.display_name} ({kind.model_in_channels} features, patch size "
            f"{kind.patch_size}). Pick the matching autoencoder on the noise node."
        )

