"""The Image Condition node's encode tiling (its last input): reaches the VAE's encode, keeps a single image
exact, is refused with a remedy where the autoencoder has no causal chunks. (Named ``_node``: pytest
imports test files by basename, and tests/samplers/test_image_condition.py covers the sampler module.)"""

from __future__ import annotations

import pytest
import torch

from sampling_doubles import noise_latent
from comfyui_opensora.models.autoencoder import ENCODE_TILING_MODES
from comfyui_opensora.nodes.image_condition import OpenSoraImageCondition
from comfyui_opensora.nodes.vae import OpenSoraVAELoader
from comfyui_opensora.tiny_checkpoints.autoencoders import write_tiny_dc_ae, write_tiny_hunyuan_vae


@pytest.fixture
def hunyuan_vae(standalone_host, monkeypatch):
    """The tiny HunyuanVideo VAE through the loader, its encode recording the tiling of every call."""
    write_tiny_hunyuan_vae(standalone_host.folder_paths(standalone_host.VAE)[0] / "hunyuan_vae.safetensors")
    (vae,) = OpenSoraVAELoader().execute("hunyuan_vae.safetensors", "fp32")
    module = vae.module
    encode = module.encode
    module.tilings = []

    def recording_encode(x, sample=False, generator=None, tiling=None):
        module.tilings.append(tiling)
        return encode(x, sample=sample, generator=generator, tiling=tiling)

    monkeypatch.setattr(module, "encode", recording_encode)
    return vae


def test_tiling_is_the_last_input_optional_and_reference_by_default():
    inputs = OpenSoraImageCondition.INPUT_TYPES()
    assert list(inputs["optional"]) == ["last_image", "tiling"]
    choices, options = inputs["optional"]["tiling"]
    assert tuple(choices) == ENCODE_TILING_MODES and options["default"] == "reference"


def test_a_single_image_encodes_the_same_with_causal_chunks(hunyuan_vae):
    image, noise = torch.rand(1, 64, 96, 3), noise_latent()
    (reference,) = OpenSoraImageCondition().execute(hunyuan_vae, image, noise, "i2v_head", "mean", 0)
    (chunked,) = OpenSoraImageCondition().execute(hunyuan_vae, image, noise, "i2v_head", "mean", 0, None,
                                                  "causal_chunks")
    module = hunyuan_vae.module
    assert module.tilings == [module.reference_tiling(), module.causal_chunk_tiling()]
    assert torch.equal(chunked.head, reference.head)


def test_a_v2v_clip_encodes_in_causal_chunks_close_to_the_reference(hunyuan_vae):
    """33 frames: the chunks' own GroupNorm statistics move the latent a little, not the layout."""
    video, noise = torch.rand(33, 64, 96, 3), noise_latent(num_frames=37)
    (reference,) = OpenSoraImageCondition().execute(hunyuan_vae, video, noise, "v2v_head", "mean", 0)
    (chunked,) = OpenSoraImageCondition().execute(hunyuan_vae, video, noise, "v2v_head", "mean", 0,
                                                  tiling="causal_chunks")
    assert hunyuan_vae.module.tilings[-1].causal_chunk == 2
    assert torch.equal(chunked.mask, reference.mask)
    difference = (chunked.masked_ref - reference.masked_ref).abs()
    assert 0 < difference.mean().item() <= 0.1 * reference.masked_ref.abs().mean().item()


def test_unknown_tilings_and_causal_chunks_on_the_dc_ae_are_refused_before_encoding(standalone_host, hunyuan_vae):
    with pytest.raises(ValueError, match=r"tiling must be one of \['reference', 'none', 'causal_chunks'\]"):
        OpenSoraImageCondition().execute(hunyuan_vae, torch.rand(1, 64, 96, 3), noise_latent(), "i2v_head", "mean", 0,
                                         tiling="memory_budget")
    assert hunyuan_vae.module.tilings == []
    write_tiny_dc_ae(standalone_host.folder_paths(standalone_host.VAE)[0] / "dc_ae.safetensors")
    (dc_ae,) = OpenSoraVAELoader().execute("dc_ae.safetensors", "fp32")
    noise = noise_latent(autoencoder="dc_ae", width=128, height=128, num_frames=8)
    with pytest.raises(ValueError, match="causal_chunks tiling is for the HunyuanVideo VAE.*choose reference tiling"):
        OpenSoraImageCondition().execute(dc_ae, torch.rand(1, 64, 96, 3), noise, "i2v_head", "mean", 0,
                                         tiling="causal_chunks")
