"""The Flux image autoencoder (t2i2v first frame): released key layout, strict keys, encode/decode with the
reference's scale and shift, against diffusers' AutoencoderKL run directly, and through the VAE nodes."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file, save_file

from comfyui_opensora.loaders.autoencoders import load_autoencoder
from comfyui_opensora.loaders.checkpoint import CheckpointError
from comfyui_opensora.tiny_checkpoints.autoencoders import flux_ae_file_tensors, write_tiny_flux_ae
from comfyui_opensora.models.flux_ae import SHIFT, SCALE, FluxAEConfig, FluxImageAE
from comfyui_opensora.nodes.vae import OpenSoraVAEDecode, OpenSoraVAELoader
from comfyui_opensora.models.latent_space import FLUX_AE
from comfyui_opensora.samplers.geometry import VideoGeometry
from comfyui_opensora.samplers.latent import make_latent

# Widths that change between levels, so the converted file exercises the shortcut convs and a wrong level
# order would show as shape errors.
CONFIG = FluxAEConfig(block_out_channels=(32, 64, 64, 64))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    path = write_tiny_flux_ae(tmp_path_factory.mktemp("flux_ae") / "ae.safetensors", CONFIG, seed=2)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(2)
        reference = FluxImageAE(CONFIG)
    return path, reference.vae.eval()


def test_file_has_the_released_layout(tiny):
    path, _ = tiny
    keys = set(load_file(str(path)))
    assert {"encoder.conv_in.weight", "encoder.down.0.block.1.conv2.weight", "encoder.down.1.block.0.nin_shortcut.weight",
            "encoder.down.0.downsample.conv.weight", "encoder.mid.block_2.norm1.weight", "encoder.mid.attn_1.proj_out.weight",
            "encoder.norm_out.weight", "decoder.up.3.upsample.conv.weight", "decoder.up.0.block.0.nin_shortcut.weight",
            "decoder.mid.attn_1.q.weight"} <= keys
    assert not any("quant_conv" in k or "down_blocks" in k for k in keys)
    assert load_file(str(path))["decoder.mid.attn_1.q.weight"].ndim == 4  # 1x1 convs, as released


def test_decode_and_encode_follow_the_reference_formulas(tiny):
    path, vae = tiny
    module = load_autoencoder(path, torch.float32)
    assert isinstance(module, FluxImageAE) and module.kind.name == "flux_ae"
    assert module.latent_channels == 16 and module.spatial_compression == 8
    generator = torch.Generator().manual_seed(0)
    z = torch.randn(2, 16, 3, 4, 6, generator=generator)
    with torch.no_grad():
        ours = module.decode(z)
        per_frame = torch.stack([vae.decode(z[:, :, t] / 0.3611 + 0.1159).sample for t in range(3)], dim=2)
    assert ours.shape == (2, 3, 3, 32, 48)
    assert (ours - per_frame).abs().max().item() <= 1e-6 * per_frame.abs().max().item()

    pixels = torch.rand(2, 3, 3, 32, 48, generator=generator) * 2 - 1
    with torch.no_grad():
        latent = module.encode(pixels)
        frames = pixels.permute(0, 2, 1, 3, 4).reshape(6, 3, 32, 48)
        mean = vae.encode(frames).latent_dist.mean
        expected = (0.3611 * (mean - 0.1159)).reshape(2, 3, 16, 4, 6).permute(0, 2, 1, 3, 4)
    assert (SCALE, SHIFT) == (0.3611, 0.1159)
    assert latent.shape == (2, 16, 3, 4, 6)
    assert (latent - expected).abs().max().item() <= 1e-6 * expected.abs().max().item()


def test_keys_are_checked_strictly(tiny, tmp_path):
    path, _ = tiny
    tensors = load_file(str(path))
    extra = dict(tensors, **{"decoder.up.0.block.9.conv1.weight": torch.zeros(1)})
    save_file(extra, str(tmp_path / "extra.safetensors"))
    with pytest.raises(CheckpointError, match=r"unexpected key\(s\), first: decoder\.up\.0\.block\.9\.conv1\.weight"):
        load_autoencoder(tmp_path / "extra.safetensors")
    missing = {k: v for k, v in tensors.items() if k != "decoder.up.2.block.1.conv2.bias"}
    save_file(missing, str(tmp_path / "missing.safetensors"))
    with pytest.raises(CheckpointError, match=r"missing key\(s\), first: decoder\.up\.2\.block\.1\.conv2\.bias"):
        load_autoencoder(tmp_path / "missing.safetensors")
    misshapen = dict(tensors, **{"decoder.conv_out.bias": torch.zeros(4)})
    save_file(misshapen, str(tmp_path / "shape.safetensors"))
    with pytest.raises(CheckpointError, match=r"wrong shape, first: decoder\.conv_out\.bias \(4,\)"):
        load_autoencoder(tmp_path / "shape.safetensors")


def test_our_file_names_are_what_the_diffusers_converter_reads():
    """The released-layout names the loader checks are exactly those diffusers' converter maps back."""
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

    module = FluxImageAE(CONFIG)
    converted = convert_ldm_vae_checkpoint(flux_ae_file_tensors(module), CONFIG.diffusers_kwargs())
    state = module.vae.state_dict()
    assert converted.keys() == state.keys()
    assert all(torch.equal(converted[k].reshape(state[k].shape), state[k]) for k in state)


def test_vae_nodes_load_and_decode_a_first_frame(standalone_host, tiny):
    path, vae = tiny
    (standalone_host.standalone_state().models_dir / "vae" / "flux1-dev-ae.safetensors").write_bytes(path.read_bytes())
    (loaded,) = OpenSoraVAELoader().execute("flux1-dev-ae.safetensors", "fp32")
    assert loaded.kind is FLUX_AE
    geometry = VideoGeometry(height=32, width=48, num_frames=1, autoencoder=FLUX_AE.name)
    z = torch.randn(1, 16, 1, 4, 6, generator=torch.Generator().manual_seed(1))
    ((frames,),) = OpenSoraVAEDecode().execute(loaded, make_latent(z, geometry), "reference")
    with torch.no_grad():
        expected = ((vae.decode(z[:, :, 0] / 0.3611 + 0.1159).sample.clamp(-1, 1) + 1) / 2).permute(0, 2, 3, 1)
    assert frames.shape == (1, 32, 48, 3)
    assert (frames - expected).abs().max().item() <= 1e-6
