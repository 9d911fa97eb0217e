"""Video DC-AE (``dc-ae-f32t4c128``), Open-Sora 2.0's high-compression autoencoder, in plain PyTorch."""

from .config import DCAEConfig, dc_ae_config_from_shapes
from .model import VideoDCAE

__all__ = ["DCAEConfig", "VideoDCAE", "dc_ae_config_from_shapes"]
