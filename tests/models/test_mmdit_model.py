"""The MMDiT module: official key layout and sizes, RoPE layouts, rounding quirks, input checks."""

from __future__ import annotations

import pytest
import torch

from comfyui_opensora.models.mmdit import MMDiT, MMDiTConfig
from comfyui_opensora.models.mmdit.layers import RMSNorm, timestep_embedding
from comfyui_opensora.models.mmdit.rope import RotaryEmbedding, apply_rope

from factories_mmdit import TINY_VIDEO_CONFIG, official_key_dump, tiny_mmdit_inputs, tiny_mmdit_state_dict


def _meta_model(config: MMDiTConfig) -> MMDiT:
    with torch.device("meta"):
        return MMDiT(config)


@pytest.mark.parametrize("config, parameters", [
    (MMDiTConfig(), 11_891_390_528),
    (MMDiTConfig.video_dc_ae(), 11_891_971_200),
    (MMDiTConfig.flux_dev(), 11_901_408_320),
])
def test_released_sizes_on_meta_device(config, parameters):
    model = _meta_model(config)
    assert sum(p.numel() for p in model.parameters()) == parameters
    assert all(p.is_meta for p in model.parameters())


def _read_dump(name: str) -> dict[str, tuple[int, ...]]:
    return official_key_dump(name)


@pytest.mark.parametrize("dump, config", [
    ("mmdit_open_sora_v2_keys.txt", MMDiTConfig()),
    ("mmdit_open_sora_v2_video_dc_ae_keys.txt", MMDiTConfig.video_dc_ae()),
    ("mmdit_flux1_dev_as_loaded_by_opensora_keys.txt", MMDiTConfig.flux_dev()),
])
def test_state_dict_equals_official_keys(dump, config):
    official = _read_dump(dump)
    ours = {k: tuple(v.shape) for k, v in _meta_model(config).state_dict().items()}
    assert ours == official


def test_rotate_half_and_interleaved_differ_by_a_pairing_only():
    """The layout matters (different outputs), and is exactly the (j, j+D/2) vs (2j, 2j+1) pairing."""
    ids = torch.tensor([[[0, 0, 0], [1, 2, 3], [2, 5, 7]]], dtype=torch.float32)
    x = torch.randn(1, 2, 3, 16, generator=torch.Generator().manual_seed(0))
    half = apply_rope(x, RotaryEmbedding((4, 6, 6), 10000, "rotate_half")(ids))
    inter = apply_rope(x, RotaryEmbedding((4, 6, 6), 10000, "interleaved")(ids))
    assert (half - inter).abs().max() > 0.1
    perm = torch.stack((torch.arange(8), torch.arange(8) + 8), dim=-1).flatten()  # perm[2j]=j, perm[2j+1]=j+8
    inter_of_permuted = apply_rope(x[..., perm], RotaryEmbedding((4, 6, 6), 10000, "interleaved")(ids))
    torch.testing.assert_close(inter_of_permuted, half[..., perm], rtol=0, atol=1e-6)


def test_rope_keeps_text_tokens_unrotated():
    rope = RotaryEmbedding((16, 56, 56), 10000, "rotate_half")(torch.zeros(1, 4, 3))
    x = torch.randn(1, 24, 4, 128)
    assert torch.equal(apply_rope(x, rope), x)


def test_timestep_embedding_rounds_like_the_reference_in_bf16():
    t = torch.tensor([0.996453], dtype=torch.bfloat16)  # -> 0.99609375, x1000 -> 996.0 in bf16
    expected = timestep_embedding(torch.tensor([996.0]), 256, time_factor=1.0).to(torch.bfloat16)
    assert torch.equal(timestep_embedding(t, 256), expected)
    assert not torch.equal(timestep_embedding(torch.tensor([0.996453]), 256).bfloat16(), expected)


def test_rms_norm_casts_before_the_scale():
    norm = RMSNorm(128).to(torch.bfloat16)
    with torch.no_grad():
        norm.scale.copy_(torch.linspace(0.5, 1.5, 128))
    x = (torch.randn(3, 128) * 5).to(torch.bfloat16)
    x32 = x.float()
    normed = (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + 1e-6)).to(torch.bfloat16)
    assert torch.equal(norm(x), normed * norm.scale)


def test_bf16_forward_follows_fp32():
    model = MMDiT(TINY_VIDEO_CONFIG)
    model.load_state_dict(tiny_mmdit_state_dict(TINY_VIDEO_CONFIG))
    inputs = tiny_mmdit_inputs(TINY_VIDEO_CONFIG, batch=2)
    with torch.no_grad():
        full = model(**inputs)
        half = model.to(torch.bfloat16)(**{k: v.to(torch.bfloat16) for k, v in inputs.items()})
    assert half.dtype == torch.bfloat16 and half.shape == full.shape == inputs["img"].shape
    assert (half.float() - full).abs().max() <= 0.05 * full.abs().max()


def test_condition_and_guidance_are_required_when_the_model_takes_them():
    model = MMDiT(TINY_VIDEO_CONFIG)
    inputs = tiny_mmdit_inputs(TINY_VIDEO_CONFIG)
    inputs.pop("cond")
    with pytest.raises(ValueError, match="pass cond"):
        model(**inputs)
    flux = MMDiT(TINY_VIDEO_CONFIG.with_changes(guidance_embed=True, cond_embed=False))
    with pytest.raises(ValueError, match="guidance"):
        flux(**inputs)


def test_config_rejects_inconsistent_rope_axes():
    with pytest.raises(ValueError, match="axes_dim"):
        MMDiTConfig(hidden_size=64, num_heads=4, axes_dim=(16, 56, 56))
