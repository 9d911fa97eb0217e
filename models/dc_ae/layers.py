"""Building blocks of the Video DC-AE (3-D, non-causal).

Attribute names follow the official state-dict keys (``main``, ``op_list``, ``conv``, ``norm``,
``context_module``, ``local_module``, ...). Facts: docs/reference.md#dc-ae; reference
``opensora/models/dc_ae/models/nn/{ops,norm,vo_ops}.py``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

# Tensors at or above this many elements overflow 32-bit index math in some conv / interpolate kernels;
# the reference splits such work into channel chunks, and so do we.
INDEX_LIMIT = 2**31


def activation(name: str | None) -> nn.Module | None:
    """The activation module for a config name (``None`` -> no activation)."""
    if name is None:
        return None
    return {"silu": nn.SiLU, "relu": nn.ReLU, "gelu": lambda: nn.GELU(approximate="tanh")}[name]()


def _faulty_cpu_bf16_conv(x: torch.Tensor, in_channels: int) -> bool:
    """Whether this is the case PyTorch's CPU bf16 Conv3d was seen to get wrong: a one-frame input with
    only a few (pixel) channels, as the encoder's first convolution sees for an image (3 -> 128
    channels, 512x288, torch 2.14.1: up to 9.4 away from fp32, then an all-black i2v video). The
    oneDNN kernel chosen depends on the CPU; on others the plain bf16 result is already right."""
    return x.device.type == "cpu" and x.dtype == torch.bfloat16 and x.shape[2] == 1 and in_channels <= 4


class Conv3d(nn.Conv3d):
    """``nn.Conv3d`` that, for inputs too large for 32-bit indexing, convolves channel chunks.

    Full convolutions sum partial convolutions over input-channel chunks and split the output
    channels; grouped convolutions run group-aligned chunks. Small inputs take the plain path.
    The faulty CPU bf16 case (:func:`_faulty_cpu_bf16_conv`) is computed in fp32 from the same bf16
    values and rounded back to bf16, which is what a correct bf16 kernel returns (it accumulates in
    fp32 too); that convolution has 3 input channels, so the detour costs little.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if _faulty_cpu_bf16_conv(x, self.in_channels):
            bias = None if self.bias is None else self.bias.float()
            out = F.conv3d(x.float(), self.weight.float(), bias, self.stride, self.padding, self.dilation, self.groups)
            return out.to(x.dtype)
        out_numel = x.shape[0] * self.out_channels * math.prod(self._output_size(x.shape[-3:]))
        if x.numel() < INDEX_LIMIT and out_numel < INDEX_LIMIT:
            return super().forward(x)
        pieces_in = _divisor_at_least(self.in_channels, math.ceil(x.numel() / INDEX_LIMIT))
        pieces_out = _divisor_at_least(self.out_channels, math.ceil(out_numel / INDEX_LIMIT))
        if self.groups > 1:
            pieces = _divisor_at_least(self.groups, max(pieces_in, pieces_out))
            outputs = [
                F.conv3d(xs, ws, bs, self.stride, self.padding, self.dilation, self.groups // pieces)
                for xs, ws, bs in zip(
                    x.chunk(pieces, 1), self.weight.chunk(pieces), _chunk_or_none(self.bias, pieces)
                )
            ]
            return torch.cat(outputs, dim=1)
        outputs = []
        for weight, b in zip(self.weight.chunk(pieces_out), _chunk_or_none(self.bias, pieces_out)):
            out = None
            for xs, ws in zip(x.chunk(pieces_in, 1), weight.chunk(pieces_in, 1)):
                part = F.conv3d(xs, ws, b if out is None else None, self.stride, self.padding, self.dilation)
                out = part if out is None else out.add_(part)
            outputs.append(out)
        return torch.cat(outputs, dim=1)

    def _output_size(self, size: tuple[int, ...]) -> list[int]:
        return [
            (n + 2 * p - d * (k - 1) - 1) // s + 1
            for n, p, d, k, s in zip(size, self.padding, self.dilation, self.kernel_size, self.stride)
        ]


def _divisor_at_least(n: int, wanted: int) -> int:
    """The smallest divisor of ``n`` that is at least ``wanted`` (``n`` itself at most)."""
    return next(d for d in range(max(1, min(wanted, n)), n + 1) if n % d == 0)


def _chunk_or_none(t: torch.Tensor | None, pieces: int) -> list[torch.Tensor | None]:
    return [None] * pieces if t is None else list(t.chunk(pieces))


class RMSNorm3d(nn.Module):
    """Per-position RMS norm over channels of ``[B, C, T, H, W]``, statistic in float32, eps 1e-5,
    then a per-channel affine ``x * weight + bias``."""

    def __init__(self, channels: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rms = torch.sqrt(x.float().square().mean(dim=1, keepdim=True) + self.eps)
        x = (x / rms).to(x.dtype)
        return x * self.weight.view(1, -1, 1, 1, 1) + self.bias.view(1, -1, 1, 1, 1)


class ConvLayer(nn.Module):
    """3-D convolution with zero padding ``k // 2`` on T, H and W, then optional RMSNorm3d and activation."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        *,
        stride: int | tuple[int, int, int] = 1,
        groups: int = 1,
        bias: bool = True,
        norm: bool = False,
        act: str | None = None,
    ) -> None:
        super().__init__()
        self.conv = Conv3d(
            in_channels, out_channels, kernel_size, stride=stride, padding=kernel_size // 2, groups=groups, bias=bias
        )
        self.norm = RMSNorm3d(out_channels) if norm else None
        self.act = activation(act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        if self.norm is not None:
            x = self.norm(x)
        if self.act is not None:
            x = self.act(x)
        return x


class OpSequential(nn.Module):
    """Modules applied in order, stored as ``op_list`` (the official key name)."""

    def __init__(self, ops: list[nn.Module]) -> None:
        super().__init__()
        self.op_list = nn.ModuleList(ops)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for op in self.op_list:
            x = op(x)
        return x


class Residual(nn.Module):
    """``main(x) + shortcut(x)``; no shortcut module means the identity."""

    def __init__(self, main: nn.Module, shortcut: nn.Module | None = None) -> None:
        super().__init__()
        self.main = main
        self.shortcut = shortcut

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.main(x) + (x if self.shortcut is None else self.shortcut(x))


# ----------------------------------------------------------------------------------- blocks


class ResBlock(nn.Module):
    """conv3 (bias) + activation, then conv3 (no bias) + RMSNorm3d; used inside :class:`Residual`."""

    def __init__(self, channels: int, act: str) -> None:
        super().__init__()
        self.conv1 = ConvLayer(channels, channels, 3, bias=True, act=act)
        self.conv2 = ConvLayer(channels, channels, 3, bias=False, norm=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(self.conv1(x))


class LiteMLA(nn.Module):
    """Multi-scale ReLU linear attention over all T*H*W positions.

    ``qkv`` (1x1x1) gives q, k, v per head; each aggregation branch (depthwise kxkxk, then grouped
    1x1x1 per q/k/v of each head) adds another set of heads; attention per head is
    ``(v' k^T) q`` with ``v'`` = v plus a row of ones whose output row normalises the rest.
    """

    def __init__(self, channels: int, head_dim: int, scales: tuple[int, ...], eps: float = 1e-15) -> None:
        super().__init__()
        heads = channels // head_dim
        inner = heads * head_dim
        self.head_dim = head_dim
        self.eps = eps
        self.qkv = ConvLayer(channels, 3 * inner, 1, bias=False)
        self.aggreg = nn.ModuleList(
            nn.Sequential(
                Conv3d(3 * inner, 3 * inner, scale, padding=scale // 2, groups=3 * inner, bias=False),
                Conv3d(3 * inner, 3 * inner, 1, groups=3 * heads, bias=False),
            )
            for scale in scales
        )
        self.proj = ConvLayer(inner * (1 + len(scales)), channels, 1, bias=False, norm=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        qkv = self.qkv(x)
        qkv = torch.cat([qkv, *(branch(qkv) for branch in self.aggreg)], dim=1)
        return self.proj(self.linear_attention(qkv).to(qkv.dtype))

    def linear_attention(self, qkv: torch.Tensor) -> torch.Tensor:
        """``[B, heads*3*d, T, H, W]`` (q, k, v of each head in turn) -> ``[B, heads*d, T, H, W]`` float32."""
        b, _, t, h, w = qkv.shape
        if qkv.dtype == torch.float16:
            qkv = qkv.float()
        qkv = qkv.reshape(b, -1, 3 * self.head_dim, t * h * w)
        q, k, v = qkv.split(self.head_dim, dim=2)
        q, k = F.relu(q), F.relu(k)
        v = F.pad(v, (0, 0, 0, 1), value=1.0)
        out = ((v @ k.transpose(-1, -2)) @ q).float()
        out = out[:, :, :-1] / (out[:, :, -1:] + self.eps)
        return out.reshape(b, -1, t, h, w)


class GLUMBConv(nn.Module):
    """Gated inverted bottleneck: 1x1x1 C -> 2*E*C + act, depthwise 3x3x3, ``x * act(gate)``,
    1x1x1 E*C -> C + RMSNorm3d."""

    def __init__(self, channels: int, expand_ratio: int, act: str) -> None:
        super().__init__()
        hidden = channels * expand_ratio
        self.inverted_conv = ConvLayer(channels, 2 * hidden, 1, bias=True, act=act)
        self.depth_conv = ConvLayer(2 * hidden, 2 * hidden, 3, groups=2 * hidden, bias=True)
        self.point_conv = ConvLayer(hidden, channels, 1, bias=False, norm=True)
        self.gate_act = activation(act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, gate = self.depth_conv(self.inverted_conv(x)).chunk(2, dim=1)
        return self.point_conv(x * self.gate_act(gate))


class EfficientViTBlock(nn.Module):
    """Residual LiteMLA (context) then residual GLUMBConv (local)."""

    def __init__(self, channels: int, head_dim: int, scales: tuple[int, ...], expand_ratio: int, act: str) -> None:
        super().__init__()
        self.context_module = Residual(LiteMLA(channels, head_dim, scales))
        self.local_module = Residual(GLUMBConv(channels, expand_ratio, act))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.local_module(self.context_module(x))


# ------------------------------------------------------------------------- resampling layers


def space_to_channels(x: torch.Tensor, factor: int, temporal: bool) -> torch.Tensor:
    """Pixel-unshuffle ``[B, C, T, H, W]`` by ``factor`` in H, W (and T): channel ``c*r^k + offsets``."""
    b, c, t, h, w = x.shape
    r = factor
    if temporal:
        x = x.reshape(b, c, t // r, r, h // r, r, w // r, r).permute(0, 1, 3, 5, 7, 2, 4, 6)
        return x.reshape(b, c * r**3, t // r, h // r, w // r)
    x = x.reshape(b, c, t, h // r, r, w // r, r).permute(0, 1, 4, 6, 2, 3, 5)
    return x.reshape(b, c * r**2, t, h // r, w // r)


def channels_to_space(x: torch.Tensor, factor: int, temporal: bool) -> torch.Tensor:
    """Pixel-shuffle ``[B, C, T, H, W]`` by ``factor`` in H, W (and T); inverse of :func:`space_to_channels`."""
    b, c, t, h, w = x.shape
    r = factor
    if temporal:
        x = x.reshape(b, c // r**3, r, r, r, t, h, w).permute(0, 1, 5, 2, 6, 3, 7, 4)
        return x.reshape(b, c // r**3, t * r, h * r, w * r)
    x = x.reshape(b, c // r**2, r, r, t, h, w).permute(0, 1, 4, 5, 2, 6, 3)
    return x.reshape(b, c // r**2, t, h * r, w * r)


class ChannelAveragingShortcut(nn.Module):
    """Downsampling shortcut: pixel-unshuffle (T only when ``temporal`` and T > 1), then average
    consecutive groups of channels down to ``out_channels``."""

    def __init__(self, out_channels: int, factor: int, temporal: bool = False) -> None:
        super().__init__()
        self.out_channels = out_channels
        self.factor = factor
        self.temporal = temporal

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = space_to_channels(x, self.factor, self.temporal and x.shape[2] != 1)
        b, c, t, h, w = x.shape
        return x.reshape(b, self.out_channels, c // self.out_channels, t, h, w).mean(dim=2)


class ChannelDuplicatingShortcut(nn.Module):
    """Upsampling shortcut: repeat each channel, then pixel-shuffle (T only when ``temporal`` and T > 1)."""

    def __init__(self, out_channels: int, factor: int, temporal: bool = False) -> None:
        super().__init__()
        self.out_channels = out_channels
        self.factor = factor
        self.temporal = temporal

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        temporal = self.temporal and x.shape[2] != 1
        repeats = self.out_channels * self.factor ** (3 if temporal else 2) // x.shape[1]
        return channels_to_space(x.repeat_interleave(repeats, dim=1), self.factor, temporal)


class InterpolateConv(nn.Module):
    """Nearest upsampling by 2 in H, W (and T when ``temporal`` and T > 1), then a 3x3x3 conv."""

    def __init__(self, in_channels: int, out_channels: int, temporal: bool) -> None:
        super().__init__()
        self.temporal = temporal
        self.conv = ConvLayer(in_channels, out_channels, 3, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = (2 if self.temporal and x.shape[2] != 1 else 1, 2, 2)
        return self.conv(upsample_nearest(x, scale))


def upsample_nearest(x: torch.Tensor, scale: tuple[int, int, int]) -> torch.Tensor:
    """Nearest-neighbour upsampling of ``[B, C, T, H, W]``, in channel chunks when the result is huge."""
    out_numel = x.numel() * math.prod(scale)
    if out_numel < INDEX_LIMIT:
        return F.interpolate(x, scale_factor=scale, mode="nearest")
    per_channel = out_numel // x.shape[1]
    channels = max(1, (INDEX_LIMIT - 1) // per_channel)
    return torch.cat([F.interpolate(c, scale_factor=scale, mode="nearest") for c in x.split(channels, 1)], dim=1)


def downsample_block(in_channels: int, out_channels: int, temporal: bool) -> Residual:
    """Encoder stage exit: strided 3x3x3 conv (stride 2 in H, W and, if ``temporal``, T) plus the
    channel-averaging shortcut."""
    stride = (2 if temporal else 1, 2, 2)
    return Residual(
        ConvLayer(in_channels, out_channels, 3, stride=stride, bias=True),
        ChannelAveragingShortcut(out_channels, factor=2, temporal=temporal),
    )


def upsample_block(in_channels: int, out_channels: int, temporal: bool) -> Residual:
    """Decoder stage entry: nearest upsampling + conv plus the channel-duplicating shortcut."""
    return Residual(
        InterpolateConv(in_channels, out_channels, temporal),
        ChannelDuplicatingShortcut(out_channels, factor=2, temporal=temporal),
    )
