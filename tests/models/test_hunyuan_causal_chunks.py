"""The HunyuanVideo VAE's causal-chunk decode and encode (models/hunyuan_causal_chunks.py, tiling
``causal_chunks``): the carried cache makes the chunked causal convolutions, upsamplers and time-strided
downsamplers the whole-video ones, one chunk covering the video is exactly the untiled (or
reference-tiled) result, the GroupNorm approximation stays within the bound README states, and decoded
frames stream out chunk by chunk with progress on every convolution.
"""

from __future__ import annotations

import pytest
import torch
from contextlib import contextmanager
from typing import Iterator

from diffusers.models.autoencoders.autoencoder_kl_hunyuan_video import (HunyuanVideoCausalConv3d,
                                                                        HunyuanVideoDownsampleCausal3D)
from torch import nn

from comfyui_opensora.models.autoencoder import NO_TILING, Tiling, choose_tiling, reporting_work, work_modules
from comfyui_opensora.models.hunyuan_causal_chunks import (convolutions_in, decode_in_chunks, decoder_split,
                                                          decoder_stages, encode_in_chunks, encoder_split,
                                                          encoder_stages, run_chunk, work_per_chunk)
from comfyui_opensora.models.hunyuan_vae import HunyuanVideoVAE, _CausalUpsample, attention_blocks
from comfyui_opensora.tiny_checkpoints.autoencoders import TINY_HUNYUAN_VAE


@pytest.fixture(scope="module")
def vae() -> HunyuanVideoVAE:
    torch.manual_seed(0)
    return HunyuanVideoVAE(TINY_HUNYUAN_VAE).eval()


def _latent(frames: int, height: int, width: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(1, 16, frames, height, width, generator=torch.Generator().manual_seed(seed))


def _video(frames: int, height: int, width: int, seed: int = 1) -> torch.Tensor:
    return torch.rand(1, 3, frames, height, width, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def _chunked(stages: list[nn.Module], x: torch.Tensor, sizes: list[int]) -> torch.Tensor:
    """``stages`` run chunk by chunk; chunks that complete no window of a strided convolution give None."""
    cache: dict = {}
    pieces, start = [], 0
    for size in sizes:
        piece = run_chunk(stages, x[:, :, start:start + size], cache, first=start == 0)
        if piece is not None:
            pieces.append(piece)
        start += size
    assert start == x.shape[2]
    return torch.cat(pieces, dim=2)


@contextmanager
def _without_group_norms(network: nn.Module, stages: list[nn.Module], expected: int) -> Iterator[None]:
    """The GroupNorms inside ``stages`` replaced by identities (``expected`` of them) while the block runs."""
    inside = {m for stage in stages for m in stage.modules() if isinstance(m, nn.GroupNorm)}
    norms = [(parent, name, child) for parent in network.modules() for name, child in parent.named_children()
             if child in inside]
    assert len(norms) == expected
    try:
        for parent, name, _norm in norms:
            setattr(parent, name, nn.Identity())
        yield
    finally:
        for parent, name, norm in norms:
            setattr(parent, name, norm)


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


@pytest.mark.parametrize("frames, sizes", [(9, [1] * 9), (9, [5, 4]), (9, [2, 3, 4]), (9, [9]), (8, [3, 2, 2, 1]),
                                            (8, [1, 7]), (12, [9, 3])])
def test_cached_time_strided_convolutions_equal_the_whole_video(frames, sizes):
    """Downsamplers striding 2 in time (a window completes at every other frame) give the whole-video
    result for any chunking, also chunks that complete no window (run_chunk gives None for them)."""
    torch.manual_seed(3)
    stages = [HunyuanVideoCausalConv3d(3, 4, 3), HunyuanVideoDownsampleCausal3D(4, 6, padding=0, stride=(2, 2, 2)), nn.SiLU(),
              HunyuanVideoCausalConv3d(6, 6, 3), HunyuanVideoDownsampleCausal3D(6, 5, padding=0, stride=(2, 1, 1))]
    x = torch.randn(1, 3, frames, 8, 6)
    whole = x
    with torch.no_grad():
        for stage in stages:
            whole = stage(whole)
        chunked = _chunked(stages, x, sizes)
    assert whole.shape == (1, 5, (frames - 1) // 4 + 1, 4, 3)
    torch.testing.assert_close(chunked, whole, rtol=0, atol=1e-5)


@pytest.mark.parametrize("chunked", [False, True])
def test_a_resnet_block_frees_conv1s_output_before_conv2_runs(chunked):
    """Peak memory: the pack's resnet forward (and its chunked twin) hold one activation fewer than a
    nested call would (conv1's output is gone once conv2 starts; measured 0.87x the encode's peak)."""
    import weakref

    from diffusers.models.autoencoders.autoencoder_kl_hunyuan_video import HunyuanVideoResnetBlockCausal3D

    from comfyui_opensora.models.hunyuan_vae import _use_pack_blocks

    block = nn.Sequential(HunyuanVideoResnetBlockCausal3D(8, 8, groups=4)).eval()
    _use_pack_blocks(block)
    resnet = block[0]
    conv1_output: list[weakref.ref] = []
    alive_at_conv2: list[bool] = []
    resnet.conv1.conv.register_forward_hook(lambda _m, _i, out: conv1_output.append(weakref.ref(out)))
    resnet.conv2.conv.register_forward_pre_hook(lambda *_: alive_at_conv2.append(conv1_output[-1]() is not None))
    x = torch.randn(1, 8, 5, 4, 4)
    with torch.no_grad():
        if chunked:
            _chunked([resnet], x, [2, 3])
        else:
            resnet(x)
    assert alive_at_conv2 == [False] * (2 if chunked else 1)


def test_without_tail_group_norms_the_chunked_decode_is_the_untiled_decode(vae):
    """The released structure end to end: with the tail's GroupNorms made per-frame-independent
    (identity), chunks of 1 and 2 latents reproduce the untiled decode: only GroupNorm approximates."""
    z = _latent(5, 4, 6)
    stages = decoder_stages(vae.decoder)
    # up blocks 2-3 (2 resnets x 2 each in the tiny model) and conv_norm_out
    with _without_group_norms(vae.decoder, stages[decoder_split(stages):], expected=9):
        untiled = vae.decode(z, NO_TILING)
        for chunk in (1, 2):
            chunked = vae.decode(z, Tiling(causal_chunk=chunk))
            torch.testing.assert_close(chunked, untiled, rtol=0, atol=1e-5)


@pytest.mark.parametrize("frames", [9, 17, 12])
def test_without_chunked_group_norms_the_chunked_encode_is_the_untiled_encode(vae, frames):
    """The encoder's mirror: with the GroupNorms of the full-frame-rate stages (conv_in to the last
    time-strided downsampler) made identities, chunks of 1-3 latents give the untiled encode, also for a
    frame count that is not 4k+1 (12: the last chunk completes no window of the second downsampler)."""
    x = _video(frames, 16, 24)
    stages = encoder_stages(vae.encoder)
    assert isinstance(stages[encoder_split(stages) - 1], HunyuanVideoDownsampleCausal3D)
    with _without_group_norms(vae.encoder, stages[:encoder_split(stages)], expected=6):  # 3 resnets x 2
        untiled = vae.encode(x, tiling=NO_TILING)
        for chunk in (1, 2, 3):
            torch.testing.assert_close(vae.encode(x, tiling=Tiling(causal_chunk=chunk)), untiled, rtol=0, atol=1e-5)


def test_one_chunk_covering_the_video_is_exactly_the_untiled_or_reference_decode(vae):
    z = _latent(4, 4, 6)
    assert torch.equal(vae.decode(z, Tiling(causal_chunk=4)), vae.decode(z, NO_TILING))
    assert torch.equal(vae.decode(z, Tiling(causal_chunk=9)), vae.decode(z, NO_TILING))
    wide = _latent(3, 4, 14)  # two 64 px column tiles: same tiles and blend as the reference tiling
    assert torch.equal(vae.decode(wide, Tiling(spatial=64, causal_chunk=3)), vae.decode(wide, Tiling(spatial=64)))


def test_one_chunk_covering_the_video_and_a_single_image_encode_exactly_as_untiled_or_reference(vae):
    x = _video(9, 16, 24)
    assert torch.equal(vae.encode(x, tiling=Tiling(causal_chunk=2)), vae.encode(x, tiling=NO_TILING))
    wide = _video(5, 32, 112)  # two 64 px column tiles: same tiles and blend as the reference tiling
    assert torch.equal(vae.encode(wide, tiling=Tiling(spatial=64, causal_chunk=1)),
                       vae.encode(wide, tiling=Tiling(spatial=64)))
    image = _video(1, 32, 112)  # i2v: one frame is one chunk
    assert torch.equal(vae.encode(image, tiling=Tiling(spatial=64, causal_chunk=2)),
                       vae.encode(image, tiling=Tiling(spatial=64)))


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


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_encode_deviation_from_untiled_stays_within_the_stated_bound(vae, dtype):
    """The encode's counterpart of the decode bound: at this size the mean absolute latent deviation from
    the untiled encode is at most 1.5x the reference tiling's from the chunks alone and 2x with its spatial
    tiles (benchmarks/vae_chunk_deviation.py --stage encode --latent 9 8 40, four input seeds: 0.88-1.44x
    and 1.46-1.84x). Random tiny weights: a regression guard, not a quality claim (README gives the
    measured ratios, also the larger ones at 192x336)."""
    model = vae.to(dtype)
    try:
        x = _video(33, 64, 320, seed=10)
        untiled = model.encode(x, tiling=NO_TILING).float()

        def deviation(tiling: Tiling) -> float:
            return (model.encode(x, tiling=tiling).float() - untiled).abs().mean().item()

        reference = deviation(model.reference_tiling())
        chunks_only = deviation(Tiling(causal_chunk=2))
        both = deviation(model.causal_chunk_tiling())
    finally:
        vae.float()
    assert 0 < chunks_only <= 1.5 * reference, (chunks_only, reference)
    assert both <= 2 * reference, (both, reference)


def test_the_chunked_encode_runs_every_convolution_through_the_work_hooks(vae):
    """33 frames in chunks of 2 latents (9, 8, 8, 8 frames): the full-frame-rate convolutions four times,
    the rest and the attention blocks once, all seen by the progress/Cancel hooks; a Cancel stops it."""
    x = _video(33, 16, 24)
    stages = encoder_stages(vae.encoder)
    split = encoder_split(stages)
    calls: list[int] = []
    with reporting_work(work_modules(vae.encoder), lambda: calls.append(1)):
        vae.encode(x, tiling=Tiling(causal_chunk=2))
    chunked, whole = convolutions_in(stages[:split]), convolutions_in(stages[split:])
    # conv_in + blocks 0-2 (a resnet's 2 convolutions, block 1's width-changing shortcut, a downsampler each);
    # block 3's resnet, the mid block's 2 resnets, conv_out
    assert (chunked, whole) == (1 + 3 + 4 + 3, 2 + 4 + 1)
    assert len(calls) == 4 * chunked + whole + attention_blocks(9, 2, 3)

    def cancel() -> None:
        raise RuntimeError("cancelled")

    with pytest.raises(RuntimeError, match="cancelled"), reporting_work(work_modules(vae.encoder), cancel):
        vae.encode(x, tiling=Tiling(causal_chunk=2))


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
    with pytest.raises(ValueError, match="replace temporal tiles"):
        vae.encode(_video(5, 16, 16), tiling=Tiling(temporal=16, causal_chunk=1))
    with pytest.raises(ValueError, match="at least one latent frame"):
        encode_in_chunks(vae.encoder, _video(5, 16, 16), 0)
