"""Import pieces of the official Open-Sora code from a checkout, for side-by-side benchmarks.

The official package imports ColossalAI, mmengine and training utilities at package level; the
inference modules measured here need none of them. This module registers light stand-ins for those
package-level imports (a registry whose decorator returns its argument, gradient checkpointing that
just calls the module) and imports the measured files straight from the checkout, unmodified.
Nothing of the official code is copied into the pack: pass the checkout with ``--reference``.
"""

from __future__ import annotations

import importlib
import sys
import types
from pathlib import Path

import torch


def _package(name: str, path: Path) -> None:
    """Register ``name`` as a package whose submodules load from ``path`` without its ``__init__``."""
    if name not in sys.modules:
        module = types.ModuleType(name)
        module.__path__ = [str(path)]
        sys.modules[name] = module


def _stub(name: str, **attributes) -> None:
    module = types.ModuleType(name)
    module.__dict__.update(attributes)
    sys.modules[name] = module


class _Registry:
    def register_module(self, *args, **kwargs):
        return lambda obj: obj


def install(checkout: str | Path) -> Path:
    """Make ``opensora.models.hunyuan_vae`` importable from ``checkout`` (a git checkout of
    hpcaitech/Open-Sora). Returns the package directory."""
    root = Path(checkout).resolve() / "opensora"
    if not (root / "models" / "hunyuan_vae").is_dir():
        raise FileNotFoundError(f"{checkout} is not an Open-Sora checkout (no opensora/models/hunyuan_vae).")
    for name in ("opensora", "opensora.models", "opensora.models.hunyuan_vae", "opensora.models.vae",
                 "opensora.utils", "opensora.acceleration"):
        _package(name, root.joinpath(*name.split(".")[1:]))
    _stub("opensora.registry", MODELS=_Registry())
    _stub("opensora.utils.ckpt", load_checkpoint=lambda model, *a, **k: model)
    _stub("opensora.acceleration.checkpoint",
          auto_grad_checkpoint=lambda module, *args, **kwargs: module(*args, **kwargs),
          checkpoint=lambda function, *args, **kwargs: function(*args))
    return root


def reference_hunyuan_vae(checkout: str | Path, state_dict: dict[str, torch.Tensor], dtype: torch.dtype,
                          spatial_tiling: bool, temporal_tiling: bool) -> torch.nn.Module:
    """The official ``AutoencoderKLCausal3D`` (released widths) with ``state_dict`` loaded strictly."""
    install(checkout)
    official = importlib.import_module("opensora.models.hunyuan_vae.autoencoder_kl_causal_3d")
    config = official.AutoEncoder3DConfig(from_pretrained=None, use_spatial_tiling=spatial_tiling,
                                          use_temporal_tiling=temporal_tiling)
    model = official.AutoencoderKLCausal3D(config)
    model.load_state_dict(state_dict, strict=True)
    return model.to(dtype).eval()
