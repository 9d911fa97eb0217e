"""The Flux image autoencoder (t2i2v first frame) as one of the pack's autoencoders.

The network is diffusers' ``AutoencoderKL`` with the Flux settings (four levels of 128/256/512/512
channels, two ResNet blocks per level, 16 latent channels, 8x spatial compression, no quant convs); it
computes what Black Forest Labs' ``AutoEncoder`` does, which Open-Sora's t2i2v uses. Frames are coded one
by one (``[B, 3, F, H, W]`` -> ``B*F`` images). Latents are scaled like the reference:
``z = 0.3611 * (mean - 0.1159)`` on encode, ``z / 0.3611 + 0.1159`` before decoding.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Iterator

import torch

from .autoencoder import NO_TILING, Tiling, VideoAutoencoder
from .latent_space import FLUX_AE, decoded_num_frames

SCALE = 0.3611
SHIFT = 0.1159


@dataclass(frozen=True)
class FluxAEConfig:
    """The shape-bearing settings (the released file: 128/256/512/512, 2 blocks, 16 latent channels)."""

    block_out_channels: tuple[int, ...] = (128, 256, 512, 512)
    layers_per_block: int = 2
    latent_channels: int = 16
    norm_num_groups: int = 32

    def diffusers_kwargs(self) -> dict:
        levels = len(self.block_out_channels)
        return dict(
            in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * levels,
            up_block_types=("UpDecoderBlock2D",) * levels, use_quant_conv=False, use_post_quant_conv=False,
            scaling_factor=SCALE, shift_factor=SHIFT, **{**asdict(self), "block_out_channels": self.block_out_channels},
        )


class FluxImageAE(VideoAutoencoder):
    """Flux's 2-D KL autoencoder applied per frame, in the pack's autoencoder interface."""

    kind = FLUX_AE
    temporal_compression = FLUX_AE.temporal_compression

    def __init__(self, config: FluxAEConfig = FluxAEConfig()):
        super().__init__()
        from diffusers import AutoencoderKL

        self.config = config
        self.latent_channels = config.latent_channels
        self.spatial_compression = 2 ** (len(config.block_out_channels) - 1)
        self.vae = AutoencoderKL(**config.diffusers_kwargs())

    def file_key(self, key: str) -> str:
        """The released file's name (Black Forest Labs' layout) of a diffusers ``AutoencoderKL`` key."""
        parts = key.split(".")
        if parts[1] in ("down_blocks", "up_blocks"):
            down = parts[1] == "down_blocks"
            level = int(parts[2]) if down else len(self.config.block_out_channels) - 1 - int(parts[2])
            head = f"{parts[0]}.{'down' if down else 'up'}.{level}"
            if parts[3] == "resnets":
                return f"{head}.block.{parts[4]}.{'.'.join(parts[5:]).replace('conv_shortcut', 'nin_shortcut')}"
            return f"{head}.{'downsample' if down else 'upsample'}.{'.'.join(parts[5:])}"
        if parts[1] == "mid_block":
            if parts[2] == "resnets":
                return f"{parts[0]}.mid.block_{int(parts[3]) + 1}.{'.'.join(parts[4:])}"
            names = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out": "proj_out"}
            rest = parts[6:] if parts[4] == "to_out" else parts[5:]
            return f"{parts[0]}.mid.attn_1.{names[parts[4]]}.{'.'.join(rest)}"
        return key.replace("conv_norm_out", "norm_out")

    @staticmethod
    def _frames(x: torch.Tensor) -> tuple[torch.Tensor, int]:
        if x.ndim != 5:
            raise ValueError(f"Expected [batch, channels, frames, height, width], got {tuple(x.shape)}.")
        b, c, f, h, w = x.shape
        return x.permute(0, 2, 1, 3, 4).reshape(b * f, c, h, w), b

    @staticmethod
    def _video(images: torch.Tensor, batch: int) -> torch.Tensor:
        n, c, h, w = images.shape
        return images.reshape(batch, n // batch, c, h, w).permute(0, 2, 1, 3, 4)

    def encode(self, x: torch.Tensor, sample: bool = False, generator: torch.Generator | None = None,
               tiling: Tiling | None = None) -> torch.Tensor:
        images, batch = self._frames(x.to(self.device, self.dtype))
        posterior = self.vae.encode(images).latent_dist
        z = posterior.sample(generator) if sample else posterior.mean
        return self._video(SCALE * (z - SHIFT), batch)

    def decode_chunks(self, z: torch.Tensor, tiling: Tiling | None = None) -> Iterator[torch.Tensor]:
        """One latent frame at a time (for every batch element): the memory of one image per element."""
        if z.ndim != 5:
            raise ValueError(f"Expected [batch, channels, frames, height, width], got {tuple(z.shape)}.")
        z = z.to(self.device, self.dtype)
        for index in range(z.shape[2]):
            yield self.vae.decode(z[:, :, index] / SCALE + SHIFT).sample[:, :, None]

    def reference_tiling(self, temporal: bool = False) -> Tiling:
        return NO_TILING  # the reference decodes the first frame whole

    def decode_bytes(self, latent_shape: tuple[int, ...], tiling: Tiling, dtype: torch.dtype) -> int:
        _, _, _, h, w = latent_shape
        pixels = h * w * self.spatial_compression**2
        widest = max(self.config.block_out_channels)
        return int(pixels * widest * 3 * torch.finfo(dtype).bits // 8)  # a few full-size activations

    def decoded_frames(self, latent_frames: int) -> int:
        return decoded_num_frames(latent_frames, self.kind)

    def decode_chunk_count(self, latent_frames: int, tiling: Tiling | None = None) -> int:
        return latent_frames

    def decode_passes(self, latent_shape: tuple[int, ...], tiling: Tiling | None = None) -> int:
        return latent_shape[2]  # one decoder pass per frame

    @property
    def decoder(self) -> torch.nn.Module:
        """The decoder network: its convolutions are the decode's progress and Cancel points."""
        return self.vae.decoder
