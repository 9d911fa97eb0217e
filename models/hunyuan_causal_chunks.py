"""HunyuanVideo VAE decoding and encoding chunk by chunk along time, with a carried causal cache.

Why: the VAE's memory is in its full-resolution layers, and the network is causal in time, so those can
run a few frames at a time: each causal convolution continues from the input frames of the previous
chunk that its next window still needs (its replicate padding only at the video's start; ``kernel_t - 1``
frames at stride 1), and the causal 2x upsampler treats only the video's very first frame specially.
That part is then exactly the whole-video computation, except for GroupNorm, whose statistics span all
frames: in a chunk they are the chunk's own.

To keep that approximation where the memory is, each network is split in two at the latent frame rate:

* decode: the head (``conv_in``, the mid block with its attention, the up blocks before the first
  temporal upsampler and that block's resnets) runs over all frames of a tile at once. It works at the
  latent frame rate and at most twice the latent resolution (its largest activation is 1/16 of one
  full-resolution 128-channel activation), so its GroupNorms and its causal attention are the untiled
  decode's, with no key/value cache needed; the tail (from the first temporal upsampler to
  ``conv_out``) runs chunk by chunk with the cache (:func:`decode_in_chunks`).
* encode, the mirror: the stages above the latent frame rate (``conv_in`` to the last downsampler that
  strides in time) run chunk by chunk, the rest (the mid block with its attention, the output layers)
  over all frames (:func:`encode_in_chunks`).

Pixel-space tiles of the reference (GroupNorm per tile) apply on top, in :mod:`.hunyuan_vae`.
"""

from __future__ import annotations

from math import prod
from typing import Iterator

import torch
import torch.nn.functional as F
from diffusers.models.autoencoders.autoencoder_kl_hunyuan_video import (
    HunyuanVideoCausalConv3d,
    HunyuanVideoDecoder3D,
    HunyuanVideoDownsampleCausal3D,
    HunyuanVideoEncoder3D,
    HunyuanVideoResnetBlockCausal3D,
    HunyuanVideoUpsampleCausal3D,
)
from torch import nn

# Per causal convolution of the chunked stages: the frames of its time-padded input that its next
# window starts at or after (the last ``kernel_t - 1`` at stride 1).
CausalCache = dict[nn.Module, torch.Tensor]


def decoder_stages(decoder: HunyuanVideoDecoder3D) -> list[nn.Module]:
    """The decoder's forward as a flat sequence of modules (running them in turn is its ``forward``):
    ``conv_in``, the mid block, every up block's resnets then upsamplers, the output norm, act, conv."""
    stages: list[nn.Module] = [decoder.conv_in, decoder.mid_block]
    for block in decoder.up_blocks:
        stages += list(block.resnets) + list(block.upsamplers or [])
    return stages + [decoder.conv_norm_out, decoder.conv_act, decoder.conv_out]


def decoder_split(stages: list[nn.Module]) -> int:
    """Index of the first tail stage: the first upsampler that doubles time (the released decoder's
    second; before it every activation is at the latent frame rate). Without one, only the output
    layers are chunked."""
    for index, stage in enumerate(stages):
        if isinstance(stage, HunyuanVideoUpsampleCausal3D) and stage.upsample_factor[0] > 1:
            return index
    return len(stages) - 3


def _causal_conv(conv: HunyuanVideoCausalConv3d, x: torch.Tensor, cache: CausalCache) -> torch.Tensor | None:
    """``conv`` on the frames ``x`` that follow those it saw before (``cache``): every window of the
    time-padded video that these frames complete. The first chunk gets the module's own replicate
    padding, so one chunk covering the video is the whole-video call (the VAE's convolutions pad time
    only that way, none inside ``conv.conv``). None when a convolution that strides in time has no
    complete window yet (at stride 1 every frame completes one)."""
    kernel, stride = conv.conv.kernel_size[0], conv.conv.stride[0]
    history_frames = conv.time_causal_padding[4]  # the module's causal padding: kernel_t - 1
    if history_frames == 0 and stride == 1:
        return conv(x)
    pending = cache.get(conv)
    if pending is None:
        out = conv(x)
        # The padded input is history_frames replicas of frame 0, then x; the next window starts at
        # out.shape[2] * stride in it.
        padded_index = torch.arange(out.shape[2] * stride, history_frames + x.shape[2], device=x.device)
        cache[conv] = x.index_select(2, (padded_index - history_frames).clamp(min=0))
        return out
    padded = torch.cat((pending, x), dim=2)
    windows = (padded.shape[2] - kernel) // stride + 1 if padded.shape[2] >= kernel else 0
    cache[conv] = padded[:, :, windows * stride:].clone()  # not a view: the chunk can be freed
    if windows == 0:
        return None
    spatial = conv.time_causal_padding[:4] + (0, 0)
    return conv.conv(F.pad(padded, spatial, mode=conv.pad_mode))


def _resnet(block: HunyuanVideoResnetBlockCausal3D, x: torch.Tensor, cache: CausalCache) -> torch.Tensor:
    """The pack's resnet forward (``hunyuan_vae._ResnetBlock``, one layer per statement so each activation
    is freed once the next exists) with cached convolutions; GroupNorm over the chunk."""
    residual = x if block.conv_shortcut is None else _causal_conv(block.conv_shortcut, x, cache)
    hidden = block.nonlinearity(block.norm1(x))
    hidden = _causal_conv(block.conv1, hidden, cache)
    hidden = block.norm2(hidden)
    hidden = block.dropout(block.nonlinearity(hidden))
    hidden = _causal_conv(block.conv2, hidden, cache)
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


def run_chunk(stages: list[nn.Module], x: torch.Tensor, cache: CausalCache, first: bool) -> torch.Tensor | None:
    """``stages`` on one chunk of frames ``x`` (``first``: it starts the video), updating ``cache``; None
    when a downsampler has no complete window for these frames (only after a chunk cut short at the
    video's end)."""
    for stage in stages:
        if isinstance(stage, HunyuanVideoCausalConv3d):
            x = _causal_conv(stage, x, cache)
        elif isinstance(stage, HunyuanVideoDownsampleCausal3D):
            x = _causal_conv(stage.conv, x, cache)
        elif isinstance(stage, HunyuanVideoResnetBlockCausal3D):
            x = _resnet(stage, x, cache)
        elif isinstance(stage, HunyuanVideoUpsampleCausal3D):
            x = _upsample(stage, x, cache, first)
        else:  # GroupNorm (the chunk's statistics) and the activation
            x = stage(x)
        if x is None:
            return None
    return x


def decode_in_chunks(decoder: HunyuanVideoDecoder3D, z: torch.Tensor, chunk_latents: int,
                     split: int | None = None) -> Iterator[torch.Tensor]:
    """Decode ``z`` (after ``post_quant_conv``) yielding consecutive runs of finished frames: the head
    (stages before ``split``, default :func:`decoder_split`) over all frames, then the tail on
    ``chunk_latents`` head frames at a time. With one chunk this is exactly ``decoder(z)``."""
    if chunk_latents < 1:
        raise ValueError(f"A causal chunk needs at least one latent frame, not {chunk_latents}.")
    stages = decoder_stages(decoder)
    split = decoder_split(stages) if split is None else split
    if any(isinstance(stage, type(decoder.mid_block)) for stage in stages[split:]):
        raise ValueError("The mid block (attention over all frames) must run in the head.")
    hidden = z
    for stage in stages[:split]:
        hidden = stage(hidden)
    cache: CausalCache = {}
    for start in range(0, hidden.shape[2], chunk_latents):
        yield run_chunk(stages[split:], hidden[:, :, start:start + chunk_latents], cache, first=start == 0)


def convolutions_in(stages: list[nn.Module]) -> int:
    """Convolution modules inside ``stages`` (each runs once per pass over them)."""
    return sum(isinstance(m, (nn.Conv2d, nn.Conv3d)) for stage in stages for m in stage.modules())


def work_per_chunk(decoder: HunyuanVideoDecoder3D, split: int | None = None) -> tuple[int, int]:
    """Convolutions run ``(once per tile, once per chunk)``: the head's and the tail's."""
    stages = decoder_stages(decoder)
    split = decoder_split(stages) if split is None else split
    return convolutions_in(stages[:split]), convolutions_in(stages[split:])


def encoder_stages(encoder: HunyuanVideoEncoder3D) -> list[nn.Module]:
    """The encoder's forward as a flat sequence of modules: ``conv_in``, every down block's resnets then
    downsamplers, the mid block, the output norm, act, conv."""
    stages: list[nn.Module] = [encoder.conv_in]
    for block in encoder.down_blocks:
        stages += list(block.resnets) + list(block.downsamplers or [])
    return stages + [encoder.mid_block, encoder.conv_norm_out, encoder.conv_act, encoder.conv_out]


def _time_stride(stage: nn.Module) -> int:
    return stage.conv.conv.stride[0] if isinstance(stage, HunyuanVideoDownsampleCausal3D) else 1


def encoder_split(stages: list[nn.Module]) -> int:
    """Index of the first stage at the latent frame rate: the one after the last downsampler that strides
    in time (the released encoder's third). Without one, only ``conv_in`` is chunked."""
    strided = [index for index, stage in enumerate(stages) if _time_stride(stage) > 1]
    return strided[-1] + 1 if strided else 1


def encode_in_chunks(encoder: HunyuanVideoEncoder3D, x: torch.Tensor, chunk_latents: int) -> torch.Tensor:
    """The encoder's output for pixels ``x``: the stages before :func:`encoder_split` on
    ``1 + chunk_latents * s`` frames, then ``chunk_latents * s`` at a time (``s`` = their time strides
    multiplied: every chunk after the first then yields exactly ``chunk_latents`` latent frames), the rest
    over all frames. With one chunk this is exactly ``encoder(x)``."""
    if chunk_latents < 1:
        raise ValueError(f"A causal chunk needs at least one latent frame, not {chunk_latents}.")
    stages = encoder_stages(encoder)
    split = encoder_split(stages)
    chunk_frames = chunk_latents * prod(_time_stride(stage) for stage in stages[:split])
    cache: CausalCache = {}
    pieces = []
    for start in [0, *range(1 + chunk_frames, x.shape[2], chunk_frames)]:
        stop = 1 + chunk_frames if start == 0 else start + chunk_frames
        piece = run_chunk(stages[:split], x[:, :, start:stop], cache, first=start == 0)
        if piece is not None:
            pieces.append(piece)
    hidden = torch.cat(pieces, dim=2) if len(pieces) > 1 else pieces[0]
    for stage in stages[split:]:
        hidden = stage(hidden)
    return hidden
