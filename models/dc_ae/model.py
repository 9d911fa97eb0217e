"""The Video DC-AE (``dc-ae-f32t4c128``): a deterministic, non-causal 3-D autoencoder with 32x spatial
and 4x temporal compression into 128 channels, the autoencoder of Open-Sora 2.0's high-compression model.

Facts: docs/reference.md#dc-ae; reference ``opensora/models/dc_ae/models/dc_ae.py``.
"""

from __future__ import annotations

from typing import Iterator

import torch
from torch import nn

from ..autoencoder import Tiling, VideoAutoencoder
from ..latent_space import VIDEO_DC_AE
from .config import EVIT_S5_GLU, RESBLOCK, DCAEConfig
from .layers import (
    ChannelAveragingShortcut,
    ChannelDuplicatingShortcut,
    ConvLayer,
    EfficientViTBlock,
    OpSequential,
    ResBlock,
    Residual,
    RMSNorm3d,
    activation,
    downsample_block,
    upsample_block,
)
from .tiling import tile_spatially, tile_temporally


def _block(block_type: str, width: int, config: DCAEConfig) -> nn.Module:
    if block_type == RESBLOCK:
        return Residual(ResBlock(width, config.act))
    scales = (5,) if block_type == EVIT_S5_GLU else ()
    return EfficientViTBlock(width, config.attention_head_dim, scales, config.mlp_expand_ratio, config.act)


class Encoder(nn.Module):
    """conv3 in; per stage: blocks, then (not the last stage) a downsample; conv3 out with a
    channel-averaging shortcut."""

    def __init__(self, config: DCAEConfig) -> None:
        super().__init__()
        widths = config.encoder_widths
        last = len(widths) - 1
        self.project_in = ConvLayer(config.in_channels, widths[0], 3)
        stages = []
        for index, (width, depth, block_type) in enumerate(
            zip(widths, config.encoder_depths, config.encoder_block_types)
        ):
            ops = [_block(block_type, width, config) for _ in range(depth)]
            if index < last:
                ops.append(downsample_block(width, widths[index + 1], config.temporal_downsample[index]))
            stages.append(OpSequential(ops))
        self.stages = nn.ModuleList(stages)
        self.project_out = Residual(
            OpSequential([ConvLayer(widths[-1], config.latent_channels, 3)]),
            ChannelAveragingShortcut(config.latent_channels, factor=1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.project_in(x)
        for stage in self.stages:
            x = stage(x)
        return self.project_out(x)


class Decoder(nn.Module):
    """conv3 in with a channel-duplicating shortcut; stages from the last to the first, each an
    upsample (not the last stage) then blocks; RMSNorm3d, ReLU, conv3 out."""

    def __init__(self, config: DCAEConfig) -> None:
        super().__init__()
        widths = config.decoder_widths
        last = len(widths) - 1
        self.project_in = Residual(
            ConvLayer(config.latent_channels, widths[-1], 3),
            ChannelDuplicatingShortcut(widths[-1], factor=1),
        )
        stages = []
        for index, (width, depth, block_type) in enumerate(
            zip(widths, config.decoder_depths, config.decoder_block_types)
        ):
            ops = []
            if index < last:
                ops.append(upsample_block(widths[index + 1], width, config.temporal_upsample[index]))
            ops += [_block(block_type, width, config) for _ in range(depth)]
            stages.append(OpSequential(ops))
        self.stages = nn.ModuleList(stages)
        self.project_out = OpSequential(
            [RMSNorm3d(widths[0]), activation(config.decoder_out_act), ConvLayer(widths[0], config.in_channels, 3)]
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = self.project_in(z)
        for stage in reversed(self.stages):
            x = stage(x)
        return self.project_out(x)


class VideoDCAE(VideoAutoencoder):
    """Video DC-AE with the official parameter names (``encoder.*``, ``decoder.*``).

    The DC-AE is not variational: :meth:`encode` is deterministic and ignores ``sample`` and
    ``generator`` (accepted for the :class:`VideoAutoencoder` interface). Latents follow the reference's
    convention: ``encode`` divides by ``config.scaling_factor`` and ``decode`` multiplies by it; ``None``
    (the shipped inference config) leaves latents unscaled. Batch elements go through the network one at
    a time, as in the reference.

    Frames: ``T`` frames encode to ``T / 4`` latent frames (``T`` = 1, 2 or a multiple of 4; a single
    frame gives a single latent frame) and ``L`` latent frames decode to ``4 L`` frames (1 for ``L = 1``).
    Sizes: H and W must be multiples of 32.
    """

    kind = VIDEO_DC_AE

    def __init__(self, config: DCAEConfig | None = None) -> None:
        super().__init__()
        self.config = config = config if config is not None else DCAEConfig()
        self.latent_channels = config.latent_channels
        self.spatial_compression = config.spatial_compression
        self.temporal_compression = config.temporal_compression
        # With overlap 0.25 a tile of 4 latents is the smallest whose stride equals its kept output.
        self.spatial_tile_multiple = 4 * config.spatial_compression
        self.temporal_tile_multiple = 4 * config.temporal_compression
        self.encoder = Encoder(config)
        self.decoder = Decoder(config)

    # ----------------------------------------------------------------------------- interface

    def reference_tiling(self, temporal: bool = False) -> Tiling:
        """``high_compression.py``'s tiles: 256 px and 32 frames (8 latents each), overlap 0.25.

        The reference's diffusion inference config turns on both spatial and temporal tiling for the
        DC-AE, so both are returned whatever ``temporal`` says.
        """
        return Tiling(spatial=256, temporal=32, overlap=0.25)

    def decoded_frames(self, latent_frames: int) -> int:
        """``4 L`` frames, or 1 for a single latent frame (untiled; see :meth:`decode_chunks`)."""
        return 1 if latent_frames == 1 else latent_frames * self.temporal_compression

    @torch.no_grad()
    def encode(
        self,
        x: torch.Tensor,
        sample: bool = False,
        generator: torch.Generator | None = None,
        tiling: Tiling | None = None,
    ) -> torch.Tensor:
        """Pixels ``[B, 3, F, H, W]`` in [-1, 1] -> latent ``[B, C, F/4, H/32, W/32]`` (deterministic).

        ``tiling=None`` uses :meth:`reference_tiling`; ``NO_TILING`` encodes in one pass. Clips longer than
        the temporal tile go through temporal tiles, frames larger than the spatial tile through spatial
        tiles (nested), exactly as the reference dispatches.
        """
        del sample, generator  # the DC-AE has no posterior to sample
        tiling = self._checked(self.reference_tiling() if tiling is None else tiling)
        x = x.to(self.device, self.dtype)

        def encode_frames(clip: torch.Tensor) -> torch.Tensor:
            if tiling.spatial is not None and max(clip.shape[-2:]) > tiling.spatial:
                latent_tile = tiling.spatial // self.spatial_compression
                return tile_spatially(self._encode_each, clip, tiling.spatial, latent_tile, tiling.overlap)
            return self._encode_each(clip)

        if tiling.temporal is not None and x.shape[2] > tiling.temporal:
            latent_tile = tiling.temporal // self.temporal_compression
            z = torch.cat(list(tile_temporally(encode_frames, x, tiling.temporal, latent_tile, tiling.overlap)), 2)
        else:
            z = encode_frames(x)
        if self.config.scaling_factor is not None:
            z = z / self.config.scaling_factor
        return z

    @torch.no_grad()
    def decode_chunks(self, z: torch.Tensor, tiling: Tiling | None = None) -> Iterator[torch.Tensor]:
        """Latent ``[B, C, L, H', W']`` -> runs of frames ``[B, 3, f, 32 H', 32 W']`` (about [-1, 1]).

        Untiled in time there is one run; with temporal tiles each run is one tile's finished frames.
        As in the reference, a last temporal tile of a single latent frame decodes to one frame, so the
        video is 3 frames short when ``L > tile`` and ``(L - 1)`` is a multiple of the tile stride.
        """
        tiling = self._checked(self.reference_tiling() if tiling is None else tiling)
        z = z.to(self.device, self.dtype)
        if self.config.scaling_factor is not None:
            z = z * self.config.scaling_factor

        def decode_frames(latent: torch.Tensor) -> torch.Tensor:
            if tiling.spatial is not None:
                latent_tile = tiling.spatial // self.spatial_compression
                if max(latent.shape[-2:]) > latent_tile:
                    return tile_spatially(self._decode_each, latent, latent_tile, tiling.spatial, tiling.overlap)
            return self._decode_each(latent)

        if tiling.temporal is not None and z.shape[2] > tiling.temporal // self.temporal_compression:
            latent_tile = tiling.temporal // self.temporal_compression
            yield from tile_temporally(decode_frames, z, latent_tile, tiling.temporal, tiling.overlap)
        else:
            yield decode_frames(z)

    def decode_passes(self, latent_shape: tuple[int, ...], tiling: Tiling | None = None) -> int:
        tiling = self._checked(self.reference_tiling() if tiling is None else tiling)
        _, _, latent_frames, height, width = latent_shape
        spatial = 1
        if tiling.spatial is not None:
            tile = tiling.spatial // self.spatial_compression
            if max(height, width) > tile:
                stride = int(tile * (1 - tiling.overlap))
                spatial = len(range(0, height, stride)) * len(range(0, width, stride))
        if tiling.temporal is not None and latent_frames > tiling.temporal // self.temporal_compression:
            stride = int(tiling.temporal // self.temporal_compression * (1 - tiling.overlap))
            return spatial * len(range(0, latent_frames, stride))
        return spatial

    def decode_bytes(self, latent_shape: tuple[int, ...], tiling: Tiling, dtype: torch.dtype) -> int:
        """Estimated peak activation bytes of decoding one batch element (weights and conv workspace
        not included).

        The full-resolution first decoder stage dominates: per voxel of one tile's output about
        ``width * (5.5 * itemsize + 4)`` bytes (activations plus the float32 RMS-norm statistics), plus
        the decoded frames held for blending. Measured by benchmarks/dc_ae_decode_memory.py on the meta
        device: 1920 B per voxel in bf16 and 3332 B in fp32 for the released model.
        """
        _, _, latent_frames, height, width = latent_shape
        frames = self.decoded_frames(latent_frames)
        tile_frames = frames if tiling.temporal is None else min(frames, tiling.temporal)
        tile_h = height * self.spatial_compression
        tile_w = width * self.spatial_compression
        if tiling.spatial is not None:
            tile_h, tile_w = min(tile_h, tiling.spatial), min(tile_w, tiling.spatial)
        item = torch.empty((), dtype=dtype).element_size()
        per_voxel = self.config.decoder_widths[0] * (11 * item + 8) // 2
        held_output = 2 * self.config.in_channels * tile_frames * height * width * self.spatial_compression**2 * item
        return tile_frames * tile_h * tile_w * per_voxel + held_output

    # ------------------------------------------------------------------------------ internals

    def _checked(self, tiling: Tiling) -> Tiling:
        """Reject tile settings the reference's arithmetic cannot use."""
        if not 0 <= tiling.overlap < 1:
            raise ValueError(f"Tile overlap must be in [0, 1) (got {tiling.overlap}).")
        for size, step, what in (
            (tiling.spatial, self.spatial_compression, "spatial tile size (pixels)"),
            (tiling.temporal, self.temporal_compression, "temporal tile size (frames)"),
        ):
            if size is not None and (size % step or int(size // step * (1 - tiling.overlap)) < 1):
                raise ValueError(
                    f"The DC-AE {what} must be a multiple of {step} large enough for overlap {tiling.overlap} "
                    f"to leave a stride of at least one latent (got {size}); use multiples of {4 * step}."
                )
        return tiling

    def _encode_each(self, x: torch.Tensor) -> torch.Tensor:
        self._check_encodable(x.shape)
        return torch.cat([self.encoder(x[i : i + 1]) for i in range(x.shape[0])], dim=0)

    def _decode_each(self, z: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.decoder(z[i : i + 1]) for i in range(z.shape[0])], dim=0)

    def _check_encodable(self, shape: torch.Size) -> None:
        """Raise a clear error for clips the encoder's stride-2 stages cannot halve evenly."""
        if len(shape) != 5 or shape[1] != self.config.in_channels:
            raise ValueError(f"The DC-AE encodes [B, {self.config.in_channels}, F, H, W] videos (got {list(shape)}).")
        frames, height, width = shape[2:]
        step = self.spatial_compression
        if height % step or width % step:
            raise ValueError(f"The DC-AE needs heights and widths divisible by {step} (got {height}x{width}).")
        t = frames
        for halves in self.config.temporal_downsample:
            if halves and t != 1:
                if t % 2:
                    raise ValueError(
                        f"The DC-AE cannot encode {frames} frames: use 1, 2 or a multiple of "
                        f"{self.temporal_compression} frames (per temporal tile when tiling)."
                    )
                t //= 2
