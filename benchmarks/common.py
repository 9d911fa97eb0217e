"""Shared pieces of the benchmark scripts: presets, random-weight models, memory readings.

Run the scripts from the pack root (``python benchmarks/step_time.py ...``); they import the pack as
the package ``comfyui_opensora`` the way ComfyUI does (by file path), without ComfyUI.
"""

from __future__ import annotations

import math
import os
import platform
import runpy
import weakref
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

PACK_ROOT = Path(__file__).resolve().parent.parent
import_pack = runpy.run_path(str(PACK_ROOT / "__main__.py"))["import_pack"]  # the pack's one bootstrap
import_pack()
from comfyui_opensora.models.dtypes import compute_dtype, is_fp8  # noqa: E402
from comfyui_opensora.models.fp8 import convert_blocks_to_fp8  # noqa: E402
from comfyui_opensora.models.mmdit import MMDiT, MMDiTConfig  # noqa: E402



@dataclass(frozen=True)
class Preset:
    """A model size and a video size: latent ``[16, T, H', W']`` (before 2x2 packing) and text tokens."""

    config_changes: dict = field(default_factory=dict)
    latent_frames: int = 33
    latent_height: int = 32
    latent_width: int = 32
    text_tokens: int = 512
    note: str = ""

    def config(self) -> MMDiTConfig:
        return MMDiTConfig().with_changes(**self.config_changes)

    @property
    def image_tokens(self) -> int:
        return self.latent_frames * (self.latent_height // 2) * (self.latent_width // 2)


PRESETS = {
    # Small enough for a 2-core CPU: 6 blocks of width 128 (head dim 64), 320 image + 128 text tokens.
    "cpu-small": Preset(dict(hidden_size=128, num_heads=2, depth=2, depth_single_blocks=4, axes_dim=(8, 28, 28),
                             context_in_dim=512),
                        latent_frames=5, latent_height=16, latent_width=16, text_tokens=128,
                        note="width 128, 2+4 blocks, 320 image + 128 text tokens"),
    # The released 11B model at 256x256, 129 frames (33 latent frames of 16x16 tokens = 8,448 tokens).
    "11b-256px": Preset(latent_frames=33, latent_height=32, latent_width=32,
                        note="11B, 256x256, 129 frames: 8,448 image + 512 text tokens"),
    # The released 11B model at 768x768, shortened to 33 frames (9 latent frames of 48x48 = 20,736 tokens).
    "11b-768px-short": Preset(latent_frames=9, latent_height=96, latent_width=96,
                              note="11B, 768x768, 33 frames: 20,736 image + 512 text tokens"),
}

# Checkpoints for the load benchmark: real width (3072, 24 heads), fewer blocks.
LOAD_PRESETS = {
    "wide-1.4gb": MMDiTConfig(depth=1, depth_single_blocks=2),  # 0.68 B parameters, 1.35 GB in bf16
    "wide-3gb": MMDiTConfig(depth=3, depth_single_blocks=4),  # 1.64 B parameters, 3.28 GB in bf16
    "tiny": MMDiTConfig(hidden_size=64, num_heads=4, depth=2, depth_single_blocks=2, axes_dim=(4, 6, 6),
                        vec_in_dim=24, context_in_dim=32),
    "11b": MMDiTConfig(),
}


@torch.no_grad()
def random_model(config: MMDiTConfig, weight_dtype: torch.dtype, device: torch.device | str,
                 seed: int = 0) -> MMDiT:
    """An MMDiT with random weights (std ``0.5/sqrt(fan_in)``, norms 1) made directly on ``device``."""
    store = compute_dtype(weight_dtype)
    with torch.device("meta"):
        model = MMDiT(config).to(store)  # cast while sizes only: the device never holds fp32 weights
    model = model.to_empty(device=device)
    generator = torch.Generator(device=device).manual_seed(seed)
    for name, param in model.named_parameters():
        if name.endswith("scale"):
            param.fill_(1.0)
        elif param.ndim == 2:
            param.normal_(0.0, 0.5 / math.sqrt(param.shape[1]), generator=generator)
        else:
            param.normal_(0.0, 0.02, generator=generator)
    if is_fp8(weight_dtype):
        convert_blocks_to_fp8(model, weight_dtype)
    return model.eval().requires_grad_(False)


def host_memory() -> dict[str, int]:
    """Current and peak resident memory of this process in bytes (``/proc/self/status``)."""
    values = {}
    with open("/proc/self/status") as status:
        for line in status:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
                values[key] = int(rest.split()[0]) * 1024
    return values


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_device_bytes(device: torch.device) -> int | None:
    """Peak allocated device memory since :func:`reset_peak` (None for the CPU: see host memory)."""
    return torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None


def machine_description(device: torch.device) -> str:
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        total = torch.cuda.get_device_properties(device).total_memory / 2**30
        return f"{name} ({total:.0f} GiB), torch {torch.__version__}"
    return f"{platform.processor() or platform.machine()} CPU, {os.cpu_count()} cores, torch {torch.__version__}"


def gib(n: int | None) -> str:
    """Bytes as GiB (MiB below 1 GiB); ``-`` for no reading."""
    if n is None:
        return "-"
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


class LiveStorageBytes(TorchDispatchMode):
    """Bytes of the storages created inside the mode that are still alive, and their peak.

    Works on the meta device too, so activation peaks of released-size models cost no memory.
    """

    def __init__(self, preexisting: list[torch.UntypedStorage]) -> None:
        super().__init__()
        self.tracked = {id(s) for s in preexisting}
        self.live = 0
        self.peak = 0

    def _release(self, key: int, nbytes: int) -> None:
        self.tracked.discard(key)
        self.live -= nbytes

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for tensor in tree_leaves(out):
            if isinstance(tensor, torch.Tensor):
                storage = tensor.untyped_storage()
                if id(storage) not in self.tracked:
                    nbytes = storage.nbytes()
                    self.tracked.add(id(storage))
                    self.live += nbytes
                    self.peak = max(self.peak, self.live)
                    weakref.finalize(storage, self._release, id(storage), nbytes)
        return out
