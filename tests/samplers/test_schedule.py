"""Schedule, size table and guidance oscillation against the official code's outputs (golden_v1/schedule)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from golden_tolerance import assert_within, elementwise_bound
from safetensors.torch import load_file

from comfyui_opensora.models import latent_space
from comfyui_opensora.samplers import geometry, schedule


def _schedule_bound(expected: torch.Tensor, args: dict) -> torch.Tensor:
    """``alpha t / (1 + (alpha - 1) t)`` of float32 ``linspace`` values: ``t`` carries a couple of ulp,
    which the shift's slope (at most ``alpha``) carries over; the shift itself adds four roundings."""
    alpha = 1.0
    if args["shift"]:
        alpha = args["shift_alpha"] or schedule.shift_alpha(args["image_seq_len"], args["num_frames"])
    return elementwise_bound(expected, ulps=2 * max(alpha, 1.0) + 4)


@pytest.fixture(scope="module")
def case():
    folder = Path(__file__).resolve().parents[1] / "golden_v1" / "schedule"
    manifest = json.loads((folder / "manifest.json").read_text())
    tensors = {k: v.clone() for k, v in load_file(folder / "schedules.safetensors").items()}
    return manifest, tensors


def test_named_schedules_match_reference(case):
    manifest, tensors = case
    for entry in manifest["named"]:
        args = entry["call"]["args"]
        ours = schedule.get_schedule(
            args["num_steps"], args["image_seq_len"], args["num_frames"], args["shift"], args["shift_alpha"]
        )
        expected = tensors[entry["tensor"]["key"]]
        assert_within(torch.tensor(ours), expected, _schedule_bound(expected, args), entry["name"])
        assert_within(torch.tensor(ours), torch.tensor(entry["timesteps"]), _schedule_bound(expected, args),
                      entry["name"])
        if entry.get("shift_alpha_computed") is not None and args["shift_alpha"] is None:
            alpha = schedule.shift_alpha(args["image_seq_len"], args["num_frames"])
            assert alpha == pytest.approx(entry["shift_alpha_computed"], abs=1e-12)


def test_schedule_grid_matches_reference(case):
    manifest, tensors = case
    for entry in manifest["grid"]:
        ours = schedule.get_schedule(
            entry["num_steps"], entry["image_seq_len"], entry["num_frames"], entry["shift"], entry["shift_alpha"]
        )
        expected = tensors[entry["key"]]
        assert_within(torch.tensor(ours), expected, _schedule_bound(expected, entry), entry["key"])


def test_named_schedules_from_geometry(case):
    """The sampler derives tokens per frame and latent frames from the geometry: same arguments."""
    manifest, _ = case
    for entry in manifest["named"]:
        if entry["patch_size"] != 2 or "after_sanitize" not in entry:
            continue
        size = entry["after_sanitize"]
        frames = {1: 1}.get(entry["latent_T"], (entry["latent_T"] - 1) * 4 + 1)
        g = geometry.VideoGeometry(size["height"], size["width"], frames)
        assert g.latent_frames == entry["latent_T"]
        assert [g.latent_height, g.latent_width] == entry["noise_hw"]
        assert g.tokens_per_frame == entry["image_seq_len"]


def test_size_table_matches_reference(case):
    manifest, _ = case
    for name, sizes in manifest["image_sizes"].items():
        divisor, resolution, ratio = name.split("/")
        kind = latent_space.HUNYUAN_VAE if divisor == "D16" else latent_space.VIDEO_DC_AE
        assert list(geometry.image_size(resolution, ratio, kind)) == sizes["after_sanitize_hw"], name


def test_oscillation_table_matches_reference(case):
    manifest, _ = case
    table = manifest["oscillation_gs (get_oscillation_gs(g, i), i=0..49, force_num=10)"]
    for key, expected in table.items():
        scale = float(key.split("=")[1])
        assert [schedule.oscillated_scale(scale, i) for i in range(50)] == expected


def test_temporal_image_ramp_matches_reference_record(golden_dir):
    manifest = json.loads((golden_dir / "denoise_i2v" / "manifest.json").read_text())
    for entry in manifest["sub_cases"]["i2v_head"]["guidance_per_step"]:
        if "image_gs_temporal" not in entry:
            continue
        ramp = schedule.temporal_image_scales(entry["image_gs"], entry["step"], 12, 3)
        expected = torch.tensor(entry["image_gs_temporal"]["per_latent_frame"])
        assert_within(ramp, expected, elementwise_bound(expected, ulps=8), f"ramp at step {entry['step']}")


def test_zero_steps_is_an_error():
    with pytest.raises(ValueError, match="at least 1"):
        schedule.get_schedule(0, 252, 33)
