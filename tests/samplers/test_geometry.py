"""samplers/geometry.py: resolution names and the inference size table as the reference computes them.
The expected values come from the reference's formulas, restated here on their own."""

from __future__ import annotations

import math

import pytest

from comfyui_opensora.models.latent_space import AUTOENCODERS
from comfyui_opensora.samplers import geometry

BASE_RATIOS = ["2.39:1", "2:1", "16:9", "1.85:1", "9:16", "5:8", "3:2", "4:3", "1:1"]
NAMES = [*geometry.RESOLUTIONS, "100px", "200p", "333p", "540p", "1000px", "1234p", "2160p", "256px_max"]


def reference_pixels(name: str) -> int:
    """``<N>px`` = N*N pixels; ``<N>p`` = int(N*N/9*16); anything after '_' is a setting."""
    name = name.split("_")[0]
    if name.endswith("px"):
        return int(name[:-2]) ** 2
    return int(int(name[:-1]) ** 2 / 9 * 16)


def reference_inference_size(name: str, ratio: str, divisor: int) -> tuple[int, int]:
    """(height, width) of the inference table (no +-divisor search), swapped entries winning, then
    rounded up to 16 as the sampling option's sanitising does."""
    total = reference_pixels(name)
    entries: dict[str, tuple[int, int]] = {}
    swapped: dict[str, tuple[int, int]] = {}
    for base in BASE_RATIOS:
        w, h = (float(x) for x in base.split(":"))
        width = math.floor(math.sqrt(total * w / h) / divisor) * divisor
        height = math.floor(total / width / divisor) * divisor
        entries[base] = (height, width)
        a, b = base.split(":")
        swapped[f"{b}:{a}"] = (width, height)
    height, width = {**entries, **swapped}[ratio]
    return math.ceil(height / 16) * 16, math.ceil(width / 16) * 16


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("kind", list(AUTOENCODERS.values()), ids=list(AUTOENCODERS))
def test_every_name_and_ratio_has_the_reference_size(name, kind):
    for ratio in geometry.all_aspect_ratios():
        expected = reference_inference_size(name, ratio, kind.size_divisor)
        assert geometry.image_size(name, ratio, kind) == expected, (name, ratio)


@pytest.mark.parametrize("name, ratio, size", [
    ("720p", "16:9", (720, 1280)), ("1080p", "16:9", (1072, 1920)), ("480p", "16:9", (480, 848)),
    ("256px", "16:9", (192, 336)), ("768px", "16:9", (576, 1024)), ("768px", "4:3", (656, 880)),
    ("768px", "2:1", (544, 1072)), ("256px", "2.39:1", (160, 384)), ("720p", "9:16", (1280, 720)),
])
def test_known_sizes(name, ratio, size):
    assert geometry.image_size(name, ratio) == size


def test_menu_names_and_each_ratio_once():
    assert geometry.RESOLUTIONS == ("144p", "240p", "256px", "360p", "480p", "512px", "720p", "768px", "1080p",
                                    "1080px")
    ratios = geometry.all_aspect_ratios()
    assert len(ratios) == len(set(ratios)) == 15
    assert set(ratios) == set(geometry.aspect_ratio_table("256px"))


@pytest.mark.parametrize("bad", ["720", "hd", "0p", "-5px", "p", "720i", "12.5px"])
def test_bad_resolution_names_say_what_to_write(bad):
    with pytest.raises(ValueError, match=r"<N>px .*<N>p"):
        geometry.image_size(bad, "16:9")


def test_too_small_resolution_is_refused():
    with pytest.raises(ValueError, match="too small"):
        geometry.image_size("10px", "2.39:1")
