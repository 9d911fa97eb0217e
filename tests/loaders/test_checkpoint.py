"""Streaming load: cast tensors are read with plain file reads in chunks, values equal a plain cast."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from comfyui_opensora.loaders import checkpoint
from comfyui_opensora.loaders.checkpoint import load_tensors


@pytest.fixture
def mixed_file(tmp_path):
    generator = torch.Generator().manual_seed(0)
    tensors = {
        "a.weight": torch.randn(37, 11, generator=generator).bfloat16(),
        "b.bias": torch.randn(5, generator=generator),
        "c.scalar": torch.tensor(3.5, dtype=torch.float16),
        "d.index": torch.arange(7),
        "e.empty": torch.zeros(0, 4),
    }
    path = tmp_path / "mixed.safetensors"
    save_file(tensors, str(path))
    return path, tensors


@pytest.mark.parametrize("target", [torch.float32, torch.bfloat16, torch.float16, torch.float8_e4m3fn])
def test_cast_load_equals_a_plain_cast(mixed_file, target):
    path, tensors = mixed_file
    loaded = load_tensors(path, dtype=target)
    assert loaded.keys() == tensors.keys()
    for key, tensor in tensors.items():
        expected = tensor.to(target) if tensor.is_floating_point() else tensor
        assert loaded[key].dtype == expected.dtype and loaded[key].shape == expected.shape, key
        assert torch.equal(loaded[key].float(), expected.float()), key


def test_chunked_reads_cover_every_value(mixed_file, monkeypatch):
    path, tensors = mixed_file
    original = checkpoint._read_cast
    monkeypatch.setattr(checkpoint, "_read_cast", lambda *a: original(*a, chunk_bytes=6))  # 3 bf16 values
    loaded = load_tensors(path, dtype=lambda key, stored: torch.float32)
    assert torch.equal(loaded["a.weight"], tensors["a.weight"].float())
    assert torch.equal(loaded["c.scalar"], tensors["c.scalar"].float())


def test_tensors_kept_in_their_stored_dtype_are_unchanged(mixed_file):
    path, tensors = mixed_file
    loaded = load_tensors(path, dtype=lambda key, stored: stored)
    assert all(torch.equal(loaded[k], v) for k, v in tensors.items())
