"""Model folders outside ComfyUI: files and folders reached through symlinks load; escapes are refused."""

from __future__ import annotations

import os
import shutil

import pytest
from factories_text import GOLDEN_TEXT

from comfyui_opensora.nodes.model_loader import OpenSoraModelLoader
from comfyui_opensora.nodes.text import OpenSoraTextEncoderLoader


def test_symlinked_folders_and_files_load_through_the_loader_nodes(standalone_host, tmp_path, golden_dir):
    store = tmp_path / "shared_store"
    shutil.copytree(GOLDEN_TEXT / "hf", store / "hf")
    text_folder = standalone_host.folder_paths(standalone_host.TEXT_ENCODERS)[0]
    os.symlink(store / "hf" / "google", text_folder / "google")  # a linked folder of HF model folders
    os.symlink(store / "hf" / "openai" / "clip-tiny", text_folder / "clip-tiny")  # a linked model folder
    shutil.copy(golden_dir / "mmdit_forward" / "video_model.safetensors", store / "video_model.safetensors")
    model_folder = standalone_host.folder_paths(standalone_host.DIFFUSION_MODELS)[0]
    os.symlink(store / "video_model.safetensors", model_folder / "linked.safetensors")  # a linked file

    assert "linked.safetensors" in OpenSoraModelLoader.INPUT_TYPES()["required"]["model_name"][0]
    encoders = OpenSoraTextEncoderLoader().execute("google/t5-tiny", "clip-tiny", "fp32")[0]
    assert encoders.t5.encode(["a fox"]).shape[0] == 1
    assert standalone_host.resolve_file(standalone_host.DIFFUSION_MODELS, "linked.safetensors").is_file()


def test_names_climbing_out_and_dangling_links_are_refused(standalone_host, tmp_path):
    folder = standalone_host.folder_paths(standalone_host.VAE)[0]
    (tmp_path / "outside.safetensors").write_bytes(b"x")
    for name in ("../outside.safetensors", str(tmp_path / "outside.safetensors"), "a/../../outside.safetensors"):
        with pytest.raises(FileNotFoundError, match="not a name inside"):
            standalone_host.resolve_file(standalone_host.VAE, name)
    os.symlink(tmp_path / "gone.safetensors", folder / "vae.safetensors")
    with pytest.raises(FileNotFoundError, match=r"link .*vae\.safetensors -> .*gone\.safetensors, which points to nothing"):
        standalone_host.resolve_file(standalone_host.VAE, "vae.safetensors")
