"""What every video autoencoder of the pack offers: encode to the diffusion model's latent space,
decode back to pixels (optionally in tiles, streamed chunk by chunk), and tiling plans.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, ClassVar, Iterable, Iterator

import torch
from torch import nn

from .latent_space import AutoencoderKind


@dataclass(frozen=True)
class Tiling:
    """How a decode (or encode) is split into overlapping tiles.

    Sizes are in pixels / pixel frames of the decoded video (the reference's ``sample_size`` and
    ``sample_tsize``); ``None`` turns that kind of tiling off. Tiles overlap by ``overlap`` of their size
    and are blended linearly across the overlap, as the reference does. ``causal_chunk`` (instead of
    temporal tiles, for a VAE causal in time) decodes or encodes that many latent frames at a time with a
    carried cache.
    """

    spatial: int | None = None
    temporal: int | None = None
    overlap: float = 0.25
    causal_chunk: int | None = None

    @property
    def spatial_stride(self) -> int | None:
        return None if self.spatial is None else int(self.spatial * (1 - self.overlap))

    @property
    def temporal_stride(self) -> int | None:
        return None if self.temporal is None else int(self.temporal * (1 - self.overlap))


NO_TILING = Tiling()

# Runs decoder passes (each a thunk returning one tile's decoded pixels) and yields their outputs in
# order: a parallel group runs each pass on one of its ranks and gives every rank all outputs
# (``parallel/shared_decode.py``).
PassRunner = Callable[[Iterable[Callable[[], torch.Tensor]]], Iterator[torch.Tensor]]


class VideoAutoencoder(nn.Module):
    """Base class of the pack's video autoencoders.

    Subclasses set the class attributes below and implement :meth:`encode`, :meth:`decode_chunks`,
    :meth:`reference_tiling` and :meth:`decode_bytes` (the memory estimate :meth:`plan_tiling` uses).

    Conventions (the reference's ``model_ae.encode`` / ``decode``):
    - pixels are ``[B, 3, F, H, W]`` in ``[-1, 1]``;
    - latents are ``[B, C, T, H', W']`` in the diffusion model's space, i.e. already scaled (Hunyuan:
      ``0.476986 * z``; DC-AE in the shipped inference config: unscaled); ``decode`` undoes the scaling;
    - inputs are moved to the module's device and dtype; outputs stay on it, in its dtype.
    """

    # The latent space the diffusion model samples in. The compression attributes describe this network
    # (the kind's for released weights; test-sized networks may compress less).
    kind: ClassVar[AutoencoderKind]
    latent_channels: int = 0
    temporal_compression: int = 1
    spatial_compression: int = 1
    # Granularity of tile sizes that keep the tiled output exactly the untiled size.
    spatial_tile_multiple: int = 32
    temporal_tile_multiple: int = 16

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @device.setter
    def device(self, _moved_to: torch.device) -> None:
        """ComfyUI's ModelPatcher assigns ``.device`` after moving a model; the parameters already say where."""

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    def encode(self, x: torch.Tensor, sample: bool = False, generator: torch.Generator | None = None,
               tiling: Tiling | None = None) -> torch.Tensor:
        """Pixels ``[B, 3, F, H, W]`` in [-1, 1] -> scaled latent ``[B, C, T, H', W']``.

        ``sample=False`` returns the posterior mean (deterministic); ``sample=True`` draws from the
        posterior with ``generator`` (seeded sampling). ``tiling=None`` uses :meth:`reference_tiling`.
        """
        raise NotImplementedError

    def decode_chunks(self, z: torch.Tensor, tiling: Tiling | None = None) -> Iterator[torch.Tensor]:
        """Decode a scaled latent, yielding consecutive runs of finished frames ``[B, 3, f, H, W]``.

        Concatenating the chunks along dim 2 gives :meth:`decode`; callers that move each chunk off the
        device as it arrives never hold the whole video there. ``tiling=None`` uses the reference tiling.
        """
        raise NotImplementedError

    def shares_passes(self, tiling: Tiling) -> bool:
        """Whether :meth:`decode_chunks_shared` hands this tiling's decoder passes to its runner (else
        every process decodes everything)."""
        return False

    def decode_chunks_shared(self, z: torch.Tensor, tiling: Tiling | None, run_passes: PassRunner
                             ) -> Iterator[torch.Tensor]:
        """:meth:`decode_chunks` with the decoder passes handed to ``run_passes`` (a parallel group spreads
        them over its ranks), giving the same frames. Autoencoders without a tile loop of their own decode
        everything in this process."""
        return self.decode_chunks(z, tiling)

    def decode(self, z: torch.Tensor, tiling: Tiling | None = None) -> torch.Tensor:
        """Scaled latent ``[B, C, T, H', W']`` -> pixels ``[B, 3, F, H, W]`` (about [-1, 1], not clamped)."""
        return torch.cat(list(self.decode_chunks(z, tiling)), dim=2)

    def reference_tiling(self, temporal: bool = False) -> Tiling:
        """The reference's tile settings (spatial; with ``temporal`` also the temporal tiles of the
        reference's stand-alone VAE config)."""
        raise NotImplementedError

    def causal_chunk_tiling(self) -> Tiling:
        """The ``causal_chunks`` mode's tiling: only autoencoders that are causal in time have one."""
        raise ValueError(f"causal_chunks tiling is for the HunyuanVideo VAE, not the {self.kind.display_name} "
                         "autoencoder: choose reference tiling.")

    def decode_bytes(self, latent_shape: tuple[int, ...], tiling: Tiling, dtype: torch.dtype) -> int:
        """Estimated peak device bytes of decoding one batch element of ``latent_shape`` with ``tiling``."""
        raise NotImplementedError

    def decoded_frames(self, latent_frames: int) -> int:
        """Pixel frames decoded from ``latent_frames`` latent frames."""
        raise NotImplementedError

    def decode_chunk_count(self, latent_frames: int, tiling: Tiling | None = None) -> int:
        """How many chunks :meth:`decode_chunks` yields per batch element."""
        return 1

    def decode_passes(self, latent_shape: tuple[int, ...], tiling: Tiling | None = None) -> int:
        """How many times :meth:`decode_chunks` runs the decoder network for one batch element of
        ``latent_shape`` (one pass per spatial tile of every temporal tile)."""
        raise NotImplementedError

    def pass_work(self, latent_shape: tuple[int, ...], tiling: Tiling | None = None) -> list[int]:
        """Work units (calls of the decoder's :func:`work_modules`) of each decoder pass of one batch
        element, in the order the passes run."""
        return [len(work_modules(self.decoder))] * self.decode_passes(latent_shape, tiling)

    def decode_work(self, latent_shape: tuple[int, ...], tiling: Tiling | None = None) -> int:
        """Work units of decoding one batch element: the progress total of :func:`decode_to_frames`'s
        ``on_work``."""
        return sum(self.pass_work(latent_shape, tiling))

    def plan_tiling(self, latent_shape: tuple[int, ...], budget_bytes: int) -> Tiling:
        """The least-tiled setting whose estimated decode fits ``budget_bytes``.

        Tries, in order: no tiling; spatial tiles from the full size down to the reference's size; the
        reference's spatial size with temporal tiles from long to short; the shortest temporal tiles
        with spatial tiles below the reference's size. Returns the smallest tiles if nothing fits.
        """
        _, _, t, h, w = latent_shape
        reference = self.reference_tiling().spatial or 0
        spatial = [None] + _descending_multiples(max(h, w) * self.spatial_compression, self.spatial_tile_multiple, 4)
        temporal = _descending_multiples(self.decoded_frames(t), self.temporal_tile_multiple, 1)
        large = [size for size in spatial if size is None or size >= reference]
        small = [size for size in spatial if size is not None and size < reference]
        shortest = temporal[-1] if temporal else None
        candidates = ([Tiling(size) for size in large] + [Tiling(large[-1], frames) for frames in temporal]
                      + [Tiling(size, shortest) for size in small])
        for tiling in candidates:
            if self.decode_bytes(latent_shape, tiling, self.dtype) <= budget_bytes:
                return tiling
        return candidates[-1]


TILING_MODES: tuple[str, ...] = ("reference", "reference_temporal", "none", "memory_budget", "causal_chunks")
# The modes an encode offers: memory_budget plans decodes only, and the reference encodes without temporal tiles.
ENCODE_TILING_MODES: tuple[str, ...] = ("reference", "none", "causal_chunks")
# Share of the free memory a memory-budget decode plans to use (the rest absorbs allocator overhead).
BUDGET_SHARE = 0.8


def choose_tiling(autoencoder: VideoAutoencoder, mode: str, latent_shape: tuple[int, ...] | None = None,
                  free_bytes: int | None = None) -> Tiling:
    """The tiling of a mode: ``reference`` (the reference's spatial tiles), ``reference_temporal``
    (spatial and temporal tiles of the reference's VAE config), ``none``, ``memory_budget`` (the least
    tiling whose decode estimate for ``latent_shape`` fits ``BUDGET_SHARE`` of ``free_bytes``) or
    ``causal_chunks`` (the reference's spatial tiles, run a few latent frames at a time with a causal
    cache)."""
    if mode == "reference":
        return autoencoder.reference_tiling(temporal=False)
    if mode == "reference_temporal":
        return autoencoder.reference_tiling(temporal=True)
    if mode == "none":
        return NO_TILING
    if mode == "memory_budget":
        if latent_shape is None or free_bytes is None:
            raise ValueError("memory_budget tiling needs the latent's shape and the free device memory.")
        return autoencoder.plan_tiling(latent_shape, int(free_bytes * BUDGET_SHARE))
    if mode == "causal_chunks":
        return autoencoder.causal_chunk_tiling()
    raise ValueError(f"Unknown tiling mode {mode!r}; choose one of {list(TILING_MODES)}.")


class WorkUnit(nn.Module):
    """A module that is one unit of an autoencoder's work besides its convolutions (e.g. a block of
    attention rows): :func:`work_modules` includes it, so progress and Cancel reach inside long ops."""


def work_modules(network: nn.Module) -> list[nn.Module]:
    """The convolutions and :class:`WorkUnit` modules of an encoder or decoder. Together they are nearly all
    of its work, so a callback after each one moves progress and checks Cancel at a fine, even grain (a
    fraction of a second on a GPU; on a CPU the largest full-resolution ones of a big tile take seconds)."""
    return [module for module in network.modules() if isinstance(module, (nn.Conv2d, nn.Conv3d, WorkUnit))]


@contextmanager
def reporting_work(modules: Iterable[nn.Module], callback: Callable[[], None] | None) -> Iterator[None]:
    """Call ``callback()`` after every forward of ``modules`` while the block runs (progress, Cancel:
    an exception it raises stops the network there). The hooks are removed on exit, also on errors."""
    if callback is None:
        yield
        return
    handles = [module.register_forward_hook(lambda *_: callback()) for module in modules]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def _descending_multiples(limit: int, multiple: int, smallest_factor: int) -> list[int]:
    """Multiples of ``multiple`` below ``limit``, largest first, down to ``smallest_factor * multiple``."""
    top = (limit - 1) // multiple
    return [k * multiple for k in range(top, smallest_factor - 1, -1)]


def to_unit_range(video: torch.Tensor) -> torch.Tensor:
    """Decoder output in [-1, 1] -> [0, 1] as the reference's saver computes it (clamp, then (x+1)/2,
    in the decoder's dtype), returned as float32."""
    return ((video.clamp(-1, 1) + 1) / 2).float()


def decode_to_frames(
    autoencoder: VideoAutoencoder,
    samples: torch.Tensor,
    num_frames: int,
    height: int,
    width: int,
    tiling: Tiling | None,
    out_device: torch.device,
    on_work: Callable[[], None] | None = None,
    run_passes: PassRunner | None = None,
) -> torch.Tensor:
    """Decode every batch element and return frames ``[B*num_frames, height, width, 3]`` in [0, 1].

    Batch elements are decoded one at a time and each chunk of finished frames is written into the
    result on ``out_device`` as it arrives; frames beyond ``num_frames`` (and pixels beyond
    ``height``/``width``) are cut. ``on_work`` is called after every decoder convolution (progress,
    Cancel), :meth:`VideoAutoencoder.decode_work` times per batch element. With ``run_passes`` the
    decoder passes go through it (:meth:`VideoAutoencoder.decode_chunks_shared`); ``on_work`` then
    counts this process's passes only.
    """
    if samples.shape[0] == 0:
        raise ValueError("The latent batch is empty: there is nothing to decode.")
    frames = torch.empty((samples.shape[0] * num_frames, height, width, 3), dtype=torch.float32, device=out_device)
    for index, element in enumerate(samples.split(1)):
        kept = 0
        with reporting_work(work_modules(autoencoder.decoder), on_work):
            chunks = (autoencoder.decode_chunks(element, tiling) if run_passes is None
                      else autoencoder.decode_chunks_shared(element, tiling, run_passes))
            for chunk in chunks:
                take = min(chunk.shape[2], num_frames - kept)
                if take > 0:
                    start = index * num_frames + kept
                    pixels = chunk[0, :, :take, :height, :width].to(out_device)
                    frames[start:start + take] = to_unit_range(pixels).permute(1, 2, 3, 0)
                    kept += take
                del chunk
        if kept < num_frames:
            hint = (
                " With these temporal tiles the last tile holds a single latent frame, which the reference's "
                "tiling decodes to one frame: decode without temporal tiling, or choose another frame count."
                if tiling is not None and tiling.temporal is not None
                else ""
            )
            raise ValueError(f"The latent decodes to {kept} frames but {num_frames} were requested.{hint}")
    return frames
