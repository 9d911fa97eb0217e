"""Block offload: streamed blocks get compute-device copies only while they run; outputs unchanged."""

from __future__ import annotations

import shutil

import pytest
import torch

from comfyui_opensora.models.block_offload import install_block_offload, transformer_blocks
from comfyui_opensora.models.mmdit import MMDiT

from factories_mmdit import TINY_VIDEO_CONFIG, tiny_mmdit_inputs, tiny_mmdit_state_dict


def _tiny_model() -> MMDiT:
    model = MMDiT(TINY_VIDEO_CONFIG)
    model.load_state_dict(tiny_mmdit_state_dict(seed=3))
    return model.eval().requires_grad_(False)


@pytest.mark.parametrize("count", [1, 3, 4])
def test_outputs_are_identical_with_and_without_offload(count):
    model = _tiny_model()
    inputs = tiny_mmdit_inputs(TINY_VIDEO_CONFIG, batch=2)
    with torch.inference_mode():
        plain = model(**inputs)
        offload = install_block_offload(model, count, "cpu")
        streamed = model(**inputs)
        again = model(**inputs)
    assert len(offload.streamed_blocks) == count
    assert torch.equal(plain, streamed) and torch.equal(plain, again)


def test_streamed_blocks_hold_compute_copies_only_while_they_run():
    model = _tiny_model()
    blocks = transformer_blocks(model)
    offload = install_block_offload(model, 3, "cpu")
    assert offload.streamed_blocks == blocks[1:]
    home = {id(b): [p.data_ptr() for p in b.parameters()] for b in blocks}
    seen: dict[int, list[int]] = {}

    def record(block, _args):  # registered after the offload hook: sees what the block computes with
        seen[id(block)] = [p.data_ptr() for p in block.parameters()]

    for block in blocks:
        block.register_forward_pre_hook(record)
    with torch.inference_mode():
        model(**tiny_mmdit_inputs(TINY_VIDEO_CONFIG))

    resident, streamed = blocks[0], blocks[1:]
    assert seen[id(resident)] == home[id(resident)]
    for block in streamed:
        assert all(a != b for a, b in zip(seen[id(block)], home[id(block)])), "ran on host weights"
        assert [p.data_ptr() for p in block.parameters()] == home[id(block)], "copy kept after the block ran"
    assert offload.max_loaded == 2  # the running block and the prefetched next one
    assert all(b.on_device is None for b in offload.blocks)


def test_blocks_the_host_left_in_ram_are_streamed_too(monkeypatch):
    """With offload_blocks 0 nothing is forced into RAM, but a block whose weights the host left there
    (ComfyUI's partial loading) gets compute copies while it runs. Off-device is simulated on the CPU."""
    model = _tiny_model()
    inputs = tiny_mmdit_inputs(TINY_VIDEO_CONFIG)
    with torch.inference_mode():
        plain = model(**inputs)
    offload = install_block_offload(model, 0, "cpu")
    assert offload.streamed_blocks == []
    left_in_ram = model.single_blocks[0]
    away = {id(t) for t in left_in_ram.parameters()}
    monkeypatch.setattr(type(offload), "_on_compute_device", lambda self, t: id(t) not in away)
    home = [p.data_ptr() for p in left_in_ram.parameters()]
    seen = []
    left_in_ram.register_forward_pre_hook(lambda b, _a: seen.append([p.data_ptr() for p in b.parameters()]))
    with torch.inference_mode():
        streamed = model(**inputs)
    assert torch.equal(plain, streamed)
    assert all(a != b for a, b in zip(seen[0], home)) and [p.data_ptr() for p in left_in_ram.parameters()] == home
    assert offload.max_loaded == 1


def test_reinstalling_replaces_and_too_many_blocks_is_an_error():
    model = _tiny_model()
    first = install_block_offload(model, 2, "cpu")
    second = install_block_offload(model, 1, "cpu")
    assert model.block_offload is second and not first.handles
    assert second.streamed_blocks == transformer_blocks(model)[-1:]
    assert sum(len(b._forward_pre_hooks) for b in transformer_blocks(model)) == 4
    second.remove()
    assert not hasattr(model, "block_offload")
    assert all(not b._forward_pre_hooks for b in transformer_blocks(model))
    with pytest.raises(ValueError, match="has 4 blocks"):
        install_block_offload(model, 5, "cpu")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU to move blocks between devices")
def test_blocks_run_on_the_gpu_and_live_in_host_memory():
    model = _tiny_model()
    inputs = {k: v.cuda() for k, v in tiny_mmdit_inputs(TINY_VIDEO_CONFIG).items()}
    with torch.inference_mode():
        plain = model.cuda()(**inputs)
        offload = install_block_offload(model, 3, "cuda")
        devices = []
        for block in offload.streamed_blocks:
            block.register_forward_pre_hook(lambda b, _a: devices.append({p.device.type for p in b.parameters()}))
        streamed = model(**inputs)
    assert devices == [{"cuda"}] * 3
    assert all(p.device.type == "cpu" and p.is_pinned() for b in offload.streamed_blocks for p in b.parameters())
    torch.testing.assert_close(plain, streamed, rtol=0, atol=1e-6)


def test_a_streamed_block_moved_by_the_host_goes_back_to_its_host_copy():
    """ComfyUI may load the whole model onto the GPU; the next forward drops those copies again."""
    model = _tiny_model()
    offload = install_block_offload(model, 2, "cpu")
    block = offload.streamed_blocks[0]
    home = [p.data_ptr() for p in block.parameters()]
    for param in block.parameters():
        param.data = param.data.clone()  # stands in for ModelPatcher moving it to the load device
    with torch.inference_mode():
        model(**tiny_mmdit_inputs(TINY_VIDEO_CONFIG))
    assert [p.data_ptr() for p in block.parameters()] == home


def test_moving_the_model_leaves_streamed_blocks_in_host_memory():
    model = _tiny_model()
    offload = install_block_offload(model, 2, "cpu")
    model.to(torch.float64)  # stands in for model.to("cuda"): streamed blocks ignore it
    assert all(p.dtype == torch.float64 for p in model.double_blocks[0].parameters())
    assert all(p.dtype == torch.float32 for b in offload.streamed_blocks for p in b.parameters())
    offload.remove()
    model.to(torch.float64)
    assert all(p.dtype == torch.float64 for p in model.parameters())


@pytest.mark.skipif(shutil.which("g++") is None and shutil.which("c++") is None,
                    reason="torch.compile on the CPU needs a C++ compiler")
def test_compiled_blocks_run_with_offload_and_match_eager():
    """torch.compile of the blocks (about 20 s cold on 2 cores for this 1+1 block model) with offload hooks."""
    from comfyui_opensora.models.block_compile import compile_blocks

    config = TINY_VIDEO_CONFIG.with_changes(depth=1, depth_single_blocks=1)
    model = MMDiT(config)
    model.load_state_dict(tiny_mmdit_state_dict(config, seed=2))
    model.eval().requires_grad_(False)
    inputs = tiny_mmdit_inputs(config)
    with torch.inference_mode():
        eager = model(**inputs)
        install_block_offload(model, 1, "cpu")
        compile_blocks(model)
        compiled = model(**inputs)
    torch.testing.assert_close(compiled, eager, rtol=1e-5, atol=1e-5)
