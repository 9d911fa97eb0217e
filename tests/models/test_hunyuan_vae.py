"""HunyuanVideo VAE: parity with the official code (golden_v1/hunyuan_vae), key layout, loader errors."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from comfyui_opensora.loaders.autoencoders import autoencoder_kind_of, load_autoencoder
from comfyui_opensora.loaders.checkpoint import CheckpointError
from comfyui_opensora.models.autoencoder import NO_TILING, Tiling
from comfyui_opensora.models.hunyuan_vae import (
    SCALE_FACTOR,
    HunyuanVAEConfig,
    HunyuanVideoVAE,
    config_from_shapes,
    norm_groups_for,
)
from golden_tolerance import Reductions, assert_matches
from factories_vae import TINY_HUNYUAN_VAE, write_lookalike, write_tiny_hunyuan_vae

KEY_DUMP = Path(__file__).resolve().parents[1] / "key_dumps" / "hunyuan_vae_keys.txt"


@pytest.fixture(scope="module")
def golden(request):
    folder = Path(__file__).resolve().parents[1] / "golden_v1" / "hunyuan_vae"
    manifest = json.loads((folder / "manifest.json").read_text())
    io = {k: v.clone() for k, v in load_file(folder / "io.safetensors").items()}
    vae = load_autoencoder(folder / "model.safetensors", dtype=torch.float32)
    return manifest, io, vae


def _max_err(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return (a - b).abs().max().item()


def _matches(vae, actual: torch.Tensor, expected: torch.Tensor, what: str) -> None:
    """Within the float32 budget of the whole autoencoder (encoder and decoder layers)."""
    assert_matches(actual, expected, Reductions.of_module(vae), what)


def test_golden_config_is_read_from_shapes(golden):
    manifest, _, vae = golden
    config = manifest["config"]
    assert vae.config == HunyuanVAEConfig(
        block_out_channels=tuple(config["block_out_channels"]),
        layers_per_block=config["layers_per_block"],
        latent_channels=config["latent_channels"],
        norm_num_groups=config["norm_num_groups"],
    )
    assert sum(p.numel() for p in vae.parameters()) == manifest["weights"]["num_parameters"]
    assert sorted(vae.state_dict()) == manifest["files"]["model.safetensors"]["keys"]


def test_golden_decode(golden):
    _, io, vae = golden
    _matches(vae, vae.decode(io["input.decode.z"], NO_TILING), io["output.decode"], "decode")


def test_golden_encode_posterior_mean_and_seeded_sample(golden):
    _, io, vae = golden
    for case in ("encode", "encode_image"):
        x = io[f"input.{case}.x"]
        z = vae.encode(x, tiling=NO_TILING)
        _matches(vae, z, io[f"output.{case}.z_mode_scaled"], f"{case}.z_mode_scaled")
        _matches(vae, z / SCALE_FACTOR, io[f"output.{case}.posterior_mean"], f"{case}.posterior_mean")
    sampled = vae.encode(io["input.encode.x"], sample=True, generator=torch.Generator().manual_seed(123))
    _matches(vae, sampled, io["output.encode.z_sample_scaled"], "encode.z_sample_scaled")
    sampled = vae.encode(io["input.encode_image.x"], sample=True, generator=torch.Generator().manual_seed(123))
    _matches(vae, sampled, io["output.encode_image.z_sample_scaled_seed123"], "encode_image.z_sample_seed123")
    # Sampling really draws: another seed gives another latent.
    other = vae.encode(io["input.encode_image.x"], sample=True, generator=torch.Generator().manual_seed(7))
    assert _max_err(other, sampled) > 1e-2


def test_golden_spatial_tiled(golden):
    # The fixture's sample_size=32 is the reference tiling scaled down (tile 32 px, overlap 1/4).
    _, io, vae = golden
    tiling = Tiling(spatial=32)
    decoded = vae.decode(io["input.spatial_tiled.z"], tiling)
    _matches(vae, decoded, io["output.spatial_tiled.decode"], "spatial_tiled.decode")
    z = vae.encode(io["output.spatial_tiled.decode"], tiling=tiling)
    _matches(vae, z, io["output.spatial_tiled.encode.z_mode_scaled"], "spatial_tiled.encode.z_mode_scaled")
    # Tiling is really on: the untiled decode of the same latent is far away.
    assert _max_err(vae.decode(io["input.spatial_tiled.z"], NO_TILING), io["output.spatial_tiled.decode"]) > 0.1


def test_golden_temporal_tiled_streams_chunks(golden):
    _, io, vae = golden
    tiling = Tiling(temporal=16)  # the fixture's sample_tsize=16: 4+1 latents per tile, stride 3
    chunks = list(vae.decode_chunks(io["input.temporal_tiled.z"], tiling))
    assert [c.shape[2] for c in chunks] == [13, 8]
    assert len(chunks) == vae.decode_chunk_count(io["input.temporal_tiled.z"].shape[2], tiling)
    _matches(vae, torch.cat(chunks, dim=2), io["output.temporal_tiled.decode"], "temporal_tiled.decode")
    z = vae.encode(io["output.temporal_tiled.decode"], tiling=tiling)
    _matches(vae, z, io["output.temporal_tiled.encode.z_mode_scaled"], "temporal_tiled.encode.z_mode_scaled")


def test_golden_end_to_end_decode_to_saved_frames(golden, golden_dir):
    """The pipeline's last stage: final latent -> tiled decode -> IMAGE frames -> the saver's uint8 bytes."""
    from comfyui_opensora.models.autoencoder import decode_to_frames

    _, _, vae = golden
    tensors = {k: v.clone() for k, v in load_file(golden_dir / "end_to_end" / "tensors.safetensors").items()}
    latent = tensors["final_latent"]  # [1, 16, 3, 8, 12]; the fixture's VAE tiles at sample_size 32
    _matches(vae, vae.decode(latent, Tiling(spatial=32)), tensors["decoded_video"], "end_to_end.decoded_video")
    frames = decode_to_frames(vae, latent, 9, 64, 96, Tiling(spatial=32), torch.device("cpu"))
    saved = (frames * 255 + 0.5).clamp(0, 255).to(torch.uint8)  # what the reference's saver does next
    mismatch = (saved.int() - tensors["frames_uint8"].int()).abs()
    assert mismatch.max().item() <= 1 and (mismatch > 0).float().mean().item() < 1e-3


def test_default_tiling_is_the_reference_spatial_tiling():
    with torch.device("meta"):
        vae = HunyuanVideoVAE(TINY_HUNYUAN_VAE)
    assert vae.reference_tiling() == Tiling(spatial=256, temporal=None, overlap=0.25)
    assert vae.reference_tiling(temporal=True) == Tiling(spatial=256, temporal=64, overlap=0.25)
    assert vae.reference_tiling().spatial_stride == 192
    with pytest.raises(ValueError, match="multiple of 32"):
        vae._configure(Tiling(spatial=100), encoding=False)


def test_released_layout_matches_key_dump():
    shapes = {}
    for line in KEY_DUMP.read_text().splitlines():
        if line.startswith("#") or not line.strip():
            continue
        key, shape = line.split("\t")
        shapes[key] = tuple(int(d) for d in re.findall(r"\d+", shape))
    config = config_from_shapes(shapes)
    assert config == HunyuanVAEConfig()  # (128, 256, 512, 512), 2 layers, 16 latent channels, 32 groups
    with torch.device("meta"):
        module = HunyuanVideoVAE(config)
    assert {k: tuple(v.shape) for k, v in module.state_dict().items()} == shapes
    assert sum(v.numel() for v in module.state_dict().values()) == 246_478_803


def test_norm_groups_rule():
    assert norm_groups_for((128, 256, 512, 512)) == 32
    assert norm_groups_for((8, 16, 16, 16)) == 4
    assert norm_groups_for((64, 128)) == 32
    assert norm_groups_for((24, 48)) == 8


def test_loader_reads_half_precision_and_detects_kind(tmp_path):
    path = write_tiny_hunyuan_vae(tmp_path / "vae.safetensors")
    assert autoencoder_kind_of(path) == "hunyuan_vae"
    vae = load_autoencoder(path, dtype=torch.bfloat16)
    assert vae.dtype == torch.bfloat16 and vae.kind.name == "hunyuan_vae" and vae.latent_channels == 16
    assert not any(p.requires_grad for p in vae.parameters()) and not vae.training
    assert all(p.device.type == "cpu" for p in vae.parameters())
    out = vae.decode(torch.randn(1, 16, 2, 2, 2), NO_TILING)
    assert out.dtype == torch.bfloat16 and out.shape == (1, 3, 5, 16, 16)


@pytest.mark.parametrize("kind, phrase", [
    ("mmdit", "video MMDiT"),
    ("t5", "T5 text encoder"),
    ("flux_ae", r"not the Flux image autoencoder .*: it has no encoder\.down"),
])
def test_loader_refuses_other_checkpoints(tmp_path, kind, phrase):
    path = write_lookalike(tmp_path / f"{kind}.safetensors", kind)
    with pytest.raises(CheckpointError, match=phrase):
        load_autoencoder(path)


def test_loader_names_missing_and_misshapen_keys(tmp_path):
    from safetensors.torch import save_file

    from factories_vae import tiny_hunyuan_state_dict

    tensors = tiny_hunyuan_state_dict()
    del tensors["decoder.conv_out.conv.bias"]
    save_file(tensors, str(tmp_path / "missing.safetensors"))
    with pytest.raises(CheckpointError, match=r"missing key\(s\), first: decoder\.conv_out\.conv\.bias"):
        load_autoencoder(tmp_path / "missing.safetensors")

    tensors = tiny_hunyuan_state_dict()
    tensors["quant_conv.weight"] = torch.zeros(32, 32, 1, 1, 2)
    save_file(tensors, str(tmp_path / "shape.safetensors"))
    with pytest.raises(CheckpointError, match=r"wrong shape.*quant_conv\.weight"):
        load_autoencoder(tmp_path / "shape.safetensors")

    tensors = tiny_hunyuan_state_dict()
    tensors["decoder.extra.weight"] = torch.zeros(1)
    save_file(tensors, str(tmp_path / "extra.safetensors"))
    with pytest.raises(CheckpointError, match=r"unexpected key\(s\), first: decoder\.extra\.weight"):
        load_autoencoder(tmp_path / "extra.safetensors")


def test_dc_ae_file_is_dispatched_to_the_dc_ae(tmp_path):
    from safetensors.torch import save_file

    from comfyui_opensora.models.dc_ae import VideoDCAE
    from comfyui_opensora.tiny_checkpoints.autoencoders import tiny_dc_ae_config, write_tiny_dc_ae

    narrow_dc_ae = tiny_dc_ae_config(latent_channels=16)
    path = write_tiny_dc_ae(tmp_path / "dcae.safetensors", narrow_dc_ae)
    assert autoencoder_kind_of(path) == "dc_ae"
    vae = load_autoencoder(path, dtype=torch.bfloat16)
    assert isinstance(vae, VideoDCAE) and vae.config == narrow_dc_ae and vae.dtype == torch.bfloat16

    save_file({"decoder.project_in.main.conv.weight": torch.zeros(2, 2)}, str(tmp_path / "broken.safetensors"))
    with pytest.raises(CheckpointError, match="is not a Video DC-AE"):
        load_autoencoder(tmp_path / "broken.safetensors")


def _mid_blocks(seed: int = 0):
    """A diffusers mid block (masked attention over all positions) and the pack's copy of it."""
    import copy

    from diffusers.models.autoencoders.autoencoder_kl_hunyuan_video import HunyuanVideoMidBlock3D

    from comfyui_opensora.models.hunyuan_vae import _use_pack_blocks

    torch.manual_seed(seed)
    diffusers_block = HunyuanVideoMidBlock3D(16, resnet_groups=4, attention_head_dim=16).eval()
    for parameter in diffusers_block.parameters():  # away from the identity-like initialisation
        parameter.data.add_(0.2 * torch.randn_like(parameter))
    pack_block = copy.deepcopy(diffusers_block)
    holder = torch.nn.Sequential(pack_block)
    _use_pack_blocks(holder)
    return diffusers_block, pack_block


@pytest.mark.parametrize("query_block", [1024, 7, 20])
def test_frame_causal_attention_equals_the_masked_attention(query_block):
    """Query blocks against the keys of their own and earlier frames give diffusers' masked attention
    (blocks inside a frame, one per frame, one for all)."""
    from comfyui_opensora.models.hunyuan_vae import frame_causal_attention

    diffusers_block, pack_block = _mid_blocks()
    x = torch.randn(2, 16, 3, 4, 5)
    with torch.no_grad():
        expected = diffusers_block(x)
        hidden = pack_block.resnets[0](x)
        attended = frame_causal_attention(pack_block.attentions[0], hidden, pack_block.rows, query_block)
        actual = pack_block.resnets[1](attended)
        whole = pack_block(x)
    assert actual.shape == expected.shape == whole.shape
    assert torch.allclose(actual, expected, rtol=1e-5, atol=1e-5), (actual - expected).abs().max()
    assert torch.allclose(whole, expected, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(expected, diffusers_block.resnets[1](diffusers_block.resnets[0](x)), atol=1e-3)


def test_attention_blocks_are_progress_and_cancel_points():
    """Every query block reports work, and an exception from the callback (Cancel) stops the attention
    at that block: the output projection never runs."""
    from comfyui_opensora.models.autoencoder import reporting_work, work_modules
    from comfyui_opensora.models.hunyuan_vae import AttentionRows, attention_blocks

    _, pack_block = _mid_blocks()
    x = torch.randn(1, 16, 3, 4, 5)
    calls = []
    with torch.no_grad(), reporting_work([pack_block.rows], lambda: calls.append(1)):
        pack_block(x)
    assert len(calls) == attention_blocks(3, 4, 5) == 3
    assert any(isinstance(module, AttentionRows) for module in work_modules(pack_block))

    class Cancelled(Exception):
        pass

    def cancel() -> None:
        raise Cancelled

    projections = []
    pack_block.attentions[0].to_out[0].register_forward_hook(lambda *_: projections.append(1))
    with torch.no_grad(), reporting_work([pack_block.rows], cancel), pytest.raises(Cancelled):
        pack_block(x)
    assert projections == []
