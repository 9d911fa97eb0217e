"""Frames that look like decoder output, and container tags read back with ffmpeg (media and Save Video tests)."""

from __future__ import annotations

import math
import subprocess
from pathlib import Path

import torch

from comfyui_opensora.media import writers as media


def smooth_frames(frames: int, height: int, width: int) -> torch.Tensor:
    """Smooth moving colour gradients: the kind of content a video decoder produces."""
    y = torch.linspace(0, 1, height)[:, None]
    x = torch.linspace(0, 1, width)[None, :]
    out = []
    for f in range(frames):
        phase = 2 * math.pi * f / frames
        red = 0.5 + 0.4 * torch.sin(2 * math.pi * x + phase) * torch.cos(math.pi * y)
        green = 0.5 + 0.4 * torch.cos(math.pi * (x + y) - phase)
        blue = 0.6 * x + 0.3 * y + 0.05 * math.sin(phase)
        out.append(torch.stack(torch.broadcast_tensors(red, green, blue), dim=-1))
    return torch.stack(out).clamp(0, 1)


def ffmpeg_metadata(path: Path) -> dict[str, str]:
    """Container tags read back with ``ffmpeg -i file -f ffmetadata -`` (unescaped)."""
    text = subprocess.run(
        [media.ffmpeg_exe(), "-v", "error", "-i", str(path), "-f", "ffmetadata", "-"],
        capture_output=True, text=True, check=True,
    ).stdout
    tags: dict[str, str] = {}
    key: list[str] = []
    value: list[str] = []
    current = key
    chars = iter(text.split("\n", 1)[1])  # skip the ";FFMETADATA1" header
    for char in chars:
        if char == "\\":
            current.append(next(chars))
        elif char == "=" and current is key:
            current = value
        elif char == "\n":
            tags["".join(key)] = "".join(value)
            key, value = [], []
            current = key
        else:
            current.append(char)
    return tags
