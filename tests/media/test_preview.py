"""Sampler previews: TAEHV from models/vae_approx when present, else the linear projection; the CLI's --preview-dir."""

from __future__ import annotations

import logging
import os

import pytest
import torch
from PIL import Image

from comfyui_opensora.tiny_checkpoints.autoencoders import write_tiny_hunyuan_vae, write_tiny_taehv
from comfyui_opensora.media import preview
from comfyui_opensora.nodes import previews
from comfyui_opensora.models import latent_space
from comfyui_opensora.standalone import cli


@pytest.fixture
def vae_approx(standalone_host):
    folder = standalone_host.folder_paths(standalone_host.VAE_APPROX)[0]
    folder.mkdir()
    return folder


@pytest.fixture
def previews_on(standalone_host, monkeypatch):
    monkeypatch.setattr(standalone_host, "previews_enabled", lambda: True)
    return standalone_host


def _latent(frames: int = 3, height: int = 4, width: int = 6) -> torch.Tensor:
    return torch.randn(2, 16, frames, height, width, generator=torch.Generator().manual_seed(0))


def test_taehv_is_used_when_its_file_is_present(previews_on, vae_approx):
    write_tiny_taehv(vae_approx / "taehv.safetensors")
    latent = _latent()
    picture = previews.sampler_preview(latent_space.HUNYUAN_VAE)(latent)
    linear = preview.latent_preview(latent, latent_space.HUNYUAN_VAE)
    assert picture.mode == "RGB" and picture.size == (6 * 8, 4 * 8) and linear.size == (6, 4)
    assert picture.resize(linear.size).tobytes() != linear.tobytes()
    # the picture is the decoder's first frame of batch element 0, from latent frame 0 alone
    decoder = preview._cached_decoder(vae_approx / "taehv.safetensors")
    with torch.inference_mode():
        frame = decoder(latent[:1])[0, :, 0]
    expected = frame.permute(1, 2, 0).mul(255).add(0.5).floor().clamp(0, 255).to(torch.uint8).numpy()  # half up
    assert picture.tobytes() == Image.fromarray(expected).tobytes()


def test_comfyui_latent2rgb_choice_keeps_the_projection(previews_on, vae_approx, monkeypatch):
    write_tiny_taehv(vae_approx / "taehv.safetensors")
    monkeypatch.setattr(previews_on, "preview_decoders_allowed", lambda: False)
    latent = _latent()
    picture = previews.sampler_preview(latent_space.HUNYUAN_VAE)(latent)
    assert picture.tobytes() == preview.latent_preview(latent, latent_space.HUNYUAN_VAE).tobytes()


def test_taehv_in_a_sub_folder_and_its_dtype(previews_on, vae_approx):
    (vae_approx / "hunyuan").mkdir()
    write_tiny_taehv(vae_approx / "hunyuan" / "taehv.safetensors")
    assert previews.taehv_file() == vae_approx / "hunyuan" / "taehv.safetensors"
    picture = previews.sampler_preview(latent_space.HUNYUAN_VAE)(_latent().bfloat16())  # CPU: decoded in float32
    assert picture.size == (48, 32)


def test_linear_fallback_without_the_file_and_for_other_latent_spaces(previews_on, vae_approx):
    latent = _latent()
    linear = preview.latent_preview(latent, latent_space.HUNYUAN_VAE)
    assert previews.sampler_preview(latent_space.HUNYUAN_VAE)(latent).tobytes() == linear.tobytes()
    write_tiny_taehv(vae_approx / "taehv1_5.safetensors")  # HunyuanVideo 1.5's decoder: not a prefix match
    assert previews.taehv_file() is None
    write_tiny_taehv(vae_approx / "taehv.safetensors")
    assert previews.sampler_preview(latent_space.VIDEO_DC_AE) is None  # no projection for the DC-AE, no TAEHV either
    assert previews.sampler_preview(latent_space.FLUX_AE) is None
    assert preview.preview_function(latent_space.VIDEO_DC_AE, vae_approx / "taehv.safetensors") is None


def test_no_previews_when_off_or_without_a_model_folder(standalone_host, vae_approx, monkeypatch):
    write_tiny_taehv(vae_approx / "taehv.safetensors")
    assert not standalone_host.previews_enabled()
    assert previews.sampler_preview(latent_space.HUNYUAN_VAE) is None
    monkeypatch.setattr(standalone_host.standalone_state(), "models_dir", None)
    assert previews.taehv_file() is None


def test_a_wrong_or_pickled_file_falls_back_to_linear_with_a_warning(previews_on, vae_approx, caplog):
    latent = _latent()
    linear = preview.latent_preview(latent, latent_space.HUNYUAN_VAE).tobytes()
    write_tiny_hunyuan_vae(vae_approx / "taehv.safetensors")
    with caplog.at_level(logging.WARNING):
        assert previews.sampler_preview(latent_space.HUNYUAN_VAE)(latent).tobytes() == linear
    assert "linear projection" in caplog.text and "missing key(s), first: decoder.1.bias" in caplog.text
    (vae_approx / "taehv.safetensors").unlink()
    (vae_approx / "taehv.pth").write_bytes(b"pickle")
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert previews.sampler_preview(latent_space.HUNYUAN_VAE)(latent).tobytes() == linear
    assert "reads only safetensors" in caplog.text


def test_a_replaced_file_is_loaded_again(previews_on, vae_approx):
    path = write_tiny_taehv(vae_approx / "taehv.safetensors", seed=1)
    first = previews.sampler_preview(latent_space.HUNYUAN_VAE)(_latent()).tobytes()
    write_tiny_taehv(path, seed=2)
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 10**9))  # a later version, on any clock
    assert previews.sampler_preview(latent_space.HUNYUAN_VAE)(_latent()).tobytes() != first


def test_cli_preview_dir_writes_pngs_on_a_smoke_run(standalone_host, tmp_path):
    folder = tmp_path / "previews"
    assert cli.main(["generate", "--smoke", "--resolution", "144p", "--num-frames", "1", "--steps", "2",
                     "--preview-dir", str(folder)]) == 0
    written = sorted(p.name for p in folder.iterdir())
    assert written == ["smoke_step1.png", "smoke_step2.png"]  # no temporary files left
    with Image.open(folder / "smoke_step2.png") as picture:
        assert picture.size == (256, 144)  # TAEHV-decoded (the smoke adds a tiny one): 8x the 32x18 latent
    assert not standalone_host.previews_enabled()  # the listener is gone after the run
