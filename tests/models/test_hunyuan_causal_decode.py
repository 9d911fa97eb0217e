"""The HunyuanVideo VAE's causal-chunk decode (models/hunyuan_causal_decode.py, tiling ``causal_chunks``):
the carried cache makes the chunked causal convolutions and upsamplers the whole-video ones, one chunk
covering the video is exactly the untiled (or reference-tiled) decode, the GroupNorm approximation stays
within the bound README states, and frames stream out chunk by chunk with progress on every convolution.
"""

from __future__ import annotations

import pytest
import torch
from diffusers.models.autoencoders.autoencoder_kl_hunyuan_video import HunyuanVideoCausalConv3d
from torch import nn

from comfyui_opensora.models.autoencoder import NO_TILING, Tiling, choose_tiling, reporting_work, work_modules
from comfyui_opensora.models.hunyuan_causal_decode import (decode_in_chunks, decoder_stages, default_split, run_chunk,
                                                          work_per_chunk)
from comfyui_opensora.models.hunyuan_vae import HunyuanVideoVAE, _CausalUpsample, attention_blocks
from comfyui_opensora.tiny_checkpoints.autoencoders import TINY_HUNYUAN_VAE


@pytest.fixture(scope="module")
def vae() -> HunyuanVideoVAE:
    torch.manual_seed(0)
    return HunyuanVideoVAE(TINY_HUNYUAN_VAE).eval()


def _latent(frames: int, height: int, width: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(1, 16, frames, height, width, generator=torch.Generator().manual_seed(seed))


def _chunked(stages: list[nn.Module], x: torch.Tensor, sizes: list[int]) -> torch.Tensor:
    cache: dict = {}
    pieces, start = [], 0
    for size in sizes:
        pieces.append(run_chunk(stages, x[:, :, start:start + size], cache, first=start == 0))
        start += size
    assert start == x.shape[2]
    return torch.cat(pieces, dim=2)


@pytest.mark.parametrize("sizes", [[1] * 7, [2, 2, 2, 1], [1, 3, 3], [5, 1, 1], [7]])
def test_cached_causal_convolutions_and_upsampler_equal_the_whole_video(sizes):
    """No GroupNorm involved: any chunking of the frames (including chunks shorter than the kernel's
    history) gives the whole-video result of causal convolutions and the causal time-doubling upsampler."""
    torch.manual_seed(2)
    upsampler = _CausalUpsample(6, 6, upsample_factor=(2, 2, 2))
    stages = [HunyuanVideoCausalConv3d(4, 6, 3), nn.SiLU(), upsampler, HunyuanVideoCausalConv3d(6, 6, 3),
              HunyuanVideoCausalConv3d(6, 5, 1)]
    x = torch.randn(1, 4, 7, 5, 6)
    whole = x
    with torch.no_grad():
        for stage in stages:
            whole = stage(whole)
        chunked = _chunked(stages, x, sizes)
    assert whole.shape == (1, 5, 13, 10, 12)
    torch.testing.assert_close(chunked, whole, rtol=0, atol=1e-5)


def test_without_tail_group_norms_the_chunked_decode_is_the_untiled_decode(vae):
    """The released structure end to end: with the tail's GroupNorms made per-frame-independent
    (identity), chunks of 1 and 2 latents reproduce the untiled decode: only GroupNorm approximates."""
    z = _latent(5, 4, 6)
    stages = decoder_stages(vae.decoder)
    tail = {m for stage in stages[default_split(stages):] for m in stage.modules() if isinstance(m, nn.GroupNorm)}
    norms = [(parent, name) for parent in vae.decoder.modules() for name, child in parent.named_children()
             if child in tail]
    assert len(norms) == 9  # up blocks 2-3 (2 resnets x 2 each in the tiny model) and conv_norm_out
    saved = [(parent, name, getattr(parent, name)) for parent, name in norms]
    try:
        for parent, name in norms:
            setattr(parent, name, nn.Identity())
        untiled = vae.decode(z, NO_TILING)
        for chunk in (1, 2):
            chunked = vae.decode(z, Tiling(causal_chunk=chunk))
            torch.testing.assert_close(chunked, untiled, rtol=0, atol=1e-5)
    finally:
        for parent, name, module in saved:
            setattr(parent, name, module)


def test_one_chunk_covering_the_video_is_exactly_the_untiled_or_reference_decode(vae):
    z = _latent(4, 4, 6)
    assert torch.equal(vae.decode(z, Tiling(causal_chunk=4)), vae.decode(z, NO_TILING))
    assert torch.equal(vae.decode(z, Tiling(causal_chunk=9)), vae.decode(z, NO_TILING))
    wide = _latent(3, 4, 14)  # two 64 px column tiles: same tiles and blend as the reference tiling
    assert torch.equal(vae.decode(wide, Tiling(spatial=64, causal_chunk=3)), vae.decode(wide, Tiling(spatial=64)))


def _deviation(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.clamp(-1, 1) - b.clamp(-1, 1)).abs().mean().item()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_deviation_from_untiled_stays_within_the_stated_bound(vae, dtype):
    """README's claim (measured with benchmarks/vae_chunk_deviation.py): the causal chunks' mean absolute
    deviation from the untiled decode is at most 1.5x the reference tiling's, and with the reference's
    spatial tiles on top at most 2x. Random tiny weights: a guard against a regression, not image quality."""
    model = vae.to(dtype)
    try:
        z = _latent(9, 8, 40, seed=4)  # 33 frames at 64x320: the reference tiling makes two column tiles
        untiled = model.decode(z, NO_TILING).float()
        reference = _deviation(model.decode(z, model.reference_tiling()).float(), untiled)
        chunks_only = _deviation(model.decode(z, Tiling(causal_chunk=2)).float(), untiled)
        both = _deviation(model.decode(z, model.causal_chunk_tiling()).float(), untiled)
    finally:
        vae.float()
    assert 0 < chunks_only <= 1.5 * reference, (chunks_only, reference)
    assert both <= 2 * reference, (both, reference)


def test_chunks_stream_before_later_ones_are_computed_and_progress_counts_every_convolution(vae):
    single = vae.decode_chunks(_latent(9, 2, 2), Tiling(causal_chunk=2))  # one tile: every chunk streams
    calls: list[int] = []
    with reporting_work(work_modules(vae.decoder), lambda: calls.append(1)):
        next(single)
    once, per_chunk = work_per_chunk(vae.decoder)
    once += attention_blocks(9, 2, 2)  # the head's mid-block attention: one query block per frame here
    assert len(calls) == once + per_chunk

    z = _latent(9, 4, 14, seed=3)  # 33 frames, three column tiles of 64 px (8 latents every 6)
    tiling = Tiling(spatial=64, causal_chunk=2)
    calls = []
    with reporting_work(work_modules(vae.decoder), lambda: calls.append(1)):
        chunks = vae.decode_chunks(z, tiling)
        first = next(chunks)
        done_at_first = len(calls)
        rest = list(chunks)
    sizes = [first.shape[2]] + [c.shape[2] for c in rest]
    assert sizes == [5, 8, 8, 8, 4] and len(sizes) == vae.decode_chunk_count(9, tiling)
    assert len(calls) == vae.decode_work(tuple(z.shape), tiling)
    # At the first chunk: the first two tiles whole (their pixels are held), the last one's head and chunk.
    assert vae.decode_passes(tuple(z.shape), tiling) == 3
    assert done_at_first == 3 * once + (2 * 5 + 1) * per_chunk < len(calls)
    assert torch.equal(torch.cat([first] + rest, dim=2), vae.decode(z, tiling))
    with pytest.raises(RuntimeError, match="cancelled"):  # an exception from the callback stops the decode
        def cancel() -> None:
            raise RuntimeError("cancelled")
        with reporting_work(work_modules(vae.decoder), cancel):
            next(vae.decode_chunks(z, tiling))


def test_choose_tiling_and_memory_estimate(vae):
    shape = (1, 16, 9, 72, 128)  # 33 frames at 576x1024
    tiling = choose_tiling(vae, "causal_chunks", shape)
    assert tiling == vae.causal_chunk_tiling() and tiling.causal_chunk == 2 and tiling.spatial == 256
    assert vae.decode_bytes(shape, tiling, torch.bfloat16) < 0.5 * vae.decode_bytes(
        shape, vae.reference_tiling(), torch.bfloat16)
    with pytest.raises(ValueError, match="replace temporal tiles"):
        next(vae.decode_chunks(_latent(2, 2, 2), Tiling(temporal=16, causal_chunk=1)))
    with pytest.raises(ValueError, match="at least one latent frame"):
        next(vae.decode_chunks(_latent(2, 2, 2), Tiling(causal_chunk=0)))
    with pytest.raises(ValueError, match="mid block"):
        next(decode_in_chunks(vae.decoder, _latent(2, 2, 2), 1, split=1))
