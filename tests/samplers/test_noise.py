"""Seeded noise, packing and position ids against the official code (golden_v1/noise)."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from comfyui_opensora.models import latent_space
from comfyui_opensora.samplers import geometry, noise, packing
from golden_tolerance import assert_within, gaussian_noise_bound

BFLOAT16_ULP = 2.0**-7  # relative spacing of bfloat16 numbers: a float32 difference can flip one rounding


def _items(golden_dir):
    folder = golden_dir / "noise"
    manifest = json.loads((folder / "manifest.json").read_text())
    tensors = {k: v.clone() for k, v in load_file(folder / "noise.safetensors").items()}
    return manifest["items"], tensors


def _geometry(item) -> geometry.VideoGeometry:
    args = item["call"]["args"]
    kind = latent_space.VIDEO_DC_AE if item["AE_SPATIAL_COMPRESSION"] == 32 else latent_space.HUNYUAN_VAE
    assert (kind.patch_size, kind.latent_channels) == (args["patch_size"], args["channel"])
    latent_t = args["num_frames"]  # the reference's get_noise takes latent frames
    frames = 1 if latent_t == 1 else kind.temporal_compression * latent_t  # valid for both kinds
    if kind.causal and latent_t > 1:
        frames = kind.temporal_compression * (latent_t - 1) + 1
    return geometry.VideoGeometry(args["height"], args["width"], frames, kind.name)


def test_noise_packing_and_ids_match_reference(golden_dir):
    items, tensors = _items(golden_dir)
    assert {item["call"]["args"]["num_samples"] for item in items} == {1, 2}
    assert {item["AE_SPATIAL_COMPRESSION"] for item in items} == {16, 32}
    for item in items:
        args = item["call"]["args"]
        g = _geometry(item)
        p = args["patch_size"]
        z = noise.get_noise(g, args["num_samples"], args["seed"], "cpu", torch.float32)
        reference = tensors[item["noise"]["key"]]
        assert_within(z, reference, gaussian_noise_bound(reference), f"noise {item['noise']['key']}")

        # Packing and ids are pure indexing: identical on any machine.
        assert torch.equal(packing.pack(reference, p), tensors[item["packed"]["key"]])
        packed = packing.pack(z, p)
        back = packing.unpack(packed, g.latent_frames, g.latent_height, g.latent_width, p)
        assert torch.equal(back, z)

        ids = packing.image_ids(args["num_samples"], g.latent_frames, g.latent_height, g.latent_width, p)
        assert torch.equal(ids, tensors[item["img_ids"]["key"]])
        txt_shape = item["txt_ids"]["shape"]
        assert torch.equal(packing.text_ids(txt_shape[0], txt_shape[1]), tensors[item["txt_ids"]["key"]])

        if "bf16_variant" in item:
            bf16 = noise.get_noise(g, args["num_samples"], args["seed"], "cpu", torch.bfloat16)
            expected = tensors[item["bf16_variant"]["tensor"]["key"]]
            bound = gaussian_noise_bound(expected) + BFLOAT16_ULP * expected.double().abs()
            assert_within(bf16.float(), expected, bound, "bf16 noise")


def test_noise_shapes_of_real_configs():
    assert noise.get_noise(geometry.VideoGeometry(192, 336, 129), 1, 0).shape == (1, 16, 33, 24, 42)
    dc = geometry.VideoGeometry(576, 1024, 128, latent_space.VIDEO_DC_AE.name)
    assert dc.latent_shape(1) == (1, 128, 32, 18, 32)
    first = noise.get_noise(geometry.VideoGeometry(192, 336, 129), 1, 42).flatten()[:4]
    assert first.tolist() == pytest.approx([1.926915, 1.487284, 0.900717, -2.105521], abs=1e-6)


def test_dc_ae_packing_has_one_token_per_latent_pixel():
    z = torch.randn(1, 128, 2, 3, 4)
    packed = packing.pack(z, 1)
    assert packed.shape == (1, 24, 128)
    assert torch.equal(packing.unpack(packed, 2, 3, 4, 1), z)

