"""Video geometry: the reference's size table and the latent shape a video samples in.

The autoencoders' latent spaces and frame rule are models/latent_space.py; this module adds what sampling
needs on top. Facts: docs/reference.md#sizes-and-frames (size table), docs/reference.md#noise-and-seeds
(latent shape).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from ..models.latent_space import (
    HUNYUAN_VAE,
    AutoencoderKind,
    autoencoder_kind,
    check_num_frames,
    latent_num_frames,
)

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
    """``{"w:h": (height, width)}`` as the reference builds it: inference sizes, or with ``training`` its
    training table (each size nudged by one ``divisor`` step towards the pixel count; ratios whose size
    repeats an earlier one are left out), which sizes the t2i2v first frame (docs/reference.md#sizes-and-frames).

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
            for h, w in ((height - divisor, width), (height + divisor, width), (height, width - divisor),
                         (height, width + divisor)):
                if abs(h * w - total) < diff:
                    height, width, diff = h, w, abs(h * w - total)
            if (height, width) in table.values():
                continue
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


def image_size(resolution: str, aspect_ratio: str, kind: AutoencoderKind = HUNYUAN_VAE,
               training: bool = False) -> tuple[int, int]:
    """Pixel ``(height, width)`` the reference samples for a preset (e.g. 256px 16:9 -> 192x336);
    ``training`` for the t2i2v first frame (see :func:`aspect_ratio_table`).

    Sizes are then rounded up to multiples of 16 as the reference's sanitising does.
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
