"""Video geometry: autoencoder kinds, the frame-count rule, the size table and latent shapes.

This module is the single home of these concepts; every node, sampler and decoder calls it.
Facts: docs/reference.md#sizes-and-frames (size table, frames), docs/reference.md#noise-and-seeds (latent shape).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

# --------------------------------------------------------------------------------- autoencoders


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
    """Pixel frames an autoencoder decodes from ``latent_frames`` latents."""
    if latent_frames == 1 and kind.causal:
        return 1
    t = kind.temporal_compression
    return t * (latent_frames - 1) + 1 if kind.causal else t * latent_frames


def describe_frame_change(num_frames: int, kind: AutoencoderKind) -> str | None:
    """``"16 -> 13 frames (as Open-Sora)"`` when the reference writes fewer frames than asked, else None."""
    written = output_num_frames(num_frames, kind)
    return None if written == num_frames else f"{num_frames} -> {written} frames (as Open-Sora)"


# ------------------------------------------------------------------------------------ size table

ASPECT_RATIOS = ("2.39:1", "2:1", "16:9", "1.85:1", "9:16", "5:8", "3:2", "4:3", "1:1")  # width:height
# The names offered in menus; any "<N>px" (N*N pixels) or "<N>p" (N*N*16/9 pixels) is accepted.
RESOLUTIONS = ("144p", "240p", "256px", "360p", "480p", "512px", "720p", "768px", "1080p", "1080px")
_RESOLUTION_NAME = re.compile(r"([1-9][0-9]*)(px|p)")


def num_pixels(resolution: str) -> int:
    """Pixel count of a resolution name as the reference reads it: ``"256px"`` -> 256*256,
    ``"720p"`` -> int(720*720/9*16) (the 16:9 frame of that height). A ``"_<setting>"`` tail is ignored."""
    name = resolution.split("_")[0]
    match = _RESOLUTION_NAME.fullmatch(name)
    if match is None:
        raise ValueError(
            f"Invalid resolution '{resolution}': write <N>px (N*N pixels, e.g. 256px, 768px) or <N>p "
            f"(a 16:9 frame N pixels high, e.g. 480p, 720p, 1080p)."
        )
    side = int(match.group(1))
    return side * side if match.group(2) == "px" else int(side * side / 9 * 16)


def aspect_ratio_table(resolution: str, training: bool = False, divisor: int = 16) -> dict[str, tuple[int, int]]:
    """``{"w:h": (height, width)}`` as the reference builds it (``training=False`` for inference sizes).

    Each landscape entry's transpose is added and the transposes override (the reference's order).
    ``divisor`` is the reference's ``AE_SPATIAL_COMPRESSION`` (16, or 32 for the DC-AE model).
    """
    total = num_pixels(resolution)
    table: dict[str, tuple[int, int]] = {}
    transposed: dict[str, tuple[int, int]] = {}
    for ratio in ASPECT_RATIOS:
        w_ratio, h_ratio = map(float, ratio.split(":"))
        width = int(math.sqrt(total * (w_ratio / h_ratio)) // divisor) * divisor
        if width == 0:
            raise ValueError(f"Resolution '{resolution}' is too small for sizes in steps of {divisor} pixels.")
        height = int((total / width) // divisor) * divisor
        if training:
            diff = abs(height * width - total)
            for h, w in (
                (height - divisor, width),
                (height + divisor, width),
                (height, width - divisor),
                (height, width + divisor),
            ):
                if abs(h * w - total) < diff:
                    height, width, diff = h, w, abs(h * w - total)
        if not training or (height, width) not in table.values():
            table[ratio] = (height, width)
            transposed[":".join(ratio.split(":")[::-1])] = (width, height)
    table.update(transposed)
    return table


def all_aspect_ratios() -> list[str]:
    """Every aspect-ratio name of the inference table, landscape first."""
    transposed = [":".join(r.split(":")[::-1]) for r in ASPECT_RATIOS]
    return list(dict.fromkeys([*ASPECT_RATIOS, *transposed]))  # each once (16:9 and 9:16 are both listed)


def round_up(value: int, multiple: int) -> int:
    return int(math.ceil(value / multiple) * multiple)


def image_size(
    resolution: str, aspect_ratio: str, kind: AutoencoderKind = HUNYUAN_VAE, training: bool = False
) -> tuple[int, int]:
    """Pixel ``(height, width)`` the reference samples for a preset (e.g. 256px 16:9 -> 192x336).

    Inference sizes are then rounded up to multiples of 16 as the reference's sanitising does.
    """
    table = aspect_ratio_table(resolution, training=training, divisor=kind.size_divisor)
    if aspect_ratio not in table:
        raise ValueError(f"Aspect ratio '{aspect_ratio}' is not in the table; choose one of {sorted(table)}")
    height, width = table[aspect_ratio]
    return round_up(height, 16), round_up(width, 16)


# ---------------------------------------------------------------------------------- latent shape


@dataclass(frozen=True)
class VideoGeometry:
    """Pixel size, frame count and autoencoder kind of a video; everything else derives from it."""

    height: int
    width: int
    num_frames: int
    autoencoder: str = HUNYUAN_VAE.name

    @property
    def kind(self) -> AutoencoderKind:
        return autoencoder_kind(self.autoencoder)

    @property
    def latent_frames(self) -> int:
        return latent_num_frames(self.num_frames, self.kind)

    @property
    def latent_height(self) -> int:
        k = self.kind
        return k.patch_size * math.ceil(self.height / k.size_divisor)

    @property
    def latent_width(self) -> int:
        k = self.kind
        return k.patch_size * math.ceil(self.width / k.size_divisor)

    def latent_shape(self, batch_size: int = 1) -> tuple[int, int, int, int, int]:
        """``[B, C, T, H', W']`` of the reference's noise (docs/reference.md#noise-and-seeds)."""
        return (
            batch_size,
            self.kind.latent_channels,
            self.latent_frames,
            self.latent_height,
            self.latent_width,
        )

    @property
    def tokens_per_frame(self) -> int:
        """Image tokens per latent frame after patching (the schedule's ``S``)."""
        p = self.kind.patch_size
        return (self.latent_height // p) * (self.latent_width // p)

    def validate(self) -> None:
        """Raise a ValueError that says what to change if the autoencoder cannot produce this video."""
        kind = self.kind
        check_num_frames(self.num_frames, kind)
        for name, value in (("height", self.height), ("width", self.width)):
            if value < kind.size_divisor:
                raise ValueError(f"{name}={value} is too small: at least {kind.size_divisor} pixels are needed.")
            if value % kind.size_divisor:
                raise ValueError(
                    f"{name}={value} is not a multiple of {kind.size_divisor}, which the "
                    f"{kind.display_name} with patch size {kind.patch_size} needs; use "
                    f"{value - value % kind.size_divisor} or {round_up(value, kind.size_divisor)}."
                )
