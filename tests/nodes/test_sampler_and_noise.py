"""The Noise, Image Condition and Sampler nodes through the standalone host, against the golden loops."""

from __future__ import annotations

import logging
import math
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from golden_tolerance import assert_within, gaussian_noise_bound

from sampling_doubles import SAMPLER_DEFAULTS, fixed_vae, golden_case, golden_conditioning, noise_latent
from comfyui_opensora import nodes
from comfyui_opensora.models import latent_space
from comfyui_opensora.nodes.image_condition import OpenSoraImageCondition
from comfyui_opensora.nodes.model_loader import OpenSoraModelLoader
from comfyui_opensora.nodes.noise import OpenSoraNoise
from comfyui_opensora.nodes.sampler import OpenSoraSampler
from comfyui_opensora.media import preview
from comfyui_opensora.samplers import geometry, packing
from comfyui_opensora.samplers.conditioning import TextConditioning
from comfyui_opensora.samplers.latent import read_latent

GOLDEN = Path(__file__).resolve().parents[1] / "golden_v1"
# ------------------------------------------------------------------------------------ registration


def test_nodes_are_registered_with_frozen_inputs():
    for node_id, cls in (("OpenSoraNoise", OpenSoraNoise), ("OpenSoraSampler", OpenSoraSampler),
                         ("OpenSoraImageCondition", OpenSoraImageCondition)):
        assert nodes.NODE_CLASS_MAPPINGS[node_id] is cls
        assert nodes.NODE_DISPLAY_NAME_MAPPINGS[node_id].startswith("Open-Sora ")
        inputs = cls.INPUT_TYPES()
        for group in inputs.values():
            assert all("tooltip" in spec[1] for spec in group.values())
        assert cls.FUNCTION == "execute" and cls.CATEGORY == "Open-Sora" and cls.DESCRIPTION
    assert list(OpenSoraNoise.INPUT_TYPES()["required"]) == [
        "autoencoder", "resolution", "aspect_ratio", "width", "height", "num_frames", "batch_size", "seed",
        "noise_device", "noise_dtype"]
    assert list(OpenSoraNoise.INPUT_TYPES()["optional"]) == ["seed_mode"]
    assert list(OpenSoraSampler.INPUT_TYPES()["required"]) == [
        "model", "conditioning", "noise", "method", "steps", "guidance", "guidance_img", "text_osci",
        "image_osci", "scale_temporal_osci", "shift", "flow_shift", "branch_mode"]
    assert list(OpenSoraSampler.INPUT_TYPES()["optional"]) == ["image_condition", "parallel", "cache_threshold",
                                                              "cache_start", "cache_end"]
    assert list(OpenSoraImageCondition.INPUT_TYPES()["required"]) == [
        "vae", "image", "noise", "cond_type", "posterior", "seed"]
    assert list(OpenSoraImageCondition.INPUT_TYPES()["optional"]) == ["last_image", "tiling"]


# --------------------------------------------------------------------------------------- noise node


@pytest.mark.parametrize("resolution, ratio, size", [("256px", "16:9", (192, 336)), ("768px", "4:3", (656, 880)),
                                                     ("256px", "9:16", (336, 192))])
def test_noise_presets_use_the_reference_size_table(resolution, ratio, size):
    latent = noise_latent(resolution=resolution, aspect_ratio=ratio, num_frames=1)
    samples, video = read_latent(latent)
    assert (video.height, video.width) == size
    assert samples.shape == (1, 16, 1, size[0] // 8, size[1] // 8)


def test_noise_default_video_shape_and_reference_values():
    latent = noise_latent(resolution="256px", num_frames=129, seed=42)
    assert latent["samples"].shape == (1, 16, 33, 24, 42) and latent["seed"] == 42
    assert latent["samples"].flatten()[:4].tolist() == pytest.approx([1.926915, 1.487284, 0.900717, -2.105521],
                                                                      abs=1e-6)
    assert latent["samples"].device.type == "cpu" and latent["samples"].dtype == torch.float32


@pytest.mark.golden
def test_noise_matches_the_reference_noise_of_the_t2v_case():
    manifest, tensors = golden_case("denoise_t2v")
    samples, video = read_latent(noise_latent(seed=manifest["call"]["args"]["seed"]))
    reference = tensors["noise_packed"]
    assert_within(packing.pack(samples, 2), reference, gaussian_noise_bound(reference), "t2v noise")


def test_dc_ae_noise_and_batches():
    samples, video = read_latent(noise_latent(autoencoder="dc_ae", resolution="768px", num_frames=128, batch_size=2))
    assert samples.shape == (2, 128, 32, 18, 32)
    one, _ = read_latent(noise_latent(autoencoder="dc_ae", resolution="768px", num_frames=128, batch_size=1))
    assert torch.equal(samples[:1], one)  # the first element does not depend on the batch size


def test_bf16_noise_is_fp32_noise_rounded():
    bf16, _ = read_latent(noise_latent(noise_dtype="bf16"))
    fp32, _ = read_latent(noise_latent())
    assert torch.equal(bf16, fp32.bfloat16().float())


def _reference_frames(num_frames: int, causal: bool) -> tuple[int, int]:
    """(latent frames, frames written) as the reference's steps give them: T = (n-1)//4+1 for both
    autoencoders, decode (4(T-1)+1 causal, 4T otherwise), keep the first n."""
    latent = (num_frames - 1) // 4 + 1
    decoded = (4 * (latent - 1) + 1 if latent > 1 else 1) if causal else 4 * latent
    return latent, min(num_frames, decoded)


@pytest.mark.parametrize("num_frames", [1, 2, 4, 5, 13, 16, 17, 100, 128, 129, 130])
@pytest.mark.parametrize("autoencoder", ["hunyuan_vae", "dc_ae"])
def test_noise_accepts_any_frame_count_as_the_reference(num_frames, autoencoder, caplog):
    latent_frames, written = _reference_frames(num_frames, autoencoder == "hunyuan_vae")
    with caplog.at_level(logging.INFO):
        samples, video = read_latent(noise_latent(autoencoder=autoencoder, width=128, height=128, num_frames=num_frames))
    assert samples.shape[2] == latent_frames and video.num_frames == written
    said = f"{num_frames} -> {written} frames (as Open-Sora)"
    assert (said in caplog.text) == (written != num_frames)


def test_open_sora_default_seed_mode_draws_the_official_scripts_seed():
    # The script: random.seed(cfg.seed) at start-up, then random.randint(0, 2**32 - 1) per generation.
    import random

    state = random.Random(42)
    drawn = state.randint(0, 2**32 - 1)
    assert drawn == 2746317213
    official = noise_latent(seed=42, seed_mode="open_sora_default")
    fixed = noise_latent(seed=drawn)
    assert official["seed"] == drawn and torch.equal(official["samples"], fixed["samples"])
    assert torch.equal(noise_latent(seed=1234, seed_mode="fixed")["samples"], noise_latent(seed=1234)["samples"])
    with pytest.raises(ValueError, match="seed_mode"):
        noise_latent(seed_mode="random")


def test_noise_16_frames_of_720p_gives_13_frames_of_1280x720():
    samples, video = read_latent(noise_latent(resolution="720p", aspect_ratio="16:9", num_frames=16))
    assert (video.width, video.height, video.num_frames) == (1280, 720, 13)
    assert samples.shape == (1, 16, 4, 90, 160)
    with pytest.raises(ValueError, match="at least 1 frame"):
        noise_latent(num_frames=0)


def test_noise_refuses_sizes_that_are_not_multiples():
    with pytest.raises(ValueError, match="width=100 is not a multiple of 16"):
        noise_latent(width=100)
    with pytest.raises(ValueError, match="height=80 is not a multiple of 32"):
        noise_latent(autoencoder="dc_ae", height=80, width=128, num_frames=8)


# ------------------------------------------------------------------------------------- sampler node


def test_sampler_node_reproduces_the_reference_t2v_loop(tiny_model, standalone_host):
    manifest, tensors = golden_case("denoise_t2v")
    conditioning = golden_conditioning(tensors, "", manifest["call"]["args"]["text"])
    progress: list[tuple[int, int]] = []
    remove = standalone_host.add_progress_listener(lambda value, total: progress.append((value, total)))
    try:
        (latent,) = OpenSoraSampler().execute(tiny_model, conditioning, noise_latent(seed=42), **SAMPLER_DEFAULTS)
    finally:
        remove()
    samples, video = read_latent(latent)
    assert video == geometry.VideoGeometry(64, 96, 9) and latent["seed"] == 42
    assert (samples - tensors["final_latent"]).abs().max().item() <= 1e-4
    assert progress == [(i, 12) for i in range(1, 13)]


def test_sampler_node_reproduces_the_reference_i2v_loop(tiny_model, standalone_host):
    manifest, tensors = golden_case("denoise_i2v")
    sub = manifest["sub_cases"]["i2v_loop"]
    references = [tensors[sub["references"][f"sample0.ref{i}"]["key"]] for i in range(2)]
    vae = fixed_vae(standalone_host, references)
    noise = noise_latent(seed=sub["call"]["args"]["seed"])
    first = torch.rand(1, 80, 120, 3)
    (condition,) = OpenSoraImageCondition().execute(vae, first, noise, "i2v_loop", "mean", 0,
                                                    last_image=torch.rand(4, 64, 96, 3))
    assert [p.shape for p in vae.module.pixels] == [(1, 3, 1, 64, 96)] * 2 and vae.module.samples == [False] * 2
    conditioning = golden_conditioning(tensors, "i2v_loop.", sub["call"]["args"]["text"])
    (latent,) = OpenSoraSampler().execute(tiny_model, conditioning, noise, **SAMPLER_DEFAULTS,
                                          image_condition=condition)
    expected = tensors[sub["record"]["final_latent"]["key"]]
    assert (read_latent(latent)[0] - expected).abs().max().item() <= 1e-4


def test_posterior_sample_is_seeded(standalone_host):
    noise = noise_latent()
    conds = []
    for seed in (1, 1, 2):
        vae = fixed_vae(standalone_host, [torch.zeros(16, 1, 8, 12)])
        (cond,) = OpenSoraImageCondition().execute(vae, torch.rand(1, 64, 96, 3), noise, "i2v_head", "sample", seed)
        assert vae.module.samples == [True]
        conds.append(cond.head)
    assert torch.equal(conds[0], conds[1]) and not torch.equal(conds[0], conds[2])


def test_image_condition_refuses_another_vae(standalone_host):
    vae = fixed_vae(standalone_host, [torch.zeros(16, 1, 8, 12)])
    noise = noise_latent(autoencoder="dc_ae", width=128, height=128, num_frames=8)
    with pytest.raises(ValueError, match="choose the matching autoencoder"):
        OpenSoraImageCondition().execute(vae, torch.rand(1, 64, 96, 3), noise, "i2v_head", "mean", 0)


def _t2v_inputs():
    manifest, tensors = golden_case("denoise_t2v")
    return golden_conditioning(tensors, "", manifest["call"]["args"]["text"])


def test_sampler_errors_come_before_any_model_work(tiny_model, standalone_host, monkeypatch):
    conditioning = _t2v_inputs()
    loads = []
    monkeypatch.setattr(standalone_host, "load_models", lambda *a, **k: loads.append(a))
    sampler = OpenSoraSampler()
    with pytest.raises(ValueError, match="at least 1 sampling step"):
        sampler.execute(tiny_model, conditioning, noise_latent(), **{**SAMPLER_DEFAULTS, "steps": 0})
    with pytest.raises(ValueError, match="Video DC-AE"):
        sampler.execute(tiny_model, conditioning, noise_latent(autoencoder="dc_ae", width=128, height=128, num_frames=8),
                        **SAMPLER_DEFAULTS)
    with pytest.raises(ValueError, match="2 prompts but the noise batch is 3"):
        two = TextConditioning(conditioning.t5.repeat(2, 1, 1), conditioning.clip.repeat(2, 1), conditioning.neg_t5,
                               conditioning.neg_clip, ("a", "b"), ("",))
        sampler.execute(tiny_model, two, noise_latent(batch_size=3), **SAMPLER_DEFAULTS)
    with pytest.raises(ValueError, match="features but the model takes"):
        wide = TextConditioning(torch.zeros(1, 7, 64), conditioning.clip, conditioning.neg_t5, conditioning.neg_clip,
                                ("a",), ("",))
        sampler.execute(tiny_model, wide, noise_latent(), **SAMPLER_DEFAULTS)
    vae = fixed_vae(standalone_host, [torch.zeros(16, 1, 8, 12)])
    (condition,) = OpenSoraImageCondition().execute(vae, torch.rand(1, 64, 96, 3), noise_latent(), "i2v_head", "mean", 0)
    with pytest.raises(ValueError, match="was built for 96x64, 9 frames"):
        sampler.execute(tiny_model, conditioning, noise_latent(num_frames=13), **SAMPLER_DEFAULTS, image_condition=condition)
    with pytest.raises(ValueError, match="needs method 'i2v'"):
        sampler.execute(tiny_model, conditioning, noise_latent(), **{**SAMPLER_DEFAULTS, "method": "distill"},
                        image_condition=condition)
    with pytest.raises(ValueError, match="not an Open-Sora node|no Open-Sora geometry"):
        sampler.execute(tiny_model, conditioning, {"samples": torch.zeros(1, 16, 3, 8, 12)}, **SAMPLER_DEFAULTS)
    assert all(tiny_model.managed not in managed for (managed, *_) in loads)  # only the VAE was loaded


@pytest.mark.parametrize("branch_mode, rows", [("fast", 2), ("low memory", 1), ("reference", 3)])
def test_sampler_memory_estimate_counts_the_branches_run(tiny_model, standalone_host, monkeypatch, branch_mode, rows):
    from comfyui_opensora.samplers.denoisers import activation_bytes

    required = []
    monkeypatch.setattr(standalone_host, "load_models", lambda managed, memory_required=0: required.append(
        memory_required))
    conditioning = _t2v_inputs()
    noise = noise_latent(batch_size=2)
    OpenSoraSampler().execute(tiny_model, conditioning, noise, **{**SAMPLER_DEFAULTS, "steps": 1,
                                                                   "branch_mode": branch_mode})
    _, geometry = read_latent(noise)
    image_tokens = geometry.latent_frames * geometry.tokens_per_frame
    assert required == [activation_bytes(tiny_model.config, 2 * rows, image_tokens, conditioning.t5.shape[1],
                                         tiny_model.dtype)]


def test_shared_prompt_for_a_batch_matches_single_runs(tiny_model):
    conditioning = _t2v_inputs()
    settings = {**SAMPLER_DEFAULTS, "steps": 2}
    (both,) = OpenSoraSampler().execute(tiny_model, conditioning, noise_latent(batch_size=2, seed=5), **settings)
    (first,) = OpenSoraSampler().execute(tiny_model, conditioning, noise_latent(batch_size=1, seed=5), **settings)
    assert (both["samples"][:1] - first["samples"]).abs().max().item() <= 1e-4  # batch-size rounding only


def test_cancel_stops_between_steps(tiny_model, standalone_host):
    conditioning = _t2v_inputs()
    seen: list[int] = []

    def cancel_after_two(value: int, total: int) -> None:
        seen.append(value)
        if value == 2:
            standalone_host.request_interrupt()

    remove = standalone_host.add_progress_listener(cancel_after_two)
    try:
        with pytest.raises(standalone_host.Interrupted):
            OpenSoraSampler().execute(tiny_model, conditioning, noise_latent(), **SAMPLER_DEFAULTS)
    finally:
        remove()
    assert seen == [1, 2]


def test_previews_show_the_first_frame_when_enabled(tiny_model, standalone_host, monkeypatch):
    images = []

    class RecordingProgress(standalone_host.Progress):
        def update(self, steps=1, preview=None):
            images.append(preview)
            super().update(steps, preview)

    monkeypatch.setattr(standalone_host, "Progress", RecordingProgress)
    monkeypatch.setattr(standalone_host, "previews_enabled", lambda: True)
    OpenSoraSampler().execute(tiny_model, _t2v_inputs(), noise_latent(), **{**SAMPLER_DEFAULTS, "steps": 3})
    assert len(images) == 3 and all(image.size == (12, 8) and image.mode == "RGB" for image in images)
    monkeypatch.setattr(standalone_host, "previews_enabled", lambda: False)
    images.clear()
    OpenSoraSampler().execute(tiny_model, _t2v_inputs(), noise_latent(), **{**SAMPLER_DEFAULTS, "steps": 2})
    assert images == [None, None]


def test_latent_preview_projection():
    latent = torch.zeros(1, 16, 2, 4, 6)
    latent[0, 10, 0] = 1.0  # channel 10 is bright in every colour
    image = preview.latent_preview(latent, latent_space.HUNYUAN_VAE)
    r, g, b = image.getpixel((0, 0))
    # rounded half up like saved frames (media/pixels.py), not truncated
    assert (r, g, b) == tuple(math.floor(min(max((1 + f + bias) / 2, 0), 1) * 255 + 0.5)
                              for f, bias in zip(preview.HUNYUAN_RGB_FACTORS[10], preview.HUNYUAN_RGB_BIAS))
    assert preview.latent_preview(torch.zeros(1, 128, 1, 2, 2), latent_space.VIDEO_DC_AE) is None


def test_image_condition_with_the_real_hunyuan_vae(standalone_host):
    """Through the VAE loader and the tiny Hunyuan VAE of golden_v1: a LoadImage-like frame (the fixture's
    encode_image input, rounded to uint8 as an image file holds it) encodes to the reference's scaled
    posterior mean and seeded sample, up to that rounding."""
    from comfyui_opensora.nodes.vae import OpenSoraVAELoader

    folder = GOLDEN / "hunyuan_vae"
    shutil.copy(folder / "model.safetensors", standalone_host.folder_paths(standalone_host.VAE)[0] / "tiny.safetensors")
    (vae,) = OpenSoraVAELoader().execute("tiny.safetensors", "fp32")
    io = {k: v.clone() for k, v in load_file(folder / "io.safetensors").items()}
    frame = ((io["input.encode_image.x"][0, :, 0].permute(1, 2, 0) + 1) / 2 * 255).round() / 255
    noise = noise_latent(width=32, height=32, num_frames=5)
    (mean,) = OpenSoraImageCondition().execute(vae, frame[None], noise, "i2v_head", "mean", 0)
    expected = io["output.encode_image.z_mode_scaled"][0]
    assert mean.head.shape == expected.shape == (16, 1, 4, 4)
    assert (mean.head - expected).abs().max().item() <= 1e-2
    assert torch.equal(mean.masked_ref[0, :, 0], mean.head[:, 0]) and mean.mask[0, 0, 1].abs().sum() == 0
    (sample,) = OpenSoraImageCondition().execute(vae, frame[None], noise, "i2v_head", "sample", 123)
    assert (sample.head - io["output.encode_image.z_sample_scaled_seed123"][0]).abs().max().item() <= 1e-2
    assert not torch.allclose(sample.head, mean.head, atol=1e-3)


def test_bf16_weights_sample_in_bf16(standalone_host):
    """With bf16 weights the latent and guidance run in bf16 (close to fp32, not equal); the LATENT handed
    on is float32 on the CPU."""
    folder = standalone_host.folder_paths(standalone_host.DIFFUSION_MODELS)[0]
    shutil.copy(GOLDEN / "mmdit_forward" / "video_model.safetensors", folder / "video_model.safetensors")
    (bf16_model,) = OpenSoraModelLoader().execute("video_model.safetensors", "bf16")
    dtypes = []
    handle = bf16_model.module.register_forward_pre_hook(
        lambda module, args, kwargs: dtypes.append((kwargs["img"].dtype, kwargs["timesteps"].dtype)), with_kwargs=True)
    settings = {**SAMPLER_DEFAULTS, "steps": 3}
    try:
        (latent,) = OpenSoraSampler().execute(bf16_model, _t2v_inputs(), noise_latent(), **settings)
    finally:
        handle.remove()
    assert set(dtypes) == {(torch.bfloat16, torch.bfloat16)}
    assert latent["samples"].dtype == torch.float32 and latent["samples"].device.type == "cpu"
    samples = latent["samples"]
    assert torch.equal(samples, samples.bfloat16().float())  # values are bf16 numbers
    (fp32_model,) = OpenSoraModelLoader().execute("video_model.safetensors", "fp32")
    (reference,) = OpenSoraSampler().execute(fp32_model, _t2v_inputs(), noise_latent(), **settings)
    error = (samples - reference["samples"]).abs().max().item()
    assert 0 < error <= 0.1 * reference["samples"].abs().max().item()


def test_v2v_condition_through_the_nodes(tiny_model, standalone_host):
    noise = noise_latent(num_frames=37)  # 10 latent frames
    video = torch.rand(40, 70, 100, 3)
    vae = fixed_vae(standalone_host, [torch.randn(16, 9, 8, 12)])
    (condition,) = OpenSoraImageCondition().execute(vae, video, noise, "v2v_tail", "mean", 0)
    assert [p.shape for p in vae.module.pixels] == [(1, 3, 33, 64, 96)]  # the last 33 frames, one encode
    assert condition.mask[0, 0, :, 0, 0].tolist() == [0.0] + [1.0] * 9
    (latent,) = OpenSoraSampler().execute(tiny_model, _t2v_inputs(), noise, **{**SAMPLER_DEFAULTS, "steps": 2},
                                          image_condition=condition)
    assert latent["samples"].shape == (1, 16, 10, 8, 12) and torch.isfinite(latent["samples"]).all()
    with pytest.raises(ValueError, match="needs a video of at least 33 frames"):
        OpenSoraImageCondition().execute(vae, video, noise_latent(), "v2v_tail", "mean", 0)


def test_cancel_during_the_image_encode_stops_at_the_next_convolution(standalone_host):
    from comfyui_opensora.nodes.vae import OpenSoraVAELoader
    from factories_vae import write_tiny_hunyuan_vae

    write_tiny_hunyuan_vae(standalone_host.folder_paths(standalone_host.VAE)[0] / "hunyuan_vae.safetensors")
    (vae,) = OpenSoraVAELoader().execute("hunyuan_vae.safetensors", "fp32")
    encoder = vae.module.encoder
    later = []
    encoder.conv_in.register_forward_pre_hook(lambda *_: standalone_host.request_interrupt())  # Cancel pressed
    encoder.down_blocks[0].register_forward_pre_hook(lambda *_: later.append(1))
    with pytest.raises(standalone_host.Interrupted):
        OpenSoraImageCondition().execute(vae, torch.rand(1, 64, 96, 3), noise_latent(), "i2v_head", "mean", 0)
    assert later == []  # stopped right after the first convolution


def test_a_flux_first_frame_is_sized_from_the_reference_training_table():
    """The t2i2v first frame uses the reference's training size table; the video keeps the inference one."""

    def size(autoencoder: str, aspect_ratio: str) -> tuple[int, int]:
        latent = OpenSoraNoise().execute(autoencoder, "768px", aspect_ratio, 0, 0, 1, 1, 0, "cpu", "fp32")[0]
        video = read_latent(latent)[1]
        return video.height, video.width

    assert size("flux_ae", "16:9") == (576, 1024)
    assert size("flux_ae", "4:3") == (672, 880)
    assert size("hunyuan_vae", "4:3") == (656, 880)
