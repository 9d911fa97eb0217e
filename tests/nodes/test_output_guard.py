"""Stage-output guard: NaN/inf and flat outputs injected into each stage stop the run with a clear error."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from factories_text import GOLDEN_TEXT
from factories_vae import write_tiny_hunyuan_vae

from sampling_doubles import SAMPLER_DEFAULTS, fixed_vae, golden_case, golden_conditioning, noise_latent
from comfyui_opensora.nodes import vae as vae_nodes
from comfyui_opensora.nodes.image_condition import OpenSoraImageCondition
from comfyui_opensora.nodes.output_guard import (
    StageOutputError,
    check_finite,
    check_not_flat,
    precision_remedy,
)
from comfyui_opensora.nodes.sampler import OpenSoraSampler
from comfyui_opensora.nodes.text import OpenSoraTextEncode, OpenSoraTextEncoderLoader
from comfyui_opensora.samplers.geometry import VideoGeometry
from comfyui_opensora.samplers.latent import make_latent

GEOMETRY = VideoGeometry(height=32, width=48, num_frames=9)  # latent [B, 16, 3, 4, 6]


def test_check_finite_names_stage_dtype_device_and_remedy():
    values = torch.zeros(2, 3)
    check_finite(values, "Stage", torch.bfloat16, "cpu", "fix")  # finite: nothing happens
    values[1, 2] = float("inf")
    values[0, 0] = float("nan")
    with pytest.raises(StageOutputError, match=r"^Stage produced 2 NaN/inf values out of 6 \(ran in bf16 on cpu\).*"
                                               r"Set dtype to fp32"):
        check_finite(values, "Stage", torch.bfloat16, torch.device("cpu"), precision_remedy(torch.bfloat16, "dtype"))


def test_remedies_follow_the_precision():
    assert "set w to bf16 or fp32" in precision_remedy(torch.float16, "w")
    assert "Set w to fp32" in precision_remedy(torch.bfloat16, "w")
    assert "already runs in fp32" in precision_remedy(torch.float32, "w")


def test_flat_frames_are_refused_only_when_the_latent_was_not_flat():
    frames = torch.rand(2 * 9, 4, 6, 3)
    latent = torch.randn(2, 16, 3, 4, 6)
    check_not_flat(frames, latent, "Decode", torch.float32, "cpu", "fix")
    frames[9:] = 0.0  # the second video is black
    with pytest.raises(StageOutputError, match=r"batch element 1 to frames of one flat value \(0.000\)"):
        check_not_flat(frames, latent, "Decode", torch.float32, "cpu", "fix")
    latent[1] = 0.0  # ... but so was its latent: nothing to complain about
    check_not_flat(frames, latent, "Decode", torch.float32, "cpu", "fix")
    frames[9:] = torch.linspace(0, 1, 9)[:, None, None, None]  # flat frames that change over time are fine
    latent[1] = 1.0
    check_not_flat(frames, torch.randn(2, 16, 3, 4, 6), "Decode", torch.float32, "cpu", "fix")


# ------------------------------------------------------------------------------------------ VAE decode


@pytest.fixture
def bf16_vae(standalone_host):
    write_tiny_hunyuan_vae(standalone_host.folder_paths(standalone_host.VAE)[0] / "hunyuan_vae.safetensors")
    return vae_nodes.OpenSoraVAELoader().execute("hunyuan_vae.safetensors", "bf16")[0]


def _inject_decode(monkeypatch, vae, fill: float) -> None:
    module = vae.module
    decode = module.decode_chunks

    def broken(z, tiling=None):
        for chunk in decode(z, tiling):
            yield torch.full_like(chunk, fill)

    monkeypatch.setattr(module, "decode_chunks", broken)


def test_decode_stops_on_nan_frames(bf16_vae, monkeypatch):
    latent = make_latent(torch.randn(GEOMETRY.latent_shape(1)), GEOMETRY)
    vae_nodes.OpenSoraVAEDecode().execute(bf16_vae, latent, "none")  # the real decode passes
    _inject_decode(monkeypatch, bf16_vae, float("nan"))
    with pytest.raises(StageOutputError, match=r"Open-Sora VAE Decode produced \d+ NaN/inf values .*bf16 on cpu.*"
                                               r"Set dtype on the Open-Sora VAE Loader to fp32"):
        vae_nodes.OpenSoraVAEDecode().execute(bf16_vae, latent, "none")


def test_decode_stops_on_black_frames_from_a_real_latent(bf16_vae, monkeypatch):
    _inject_decode(monkeypatch, bf16_vae, -1.0)  # decodes to 0.0 after the unit-range conversion: black
    with pytest.raises(StageOutputError, match=r"Open-Sora VAE Decode decoded batch element 0 to frames of one flat"):
        vae_nodes.OpenSoraVAEDecode().execute(bf16_vae, make_latent(torch.randn(GEOMETRY.latent_shape(1)), GEOMETRY),
                                              "none")
    zeros = make_latent(torch.zeros(GEOMETRY.latent_shape(1)), GEOMETRY)
    ((frames,),) = vae_nodes.OpenSoraVAEDecode().execute(bf16_vae, zeros, "none")  # a flat latent may decode flat
    assert frames.shape == (9, 32, 48, 3)


def test_decode_refuses_a_nan_latent_naming_its_maker(bf16_vae):
    samples = torch.randn(GEOMETRY.latent_shape(1))
    samples[0, 0, 0, 0, 0] = float("nan")
    with pytest.raises(StageOutputError, match="The latent given to Open-Sora VAE Decode holds NaN/inf"):
        vae_nodes.OpenSoraVAEDecode().execute(bf16_vae, make_latent(samples, GEOMETRY), "none")


# --------------------------------------------------------------------------------------------- sampler


def test_sampler_stops_at_the_first_nan_step(tiny_model, standalone_host, monkeypatch):
    manifest, tensors = golden_case("denoise_t2v")
    conditioning = golden_conditioning(tensors, "", manifest["call"]["args"]["text"])
    module = tiny_model.module
    forward = module.forward
    calls = []

    def broken(*args, **kwargs):
        calls.append(1)
        out = forward(*args, **kwargs)
        return out * float("nan") if len(calls) >= 3 else out

    monkeypatch.setattr(module, "forward", broken)
    progress: list[int] = []
    remove = standalone_host.add_progress_listener(lambda value, total: progress.append(value))
    try:
        with pytest.raises(StageOutputError, match=r"Open-Sora Sampler \(step \d+ of 12\) produced .* fp32 on cpu"):
            OpenSoraSampler().execute(tiny_model, conditioning, noise_latent(seed=42), **SAMPLER_DEFAULTS)
    finally:
        remove()
    assert len(progress) < 3  # stopped at the step that went wrong, not after all 12


def test_sampler_refuses_nan_inputs_naming_their_maker(tiny_model, standalone_host):
    manifest, tensors = golden_case("denoise_t2v")
    conditioning = golden_conditioning(tensors, "", manifest["call"]["args"]["text"])
    conditioning.t5[0, 0, 0] = float("inf")
    with pytest.raises(StageOutputError, match="The text conditioning holds NaN/inf.*Text Encoder Loader"):
        OpenSoraSampler().execute(tiny_model, conditioning, noise_latent(seed=42), **SAMPLER_DEFAULTS)


# ----------------------------------------------------------------------------- image condition, text


def test_image_condition_stops_on_a_nan_reference_latent(standalone_host):
    latent = torch.full((16, 1, 8, 12), float("nan"))
    vae = fixed_vae(standalone_host, [latent])
    with pytest.raises(StageOutputError, match=r"Open-Sora Image Condition \(VAE encode\) produced \d+ NaN/inf"):
        OpenSoraImageCondition().execute(vae, torch.rand(1, 64, 96, 3), noise_latent(), "i2v_head", "mean", 0)


def test_text_encode_stops_on_nan_states(standalone_host, monkeypatch):
    root = standalone_host.folder_paths(standalone_host.TEXT_ENCODERS)[0]
    manifest = json.loads((GOLDEN_TEXT / "manifest.json").read_text())
    for folder in manifest["folders"].values():
        shutil.copytree(GOLDEN_TEXT / folder, root / folder.removeprefix("hf/"))
    encoder = OpenSoraTextEncoderLoader().execute("google/t5-tiny", "openai/clip-tiny", "fp16")[0]
    t5 = encoder.t5
    encode = t5.encode
    monkeypatch.setattr(t5, "encode", lambda texts: encode(texts) * float("inf"))
    with pytest.raises(StageOutputError, match=r"Open-Sora Text Encode \(T5\) produced .* fp16 on cpu.*"
                                               r"set weight_dtype on the Open-Sora Text Encoder Loader to bf16"):
        OpenSoraTextEncode().execute(encoder, "a fox", "", 24, "4", False)
