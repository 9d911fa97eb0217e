"""The Open-Sora Model Loader node (outside ComfyUI, through the standalone host)."""

from __future__ import annotations

import shutil

import pytest
import torch

from comfyui_opensora import nodes
from comfyui_opensora.loaders.checkpoint import CheckpointError
from comfyui_opensora.nodes.model_loader import OpenSoraModel, OpenSoraModelLoader

from factories_mmdit import TINY_VIDEO_CONFIG, tiny_mmdit_inputs, tiny_mmdit_state_dict, write_tiny_mmdit


def _model_folder(host):
    return host.folder_paths(host.DIFFUSION_MODELS)[0]


def test_node_is_registered():
    assert nodes.NODE_CLASS_MAPPINGS["OpenSoraModelLoader"] is OpenSoraModelLoader
    assert nodes.NODE_DISPLAY_NAME_MAPPINGS["OpenSoraModelLoader"] == "Open-Sora Model Loader"


def test_inputs_list_the_diffusion_models_folder(standalone_host):
    folder = _model_folder(standalone_host)
    write_tiny_mmdit(folder / "tiny.safetensors")
    (folder / "sub").mkdir()
    write_tiny_mmdit(folder / "sub" / "other.safetensors")
    required = OpenSoraModelLoader.INPUT_TYPES()["required"]
    assert list(required) == ["model_name", "weight_dtype", "attention", "offload_blocks", "compile"]
    assert required["model_name"][0] == ["sub/other.safetensors", "tiny.safetensors"]
    assert required["weight_dtype"][0] == ["bf16", "fp16", "fp32", "fp8_e4m3fn", "fp8_e5m2"]
    assert required["weight_dtype"][1]["default"] == "bf16"
    assert all("tooltip" in options for _, options in required.values())


def test_loaded_model_has_the_file_tensors_and_runs(standalone_host):
    write_tiny_mmdit(_model_folder(standalone_host) / "tiny.safetensors", seed=5)
    (model,) = OpenSoraModelLoader().execute("tiny.safetensors", "fp32")
    assert isinstance(model, OpenSoraModel)
    assert model.config == TINY_VIDEO_CONFIG and model.dtype == torch.float32
    assert model.path.endswith("tiny.safetensors")
    expected = tiny_mmdit_state_dict(seed=5)
    loaded = model.module.state_dict()
    assert all(torch.equal(loaded[k], expected[k]) for k in expected) and loaded.keys() == expected.keys()
    assert all(p.device.type == "cpu" for p in model.module.parameters())

    standalone_host.load_models([model.managed])
    with torch.no_grad():
        velocity = model.module(**tiny_mmdit_inputs(TINY_VIDEO_CONFIG))
    assert velocity.shape == (1, 24, TINY_VIDEO_CONFIG.in_channels) and torch.isfinite(velocity).all()


def test_bf16_is_the_default_precision(standalone_host):
    write_tiny_mmdit(_model_folder(standalone_host) / "tiny.safetensors")
    (model,) = OpenSoraModelLoader().execute("tiny.safetensors", "bf16")
    assert model.dtype == torch.bfloat16
    assert {p.dtype for p in model.module.parameters()} == {torch.bfloat16}


def test_vae_offered_as_model_is_refused(standalone_host, golden_dir):
    shutil.copy(golden_dir / "hunyuan_vae" / "model.safetensors", _model_folder(standalone_host) / "vae.safetensors")
    with pytest.raises(CheckpointError, match="VAE"):
        OpenSoraModelLoader().execute("vae.safetensors", "bf16")


def test_unknown_file_name_says_where_it_looked(standalone_host):
    with pytest.raises(FileNotFoundError, match="diffusion_models"):
        OpenSoraModelLoader().execute("missing.safetensors", "bf16")
