"""HunyuanVideo causal 3-D VAE as Open-Sora 2.0 uses it.

The network is diffusers' ``AutoencoderKLHunyuanVideo``, whose state dict has exactly the keys of the
official ``hunyuan_vae.safetensors``. This module owns only the glue the reference adds around it
(docs/reference.md#hunyuan-vae): the latent scaling ``0.476986 * (z - 0)``, the reference's tile settings
(spatial 256 px, temporal 64+1 frames, overlap 0.25), streamed decoding, the configuration read off a
checkpoint's tensor shapes, and thin subclasses of diffusers' blocks: same parameters, a forward that
keeps the activations' memory layout (faster on the CPU), attends in frame-causal query blocks, or runs
in causal chunks (:mod:`.hunyuan_causal_chunks`).
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
    HunyuanVideoEncoder3D,
    HunyuanVideoMidBlock3D,
    HunyuanVideoResnetBlockCausal3D,
    HunyuanVideoUpsampleCausal3D,
)

from .autoencoder import PassRunner, Tiling, VideoAutoencoder, WorkUnit
from .hunyuan_causal_chunks import decode_in_chunks, encode_in_chunks, work_per_chunk
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
# causal_chunks: latent frames per chunk of the decoder's tail (2: 5 pixel frames, then 8 at a time), and
# the tail's causal cache in channel-equivalents per output pixel (2 frames of every tail convolution's
# input at the released widths: 1856 channels at full resolution, times 2).
CAUSAL_CHUNK_LATENTS = 2
_CAUSAL_CACHE_CHANNELS = 3712
# A chunk's activations per pixel-frame: above _DECODE_CHANNELS_AT_PEAK for the cache concatenation and
# padding copies (benchmarks/vae_decode_memory.py live bytes: 1.45 GiB for 33 frames at 192x336, bf16).
_CHUNK_CHANNELS_AT_PEAK = 1500
# The head over all frames: about four 512-channel activations at twice the latent resolution, i.e. 128
# channel-equivalents per output pixel and latent frame.
_HEAD_CHANNELS_PER_LATENT_FRAME = 128


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
        # One layer per statement: rebinding frees each activation as soon as the next exists (a nested
        # call would keep conv1's output alive through conv2: one more full-size activation at the peak).
        residual = hidden_states if self.conv_shortcut is None else self.conv_shortcut(hidden_states)
        hidden_states = self.norm1(hidden_states)
        hidden_states = self.nonlinearity(hidden_states)
        hidden_states = self.conv1(hidden_states)
        hidden_states = self.norm2(hidden_states)
        hidden_states = self.nonlinearity(hidden_states)
        hidden_states = self.dropout(hidden_states)
        hidden_states = self.conv2(hidden_states)
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
    (``rows`` is attached by :func:`_use_pack_blocks`; it holds no parameters)."""

    rows: AttentionRows

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        hidden_states = self.resnets[0](hidden_states)
        for attn, resnet in zip(self.attentions, self.resnets[1:]):
            if attn is not None:
                hidden_states = frame_causal_attention(attn, hidden_states, self.rows)
            hidden_states = resnet(hidden_states)
        return hidden_states


class _Encoder(HunyuanVideoEncoder3D):
    """diffusers' encoder; with ``causal_chunk`` latent frames set (by the VAE's tiling, like diffusers'
    own tile attributes) it runs in causal chunks (:func:`.hunyuan_causal_chunks.encode_in_chunks`), also
    inside diffusers' spatial tile loop."""

    causal_chunk: int | None = None

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        if self.causal_chunk is None:
            return super().forward(hidden_states)
        return encode_in_chunks(self, hidden_states, self.causal_chunk)


def _use_pack_blocks(network: torch.nn.Module) -> None:
    """Swap diffusers' encoder, resnet, upsampler and mid-block classes in ``network`` for the ones above
    (same parameters and state-dict keys; only ``forward`` differs)."""
    for module in list(network.modules()):
        if type(module) is HunyuanVideoEncoder3D:
            module.__class__ = _Encoder
        elif type(module) is HunyuanVideoResnetBlockCausal3D:
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
        _use_pack_blocks(core)
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

    def causal_chunk_tiling(self) -> Tiling:
        return Tiling(spatial=REFERENCE_SPATIAL_TILE, overlap=REFERENCE_OVERLAP, causal_chunk=CAUSAL_CHUNK_LATENTS)

    def _configure(self, tiling: Tiling, encoding: bool) -> None:
        """Set the diffusers object's tile attributes (and the encoder's causal chunk) to ``tiling``.
        Encodes use diffusers' temporal tiling; decodes do their own (:meth:`_temporal_tiled_decode`,
        which streams) and their own causal chunks (:meth:`_causal_chunked_decode`)."""
        if tiling.spatial is not None and tiling.spatial % self.spatial_tile_multiple:
            raise ValueError(
                f"Spatial tile size {tiling.spatial} px is not a multiple of {self.spatial_tile_multiple}; "
                "other sizes would change the decoded size."
            )
        if tiling.temporal is not None and tiling.temporal % self.temporal_tile_multiple:
            raise ValueError(
                f"Temporal tile size {tiling.temporal} frames is not a multiple of {self.temporal_tile_multiple}."
            )
        if tiling.causal_chunk is not None and tiling.temporal is not None:
            raise ValueError("Causal chunks replace temporal tiles: set one of the two.")
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
        self.encoder.causal_chunk = tiling.causal_chunk if encoding else None
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
        if tiling.causal_chunk is not None:
            yield from self._causal_chunked_decode(z, tiling)
            return
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

    def shares_passes(self, tiling: Tiling) -> bool:
        return tiling.causal_chunk is None  # causal chunks carry a cache from pass to pass

    @torch.no_grad()
    def decode_chunks_shared(self, z: torch.Tensor, tiling: Tiling | None, run_passes: PassRunner
                             ) -> Iterator[torch.Tensor]:
        """:meth:`decode_chunks` with our own tile loop: the same decoder passes (every spatial tile of
        every temporal tile, at diffusers' ``tiled_decode`` positions) handed to ``run_passes`` in order,
        blended as diffusers' ``tiled_decode`` and :meth:`_temporal_tiled_decode` blend them."""
        tiling = self.reference_tiling() if tiling is None else tiling
        if not self.shares_passes(tiling):
            yield from self.decode_chunks(z, tiling)
            return
        if z.ndim != 5 or z.shape[1] != self.latent_channels:
            raise ValueError(f"Expected a latent [B, {self.latent_channels}, T, H, W], got {tuple(z.shape)}.")
        self._configure(tiling, encoding=False)
        z = z.to(self.device, self.dtype) / SCALE_FACTOR + SHIFT_FACTOR
        tile_latents = None if tiling.temporal is None else tiling.temporal // self.temporal_compression
        temporal = tile_latents is not None and z.shape[2] > tile_latents
        windows = ([z[:, :, start:start + tile_latents + 1] for start in self._temporal_tile_starts(z.shape[2], tiling)]
                   if temporal else [z])
        outputs = run_passes(partial(self._decode_pass, tile)
                             for window in windows for row in self._spatial_tiles(window, tiling) for tile in row)

        def decode_window(window: torch.Tensor) -> torch.Tensor:
            grid = [[next(outputs) for _tile in row] for row in self._spatial_tiles(window, tiling)]
            return self._blend_tiles(grid, tiling, window.shape[3] * self.spatial_compression,
                                     window.shape[4] * self.spatial_compression)

        if temporal:
            yield from self._temporal_tiled_decode(z, tiling, decode_window)
        else:
            yield decode_window(z)

    def _decode_pass(self, latent: torch.Tensor) -> torch.Tensor:
        return self._core.decoder(self._core.post_quant_conv(latent))

    def _spatial_tiles(self, window: torch.Tensor, tiling: Tiling) -> list[list[torch.Tensor]]:
        """The latent tiles of :meth:`_spatial_tile_offsets`, row by row."""
        if tiling.spatial is None:
            return [[window]]
        size = tiling.spatial // self.spatial_compression
        return [[window[..., i:i + size, j:j + size] for i, j in row]
                for row in self._spatial_tile_offsets(window.shape[3], window.shape[4], tiling)]

    def _diffusers_decode(self, latent: torch.Tensor) -> torch.Tensor:
        return self._core.decode(latent, return_dict=False)[0]

    def _causal_chunked_decode(self, z: torch.Tensor, tiling: Tiling) -> Iterator[torch.Tensor]:
        """The reference's spatial tiles (where the frame exceeds one), each decoded in causal chunks
        (:mod:`.hunyuan_causal_chunks`). With one tile every chunk streams out; with several, all tiles but
        the last are decoded to pixels first (the reference also holds every tile's pixels) and the last
        one streams, each of its chunks blended with the same frames of the others."""
        rows = self._spatial_tiles(z, tiling)

        def chunks_of(tile: torch.Tensor) -> Iterator[torch.Tensor]:
            return decode_in_chunks(self.decoder, self.post_quant_conv(tile), tiling.causal_chunk)

        if len(rows) == 1 and len(rows[0]) == 1:
            yield from chunks_of(rows[0][0])
            return
        *held, last = [tile for row in rows for tile in row]
        done = [torch.cat(list(chunks_of(tile)), dim=2) for tile in held]
        frame = 0
        for chunk in chunks_of(last):
            frames = slice(frame, frame + chunk.shape[2])
            pieces = iter([pixels[:, :, frames] for pixels in done] + [chunk])
            grid = [[next(pieces) for _tile in row] for row in rows]
            yield self._blend_tiles(grid, tiling, z.shape[3] * self.spatial_compression,
                                    z.shape[4] * self.spatial_compression)
            frame = frames.stop

    def _spatial_tile_offsets(self, height: int, width: int, tiling: Tiling) -> list[list[tuple[int, int]]]:
        """Latent ``(row, column)`` of every spatial tile, row by row, where diffusers' ``tiled_decode``
        would tile (a latent larger than one tile); one tile at ``(0, 0)`` otherwise."""
        size = None if tiling.spatial is None else tiling.spatial // self.spatial_compression
        if size is None or (height <= size and width <= size):
            return [[(0, 0)]]
        stride = tiling.spatial_stride // self.spatial_compression
        return [[(i, j) for j in range(0, width, stride)] for i in range(0, height, stride)]

    def _blend_tiles(self, rows: list[list[torch.Tensor]], tiling: Tiling, height: int, width: int) -> torch.Tensor:
        """Decoded tiles (the same frames of each) -> one picture, blended as diffusers' ``tiled_decode``
        (in place on the tiles, in the same order, so whole-video tiles give its exact result)."""
        if len(rows) == 1 and len(rows[0]) == 1:
            return rows[0][0]
        stride, blend = tiling.spatial_stride, tiling.spatial - tiling.spatial_stride
        joined = []
        for i, row in enumerate(rows):
            pieces = []
            for j, tile in enumerate(row):
                if i > 0:
                    tile = self._core.blend_v(rows[i - 1][j], tile, blend)
                if j > 0:
                    tile = self._core.blend_h(row[j - 1], tile, blend)
                pieces.append(tile[:, :, :, :stride, :stride])
            joined.append(torch.cat(pieces, dim=-1))
        return torch.cat(joined, dim=3)[:, :, :, :height, :width]

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
        if tiling.causal_chunk is not None:
            return -(-latent_frames // tiling.causal_chunk)
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
        size = max(height, width) if tiling.spatial is None else tiling.spatial // self.spatial_compression
        tiles = [(min(size, height - top), min(size, width - left))
                 for row in self._spatial_tile_offsets(height, width, tiling) for top, left in row]
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
        """Every decoder convolution of each pass, plus its mid-block attention's query blocks (causal
        chunks: the tail's convolutions once per chunk)."""
        tiling = self.reference_tiling() if tiling is None else tiling
        once, per_chunk = work_per_chunk(self.decoder)  # head and tail: together every convolution
        chunks = 1 if tiling.causal_chunk is None else self.decode_chunk_count(latent_shape[2], tiling)
        convolutions = once + per_chunk * chunks
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
        tokens = tile_t * tile_h * tile_w
        attention = 3 * min(tokens, ATTENTION_QUERY_BLOCK) * tokens * 4  # one block's scores, softmax (fp32)
        if tiling.causal_chunk is not None:
            return self._causal_chunk_bytes(latent_shape, tiling, tile_h * tile_w, item, attention)
        activations = _DECODE_CHANNELS_AT_PEAK * tile_frames * tile_h * s * tile_w * s * item
        chunk_output = 3 * tile_frames * h * s * w * s * item * 3  # tiles, blended rows, concatenation
        return max(activations, attention) + chunk_output

    def _causal_chunk_bytes(self, latent_shape: tuple[int, ...], tiling: Tiling, tile_latents: int,
                            item: int, attention: int) -> int:
        """:meth:`decode_bytes` of a causal-chunk decode: the larger of the head over all frames of a tile
        (its attention, or about four 512-channel activations at twice the latent resolution) and one tail
        chunk with the cache, plus the decoded pixels of the tiles held for blending."""
        _, _, t, h, w = latent_shape
        pixels_per_latent = self.spatial_compression ** 2
        head = max(attention, _HEAD_CHANNELS_PER_LATENT_FRAME * t * tile_latents * pixels_per_latent * item)
        chunk_frames = tiling.causal_chunk * self.temporal_compression
        tail = ((_CHUNK_CHANNELS_AT_PEAK * chunk_frames + _CAUSAL_CACHE_CHANNELS) * tile_latents * pixels_per_latent
                * item)
        tiled = tile_latents < h * w
        held = 3 * self.decoded_frames(t) * h * w * pixels_per_latent * item * (2 if tiled else 1)
        return max(head, tail) + held
