"""HunyuanVideo causal 3-D VAE as Open-Sora 2.0 uses it.

The network is diffusers' ``AutoencoderKLHunyuanVideo``, whose state dict has exactly the keys of the
official ``hunyuan_vae.safetensors``. This module owns only the glue the reference adds around it
(docs/reference.md#hunyuan-vae): the latent scaling ``0.476986 * (z - 0)``, the reference's tile settings
(spatial 256 px, temporal 64+1 frames, overlap 0.25), frame-chunked decoding, the configuration
read off a checkpoint's tensor shapes, and two thin subclasses that keep the activations' memory layout
(the same results as diffusers' blocks, faster on the CPU).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import partial
from typing import Callable, Iterator, Mapping

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKLHunyuanVideo
from diffusers.models.attention_processor import Attention
from diffusers.models.autoencoders.autoencoder_kl_hunyuan_video import (
    HunyuanVideoMidBlock3D,
    HunyuanVideoResnetBlockCausal3D,
    HunyuanVideoUpsampleCausal3D,
)

from .autoencoder import PassRunner, Tiling, VideoAutoencoder, WorkUnit, work_modules
from .latent_space import HUNYUAN_VAE, decoded_num_frames

SCALE_FACTOR = 0.476986
SHIFT_FACTOR = 0.0
# The reference's settings: sample_size 256 (32 latents), sample_tsize 64 (16 latents), overlap 0.25.
REFERENCE_SPATIAL_TILE = 256
REFERENCE_TEMPORAL_TILE = 64
REFERENCE_OVERLAP = 0.25
# Decoder activations alive at the peak, in channel-equivalents per output pixel-frame of a tile (the
# last up blocks run at full resolution with 256 -> 128 channels): about 1100 measured with
# benchmarks/vae_decode_memory.py at the released widths, rounded up.
_DECODE_CHANNELS_AT_PEAK = 1200
# Query rows per block of the mid-block attention: one frame of a reference tile (32x32 latents). Bounds
# the scores held at once to 1024 x keys and makes every block a progress and Cancel point.
ATTENTION_QUERY_BLOCK = 1024


@dataclass(frozen=True)
class HunyuanVAEConfig:
    """The shape-defining settings of the VAE (the reference's defaults are the released model's)."""

    block_out_channels: tuple[int, ...] = (128, 256, 512, 512)
    layers_per_block: int = 2
    latent_channels: int = 16
    in_channels: int = 3
    out_channels: int = 3
    norm_num_groups: int = 32


def norm_groups_for(block_out_channels: tuple[int, ...]) -> int:
    """GroupNorm groups: the checkpoint does not store them, so use the reference's 32 unless the
    narrowest block is too narrow for it, then the largest power of two leaving >= 2 channels per group
    (32 for the released 128-channel model, 4 for the 8-channel test models the golden files use)."""
    narrowest = min(block_out_channels)
    groups = 32
    while groups > 1 and (narrowest % groups or narrowest // groups < 2):
        groups //= 2
    return groups


def config_from_shapes(shapes: Mapping[str, tuple[int, ...]]) -> HunyuanVAEConfig:
    """Read the configuration off the tensor shapes of a checkpoint in the official key layout.

    Raises ``KeyError`` naming the first marker key the shapes lack (callers check keys afterwards).
    """
    block_ids = sorted({int(m.group(1)) for k in shapes if (m := re.match(r"encoder\.down_blocks\.(\d+)\.", k))})
    if not block_ids:
        raise KeyError("encoder.down_blocks.0.resnets.0.conv1.conv.weight")
    widths = tuple(shapes[f"encoder.down_blocks.{i}.resnets.0.conv1.conv.weight"][0] for i in block_ids)
    layers = len({m.group(1) for k in shapes if (m := re.match(r"encoder\.down_blocks\.0\.resnets\.(\d+)\.", k))})
    return HunyuanVAEConfig(
        block_out_channels=widths,
        layers_per_block=layers,
        latent_channels=shapes["post_quant_conv.weight"][0],
        in_channels=shapes["encoder.conv_in.conv.weight"][1],
        out_channels=shapes["decoder.conv_out.conv.weight"][0],
        norm_num_groups=norm_groups_for(widths),
    )


class _ResnetBlock(HunyuanVideoResnetBlockCausal3D):
    """diffusers' causal resnet block without its ``.contiguous()`` on the input.

    After the mid-block attention the activations come back channels-last (``[B, C, T, H, W]`` with
    channels innermost), as in the reference. diffusers copies them back to channels-first at every
    block, and oneDNN's CPU convolutions are slower on that layout: keeping the layout saves a
    full-size copy per block and about 5 % of the decode (benchmarks/vae_side_by_side.py).
    """

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        residual = hidden_states if self.conv_shortcut is None else self.conv_shortcut(hidden_states)
        hidden_states = self.conv1(self.nonlinearity(self.norm1(hidden_states)))
        hidden_states = self.conv2(self.dropout(self.nonlinearity(self.norm2(hidden_states))))
        return hidden_states + residual


class _CausalUpsample(HunyuanVideoUpsampleCausal3D):
    """diffusers' causal 2x upsampler without its ``.contiguous()`` copy (see :class:`_ResnetBlock`):
    the first frame is upsampled in space only, the others in time and space (nearest)."""

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        first = F.interpolate(hidden_states[:, :, 0], scale_factor=self.upsample_factor[1:], mode="nearest")
        if hidden_states.shape[2] == 1:
            return self.conv(first[:, :, None])
        rest = F.interpolate(hidden_states[:, :, 1:], scale_factor=self.upsample_factor, mode="nearest")
        return self.conv(torch.cat((first[:, :, None], rest), dim=2))


class AttentionRows(WorkUnit):
    """One block of query rows of the mid-block attention against the keys their frames may see."""

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
        return F.scaled_dot_product_attention(query, key, value)


def frame_causal_attention(attn: Attention, hidden_states: torch.Tensor, rows: AttentionRows,
                           query_block: int = ATTENTION_QUERY_BLOCK) -> torch.Tensor:
    """The mid block's self-attention over all ``T*H*W`` positions of ``[B, C, T, H, W]``, where a
    position sees the positions of its own and earlier frames (docs/reference.md#hunyuan-vae).

    diffusers builds that rule as an additive ``L x L`` mask and attends every query to every key. Here
    the queries of frame ``f`` go in blocks of ``query_block`` rows against the keys of frames ``0..f``
    only: the same softmax without the masked terms (their weights are exactly zero), no mask in
    memory, about half the products, and ``rows`` runs once per block so progress and Cancel reach
    inside a long attention.
    """
    batch, channels, frames, height, width = hidden_states.shape
    tokens = hidden_states.permute(0, 2, 3, 4, 1).flatten(1, 3)
    normed = attn.group_norm(tokens.transpose(1, 2)).transpose(1, 2)
    heads = attn.heads

    def split_heads(projected: torch.Tensor) -> torch.Tensor:
        return projected.view(batch, -1, heads, projected.shape[-1] // heads).transpose(1, 2)

    query, key, value = (split_heads(project(normed)) for project in (attn.to_q, attn.to_k, attn.to_v))
    attended = torch.empty_like(query)
    frame_tokens = height * width
    for frame in range(frames):
        visible = (frame + 1) * frame_tokens
        for start in range(frame * frame_tokens, visible, query_block):
            stop = min(start + query_block, visible)
            attended[:, :, start:stop] = rows(query[:, :, start:stop], key[:, :, :visible], value[:, :, :visible])
    attended = attended.transpose(1, 2).reshape(batch, -1, query.shape[1] * query.shape[3])
    out = attn.to_out[1](attn.to_out[0](attended))
    if attn.residual_connection:
        out = out + tokens
    out = out / attn.rescale_output_factor
    return out.unflatten(1, (frames, height, width)).permute(0, 4, 1, 2, 3)


def attention_blocks(frames: int, height: int, width: int, query_block: int = ATTENTION_QUERY_BLOCK) -> int:
    """Calls of :class:`AttentionRows` in one mid-block attention over ``frames x height x width`` latents."""
    return frames * -(-height * width // query_block)


class _MidBlock(HunyuanVideoMidBlock3D):
    """diffusers' mid block with :func:`frame_causal_attention` in place of the masked attention
    (``rows`` is attached by :func:`_keep_memory_layout`; it holds no parameters)."""

    rows: AttentionRows

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        hidden_states = self.resnets[0](hidden_states)
        for attn, resnet in zip(self.attentions, self.resnets[1:]):
            if attn is not None:
                hidden_states = frame_causal_attention(attn, hidden_states, self.rows)
            hidden_states = resnet(hidden_states)
        return hidden_states


def _keep_memory_layout(network: torch.nn.Module) -> None:
    """Swap diffusers' resnet, upsampler and mid-block classes in ``network`` for the ones above (same
    parameters and state-dict keys; only ``forward`` differs)."""
    for module in list(network.modules()):
        if type(module) is HunyuanVideoResnetBlockCausal3D:
            module.__class__ = _ResnetBlock
        elif type(module) is HunyuanVideoUpsampleCausal3D:
            module.__class__ = _CausalUpsample
        elif type(module) is HunyuanVideoMidBlock3D:
            module.__class__ = _MidBlock
            module.rows = AttentionRows()


def to_native_latent(z: torch.Tensor) -> torch.Tensor:
    """Open-Sora model-space latent -> ComfyUI's native HunyuanVideo latent (the unscaled VAE latent)."""
    return z / SCALE_FACTOR + SHIFT_FACTOR


def from_native_latent(z: torch.Tensor) -> torch.Tensor:
    """ComfyUI's native HunyuanVideo latent -> Open-Sora model space (``0.476986 * (z - 0)``)."""
    return SCALE_FACTOR * (z - SHIFT_FACTOR)


def pixel_size_of_latent(latent_frames: int, latent_height: int, latent_width: int) -> tuple[int, int, int]:
    """``(frames, height, width)`` a causal 4x8x8 latent decodes to: ``4(T-1)+1`` frames, 8x sizes."""
    spatial = HUNYUAN_VAE.spatial_compression
    return decoded_num_frames(latent_frames, HUNYUAN_VAE), spatial * latent_height, spatial * latent_width


class HunyuanVideoVAE(VideoAutoencoder):
    """The reference's ``model_ae``: scaled encode/decode with its tiling, on diffusers' network.

    Submodules are registered under the official names (``encoder``, ``decoder``, ``quant_conv``,
    ``post_quant_conv``), so the state dict is the official file's; the diffusers object sharing them
    does the (tiled) forward passes.
    """

    kind = HUNYUAN_VAE
    temporal_compression = HUNYUAN_VAE.temporal_compression
    spatial_compression = HUNYUAN_VAE.spatial_compression
    spatial_tile_multiple = 32  # tiles of 32k px: stride 24k px = 3k latents, blend 8k px
    temporal_tile_multiple = 16  # tiles of 16k frames: stride 12k frames = 3k latents, blend 4k frames
    shares_decoder_passes = True

    def __init__(self, config: HunyuanVAEConfig = HunyuanVAEConfig()):
        super().__init__()
        self.config = config
        self.latent_channels = config.latent_channels
        core = AutoencoderKLHunyuanVideo(
            in_channels=config.in_channels,
            out_channels=config.out_channels,
            latent_channels=config.latent_channels,
            block_out_channels=config.block_out_channels,
            layers_per_block=config.layers_per_block,
            norm_num_groups=config.norm_num_groups,
            scaling_factor=SCALE_FACTOR,
            spatial_compression_ratio=self.spatial_compression,
            temporal_compression_ratio=self.temporal_compression,
            mid_block_add_attention=True,
        )
        _keep_memory_layout(core)
        self.encoder = core.encoder
        self.decoder = core.decoder
        self.quant_conv = core.quant_conv
        self.post_quant_conv = core.post_quant_conv
        object.__setattr__(self, "_core", core)  # not a submodule: its children are ours

    # ------------------------------------------------------------------------------------ tiling

    def reference_tiling(self, temporal: bool = False) -> Tiling:
        return Tiling(
            spatial=REFERENCE_SPATIAL_TILE,
            temporal=REFERENCE_TEMPORAL_TILE if temporal else None,
            overlap=REFERENCE_OVERLAP,
        )

    def _configure(self, tiling: Tiling, encoding: bool) -> None:
        """Set the diffusers object's tile attributes to ``tiling``. Encodes use diffusers' temporal
        tiling; decodes do their own (:meth:`_temporal_tiled_decode`, which streams)."""
        if tiling.spatial is not None and tiling.spatial % self.spatial_tile_multiple:
            raise ValueError(
                f"Spatial tile size {tiling.spatial} px is not a multiple of {self.spatial_tile_multiple}; "
                "other sizes would change the decoded size."
            )
        if tiling.temporal is not None and tiling.temporal % self.temporal_tile_multiple:
            raise ValueError(
                f"Temporal tile size {tiling.temporal} frames is not a multiple of {self.temporal_tile_multiple}."
            )
        if tiling.overlap != REFERENCE_OVERLAP:
            raise ValueError(f"Only the reference's tile overlap {REFERENCE_OVERLAP} is supported.")
        core = self._core
        core.use_slicing = False
        core.use_tiling = tiling.spatial is not None
        if tiling.spatial is not None:
            core.tile_sample_min_height = core.tile_sample_min_width = tiling.spatial
            core.tile_sample_stride_height = core.tile_sample_stride_width = tiling.spatial_stride
        temporal_encode = encoding and tiling.temporal is not None
        # diffusers 0.32 reads use_framewise_decoding in its encode: set both for encodes, neither for decodes.
        core.use_framewise_encoding = core.use_framewise_decoding = temporal_encode
        if tiling.temporal is not None:
            core.tile_sample_min_num_frames = tiling.temporal
            core.tile_sample_stride_num_frames = tiling.temporal_stride

    # ------------------------------------------------------------------------------- encode/decode

    @torch.no_grad()
    def encode(self, x: torch.Tensor, sample: bool = False, generator: torch.Generator | None = None,
               tiling: Tiling | None = None) -> torch.Tensor:
        if x.ndim != 5 or x.shape[1] != self.config.in_channels:
            raise ValueError(f"Expected pixels [B, {self.config.in_channels}, F, H, W], got {tuple(x.shape)}.")
        self._configure(self.reference_tiling() if tiling is None else tiling, encoding=True)
        posterior = self._core.encode(x.to(self.device, self.dtype)).latent_dist
        z = posterior.sample(generator=generator) if sample else posterior.mode()
        return SCALE_FACTOR * (z - SHIFT_FACTOR)

    @torch.no_grad()
    def decode_chunks(self, z: torch.Tensor, tiling: Tiling | None = None) -> Iterator[torch.Tensor]:
        if z.ndim != 5 or z.shape[1] != self.latent_channels:
            raise ValueError(f"Expected a latent [B, {self.latent_channels}, T, H, W], got {tuple(z.shape)}.")
        tiling = self.reference_tiling() if tiling is None else tiling
        self._configure(tiling, encoding=False)
        z = z.to(self.device, self.dtype) / SCALE_FACTOR + SHIFT_FACTOR
        latent_frames = z.shape[2]
        tile_latents = None if tiling.temporal is None else tiling.temporal // self.temporal_compression
        if tile_latents is None or latent_frames <= tile_latents:
            yield self._core.decode(z, return_dict=False)[0]
            return
        yield from self._temporal_tiled_decode(z, tiling)

    def _temporal_tiled_decode(self, z: torch.Tensor, tiling: Tiling,
                               decode_window: Callable[[torch.Tensor], torch.Tensor] | None = None
                               ) -> Iterator[torch.Tensor]:
        """The reference's temporal tiling, yielding each tile's finished frames as soon as the next
        tile no longer needs them: tiles of ``T+1`` latents every ``stride`` latents, later tiles drop
        their first frame and blend their first ``T*4 - stride*4`` frames into the previous tile's tail.
        ``decode_window`` decodes one tile's latents (default: diffusers' spatially tiled decode)."""
        decode_window = decode_window or self._diffusers_decode
        tile_latents = tiling.temporal // self.temporal_compression
        stride_frames = tiling.temporal_stride
        blend = tiling.temporal - stride_frames
        total = self.decoded_frames(z.shape[2])
        emitted = 0
        previous: torch.Tensor | None = None
        for start in self._temporal_tile_starts(z.shape[2], tiling):
            tile = decode_window(z[:, :, start:start + tile_latents + 1])
            if previous is None:
                keep = stride_frames + 1
            else:
                tile = self._core.blend_t(previous, tile[:, :, 1:], blend)
                keep = stride_frames
            previous = tile
            chunk = tile[:, :, :min(keep, total - emitted)]
            if chunk.shape[2] > 0:
                emitted += chunk.shape[2]
                yield chunk

    # --------------------------------------------------------------------- decode over several ranks

    @torch.no_grad()
    def decode_chunks_shared(self, z: torch.Tensor, tiling: Tiling | None, run_passes: PassRunner
                             ) -> Iterator[torch.Tensor]:
        """:meth:`decode_chunks` with our own tile loop: the same decoder passes (every spatial tile of
        every temporal tile, at diffusers' ``tiled_decode`` positions) handed to ``run_passes`` in order,
        blended as diffusers' ``tiled_decode`` and :meth:`_temporal_tiled_decode` blend them."""
        if z.ndim != 5 or z.shape[1] != self.latent_channels:
            raise ValueError(f"Expected a latent [B, {self.latent_channels}, T, H, W], got {tuple(z.shape)}.")
        tiling = self.reference_tiling() if tiling is None else tiling
        self._configure(tiling, encoding=False)
        z = z.to(self.device, self.dtype) / SCALE_FACTOR + SHIFT_FACTOR
        tile_latents = None if tiling.temporal is None else tiling.temporal // self.temporal_compression
        temporal = tile_latents is not None and z.shape[2] > tile_latents
        windows = ([z[:, :, start:start + tile_latents + 1] for start in self._temporal_tile_starts(z.shape[2], tiling)]
                   if temporal else [z])
        outputs = run_passes(partial(self._decode_pass, tile)
                             for window in windows for row in self._spatial_tiles(window) for tile in row)

        def decode_window(window: torch.Tensor) -> torch.Tensor:
            grid = [[next(outputs) for _tile in row] for row in self._spatial_tiles(window)]
            return self._blend_spatial_tiles(grid, window.shape)

        if temporal:
            yield from self._temporal_tiled_decode(z, tiling, decode_window)
        else:
            yield decode_window(z)

    def _decode_pass(self, latent: torch.Tensor) -> torch.Tensor:
        return self._core.decoder(self._core.post_quant_conv(latent))

    def _spatial_tiles(self, window: torch.Tensor) -> list[list[torch.Tensor]]:
        """The latent tiles of diffusers' ``tiled_decode`` (rows of tiles of ``tile_sample_min`` px every
        ``tile_sample_stride`` px), or the whole window when it decodes untiled."""
        core, s = self._core, self.spatial_compression
        height, width = window.shape[-2:]
        tile_h, tile_w = core.tile_sample_min_height // s, core.tile_sample_min_width // s
        if not core.use_tiling or (height <= tile_h and width <= tile_w):
            return [[window]]
        stride_h, stride_w = core.tile_sample_stride_height // s, core.tile_sample_stride_width // s
        return [[window[..., top:top + tile_h, left:left + tile_w] for left in range(0, width, stride_w)]
                for top in range(0, height, stride_h)]

    def _blend_spatial_tiles(self, grid: list[list[torch.Tensor]], latent_shape: torch.Size) -> torch.Tensor:
        """Decoded tiles -> the window's frames: each tile is cross-faded (in place, in row order) into
        the tile above and the tile on its left with diffusers' ``blend_v`` / ``blend_h``, then every tile's
        first stride of pixels is kept, as diffusers' ``tiled_decode`` does."""
        if len(grid) == 1 and len(grid[0]) == 1:
            return grid[0][0]
        core, s = self._core, self.spatial_compression
        fade_h = core.tile_sample_min_height - core.tile_sample_stride_height
        fade_w = core.tile_sample_min_width - core.tile_sample_stride_width
        keep_h, keep_w = core.tile_sample_stride_height, core.tile_sample_stride_width
        for i, row in enumerate(grid):
            for j in range(len(row)):
                if i > 0:
                    row[j] = core.blend_v(grid[i - 1][j], row[j], fade_h)
                if j > 0:
                    row[j] = core.blend_h(row[j - 1], row[j], fade_w)
        kept = [torch.cat([tile[..., :keep_h, :keep_w] for tile in row], dim=-1) for row in grid]
        return torch.cat(kept, dim=-2)[..., :latent_shape[-2] * s, :latent_shape[-1] * s]

    def _diffusers_decode(self, latent: torch.Tensor) -> torch.Tensor:
        return self._core.decode(latent, return_dict=False)[0]

    def _temporal_tile_starts(self, latent_frames: int, tiling: Tiling) -> list[int]:
        """First latent of every temporal tile :meth:`_temporal_tiled_decode` decodes: every stride,
        stopping at the tile that finishes the video."""
        tile_latents = tiling.temporal // self.temporal_compression
        stride_latents = tiling.temporal_stride // self.temporal_compression
        total = self.decoded_frames(latent_frames)
        emitted = 0
        starts: list[int] = []
        for start in range(0, latent_frames, stride_latents):
            frames = self.decoded_frames(min(tile_latents + 1, latent_frames - start))
            # The first tile keeps stride + 1 frames; later ones drop their first frame and keep stride.
            keep, available = (tiling.temporal_stride + 1, frames) if not starts else (tiling.temporal_stride,
                                                                                         frames - 1)
            starts.append(start)
            emitted += max(0, min(keep, available, total - emitted))
            if emitted >= total:
                break
        return starts

    def decoded_frames(self, latent_frames: int) -> int:
        return decoded_num_frames(latent_frames, self.kind)

    def decode_chunk_count(self, latent_frames: int, tiling: Tiling | None = None) -> int:
        tiling = self.reference_tiling() if tiling is None else tiling
        if tiling.temporal is None or latent_frames <= tiling.temporal // self.temporal_compression:
            return 1
        stride = tiling.temporal_stride
        return max(1, -(-(self.decoded_frames(latent_frames) - 1) // stride))

    def decode_pass_shapes(self, latent_shape: tuple[int, ...], tiling: Tiling | None = None,
                           ) -> list[tuple[int, int, int]]:
        """Latent ``(frames, height, width)`` of every decoder pass of one batch element, in order:
        diffusers' spatial tiles (every stride, cut at the edges) within each temporal tile."""
        tiling = self.reference_tiling() if tiling is None else tiling
        _, _, latent_frames, height, width = latent_shape
        tiles = [(height, width)]
        tile = None if tiling.spatial is None else tiling.spatial // self.spatial_compression
        if tile is not None and (height > tile or width > tile):  # when diffusers' tiled_decode runs
            stride = tiling.spatial_stride // self.spatial_compression
            tiles = [(min(tile, height - top), min(tile, width - left))
                     for top in range(0, height, stride) for left in range(0, width, stride)]
        if tiling.temporal is None or latent_frames <= tiling.temporal // self.temporal_compression:
            frame_counts = [latent_frames]
        else:
            tile_latents = tiling.temporal // self.temporal_compression
            frame_counts = [min(tile_latents + 1, latent_frames - start)
                            for start in self._temporal_tile_starts(latent_frames, tiling)]
        return [(frames, tile_h, tile_w) for frames in frame_counts for tile_h, tile_w in tiles]

    def decode_passes(self, latent_shape: tuple[int, ...], tiling: Tiling | None = None) -> int:
        return len(self.decode_pass_shapes(latent_shape, tiling))

    def pass_work(self, latent_shape: tuple[int, ...], tiling: Tiling | None = None) -> list[int]:
        """Every decoder convolution of each pass, plus its mid-block attention's query blocks."""
        convolutions = len([module for module in work_modules(self.decoder) if not isinstance(module, WorkUnit)])
        return [convolutions + attention_blocks(*shape) for shape in self.decode_pass_shapes(latent_shape, tiling)]

    # ---------------------------------------------------------------------------- memory estimate

    def decode_bytes(self, latent_shape: tuple[int, ...], tiling: Tiling, dtype: torch.dtype) -> int:
        """Peak device bytes of decoding one batch element: the larger of the decoder's full-resolution
        activations for one tile and one query block of the mid-block attention over the tile's tokens,
        plus the decoded frames of one temporal chunk kept for blending."""
        _, _, t, h, w = latent_shape
        item = torch.empty((), dtype=dtype).element_size()
        s = self.spatial_compression
        tile_t = t if tiling.temporal is None else min(t, tiling.temporal // self.temporal_compression + 1)
        tile_h = h if tiling.spatial is None else min(h, tiling.spatial // s)
        tile_w = w if tiling.spatial is None else min(w, tiling.spatial // s)
        tile_frames = self.decoded_frames(tile_t)
        activations = _DECODE_CHANNELS_AT_PEAK * tile_frames * tile_h * s * tile_w * s * item
        tokens = tile_t * tile_h * tile_w
        attention = 3 * min(tokens, ATTENTION_QUERY_BLOCK) * tokens * 4  # one block's scores, softmax (fp32)
        chunk_output = 3 * tile_frames * h * s * w * s * item * 3  # tiles, blended rows, concatenation
        return max(activations, attention) + chunk_output
