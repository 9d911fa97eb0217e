"""HunyuanVideo VAE decoding chunk by chunk along time, with a carried causal cache.

Why: the decoder's memory is in its full-resolution up blocks, and the network is causal in time, so
those can run a few frames at a time: each causal convolution continues from the last ``kernel_t - 1``
input frames of the previous chunk (its replicate padding only at the video's start) and the causal 2x
upsampler treats only the video's very first frame specially. That part is then exactly the whole-video
computation, except for GroupNorm, whose statistics span all frames: in a chunk they are the chunk's own.

To keep that approximation where the memory is, the decoder is split in two (:func:`default_split`):

* the head (``conv_in``, the mid block with its attention, the up blocks before the first temporal
  upsampler and that block's resnets) runs over all frames of a tile at once. It works at the latent
  frame rate and at most twice the latent resolution (its largest activation is 1/16 of one
  full-resolution 128-channel activation), so its GroupNorms and its causal attention are the
  untiled decode's, with no key/value cache needed;
* the tail (from the first temporal upsampler to ``conv_out``) runs chunk by chunk with the cache.

Pixel-space tiles of the reference (GroupNorm per tile) apply on top, in :mod:`.hunyuan_vae`.
"""

from __future__ import annotations

from typing import Iterator

import torch
import torch.nn.functional as F
from diffusers.models.autoencoders.autoencoder_kl_hunyuan_video import (
    HunyuanVideoCausalConv3d,
    HunyuanVideoDecoder3D,
    HunyuanVideoResnetBlockCausal3D,
    HunyuanVideoUpsampleCausal3D,
)
from torch import nn

# Per causal convolution of the tail: the last ``kernel_t - 1`` frames of its time-padded input.
CausalCache = dict[nn.Module, torch.Tensor]


def decoder_stages(decoder: HunyuanVideoDecoder3D) -> list[nn.Module]:
    """The decoder's forward as a flat sequence of modules (running them in turn is its ``forward``):
    ``conv_in``, the mid block, every up block's resnets then upsamplers, the output norm, act, conv."""
    stages: list[nn.Module] = [decoder.conv_in, decoder.mid_block]
    for block in decoder.up_blocks:
        stages += list(block.resnets) + list(block.upsamplers or [])
    return stages + [decoder.conv_norm_out, decoder.conv_act, decoder.conv_out]


def default_split(stages: list[nn.Module]) -> int:
    """Index of the first tail stage: the first upsampler that doubles time (the released decoder's
    second; before it every activation is at the latent frame rate). Without one, only the output
    layers are chunked."""
    for index, stage in enumerate(stages):
        if isinstance(stage, HunyuanVideoUpsampleCausal3D) and stage.upsample_factor[0] > 1:
            return index
    return len(stages) - 3


def _causal_conv(conv: HunyuanVideoCausalConv3d, x: torch.Tensor, cache: CausalCache) -> torch.Tensor:
    """``conv`` on the frames ``x`` that follow those it saw before (``cache``); the first chunk gets the
    module's own replicate padding, so one chunk covering the video is the whole-video call."""
    history_frames = conv.time_causal_padding[4]  # the module's causal padding: kernel_t - 1
    if history_frames == 0:
        return conv(x)
    history = cache.get(conv)
    if history is None:
        out = conv(x)
        frames = x.shape[2]  # the padded input's last frames: x's, clamped to frame 0 (its replicas)
        index = torch.arange(frames - history_frames, frames, device=x.device).clamp(min=0)
        cache[conv] = x.index_select(2, index)
        return out
    padded = torch.cat((history, x), dim=2)
    cache[conv] = padded[:, :, -history_frames:].clone()  # not a view: the chunk can be freed
    spatial = conv.time_causal_padding[:4] + (0, 0)
    return conv.conv(F.pad(padded, spatial, mode=conv.pad_mode))


def _resnet(block: HunyuanVideoResnetBlockCausal3D, x: torch.Tensor, cache: CausalCache) -> torch.Tensor:
    """The pack's resnet forward (``hunyuan_vae._ResnetBlock``) with cached convolutions; GroupNorm over
    the chunk."""
    residual = x if block.conv_shortcut is None else _causal_conv(block.conv_shortcut, x, cache)
    hidden = _causal_conv(block.conv1, block.nonlinearity(block.norm1(x)), cache)
    hidden = _causal_conv(block.conv2, block.dropout(block.nonlinearity(block.norm2(hidden))), cache)
    return hidden + residual


def _upsample(upsampler: HunyuanVideoUpsampleCausal3D, x: torch.Tensor, cache: CausalCache,
              first: bool) -> torch.Tensor:
    """The causal 2x upsampler on a chunk: frame 0 of the video is upsampled in space only, every later
    frame in time and space (nearest), then the cached convolution."""
    if not first:
        return _causal_conv(upsampler.conv, F.interpolate(x, scale_factor=upsampler.upsample_factor, mode="nearest"),
                            cache)
    head = F.interpolate(x[:, :, 0], scale_factor=upsampler.upsample_factor[1:], mode="nearest")[:, :, None]
    if x.shape[2] > 1:
        rest = F.interpolate(x[:, :, 1:], scale_factor=upsampler.upsample_factor, mode="nearest")
        head = torch.cat((head, rest), dim=2)
    return _causal_conv(upsampler.conv, head, cache)


def run_chunk(stages: list[nn.Module], x: torch.Tensor, cache: CausalCache, first: bool) -> torch.Tensor:
    """Tail ``stages`` on one chunk of frames ``x`` (``first``: it starts the video), updating ``cache``."""
    for stage in stages:
        if isinstance(stage, HunyuanVideoCausalConv3d):
            x = _causal_conv(stage, x, cache)
        elif isinstance(stage, HunyuanVideoResnetBlockCausal3D):
            x = _resnet(stage, x, cache)
        elif isinstance(stage, HunyuanVideoUpsampleCausal3D):
            x = _upsample(stage, x, cache, first)
        else:  # GroupNorm (the chunk's statistics) and the activation
            x = stage(x)
    return x


def decode_in_chunks(decoder: HunyuanVideoDecoder3D, z: torch.Tensor, chunk_latents: int,
                     split: int | None = None) -> Iterator[torch.Tensor]:
    """Decode ``z`` (after ``post_quant_conv``) yielding consecutive runs of finished frames: the head
    (stages before ``split``, default :func:`default_split`) over all frames, then the tail on
    ``chunk_latents`` head frames at a time. With one chunk this is exactly ``decoder(z)``."""
    if chunk_latents < 1:
        raise ValueError(f"A causal chunk needs at least one latent frame, not {chunk_latents}.")
    stages = decoder_stages(decoder)
    split = default_split(stages) if split is None else split
    if any(isinstance(stage, type(decoder.mid_block)) for stage in stages[split:]):
        raise ValueError("The mid block (attention over all frames) must run in the head.")
    hidden = z
    for stage in stages[:split]:
        hidden = stage(hidden)
    cache: CausalCache = {}
    for start in range(0, hidden.shape[2], chunk_latents):
        yield run_chunk(stages[split:], hidden[:, :, start:start + chunk_latents], cache, first=start == 0)


def work_per_chunk(decoder: HunyuanVideoDecoder3D, split: int | None = None) -> tuple[int, int]:
    """Convolutions run ``(once per tile, once per chunk)``: the head's and the tail's."""
    stages = decoder_stages(decoder)
    split = default_split(stages) if split is None else split

    def convolutions(modules: list[nn.Module]) -> int:
        return sum(isinstance(m, (nn.Conv2d, nn.Conv3d)) for stage in modules for m in stage.modules())

    return convolutions(stages[:split]), convolutions(stages[split:])
