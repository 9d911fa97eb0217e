"""Sequence-parallel building blocks that need no processes: token splits, layouts, the padded-key
attention kernel, requests, the settings node and its clear errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from comfyui_opensora.loaders.mmdit_setup import MMDiTSetup
from comfyui_opensora.nodes import parallel as parallel_node
from comfyui_opensora.parallel.attention import block_attention
from comfyui_opensora.parallel.group import GroupSettings
from comfyui_opensora.parallel.layout import ParallelLayout, TokenSplit, check_sequence_fits
from comfyui_opensora.parallel.protocol import WorkerJob, job_from_bytes
from comfyui_opensora.parallel.settings import ParallelSettings
from comfyui_opensora.samplers.denoisers import BranchPolicy, Guidance, TextInputs
from comfyui_opensora.samplers.geometry import VideoGeometry
from comfyui_opensora.samplers.image_condition import ImageCondition
from comfyui_opensora.samplers.request import SamplingRequest

PACK_ROOT = Path(__file__).resolve().parents[2]


# 75439 = 512 text + 74927 image tokens of 768px 4:3, 129 frames, which the reference cannot split.
@pytest.mark.parametrize("length, ranks", [(45, 2), (45, 4), (512, 3), (1, 2), (7, 7), (75439, 8)])
def test_token_split_covers_every_token_once_in_order(length, ranks):
    split = TokenSplit(length, ranks)
    assert sum(split.counts) == length
    assert max(split.counts) == split.chunk and max(split.counts) - min(split.counts) <= 1
    x = torch.arange(length)[None, :, None].float()
    pieces = [split.shard(x, r) for r in range(ranks)]
    assert all(p.shape[1] == split.chunk for p in pieces)
    for r, piece in enumerate(pieces):
        assert split.padding_rows(r).sum() == split.chunk - split.counts[r]
        assert torch.all(piece[0, split.padding_rows(r), 0] == 0)
    assert torch.equal(split.unshard(pieces), x)


def test_layout_errors_name_what_to_change():
    ParallelLayout(2, 2).validate(4, num_heads=24)
    with pytest.raises(ValueError, match="ranks"):
        ParallelLayout(2, 1).validate(4)
    with pytest.raises(ValueError, match="divides 24"):
        ParallelLayout(16, 1).validate(16, num_heads=24)
    with pytest.raises(ValueError, match="text"):
        ParallelLayout(1, 2, "sideways").validate(2)
    ParallelLayout(2, 1, cfg_degree=3).validate(6, num_heads=24)
    with pytest.raises(ValueError, match="cfg_degree x ulysses_degree x ring_degree = 3 x 2 x 1 = 6"):
        ParallelLayout(2, 1, cfg_degree=3).validate(4)
    with pytest.raises(ValueError, match="fewer ranks"):
        check_sequence_fits(3, 4)


def test_automatic_layout_gives_heads_to_ulysses_and_the_rest_to_rings():
    def layout(ranks, ulysses, heads, cfg=1):
        return ParallelSettings(GroupSettings(ranks, "cpu"), ulysses, cfg_degree=cfg).layout(heads)

    assert layout(8, 0, 24) == ParallelLayout(8, 1)
    assert layout(6, 0, 4) == ParallelLayout(2, 3)
    assert layout(4, 1, 24) == ParallelLayout(1, 4)
    assert layout(8, 0, 24, cfg=2) == ParallelLayout(4, 1, cfg_degree=2)
    assert layout(6, 1, 24, cfg=3) == ParallelLayout(1, 2, cfg_degree=3)
    with pytest.raises(ValueError, match="divides 4"):
        layout(8, 8, 4)
    with pytest.raises(ValueError, match="cfg_degree=3 does not divide ranks=8"):
        layout(8, 0, 24, cfg=3)


def test_block_attention_drops_padded_keys_exactly_and_returns_log_sum_exp():
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 7, 3, 8) for _ in range(3))
    padded_k = torch.cat((k[:, :4], torch.full((2, 1, 3, 8), float("nan")), k[:, 4:]), dim=1)
    padded_v = torch.cat((v[:, :4], torch.zeros(2, 1, 3, 8), v[:, 4:]), dim=1)
    out, lse = block_attention(q, padded_k, padded_v, softmax_scale=8 ** -0.5)
    expected = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
    torch.testing.assert_close(out, expected.transpose(1, 2), rtol=0, atol=1e-6)
    logits = q.transpose(1, 2) @ k.transpose(1, 2).transpose(-1, -2) * 8 ** -0.5
    torch.testing.assert_close(lse, logits.logsumexp(-1), rtol=0, atol=1e-5)


def test_request_round_trips_through_bytes():
    g = torch.Generator().manual_seed(1)
    geometry = VideoGeometry(48, 80, 9)
    mask = torch.zeros(1, 1, 3, 6, 10)
    mask[:, :, 0] = 1
    condition = ImageCondition("i2v_head", geometry, mask, torch.randn(1, 16, 3, 6, 10, generator=g) * mask)
    text = TextInputs(*(torch.randn(1, 5, 32, generator=g), torch.randn(1, 24, generator=g)) * 2)
    request = SamplingRequest("i2v", torch.randn(1, 16, 3, 6, 10, generator=g), text, [1.0, 0.5, 0.0],
                              Guidance(5.0, 2.0, False), 3.5, BranchPolicy(False, True), condition)
    setup = MMDiTSetup("fp8_e4m3fn", "sdpa", 7, True)
    sent = WorkerJob("/models/x.safetensors", setup, ParallelLayout(1, 2, "replicated"), request, True, 1234)
    job = job_from_bytes(sent.to_bytes())
    assert (job.checkpoint, job.setup, job.layout, job.preview, job.checkpoint_bytes) == \
        ("/models/x.safetensors", setup, ParallelLayout(1, 2, "replicated"), True, 1234)
    loaded = job.sampling
    assert (loaded.method, loaded.timesteps) == ("i2v", [1.0, 0.5, 0.0])
    assert (loaded.guidance, loaded.policy, loaded.distilled_guidance, loaded.cache) == \
        (request.guidance, request.policy, 3.5, request.cache)
    assert torch.equal(loaded.noise, request.noise) and torch.equal(loaded.text.neg_txt, text.neg_txt)
    assert loaded.condition.cond_type == "i2v_head" and loaded.condition.geometry == geometry
    assert torch.equal(loaded.condition.masked_ref, condition.masked_ref)


def test_settings_node_refuses_more_ranks_than_gpus():
    node = parallel_node.OpenSoraParallelSettings()
    ranks = (torch.cuda.device_count() if torch.cuda.is_available() else 0) + 1
    with pytest.raises(ValueError, match=f"ranks={ranks} needs {ranks} CUDA GPUs"):
        node.execute(ranks, 1, 0, "split", 29600, "cuda")
    settings, = node.execute(3, 1, 0, "replicated", 29600, "cpu")
    assert settings == ParallelSettings(GroupSettings(3, "cpu", 29600), 0, "replicated", 1)
    with pytest.raises(ValueError, match="does not divide the 3 ranks"):
        node.execute(3, 1, 2, "split", 29600, "cpu")
    with pytest.raises(ValueError, match="cfg_degree=2 does not divide ranks=3"):
        node.execute(3, 2, 0, "split", 29600, "cpu")


def test_settings_node_names_the_missing_package(monkeypatch):
    monkeypatch.setattr(parallel_node, "yunchang_installed", lambda: False)
    with pytest.raises(RuntimeError, match="pip install yunchang"):
        parallel_node.OpenSoraParallelSettings().execute(2, 1, 0, "split", 29600, "cpu")


def test_the_pack_imports_without_yunchang():
    code = (
        "import sys, runpy\n"
        "sys.modules['yunchang'] = None\n"  # makes `import yunchang` fail like an absent package
        f"m = runpy.run_path({str(PACK_ROOT / '__main__.py')!r})['import_pack']('pack')\n"
        "assert 'OpenSoraParallelSettings' in m.NODE_CLASS_MAPPINGS\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_workers_are_asked_for_the_model_the_loader_made(standalone_host, monkeypatch):
    """The job names the loader's weight dtype, attention, offload and compile choices, and loading the file
    with them stores the weights as the loader did."""
    from comfyui_opensora.loaders.mmdit_setup import load_mmdit_for_sampling
    from comfyui_opensora.models.fp8 import block_linears
    from comfyui_opensora.nodes.model_loader import OpenSoraModelLoader
    from factories_mmdit import write_tiny_mmdit

    write_tiny_mmdit(standalone_host.folder_paths(standalone_host.DIFFUSION_MODELS)[0] / "tiny.safetensors")
    sent = {}
    monkeypatch.setattr(parallel_node, "sample_on_warm_group",
                        lambda settings, checkpoint, setup, *rest: sent.update(checkpoint=checkpoint, setup=setup))
    text = TextInputs(*(torch.zeros(1, 5, 32), torch.zeros(1, 24)) * 2)
    request = SamplingRequest("i2v", torch.zeros(1, 16, 3, 6, 10), text, [1.0, 0.0])
    for weight_dtype, stored in (("fp8_e4m3fn", torch.float8_e4m3fn), ("fp32", torch.float32)):
        (model,) = OpenSoraModelLoader().execute("tiny.safetensors", weight_dtype, "sdpa", 2, False)
        parallel_node.sample_in_workers(None, model, request)
        assert sent == {"checkpoint": model.path, "setup": MMDiTSetup(weight_dtype, "sdpa", 2, False)}
        worker_model = load_mmdit_for_sampling(sent["checkpoint"], sent["setup"], torch.device("cpu"),
                                               torch.device("cpu"))
        assert {linear.weight.dtype for linear in block_linears(worker_model).values()} == {stored}
