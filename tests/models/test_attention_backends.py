"""Attention backends: selection, clear errors for missing packages, layouts of the optional kernels."""

from __future__ import annotations

import math
import types

import pytest
import torch

from comfyui_opensora.models import attention_backends as backends
from comfyui_opensora.models.attention_backends import (
    AttentionBackendError,
    attention,
    resolve_backend,
    set_attention_backend,
)
from comfyui_opensora.models.mmdit import MMDiT

from factories_mmdit import TINY_VIDEO_CONFIG, tiny_mmdit_inputs, tiny_mmdit_state_dict


def _math_attention(q, k, v):  # [B, H, L, D]
    weights = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]), dim=-1)
    return weights @ v


def _qkv(seed=0):
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(2, 3, 7, 16, generator=generator) for _ in range(3)]


@pytest.fixture
def nothing_installed(monkeypatch):
    monkeypatch.setattr(backends, "_installed_module", lambda backend: None)


@pytest.fixture
def everything_installed(monkeypatch):
    monkeypatch.setattr(backends, "_installed_module", lambda backend: backends._PACKAGES[backend][0][-1])


def test_sdpa_is_softmax_attention():
    q, k, v = _qkv()
    torch.testing.assert_close(attention(q, k, v, "sdpa"), _math_attention(q, k, v))


def test_auto_picks_flash_attn_only_where_it_can_run(everything_installed):
    assert resolve_backend("auto", "cuda", torch.bfloat16) == "flash_attn"
    assert resolve_backend("auto", "cuda", torch.float32) == "sdpa"
    assert resolve_backend("auto", "cpu", torch.bfloat16) == "sdpa"
    assert resolve_backend("sageattention", "cuda", torch.float16) == "sageattention"


def test_auto_without_packages_is_sdpa(nothing_installed):
    assert resolve_backend("auto", "cuda", torch.bfloat16) == "sdpa"
    assert backends.available_backends() == ["sdpa"]


@pytest.mark.parametrize("name, package", [("flash_attn", "flash-attn"), ("sageattention", "sageattention")])
def test_missing_package_names_what_to_install(nothing_installed, name, package):
    with pytest.raises(AttentionBackendError, match=f"pip install {package}"):
        resolve_backend(name, "cuda", torch.bfloat16)


def test_unusable_choices_say_what_to_change(everything_installed):
    with pytest.raises(AttentionBackendError, match="needs a CUDA GPU"):
        resolve_backend("flash_attn", "cpu", torch.bfloat16)
    with pytest.raises(AttentionBackendError, match="weight_dtype"):
        resolve_backend("sageattention", "cuda", torch.float32)
    with pytest.raises(AttentionBackendError, match="Unknown attention backend"):
        resolve_backend("xformers", "cuda", torch.float16)


def test_flash_attn_and_sage_get_their_layouts(monkeypatch):
    """flash-attn wants [B, L, H, D]; SageAttention is called with the [B, H, L, D] ('HND') layout."""
    calls = []

    def flash_attn_func(q, k, v, causal):
        calls.append(("flash", tuple(q.shape), causal))
        out = _math_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)).transpose(1, 2)
        return out, None  # flash-attn 3 style (output, log-sum-exp)

    def sageattn(q, k, v, tensor_layout, is_causal):
        calls.append(("sage", tensor_layout, is_causal))
        return _math_attention(q, k, v)

    fakes = {"flash_attn": types.SimpleNamespace(flash_attn_func=flash_attn_func),
             "sageattention": types.SimpleNamespace(sageattn=sageattn)}
    monkeypatch.setattr(backends, "_installed_module", lambda backend: backend)
    monkeypatch.setattr(backends.importlib, "import_module", lambda name: fakes[name])
    q, k, v = _qkv(1)
    expected = _math_attention(q, k, v)
    torch.testing.assert_close(backends._flash_attn(q, k, v), expected)
    torch.testing.assert_close(backends._sageattention(q, k, v), expected)
    assert calls == [("flash", (2, 7, 3, 16), False), ("sage", "HND", False)]


def test_fast_kernels_fall_back_to_sdpa_for_cpu_tensors():
    q, k, v = _qkv(2)
    assert torch.equal(attention(q, k, v, "flash_attn"), attention(q, k, v, "sdpa"))


def test_model_blocks_use_the_chosen_backend(monkeypatch):
    model = MMDiT(TINY_VIDEO_CONFIG)
    model.load_state_dict(tiny_mmdit_state_dict())
    inputs = tiny_mmdit_inputs(TINY_VIDEO_CONFIG)
    with torch.no_grad():
        plain = model(**inputs)
    used = []
    kernel = backends._KERNELS["sdpa"]
    monkeypatch.setitem(backends._KERNELS, "sageattention", lambda q, k, v: used.append(q.shape) or kernel(q, k, v))
    monkeypatch.setattr(backends, "_HALF", (torch.float32,))  # let the fake kernel take CPU fp32 tensors
    monkeypatch.setattr(torch.Tensor, "is_cuda", property(lambda self: True))
    set_attention_backend(model, "sageattention")
    with torch.no_grad():
        chosen = model(**inputs)
    blocks = TINY_VIDEO_CONFIG.depth + TINY_VIDEO_CONFIG.depth_single_blocks
    assert len(used) == blocks and torch.equal(plain, chosen)
    with pytest.raises(AttentionBackendError, match="resolve it first"):
        set_attention_backend(model, "auto")
