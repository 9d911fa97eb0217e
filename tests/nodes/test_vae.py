"""VAE nodes: loader, decode to IMAGE frames, native latent conversion, and their errors."""

from __future__ import annotations

import pytest
import torch

from comfyui_opensora.loaders.checkpoint import CheckpointError
from comfyui_opensora.models.autoencoder import NO_TILING, decode_to_frames
from comfyui_opensora.nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS
from comfyui_opensora.nodes import vae as vae_nodes
from comfyui_opensora.models.latent_space import HUNYUAN_VAE, VIDEO_DC_AE
from comfyui_opensora.samplers.geometry import VideoGeometry
from comfyui_opensora.samplers.latent import GEOMETRY_KEY, make_latent, read_latent
from factories_vae import write_lookalike, write_tiny_hunyuan_vae

GEOMETRY = VideoGeometry(height=32, width=48, num_frames=9)  # latent [B, 16, 3, 4, 6]


@pytest.fixture
def loaded_vae(standalone_host):
    write_tiny_hunyuan_vae(standalone_host.folder_paths(standalone_host.VAE)[0] / "hunyuan_vae.safetensors")
    (vae,) = vae_nodes.OpenSoraVAELoader().execute("hunyuan_vae.safetensors", "fp32")
    return vae


def _latent(batch: int = 2, geometry: VideoGeometry = GEOMETRY, seed: int = 0) -> dict:
    samples = torch.randn(geometry.latent_shape(batch), generator=torch.Generator().manual_seed(seed))
    return make_latent(samples, geometry)


def test_loader_lists_vae_folder_and_loads(standalone_host):
    folder = standalone_host.folder_paths(standalone_host.VAE)[0]
    write_tiny_hunyuan_vae(folder / "hunyuan_vae.safetensors")
    names = vae_nodes.OpenSoraVAELoader.INPUT_TYPES()["required"]["vae_name"][0]
    assert names == ["hunyuan_vae.safetensors"]
    assert vae_nodes.OpenSoraVAELoader.INPUT_TYPES()["required"]["dtype"][1]["default"] == "bf16"
    (vae,) = vae_nodes.OpenSoraVAELoader().execute("hunyuan_vae.safetensors", "bf16")
    assert vae.kind == HUNYUAN_VAE and vae.dtype == torch.bfloat16
    assert vae.module.dtype == torch.bfloat16 and vae.path.endswith("hunyuan_vae.safetensors")


def test_loader_refuses_a_diffusion_model(standalone_host):
    write_lookalike(standalone_host.folder_paths(standalone_host.VAE)[0] / "model.safetensors", "mmdit")
    with pytest.raises(CheckpointError, match="not an autoencoder: it looks like an Open-Sora 2.0 video MMDiT"):
        vae_nodes.OpenSoraVAELoader().execute("model.safetensors", "bf16")
    with pytest.raises(ValueError, match="dtype must be one of"):
        vae_nodes.OpenSoraVAELoader().execute("model.safetensors", "int8")


def test_loader_loads_the_dc_ae_and_decode_refuses_hunyuan_latents(standalone_host):
    from comfyui_opensora.tiny_checkpoints.autoencoders import tiny_dc_ae_config, write_tiny_dc_ae

    write_tiny_dc_ae(standalone_host.folder_paths(standalone_host.VAE)[0] / "F32T4C128_AE.safetensors",
                     tiny_dc_ae_config(latent_channels=16))
    (vae,) = vae_nodes.OpenSoraVAELoader().execute("F32T4C128_AE.safetensors", "fp32")
    assert vae.kind == VIDEO_DC_AE and vae.module.kind.name == "dc_ae"
    with pytest.raises(ValueError, match="belongs to the HunyuanVideo.*VAE loaded is the Video DC-AE"):
        vae_nodes.OpenSoraVAEDecode().execute(vae, _latent(1), "reference")


def test_decode_gives_all_frames_in_unit_range(loaded_vae, standalone_host):
    latent = _latent(batch=2)
    updates = []
    remove = standalone_host.add_progress_listener(lambda value, total: updates.append((value, total)))
    try:
        (videos,) = vae_nodes.OpenSoraVAEDecode().execute(loaded_vae, latent, "reference")
    finally:
        remove()
    assert vae_nodes.OpenSoraVAEDecode.OUTPUT_IS_LIST == (True,)
    assert [v.shape for v in videos] == [(9, 32, 48, 3)] * 2  # one IMAGE per video of the batch
    frames = torch.cat(videos)
    assert frames.dtype == torch.float32 and frames.device.type == "cpu"
    # The bar moves after every decoder convolution, not once per batch element.
    module = loaded_vae.module
    total = 2 * module.decode_work(tuple(latent["samples"][:1].shape), module.reference_tiling())
    assert total > 2 * 10 and updates == [(value, total) for value in range(1, total + 1)]
    decoded = loaded_vae.module.decode(latent["samples"], NO_TILING)
    expected = ((decoded.clamp(-1, 1) + 1) / 2).permute(0, 2, 3, 4, 1).reshape(18, 32, 48, 3)
    assert (frames - expected).abs().max() < 1e-5  # one batch element at a time vs the whole batch
    assert frames.min() >= 0 and frames.max() <= 1
    for mode in ("none", "memory_budget", "reference_temporal"):
        (other,) = vae_nodes.OpenSoraVAEDecode().execute(loaded_vae, latent, mode)
        assert torch.equal(torch.cat(other), frames), mode  # small latents: no tile is needed in any mode


def test_decode_in_causal_chunks_moves_progress_per_convolution(loaded_vae, standalone_host):
    """The causal_chunks mode (two chunks here): progress reaches its total exactly, one step per decoder
    convolution, and the frames are the model's causal-chunk decode (close to, not equal to, untiled)."""
    latent = _latent(batch=1)
    module = loaded_vae.module
    updates = []
    remove = standalone_host.add_progress_listener(lambda value, total: updates.append((value, total)))
    try:
        (videos,) = vae_nodes.OpenSoraVAEDecode().execute(loaded_vae, latent, "causal_chunks")
    finally:
        remove()
    tiling = module.causal_chunk_tiling()
    total = module.decode_work(tuple(latent["samples"].shape), tiling)
    assert module.decode_chunk_count(3, tiling) == 2 and updates == [(v, total) for v in range(1, total + 1)]
    decoded = module.decode(latent["samples"], tiling)
    expected = ((decoded.clamp(-1, 1) + 1) / 2)[0].permute(1, 2, 3, 0)
    assert torch.equal(videos[0], expected)
    (untiled,) = vae_nodes.OpenSoraVAEDecode().execute(loaded_vae, latent, "none")
    assert not torch.equal(videos[0], untiled[0]) and (videos[0] - untiled[0]).abs().mean() < 0.05


def test_decode_streams_temporal_tiles_and_cuts_frames(loaded_vae):
    from comfyui_opensora.models.autoencoder import Tiling

    module = loaded_vae.module
    z = torch.randn(1, 16, 6, 2, 2, generator=torch.Generator().manual_seed(5))
    calls = []
    frames = decode_to_frames(module, z, 19, 16, 16, Tiling(temporal=16), torch.device("cpu"),
                              lambda: calls.append(1))
    assert module.decode_passes(tuple(z.shape), Tiling(temporal=16)) == 2  # two temporal tiles
    assert frames.shape == (19, 16, 16, 3) and len(calls) == module.decode_work(tuple(z.shape), Tiling(temporal=16))
    full = decode_to_frames(module, z, 21, 16, 16, Tiling(temporal=16), torch.device("cpu"))
    assert torch.equal(frames, full[:19])
    with pytest.raises(ValueError, match="decodes to 21 frames but 25 were requested"):
        decode_to_frames(module, z, 25, 16, 16, NO_TILING, torch.device("cpu"))


def test_decode_can_be_cancelled(loaded_vae, standalone_host):
    standalone_host.request_interrupt()
    with pytest.raises(standalone_host.Interrupted):
        vae_nodes.OpenSoraVAEDecode().execute(loaded_vae, _latent(batch=1), "reference")


def test_cancel_during_a_decode_stops_it_at_the_next_convolution(loaded_vae, standalone_host):
    """Cancel pressed while the decoder runs (one tile, one chunk) takes effect at the next decoder
    convolution, not after the whole decode; the progress hooks are gone afterwards."""
    seen = []

    def cancel_at_third(value: int, total: int) -> None:
        seen.append(value)
        if value == 3:
            standalone_host.request_interrupt()

    remove = standalone_host.add_progress_listener(cancel_at_third)
    try:
        with pytest.raises(standalone_host.Interrupted):
            vae_nodes.OpenSoraVAEDecode().execute(loaded_vae, _latent(batch=1), "none")
    finally:
        remove()
    assert seen == [1, 2, 3]  # no convolution ran after the interrupt was raised
    decoder = loaded_vae.module.decoder
    assert all(not module._forward_hooks for module in decoder.modules())
    ((frames,),) = vae_nodes.OpenSoraVAEDecode().execute(loaded_vae, _latent(batch=1), "none")
    assert frames.shape == (9, 32, 48, 3)  # the next run is unaffected


def test_decode_errors_say_what_is_wrong(loaded_vae):
    decode = vae_nodes.OpenSoraVAEDecode().execute
    wrong_channels = {"samples": torch.zeros(1, 8, 3, 4, 6), GEOMETRY_KEY: GEOMETRY}
    with pytest.raises(ValueError, match=r"shape \(1, 8, 3, 4, 6\).*decodes \[batch, 16, frames"):
        decode(loaded_vae, wrong_channels, "reference")

    dc_ae = VideoGeometry(height=64, width=64, num_frames=8, autoencoder=VIDEO_DC_AE.name)
    with pytest.raises(ValueError, match="belongs to the Video DC-AE.*VAE loaded is the HunyuanVideo"):
        decode(loaded_vae, _latent(1, dc_ae), "reference")

    with pytest.raises(ValueError, match="batch is empty"):
        decode(loaded_vae, _latent(0), "reference")

    with pytest.raises(ValueError, match="not come from an Open-Sora node"):
        decode(loaded_vae, {"samples": torch.zeros(1, 16, 3, 4, 6)}, "reference")

    with pytest.raises(ValueError, match="Unknown tiling mode"):
        decode(loaded_vae, _latent(1), "sideways")


def test_native_latent_round_trip():
    latent = _latent(batch=2)
    (native,) = vae_nodes.OpenSoraLatentToNative().execute(latent)
    assert set(native) == {"samples"}
    assert torch.allclose(native["samples"], latent["samples"] / 0.476986)
    (back,) = vae_nodes.OpenSoraLatentFromNative().execute(native)
    samples, geometry = read_latent(back)
    assert geometry == GEOMETRY  # 3 latent frames -> 9 frames, 4x6 latents -> 32x48 px
    assert torch.allclose(samples, latent["samples"], atol=1e-6)

    (image,) = vae_nodes.OpenSoraLatentFromNative().execute({"samples": torch.zeros(1, 16, 1, 4, 4)})
    assert read_latent(image)[1] == VideoGeometry(height=32, width=32, num_frames=1)


def test_native_latent_errors():
    with pytest.raises(ValueError, match="even"):
        vae_nodes.OpenSoraLatentFromNative().execute({"samples": torch.zeros(1, 16, 3, 5, 6)})
    with pytest.raises(ValueError, match="image latent or another model's latent"):
        vae_nodes.OpenSoraLatentFromNative().execute({"samples": torch.zeros(1, 4, 8, 8)})
    dc_ae = VideoGeometry(height=64, width=64, num_frames=8, autoencoder=VIDEO_DC_AE.name)
    with pytest.raises(ValueError, match="Only HunyuanVideo VAE latents"):
        vae_nodes.OpenSoraLatentToNative().execute(_latent(1, dc_ae))


def test_node_contract(standalone_host):
    vae_node_classes = {i: c for i, c in NODE_CLASS_MAPPINGS.items() if c.__module__ == vae_nodes.__name__}
    for node_id, cls in vae_node_classes.items():
        assert node_id.startswith("OpenSora")
        assert NODE_DISPLAY_NAME_MAPPINGS[node_id].startswith("Open-Sora ")
        assert cls.FUNCTION == "execute" and cls.CATEGORY == "Open-Sora" and cls.DESCRIPTION
        assert len(cls.RETURN_TYPES) == len(cls.RETURN_NAMES) == len(cls.OUTPUT_TOOLTIPS)
        for name, spec in cls.INPUT_TYPES()["required"].items():
            assert spec[1].get("tooltip"), (node_id, name)
