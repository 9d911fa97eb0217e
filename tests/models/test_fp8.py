"""fp8 weight storage: block Linear weights in fp8, half the bytes, output close to bf16."""

from __future__ import annotations

import pytest
import torch

from comfyui_opensora.models.dtypes import FP8_DTYPES
from comfyui_opensora.models.fp8 import (
    FP8Linear,
    block_linears,
    convert_blocks_to_fp8,
    fp8_weight_keys,
    parameter_bytes,
    storage_dtypes,
    to_fp8,
)
from comfyui_opensora.models.mmdit import MMDiT, MMDiTConfig

from factories_mmdit import TINY_VIDEO_CONFIG, tiny_mmdit_inputs, tiny_mmdit_state_dict

# Bound on ||fp8 - bf16|| / ||bf16|| of the tiny model's velocity (measured: 0.5 % e4m3fn, 0.6 % e5m2).
RELATIVE_ERROR_BOUND = 0.02


def _bf16_model() -> MMDiT:
    model = MMDiT(TINY_VIDEO_CONFIG)
    model.load_state_dict(tiny_mmdit_state_dict(seed=1))
    return model.to(torch.bfloat16).eval().requires_grad_(False)


def _bf16_inputs() -> dict[str, torch.Tensor]:
    inputs = tiny_mmdit_inputs(TINY_VIDEO_CONFIG, batch=2, seed=1)
    return {k: v if k.endswith("_ids") else v.to(torch.bfloat16) for k, v in inputs.items()}


@pytest.mark.parametrize("name", list(FP8_DTYPES))
def test_fp8_output_is_close_to_bf16(name):
    inputs = _bf16_inputs()
    with torch.inference_mode():
        reference = _bf16_model()(**inputs).float()
        model = convert_blocks_to_fp8(_bf16_model(), FP8_DTYPES[name])
        output = model(**inputs)
    assert output.dtype == torch.bfloat16  # computed in bf16
    error = (output.float() - reference).norm() / reference.norm()
    assert 0 < error < RELATIVE_ERROR_BOUND, f"relative error {error:.4f}"


def test_only_block_linear_weights_are_fp8():
    model = convert_blocks_to_fp8(_bf16_model(), torch.float8_e4m3fn)
    fp8_keys = {k for k, v in model.state_dict().items() if v.dtype == torch.float8_e4m3fn}
    assert fp8_keys == fp8_weight_keys(model)
    assert "double_blocks.0.img_mlp.0.weight" in fp8_keys and "single_blocks.1.v_mlp.weight" in fp8_keys
    assert not any(k.endswith(("bias", "scale")) or not k.startswith(("double_", "single_")) for k in fp8_keys)
    assert all(type(m) is FP8Linear for m in block_linears(model).values())
    assert type(model.final_layer.linear) is torch.nn.Linear


def test_fp8_halves_the_block_weight_bytes_and_the_11b_model():
    model = _bf16_model()
    before = {n: m.weight.numel() * m.weight.element_size() for n, m in block_linears(model).items()}
    convert_blocks_to_fp8(model, torch.float8_e5m2)
    after = {n: m.weight.numel() * m.weight.element_size() for n, m in block_linears(model).items()}
    assert all(after[n] * 2 == before[n] for n in before)

    with torch.device("meta"):  # the released 11B configuration, sizes only
        big = MMDiT(MMDiTConfig()).to(torch.bfloat16)
    bf16_bytes = parameter_bytes(big)
    fp8_bytes = parameter_bytes(convert_blocks_to_fp8(big, torch.float8_e4m3fn))
    assert bf16_bytes == 2 * 11_891_390_528
    assert fp8_bytes / bf16_bytes < 0.505  # 12.0 GB instead of 23.8 GB


def test_storage_dtypes_and_saturating_cast():
    with torch.device("meta"):
        model = MMDiT(TINY_VIDEO_CONFIG)
    pick = storage_dtypes(model, torch.float8_e4m3fn)
    assert pick("single_blocks.0.linear2.weight") == torch.float8_e4m3fn
    assert pick("single_blocks.0.linear2.bias") == torch.bfloat16 and pick("txt_in.weight") == torch.bfloat16
    assert storage_dtypes(model, torch.float16)("single_blocks.0.linear2.weight") == torch.float16
    big = torch.tensor([1e6, -1e6, 0.5])
    assert to_fp8(big, torch.float8_e5m2).float().tolist() == [57344.0, -57344.0, 0.5]
    assert to_fp8(big, torch.float8_e4m3fn).float().tolist() == [448.0, -448.0, 0.5]


@pytest.mark.parametrize("name", list(FP8_DTYPES))
def test_loader_reads_block_weights_straight_into_fp8(tmp_path, name):
    from comfyui_opensora.loaders.mmdit import load_mmdit

    from factories_mmdit import write_tiny_mmdit

    path = tmp_path / "tiny.safetensors"
    write_tiny_mmdit(path, seed=1, dtype=torch.bfloat16, comfy_prefix=True)  # bf16 like the released file
    dtype = FP8_DTYPES[name]
    loaded = load_mmdit(path, dtype)
    converted = convert_blocks_to_fp8(load_mmdit(path, torch.bfloat16), dtype)
    assert loaded.state_dict().keys() == converted.state_dict().keys()
    for key, value in converted.state_dict().items():
        assert loaded.state_dict()[key].dtype == value.dtype and torch.equal(loaded.state_dict()[key], value), key
    assert all(type(m) is FP8Linear for m in block_linears(loaded).values())
    inputs = _bf16_inputs()
    with torch.inference_mode():
        assert torch.equal(loaded(**inputs), converted(**inputs))
