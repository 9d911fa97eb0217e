"""TAEHV's decoder: a tiny (9.8M parameter) causal video decoder for the HunyuanVideo latent space.

Used for live sampler previews only (media/preview.py); the real decode stays the HunyuanVideo VAE.
Facts from github:madebyollin/taehv (layer order, key names, no latent scaling) rewritten here:

* It reads the latent the diffusion model samples, with no scale or shift: for HunyuanVideo that is the raw
  VAE latent x 0.476986, exactly this pack's latent (see media/preview.py).
* Frames are processed as a batch of 2-D images ``[N*T, C, H, W]``. A memory block sees its own input at the
  previous time step (zeros at the first), which makes the decoder causal; a temporal grow block turns each
  frame into ``stride`` frames by a 1x1 conv to ``stride * C`` channels read as ``stride`` consecutive frames.
* Three stages each upsample 2x in space (nearest), so one latent pixel becomes 8x8 pixels, and the time
  strides (1, 2, 2) give 4 frames per latent frame, of which the first 3 overall are dropped: latent frame 0
  alone decodes to pixel frame 0, as in the causal VAE.
* Output RGB in [0, 1].

The module's state-dict keys are the released file's ``decoder.<index>...`` keys (``nn.Sequential`` indices).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

LATENT_CHANNELS = 16
RELEASED_WIDTHS = (256, 128, 64, 64)
RELEASED_TIME_STRIDES = (1, 2, 2)
SPATIAL_UPSCALE = 8


@dataclass(frozen=True)
class TinyDecoderConfig:
    """Shape-defining settings: channel widths of the three stages and the output stem, time strides per stage."""

    widths: tuple[int, int, int, int] = RELEASED_WIDTHS
    time_strides: tuple[int, int, int] = RELEASED_TIME_STRIDES
    latent_channels: int = LATENT_CHANNELS

    @property
    def time_upscale(self) -> int:
        return self.time_strides[0] * self.time_strides[1] * self.time_strides[2]


def _conv3x3(channels_in: int, channels_out: int, bias: bool = True) -> nn.Conv2d:
    return nn.Conv2d(channels_in, channels_out, 3, padding=1, bias=bias)


class SoftClamp(nn.Module):
    """Squash latent outliers smoothly into (-3, 3) before the first conv."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 3 * torch.tanh(x / 3)


class MemoryBlock(nn.Module):
    """Residual block of three 3x3 convs fed with the frame and the block's input one time step earlier."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Sequential(_conv3x3(2 * channels, channels), nn.ReLU(), _conv3x3(channels, channels),
                                  nn.ReLU(), _conv3x3(channels, channels))

    def forward(self, x: torch.Tensor, past: torch.Tensor) -> torch.Tensor:
        return F.relu(self.conv(torch.cat([x, past], dim=1)) + x)


class TemporalGrow(nn.Module):
    """Each frame -> ``stride`` consecutive frames (a 1x1 conv to ``stride * C`` channels)."""

    def __init__(self, channels: int, stride: int):
        super().__init__()
        self.stride = stride
        self.conv = nn.Conv2d(channels, channels * stride, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        frames, channels, height, width = x.shape
        return self.conv(x).reshape(frames * self.stride, channels, height, width)


def _stage(width: int, next_width: int, stride: int) -> list[nn.Module]:
    return [MemoryBlock(width), MemoryBlock(width), MemoryBlock(width), nn.Upsample(scale_factor=2),
            TemporalGrow(width, stride), _conv3x3(width, next_width, bias=False)]


class TinyVideoDecoder(nn.Module):
    """Latent ``[B, 16, T, H, W]`` -> RGB frames ``[B, 3, 4T-3, 8H, 8W]`` in [0, 1] (released strides)."""

    def __init__(self, config: TinyDecoderConfig = TinyDecoderConfig()):
        super().__init__()
        self.config = config
        w, s = config.widths, config.time_strides
        self.decoder = nn.Sequential(
            SoftClamp(), _conv3x3(config.latent_channels, w[0]), nn.ReLU(),
            *_stage(w[0], w[1], s[0]), *_stage(w[1], w[2], s[1]), *_stage(w[2], w[3], s[2]),
            nn.ReLU(), _conv3x3(w[3], 3),
        )

    def forward(self, latent: torch.Tensor) -> torch.Tensor:
        batch, channels, frames, height, width = latent.shape
        x = latent.transpose(1, 2).reshape(batch * frames, channels, height, width)
        for layer in self.decoder:
            if isinstance(layer, MemoryBlock):
                x = layer(x, _previous_frame(x, batch))
            else:
                x = layer(x)
        x = x.reshape(batch, -1, *x.shape[1:]).transpose(1, 2)  # [B, 3, T * time_upscale, 8H, 8W]
        return x[:, :, self.config.time_upscale - 1:].clamp(0, 1)


def _previous_frame(x: torch.Tensor, batch: int) -> torch.Tensor:
    """``x`` ``[B*T, C, H, W]`` shifted one frame later in time within each batch element, zeros first."""
    frames = x.reshape(batch, -1, *x.shape[1:])
    return F.pad(frames[:, :-1], (0, 0, 0, 0, 0, 0, 1, 0)).reshape(x.shape)


def config_from_shapes(shapes: dict[str, tuple[int, ...]]) -> TinyDecoderConfig:
    """The widths and time strides stored in a file (KeyError names a missing key)."""
    w0, latent_channels = shapes["decoder.1.weight"][:2]
    widths = (w0, shapes["decoder.8.weight"][0], shapes["decoder.14.weight"][0], shapes["decoder.20.weight"][0])
    strides = tuple(shapes[f"decoder.{i}.conv.weight"][0] // width for i, width in zip((7, 13, 19), widths))
    return TinyDecoderConfig(widths, strides, latent_channels)
