"""models/latent_space.py: the frame-count rule of each autoencoder as the reference applies it, and the
autoencoder models naming their latent space. The expected values restate the reference's formulas."""

from __future__ import annotations

import pytest

from comfyui_opensora.models import latent_space


@pytest.mark.parametrize("n", list(range(1, 140)))
def test_frame_counts_follow_the_reference(n):
    latent = (n - 1) // 4 + 1  # the reference's latent count (causal formula, used for both autoencoders)
    causal_written = min(n, 4 * (latent - 1) + 1 if latent > 1 else 1)
    dc_ae_written = min(n, 4 * latent)
    assert latent_space.latent_num_frames(n, latent_space.HUNYUAN_VAE) == latent
    assert latent_space.latent_num_frames(n, latent_space.VIDEO_DC_AE) == latent
    assert latent_space.output_num_frames(n, latent_space.HUNYUAN_VAE) == causal_written
    assert latent_space.output_num_frames(n, latent_space.VIDEO_DC_AE) == dc_ae_written == n
    change = latent_space.describe_frame_change(n, latent_space.HUNYUAN_VAE)
    assert change == (None if causal_written == n else f"{n} -> {causal_written} frames (as Open-Sora)")


def test_frame_counts_of_the_issue_and_configs():
    assert latent_space.output_num_frames(16, latent_space.HUNYUAN_VAE) == 13
    assert latent_space.latent_num_frames(129, latent_space.HUNYUAN_VAE) == 33
    assert latent_space.latent_num_frames(128, latent_space.VIDEO_DC_AE) == 32
    with pytest.raises(ValueError, match="at least 1"):
        latent_space.output_num_frames(0, latent_space.HUNYUAN_VAE)


def test_an_undecodable_count_names_the_nearest_valid_ones():
    latent_space.check_num_frames(17, latent_space.HUNYUAN_VAE)
    with pytest.raises(ValueError, match="Nearest valid counts: 13 or 17"):
        latent_space.check_num_frames(16, latent_space.HUNYUAN_VAE)
    assert latent_space.decoded_num_frames(1, latent_space.HUNYUAN_VAE) == 1  # one latent frame is an image
    assert latent_space.decoded_num_frames(3, latent_space.VIDEO_DC_AE) == 12


def test_each_autoencoder_model_names_its_latent_space():
    from comfyui_opensora.models.dc_ae import VideoDCAE
    from comfyui_opensora.models.flux_ae import FluxImageAE
    from comfyui_opensora.models.hunyuan_vae import HunyuanVideoVAE

    assert HunyuanVideoVAE.kind is latent_space.HUNYUAN_VAE
    assert VideoDCAE.kind is latent_space.VIDEO_DC_AE
    assert FluxImageAE.kind is latent_space.FLUX_AE
    assert set(latent_space.AUTOENCODERS) == {"hunyuan_vae", "dc_ae", "flux_ae"}
