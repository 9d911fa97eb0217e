"""The Open-Sora 2.0 MMDiT (Flux-derived) diffusion transformer, in plain PyTorch."""

from .config import MMDiTConfig, RopeLayout
from .model import BlockInputs, MMDiT

__all__ = ["BlockInputs", "MMDiT", "MMDiTConfig", "RopeLayout"]
