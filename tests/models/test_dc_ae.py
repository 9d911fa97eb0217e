"""Video DC-AE: golden parity with the official code, released configuration, shapes, tiling, scaling."""

from __future__ import annotations

import json

import pytest
import torch
from golden_tolerance import Reductions, assert_matches
from safetensors.torch import load_file

from comfyui_opensora.loaders.checkpoint import assign_state_dict, load_tensors, read_header
from comfyui_opensora.models.autoencoder import NO_TILING, Tiling, VideoAutoencoder
from comfyui_opensora.models.dc_ae import DCAEConfig, VideoDCAE, dc_ae_config_from_shapes
from comfyui_opensora.models.dc_ae import layers
from comfyui_opensora.tiny_checkpoints.autoencoders import tiny_dc_ae_config, tiny_dc_ae_state_dict, write_tiny_dc_ae

# The released structure with 16 latent channels: narrow, fast on the CPU.
NARROW_DC_AE = tiny_dc_ae_config(latent_channels=16)
# The fixture's tiled model: tiles of 128 px / 16 frames (4 latents each), overlap 0.25.
GOLDEN_TILING = Tiling(spatial=128, temporal=16, overlap=0.25)


def build(state: dict[str, torch.Tensor], path: str = "dc_ae.safetensors", **config) -> VideoDCAE:
    """Build on the meta device from the state dict's shapes and assign the weights strictly."""
    shapes = {k: tuple(v.shape) for k, v in state.items()}
    with torch.device("meta"):
        module = VideoDCAE(dc_ae_config_from_shapes(shapes, **config))
    return assign_state_dict(module, state, "a Video DC-AE", path).eval()


@pytest.fixture(scope="module")
def golden():
    from conftest import GOLDEN

    case = GOLDEN / "dc_ae"
    manifest = json.loads((case / "manifest.json").read_text())
    weights = {k: v.clone() for k, v in load_file(case / manifest["weights"]["file"]).items()}
    tensors = {k: v.clone() for k, v in load_file(case / "io.safetensors").items()}
    return build(weights, str(case / "model.safetensors")), tensors


# name -> (method, input key, tiling, output key)
GOLDEN_CASES = {
    "encode": ("encode", "input.encode.x", NO_TILING, "output.encode.z"),
    "decode": ("decode", "input.decode.z", NO_TILING, "output.decode"),
    "spatial_tiled.decode": ("decode", "input.spatial_tiled.z", GOLDEN_TILING, "output.spatial_tiled.decode"),
    "spatial_tiled.encode": (
        "encode", "output.spatial_tiled.decode", GOLDEN_TILING, "output.spatial_tiled.encode_of_tiled_decode.z"
    ),
    "temporal_tiled.decode": ("decode", "input.temporal_tiled.z", GOLDEN_TILING, "output.temporal_tiled.decode"),
    "temporal_tiled.encode": (
        "encode", "output.temporal_tiled.decode", GOLDEN_TILING, "output.temporal_tiled.encode_of_tiled_decode.z"
    ),
}


@pytest.mark.parametrize("name", list(GOLDEN_CASES))
def test_golden_parity(golden, name):
    model, tensors = golden
    method, source, tiling, target = GOLDEN_CASES[name]
    out = getattr(model, method)(tensors[source], tiling=tiling)
    expected = tensors[target]
    assert_matches(out, expected, Reductions.of_module(model), f"dc_ae {name}")


def test_golden_reference_tiling_dispatch(golden):
    """The fixture's inputs are smaller than the released 256 px / 32 frame tiles: no tiling happens."""
    model, tensors = golden
    out = model.decode(tensors["input.decode.z"])  # tiling=None -> reference_tiling()
    assert_matches(out, tensors["output.decode"], Reductions.of_module(model), "dc_ae decode, reference tiling")


def test_released_config_parameter_count_and_inference():
    with torch.device("meta"):
        model = VideoDCAE()
    assert isinstance(model, VideoAutoencoder)
    assert model.kind.name == "dc_ae"
    assert sum(p.numel() for p in model.parameters()) == 459_462_147
    assert len(model.state_dict()) == 339
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert shapes["encoder.stages.3.op_list.0.context_module.main.aggreg.0.0.weight"] == (1536, 1, 5, 5, 5)
    assert shapes["decoder.project_out.op_list.2.conv.weight"] == (3, 128, 3, 3, 3)
    assert dc_ae_config_from_shapes(shapes) == DCAEConfig()
    assert (model.latent_channels, model.temporal_compression, model.spatial_compression) == (128, 4, 32)


def test_config_from_shapes_errors():
    state = tiny_dc_ae_state_dict(NARROW_DC_AE)
    shapes = {k: tuple(v.shape) for k, v in state.items()}
    with pytest.raises(ValueError, match="decoder.project_in.main.conv.weight"):
        dc_ae_config_from_shapes({k: s for k, s in shapes.items() if not k.startswith("decoder.project_in")})
    with pytest.raises(ValueError, match="Not a Video DC-AE"):
        dc_ae_config_from_shapes({"decoder.conv_in.conv.weight": (512, 16, 3, 3, 3)})
    five_stages = DCAEConfig(
        latent_channels=8, encoder_widths=(8, 16, 16, 32, 32), encoder_depths=(1,) * 5,
        encoder_block_types=("ResBlock",) * 3 + ("EViTS5_GLU",) * 2, decoder_widths=(8, 16, 16, 32, 32),
        decoder_depths=(1,) * 5, decoder_block_types=("ResBlock",) * 3 + ("EViTS5_GLU",) * 2,
        temporal_downsample=(False, False, True, True, False), temporal_upsample=(False, False, True, True, False),
    )
    five_shapes = {k: tuple(v.shape) for k, v in tiny_dc_ae_state_dict(five_stages).items()}
    with pytest.raises(ValueError, match="pass temporal_resample"):
        dc_ae_config_from_shapes(five_shapes)
    assert dc_ae_config_from_shapes(five_shapes, temporal_resample=five_stages.temporal_downsample) == five_stages


def test_factory_checkpoint_loads_strictly(tmp_path):
    path = write_tiny_dc_ae(tmp_path / "tiny_dc_ae.safetensors", NARROW_DC_AE, seed=3)
    header = read_header(path)
    assert dc_ae_config_from_shapes({k: info.shape for k, info in header.items()}) == NARROW_DC_AE
    model = build(load_tensors(path), str(path))
    assert all(p.device.type == "cpu" for p in model.parameters())
    broken = load_tensors(path)
    broken.pop("encoder.project_out.main.op_list.0.conv.bias")
    with pytest.raises(Exception, match="encoder.project_out.main.op_list.0.conv.bias"):
        build(broken, str(path))


@pytest.fixture(scope="module")
def tiny():
    return build(tiny_dc_ae_state_dict(NARROW_DC_AE, seed=1))


def test_single_frame_round_trip(tiny):
    image = torch.rand(1, 3, 1, 64, 96) * 2 - 1
    z = tiny.encode(image)
    assert z.shape == (1, 16, 1, 2, 3)
    out = tiny.decode(z)
    assert out.shape == (1, 3, 1, 64, 96)
    assert tiny.decoded_frames(1) == 1


def test_shapes_batch_and_deterministic_encode(tiny):
    video = torch.rand(2, 3, 8, 32, 32) * 2 - 1
    z = tiny.encode(video)
    assert z.shape == (2, 16, 2, 1, 1)
    # Batch elements are independent, and the DC-AE is not variational: sample/generator are ignored.
    sampled = tiny.encode(video[1:], sample=True, generator=torch.Generator().manual_seed(5))
    assert torch.equal(z[1:], sampled)
    assert tiny.decode(z).shape == (2, 3, 8, 32, 32)
    assert tiny.decoded_frames(2) == 8


def test_encode_rejects_unencodable_clips(tiny):
    with pytest.raises(ValueError, match="divisible by 32"):
        tiny.encode(torch.zeros(1, 3, 4, 48, 64))
    with pytest.raises(ValueError, match="cannot encode 6 frames"):
        tiny.encode(torch.zeros(1, 3, 6, 32, 32))
    with pytest.raises(ValueError, match="multiple of 32"):
        tiny.decode(torch.zeros(1, 16, 1, 1, 1), tiling=Tiling(spatial=100))


def test_decode_chunks_stream_the_temporal_tiles(tiny):
    z = torch.randn(1, 16, 5, 1, 1)
    chunks = list(tiny.decode_chunks(z, GOLDEN_TILING))
    assert [c.shape[2] for c in chunks] == [12, 8]  # stride 3 latents: tiles at 0 and 3; 20 frames
    # A tile covering everything is the untiled decode.
    assert torch.equal(tiny.decode(z, Tiling(spatial=128, temporal=64)), tiny.decode(z, NO_TILING))


def test_temporal_tiling_keeps_the_reference_single_latent_edge_tile(tiny):
    """Reference quirk kept: a last tile of one latent frame decodes to one frame (25, not 28)."""
    z = torch.randn(1, 16, 7, 1, 1)
    assert [c.shape[2] for c in tiny.decode_chunks(z, GOLDEN_TILING)] == [12, 12, 1]


@pytest.mark.parametrize("shape", [(1, 16, 5, 1, 1), (1, 16, 7, 5, 5), (1, 16, 2, 5, 3)])
def test_decode_work_counts_every_decoder_convolution(tiny, shape):
    """The progress total (decode_work) is exactly the number of decoder convolutions run."""
    from comfyui_opensora.models.autoencoder import reporting_work, work_modules

    calls = []
    with reporting_work(work_modules(tiny.decoder), lambda: calls.append(1)):
        tiny.decode(torch.randn(shape), GOLDEN_TILING)
    assert len(calls) == tiny.decode_work(shape, GOLDEN_TILING) > 0


def test_spatial_tiles_blend_linearly(tiny):
    z = torch.randn(1, 16, 1, 5, 5)
    tiled = tiny.decode(z, Tiling(spatial=128))
    assert tiled.shape == (1, 3, 1, 160, 160)
    first = tiny.decode(z[..., :4, :4], NO_TILING)  # tiles start every 3 latents and keep 96 px
    right = tiny.decode(z[..., :4, 3:], NO_TILING)
    assert torch.equal(tiled[..., :96, :96], first[..., :96, :96])
    ramp = torch.arange(32) / 32
    blended = first[..., :96, 96:128] * (1 - ramp) + right[..., :96, :32] * ramp
    assert torch.allclose(tiled[..., :96, 96:128], blended, atol=1e-6)
    assert torch.equal(tiled[..., :96, 128:], right[..., :96, 32:64])


def test_scaling_factor_convention():
    state = tiny_dc_ae_state_dict(NARROW_DC_AE, seed=2)
    plain, scaled = build(state), build(state, scaling_factor=0.5)
    video = torch.rand(1, 3, 4, 32, 32) * 2 - 1
    assert torch.allclose(scaled.encode(video), plain.encode(video) / 0.5)
    z = torch.randn(1, 16, 1, 1, 1)
    assert torch.allclose(scaled.decode(z), plain.decode(z * 0.5))


def test_channel_chunked_kernels_match_plain(monkeypatch):
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(1, 12, 3, 5, 6, generator=generator)
    full = layers.Conv3d(12, 8, 3, padding=1)
    grouped = layers.Conv3d(12, 12, 3, padding=1, groups=12, bias=False)
    expected = (full(x), grouped(x), torch.nn.functional.interpolate(x, scale_factor=(2, 2, 2)))
    monkeypatch.setattr(layers, "INDEX_LIMIT", 200)
    chunked = (full(x), grouped(x), layers.upsample_nearest(x, (2, 2, 2)))
    for got, want in zip(chunked, expected):
        assert torch.allclose(got, want, atol=1e-5)


def test_bfloat16_follows_float32(golden):
    model, tensors = golden
    half = build({k: v.to(torch.bfloat16) for k, v in model.state_dict().items()})
    for method, source, target in (("encode", "input.encode.x", "output.encode.z"),
                                   ("decode", "input.temporal_tiled.z", "output.temporal_tiled.decode")):
        out = getattr(half, method)(tensors[source], tiling=GOLDEN_TILING)
        assert out.dtype == torch.bfloat16
        expected = tensors[target]
        assert (out.float() - expected).abs().max() < 0.05 * expected.abs().max()


def test_cpu_bf16_pixel_conv_of_one_frame_runs_in_fp32(monkeypatch):
    """The CPU bf16 Conv3d fault (one-frame, 3-channel input; wrong by more than the output's magnitude on
    some CPUs, giving all-black i2v videos) is avoided by convolving the same bf16 values in fp32."""
    torch.manual_seed(0)
    conv = layers.Conv3d(3, 128, 3, padding=1).to(torch.bfloat16)
    image = torch.rand(1, 32, 48, 3) * 2 - 1
    x = image.permute(3, 0, 1, 2).unsqueeze(0).to(torch.bfloat16)  # the layout a loaded image arrives in
    seen: list[torch.dtype] = []
    conv3d = torch.nn.functional.conv3d

    def spy(inp, *args, **kwargs):
        seen.append(inp.dtype)
        return conv3d(inp, *args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "conv3d", spy)
    monkeypatch.setattr(torch.nn.modules.conv.F, "conv3d", spy)
    out = conv(x)
    assert seen == [torch.float32] and out.dtype == torch.bfloat16
    bias = conv.bias.float()
    expected = conv3d(x.float().contiguous(), conv.weight.float(), bias, padding=1).bfloat16()
    assert torch.equal(out, expected)  # exactly the correctly rounded bf16 result
    seen.clear()
    conv(torch.cat([x, x], dim=2))  # several frames: the plain bf16 kernel
    assert seen == [torch.bfloat16]
    seen.clear()
    wide = layers.Conv3d(16, 8, 3, padding=1).to(torch.bfloat16)
    wide(torch.rand(1, 16, 1, 8, 8, dtype=torch.bfloat16))  # not a pixel input: the plain bf16 kernel
    assert seen == [torch.bfloat16]


def test_bf16_single_frame_encode_follows_fp32():
    """The i2v reference frame (one frame, bf16 on the CPU) encodes like fp32 up to bf16 rounding."""
    state = tiny_dc_ae_state_dict(NARROW_DC_AE, seed=3)
    full = build(state)
    half = build({k: v.to(torch.bfloat16) for k, v in state.items()})
    x = (torch.rand(1, 64, 96, 3) * 2 - 1).permute(3, 0, 1, 2).unsqueeze(0)
    expected = full.encode(x.to(torch.bfloat16).float(), tiling=NO_TILING)
    got = half.encode(x, tiling=NO_TILING).float()
    assert (got - expected).abs().max() < 0.05 * expected.abs().max()


def test_causal_chunks_mode_is_refused_with_a_remedy(tiny):
    """The DC-AE is not causal in time: the causal_chunks decode mode names the mode to use instead."""
    from comfyui_opensora.models.autoencoder import choose_tiling

    with pytest.raises(ValueError, match="choose reference tiling"):
        choose_tiling(tiny, "causal_chunks", (1, 16, 2, 1, 1))
