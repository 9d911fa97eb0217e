"""Loading MMDiT checkpoints: config from shapes, strict streaming load, dtypes, and refusing wrong files."""

from __future__ import annotations

import os

import pytest
import torch
from safetensors.torch import save_file

from comfyui_opensora.loaders.checkpoint import CheckpointError, TensorInfo
from comfyui_opensora.loaders.mmdit import (
    COMFY_PREFIX,
    default_axes_dim,
    infer_mmdit_config,
    load_mmdit,
    read_mmdit_config,
)
from comfyui_opensora.models.mmdit import MMDiTConfig

from factories_mmdit import (
    TINY_DC_AE_CONFIG,
    TINY_FLUX_CONFIG,
    TINY_VIDEO_CONFIG,
    official_key_dump,
    tiny_mmdit_state_dict,
    write_tiny_mmdit,
)


@pytest.mark.parametrize("config", [TINY_VIDEO_CONFIG, TINY_DC_AE_CONFIG, TINY_FLUX_CONFIG],
                         ids=["video", "dc_ae", "flux"])
def test_round_trip_gives_the_same_config_and_tensors(tmp_path, config):
    path = tmp_path / "tiny.safetensors"
    write_tiny_mmdit(path, config, seed=3)
    model = load_mmdit(path, dtype=torch.float32)
    assert model.config == config
    expected = tiny_mmdit_state_dict(config, seed=3)
    loaded = model.state_dict()
    assert loaded.keys() == expected.keys()
    assert all(torch.equal(loaded[k], expected[k]) for k in expected)
    assert not any(p.requires_grad for p in model.parameters())


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_weights_are_cast_to_the_requested_dtype(tmp_path, dtype):
    path = tmp_path / "tiny.safetensors"
    write_tiny_mmdit(path, dtype=torch.float32)
    model = load_mmdit(path, dtype=dtype)
    assert {p.dtype for p in model.parameters()} == {dtype}
    reference = tiny_mmdit_state_dict()["img_in.weight"].to(dtype)
    assert torch.equal(model.img_in.weight, reference)


def test_unsupported_dtype_is_refused(tmp_path):
    path = tmp_path / "tiny.safetensors"
    write_tiny_mmdit(path)
    with pytest.raises(ValueError, match="Unsupported MMDiT weight dtype"):
        load_mmdit(path, dtype=torch.int8)


def test_comfyui_prefixed_flux_file_loads(tmp_path):
    path = tmp_path / "flux_prefixed.safetensors"
    write_tiny_mmdit(path, TINY_FLUX_CONFIG, comfy_prefix=True, with_metadata=False)
    assert read_mmdit_config(path) == TINY_FLUX_CONFIG  # what the command line reads for --sp-size layouts
    model = load_mmdit(path, dtype=torch.float32)
    assert model.config == TINY_FLUX_CONFIG
    assert torch.equal(model.guidance_in.in_layer.weight,
                       tiny_mmdit_state_dict(TINY_FLUX_CONFIG)["guidance_in.in_layer.weight"])


def test_metadata_gives_rope_axes_that_shapes_cannot(tmp_path):
    config = TINY_VIDEO_CONFIG.with_changes(hidden_size=64, num_heads=2, axes_dim=(8, 12, 12), theta=500)
    assert default_axes_dim(config.head_dim) != config.axes_dim
    path = tmp_path / "tiny.safetensors"
    write_tiny_mmdit(path, config)
    assert load_mmdit(path, dtype=torch.float32).config == config


def test_odd_mlp_width_is_reproduced():
    config = TINY_VIDEO_CONFIG.with_changes(hidden_size=112, num_heads=7, depth=1, depth_single_blocks=1)
    header = {k: TensorInfo(tuple(v.shape), "F32") for k, v in tiny_mmdit_state_dict(config).items()}
    header["double_blocks.0.img_mlp.0.weight"] = TensorInfo((61, 112), "F32")
    assert int(112 * (61 / 112)) == 60  # the plain ratio would build a 60-wide MLP
    assert infer_mmdit_config(header).mlp_hidden_dim == 61


def test_metadata_axes_allow_head_dims_the_rule_cannot_split(tmp_path):
    config = TINY_VIDEO_CONFIG.with_changes(hidden_size=24, num_heads=6, axes_dim=(2, 0, 2))
    with pytest.raises(CheckpointError, match="metadata"):
        default_axes_dim(config.head_dim)
    path = tmp_path / "tiny.safetensors"
    write_tiny_mmdit(path, config)
    assert load_mmdit(path, dtype=torch.float32).config.axes_dim == (2, 0, 2)


def test_default_axes_rule_reproduces_the_known_configs():
    assert default_axes_dim(128) == (16, 56, 56)  # the released models
    assert default_axes_dim(16) == (4, 6, 6)  # the reference's tiny test models
    assert sum(default_axes_dim(64)) == 64


@pytest.mark.parametrize("dump, config", [
    ("mmdit_open_sora_v2_keys.txt", MMDiTConfig()),
    ("mmdit_open_sora_v2_video_dc_ae_keys.txt", MMDiTConfig.video_dc_ae()),
    ("mmdit_flux1_dev_as_loaded_by_opensora_keys.txt", MMDiTConfig.flux_dev()),
])
def test_config_of_the_real_checkpoints_from_their_shapes(dump, config):
    shapes = official_key_dump(dump)
    header = {key: TensorInfo(shape, "BF16") for key, shape in shapes.items()}
    assert infer_mmdit_config(header) == config
    prefixed = {COMFY_PREFIX + key: info for key, info in header.items()}
    assert infer_mmdit_config(prefixed) == config


# ------------------------------------------------------------------------------------------ wrong files


def test_vae_file_is_refused_with_what_it_is(golden_dir):
    with pytest.raises(CheckpointError, match="HunyuanVideo causal VAE.*models/vae"):
        load_mmdit(golden_dir / "hunyuan_vae" / "model.safetensors")


def test_dc_ae_file_is_refused_with_what_it_is(golden_dir):
    with pytest.raises(CheckpointError, match="Video DC-AE"):
        load_mmdit(golden_dir / "dc_ae" / "model.safetensors")


def test_random_safetensors_file_is_refused(tmp_path):
    path = tmp_path / "random.safetensors"
    save_file({"layer.weight": torch.randn(4, 4), "layer.bias": torch.zeros(4)}, str(path))
    with pytest.raises(CheckpointError, match="match no model this pack knows"):
        load_mmdit(path)


def test_truncated_file_is_refused(tmp_path):
    path = tmp_path / "tiny.safetensors"
    write_tiny_mmdit(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) * 2 // 3])
    with pytest.raises(CheckpointError, match="truncated"):
        load_mmdit(path)


class _Trap:
    """Unpickling this creates a folder: proof that a loader executed the pickle."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return os.makedirs, (self.marker,)


def test_pickle_checkpoint_is_refused_without_unpickling(tmp_path):
    marker = tmp_path / "unpickled"
    path = tmp_path / "model.ckpt"
    torch.save({"state_dict": {"img_in.weight": torch.zeros(2, 2)}, "trap": _Trap(str(marker))}, path)
    with pytest.raises(CheckpointError, match="not a safetensors file"):
        load_mmdit(path)
    assert not marker.exists()


def test_missing_and_misshapen_tensors_are_named(tmp_path):
    tensors = tiny_mmdit_state_dict()
    del tensors["single_blocks.1.linear2.bias"]
    tensors["double_blocks.0.txt_mlp.0.weight"] = torch.zeros(7, 64)
    path = tmp_path / "broken.safetensors"
    save_file(tensors, str(path))
    with pytest.raises(CheckpointError) as caught:
        load_mmdit(path)
    message = str(caught.value)
    assert "single_blocks.1.linear2.bias" in message and "double_blocks.0.txt_mlp.0.weight" in message


def test_combined_comfyui_checkpoint_is_refused_with_the_extra_keys(tmp_path):
    tensors = {COMFY_PREFIX + k: v for k, v in tiny_mmdit_state_dict(TINY_FLUX_CONFIG).items()}
    tensors["first_stage_model.decoder.conv_in.weight"] = torch.zeros(2, 2)
    path = tmp_path / "checkpoint.safetensors"
    save_file(tensors, str(path))
    with pytest.raises(CheckpointError, match="bundles the diffusion model.*first_stage_model.decoder.conv_in"):
        load_mmdit(path)
