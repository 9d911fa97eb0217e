"""Latent spaces of the pack's autoencoders: channels, compression, patch size and the frame-count rule.

These are facts about the autoencoders, so they live with the models; the sampler's size table and
``VideoGeometry`` (samplers/geometry.py) build on them. Each autoencoder model names its space with a
``kind`` class attribute. Facts: docs/reference.md#sizes-and-frames.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class AutoencoderKind:
    """What the diffusion model needs to know about an autoencoder's latent space."""

    name: str
    display_name: str
    latent_channels: int
    temporal_compression: int
    spatial_compression: int
    patch_size: int
    causal: bool  # causal: frames = 4k+1 ; non-causal: frames = 4k

    @property
    def size_divisor(self) -> int:
        """Pixel sizes are rounded to multiples of this (the reference's ``AE_SPATIAL_COMPRESSION``)."""
        return self.spatial_compression * self.patch_size

    @property
    def model_in_channels(self) -> int:
        """Features per packed token: ``latent_channels * patch_size**2`` (64 or 128)."""
        return self.latent_channels * self.patch_size**2


HUNYUAN_VAE = AutoencoderKind(
    name="hunyuan_vae",
    display_name="HunyuanVideo causal VAE (16 ch, 4x8x8)",
    latent_channels=16,
    temporal_compression=4,
    spatial_compression=8,
    patch_size=2,
    causal=True,
)
VIDEO_DC_AE = AutoencoderKind(
    name="dc_ae",
    display_name="Video DC-AE f32t4c128 (128 ch, 4x32x32)",
    latent_channels=128,
    temporal_compression=4,
    spatial_compression=32,
    patch_size=1,
    causal=False,
)
# The t2i2v first frame: Flux's 2-D autoencoder, frame by frame (the reference samples it as a 1-frame latent
# of this shape, the same as the HunyuanVideo VAE's for one frame).
FLUX_AE = AutoencoderKind(
    name="flux_ae",
    display_name="Flux image autoencoder (16 ch, 8x8, per frame)",
    latent_channels=16,
    temporal_compression=1,
    spatial_compression=8,
    patch_size=2,
    causal=True,
)
AUTOENCODERS: dict[str, AutoencoderKind] = {k.name: k for k in (HUNYUAN_VAE, VIDEO_DC_AE, FLUX_AE)}


def autoencoder_kind(name: str) -> AutoencoderKind:
    """Look up an autoencoder kind by name, with an error listing the known ones."""
    try:
        return AUTOENCODERS[name]
    except KeyError:
        raise ValueError(f"Unknown autoencoder kind '{name}'; expected one of {sorted(AUTOENCODERS)}") from None


# ---------------------------------------------------------------------------------- frame counts
#
# The reference accepts any frame count. It draws T = (n - 1) // 4 + 1 latent frames for both
# autoencoders (the high-compression config inherits the causal flag), decodes them and keeps the first
# n frames. The causal HunyuanVideo VAE decodes 4(T - 1) + 1 frames, so n = 16 gives 13 frames; the
# Video DC-AE decodes 4T >= n frames, so it always gives n.


def output_num_frames(num_frames: int, kind: AutoencoderKind) -> int:
    """Frames the reference writes when asked for ``num_frames`` (16 -> 13 for the HunyuanVideo VAE)."""
    if num_frames < 1:
        raise ValueError(f"num_frames={num_frames}: at least 1 frame is needed (1 = an image).")
    return min(num_frames, decoded_num_frames(latent_num_frames(num_frames, kind), kind))


def is_valid_num_frames(num_frames: int, kind: AutoencoderKind) -> bool:
    """Whether the autoencoder decodes exactly ``num_frames`` frames (1 = a single image)."""
    return num_frames >= 1 and output_num_frames(num_frames, kind) == num_frames


def nearest_valid_num_frames(num_frames: int, kind: AutoencoderKind) -> tuple[int, int]:
    """The valid frame counts just below and just above ``num_frames`` (equal when it is valid)."""
    below = max(1, num_frames)
    while not is_valid_num_frames(below, kind):
        below -= 1
    above = max(1, num_frames)
    while not is_valid_num_frames(above, kind):
        above += 1
    return below, above


def check_num_frames(num_frames: int, kind: AutoencoderKind) -> None:
    """Raise a ValueError that names the nearest valid counts if ``num_frames`` is not decodable."""
    if is_valid_num_frames(num_frames, kind):
        return
    below, above = nearest_valid_num_frames(num_frames, kind)
    raise ValueError(
        f"num_frames={num_frames} cannot be produced by the {kind.display_name}: it needs "
        f"{kind.temporal_compression}k+1 frames (or 1 for an image). Nearest valid counts: {below} or {above}."
    )


def latent_num_frames(num_frames: int, kind: AutoencoderKind) -> int:
    """Latent frames T for ``num_frames`` pixel frames: ``(n - 1) // 4 + 1`` (129 -> 33, 128 -> 32, 16 -> 4).

    The reference uses this causal formula for the DC-AE model too (its config keeps the causal flag).
    """
    return (max(1, num_frames) - 1) // kind.temporal_compression + 1


def decoded_num_frames(latent_frames: int, kind: AutoencoderKind) -> int:
    """Pixel frames an autoencoder decodes from ``latent_frames`` latents: ``t(T - 1) + 1`` if causal
    (one latent frame is one image), else ``tT``."""
    t = kind.temporal_compression
    return t * (latent_frames - 1) + 1 if kind.causal else t * latent_frames


def describe_frame_change(num_frames: int, kind: AutoencoderKind) -> str | None:
    """``"16 -> 13 frames (as Open-Sora)"`` when the reference writes fewer frames than asked, else None."""
    written = output_num_frames(num_frames, kind)
    return None if written == num_frames else f"{num_frames} -> {written} frames (as Open-Sora)"
