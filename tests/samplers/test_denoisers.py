"""The denoising loops against the official code (golden_v1/denoise_t2v, denoise_i2v, denoise_distilled).

Each case runs the full loop with the tiny MMDiT weights of the fixture, fp32 on the CPU, from the
reference's recorded noise, text embeddings and reference latents, and compares the final latent
(after the post-sampling paste) with the reference's, within the float32 budget of ``_budget``.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from denoise_cases import CASE_GEOMETRY, case_noise, guidance_of, load_denoise_case, text_inputs, timesteps_of
from comfyui_opensora.samplers import denoisers, geometry, image_condition, packing, schedule
from golden_tolerance import Reductions, assert_matches

GOLDEN = Path(__file__).resolve().parents[1] / "golden_v1"
# A denoise case: 64x96 pixels, 9 frames -> latent [16, 3, 8, 12], 12 steps (8 for distilled).
GOLDEN_MODULE = True  # every test here compares with the official code (conftest marks them golden)
def _budget(model, tensors, guidance: float, guidance_img: float = 0.0) -> Reductions:
    """The model's budget, times the guidance gain: the Euler steps add ``dt * v`` with ``sum(dt) = 1``,
    so the final latent carries at most the largest velocity error, and the guided velocity
    ``v_u + g_img (v_i - v_u) + g (v_c - v_i)`` multiplies a model error by up to ``1 + 2 (g + g_img)``."""
    text_tokens = max(v.shape[1] for k, v in tensors.items() if ".t5[" in k or k.startswith("text.t5"))
    image_tokens = CASE_GEOMETRY.latent_frames * CASE_GEOMETRY.tokens_per_frame
    return Reductions.of_module(model, image_tokens + text_tokens, repeats=1 + 2 * (guidance + guidance_img))


@pytest.fixture(scope="module")
def t2v_case():
    return load_denoise_case("denoise_t2v")


@pytest.fixture(scope="module")
def i2v_case():
    return load_denoise_case("denoise_i2v")


def _run_i2v(model, sub: dict, tensors, prefix: str, policy=denoisers.BranchPolicy()):
    option = sub["sampling_option"]["in"]
    record = sub["record"]
    prompts = sub["call"]["args"]["text"]
    batch = len(prompts)
    cond_type = sub["cond_type"]
    condition = None
    if cond_type != "t2v":
        refs = sub["references"]
        latents = [tensors[refs[f"sample0.ref{i}"]["key"]] for i in range(len(refs) - (batch - 1))]
        condition = image_condition.build_image_condition(cond_type, CASE_GEOMETRY, batch, latents)
        if batch > 1:  # the reference gives each sample its own reference latent
            per_sample = [tensors[refs[f"sample{b}.ref0"]["key"]] for b in range(batch)]
            masked = condition.masked_ref.clone()
            for b, latent in enumerate(per_sample):
                masked[b, :, 0] = latent[:, 0]
            condition = image_condition.ImageCondition(
                cond_type, CASE_GEOMETRY, condition.mask, masked, condition.head, condition.tail
            )
        assert torch.equal(condition.mask, tensors[record["masks"]["key"]])
        assert torch.equal(condition.masked_ref, tensors[record["masked_ref"]["key"]])
        cond_tokens = condition.tokens(2, torch.float32, "cpu")
        assert torch.equal(cond_tokens, tensors[record["model_input_cond_first_third"]["key"]])
    steps = []
    final = denoisers.denoise_i2v(
        model, case_noise(record, tensors), text_inputs(tensors, prefix, prompts), timesteps_of(option, CASE_GEOMETRY),
        guidance_of(option), condition, policy, callback=steps.append,
    )
    assert [s.step for s in steps] == list(range(option["num_steps"]))
    if condition is not None:
        final = image_condition.paste_references(final, condition)
    return final, tensors[record["final_latent"]["key"]]


def test_t2v_loop_matches_reference(t2v_case, record_property):
    manifest, tensors, model = t2v_case
    sub = {"sampling_option": manifest["sampling_option"], "record": manifest["record"],
           "call": manifest["call"], "cond_type": "t2v"}
    ours, expected = _run_i2v(model, sub, tensors, "")
    option = sub["sampling_option"]["in"]
    error = assert_matches(ours, expected, _budget(model, tensors, option["guidance"]), "denoise_t2v")
    record_property("max_abs_error", error)


@pytest.mark.parametrize("name", ["i2v_head", "i2v_tail", "i2v_loop", "i2v_head_b2"])
def test_i2v_loops_match_reference(i2v_case, name, record_property):
    manifest, tensors, model = i2v_case
    ours, expected = _run_i2v(model, manifest["sub_cases"][name], tensors, f"{name}.")
    option = manifest["sub_cases"][name]["sampling_option"]["in"]
    budget = _budget(model, tensors, option["guidance"], option["guidance_img"])
    error = assert_matches(ours, expected, budget, f"denoise_i2v/{name}")
    record_property("max_abs_error", error)
    if name == "i2v_head_b2":  # only batch element 0 gets the reference pasted, as in the reference
        refs = manifest["sub_cases"][name]["references"]
        assert torch.equal(ours[0, :, :1], tensors[refs["sample0.ref0"]["key"]])
        assert not torch.allclose(ours[1, :, :1], tensors[refs["sample1.ref0"]["key"]])


def test_distilled_loop_matches_reference(record_property):
    manifest, tensors, model = load_denoise_case("denoise_distilled")
    option = manifest["sampling_option"]["final"]
    g = geometry.VideoGeometry(option["height"], option["width"], 1)
    record = manifest["record"]
    noise = packing.unpack(tensors[record["noise_packed"]["key"]], 1, g.latent_height, g.latent_width, 2)
    prompt = manifest["call"]["args"]["text"][0]
    timesteps = timesteps_of(option, g)
    assert timesteps[:-1] == pytest.approx(record["timesteps_per_call"], abs=1e-7)
    ours = denoisers.denoise_distilled(
        model, noise, tensors[f"text.t5[{prompt}]"], tensors[f"text.clip[{prompt}]"], timesteps, option["guidance"]
    )
    budget = _budget(model, tensors, guidance=0.0)  # distilled: guidance is an input of the model, no branches
    error = assert_matches(ours, tensors[record["final_latent"]["key"]], budget, "denoise_distilled")
    record_property("max_abs_error", error)


def test_skipping_and_batching_save_passes_without_changing_results(t2v_case, i2v_case):
    """Skipped passes and batched or one-by-one branches agree with the reference's three batched
    branches; t2v runs two branches (one on odd oscillation steps, where both scales are 1), i2v three."""
    manifest, tensors, model = t2v_case
    t2v = {"sampling_option": manifest["sampling_option"], "record": manifest["record"],
           "call": manifest["call"], "cond_type": "t2v"}
    i2v_manifest, i2v_tensors, _ = i2v_case
    runs = [
        (t2v, tensors, "", denoisers.BranchPolicy(True, True), [2] * 11 + [1]),
        (t2v, tensors, "", denoisers.BranchPolicy(True, False), [1] * 23),
        (i2v_manifest["sub_cases"]["i2v_head"], i2v_tensors, "i2v_head.", denoisers.BranchPolicy(True, True),
         [3] * 11 + [1]),
    ]
    calls: list[int] = []
    handle = model.register_forward_pre_hook(lambda module, args, kwargs: calls.append(kwargs["img"].shape[0]),
                                             with_kwargs=True)
    try:
        for sub, case_tensors, prefix, policy, expected_calls in runs:
            reference, _ = _run_i2v(model, sub, case_tensors, prefix, denoisers.REFERENCE_BRANCHES)
            assert calls == [3] * 12
            calls.clear()
            ours, _ = _run_i2v(model, sub, case_tensors, prefix, policy)
            assert calls == expected_calls
            calls.clear()
            assert (ours - reference).abs().max().item() <= 1e-5
    finally:
        handle.remove()


def test_first_step_guidance_combination(i2v_case):
    """From the reference's recorded step-0 model outputs alone: the temporal image ramp and the
    three-branch combination give the recorded state after step 1 (no model needed)."""
    manifest, tensors, _ = i2v_case
    sub = manifest["sub_cases"]["i2v_head"]
    record = sub["record"]
    out = tensors[record["step0_model_output"]["key"]]
    v_c, v_u, v_u2 = out.chunk(3)
    timesteps = timesteps_of(sub["sampling_option"]["in"], CASE_GEOMETRY)
    ramp = schedule.temporal_image_scales(3.0, 0, 12, 3).repeat_interleave(24)[None, :, None]
    velocity = v_u2 + ramp * (v_u - v_u2) + 7.5 * (v_c - v_u)
    state = tensors[record["noise_packed"]["key"]] + (timesteps[1] - timesteps[0]) * velocity
    assert (state - tensors[record["latent_after_step_1_packed"]["key"]]).abs().max().item() <= 1e-6


def test_distill_refuses_a_model_without_guidance_embedding(t2v_case):
    _, _, model = t2v_case
    with pytest.raises(ValueError, match="guidance-distilled"):
        denoisers.denoise_distilled(model, torch.zeros(1, 16, 3, 8, 12), torch.zeros(1, 7, 32), torch.zeros(1, 24),
                                    [1.0, 0.0])
