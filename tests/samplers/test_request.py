"""The sampling request: its checks, and the model rows its widest forward runs (the memory estimate)."""

from __future__ import annotations

import pytest
import torch

from comfyui_opensora.samplers.denoisers import REFERENCE_BRANCHES, BranchPolicy, Guidance, TextInputs
from comfyui_opensora.samplers.geometry import VideoGeometry
from comfyui_opensora.samplers.image_condition import ImageCondition
from comfyui_opensora.samplers.request import SamplingRequest

FAST, LOW_MEMORY = BranchPolicy(True, True), BranchPolicy(True, False)
TEXT = TextInputs(*(torch.zeros(2, 5, 32), torch.zeros(2, 24)) * 2)
NOISE = torch.zeros(2, 16, 3, 6, 10)


def _condition() -> ImageCondition:
    mask = torch.zeros(2, 1, 3, 6, 10)
    mask[:, :, 0] = 1
    return ImageCondition("i2v_head", VideoGeometry(48, 80, 9), mask, torch.zeros(2, 16, 3, 6, 10))


@pytest.mark.parametrize("method, guidance, policy, with_image, rows_per_sample", [
    ("i2v", Guidance(7.5, 3.0), FAST, False, 2),  # t2v: cond + uncond batched, no image-free branch
    ("i2v", Guidance(7.5, 3.0), FAST, True, 3),
    ("i2v", Guidance(7.5, 1.0), FAST, True, 2),  # image scale 1: the image-free branch cannot matter
    ("i2v", Guidance(1.0, 1.0), FAST, True, 1),
    ("i2v", Guidance(7.5, 3.0), LOW_MEMORY, True, 1),
    ("i2v", Guidance(7.5, 3.0), REFERENCE_BRANCHES, False, 3),
    ("distill", Guidance(), FAST, False, 1),
])
def test_forward_rows_follow_the_branches_run(method, guidance, policy, with_image, rows_per_sample):
    request = SamplingRequest(method, NOISE, TEXT, [1.0, 0.0], guidance, policy=policy,
                              condition=_condition() if with_image else None)
    assert request.forward_rows == 2 * rows_per_sample


def test_request_checks_method_and_condition():
    with pytest.raises(ValueError, match="method must be one of"):
        SamplingRequest("euler", NOISE, TEXT, [1.0, 0.0])
    with pytest.raises(ValueError, match="needs method 'i2v'"):
        SamplingRequest("distill", NOISE, TEXT, [1.0, 0.0], condition=_condition())
