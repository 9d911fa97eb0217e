"""Configuration of the Open-Sora 2.0 MMDiT (and of the Flux-dev image model it derives from)."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

RopeLayout = Literal["rotate_half", "interleaved"]


@dataclass(frozen=True)
class MMDiTConfig:
    """Sizes and flags of an MMDiT; the defaults are the released 11B Open-Sora 2.0 video model.

    ``rope_layout`` says which dimension pairs RoPE rotates: ``"rotate_half"`` pairs ``(j, j + D/2)``
    (the reference's Liger kernel, used by the Open-Sora weights), ``"interleaved"`` pairs
    ``(2j, 2j + 1)`` (Black Forest Labs' Flux). ``patch_size`` only sets the width of ``cond_in``
    (``in_channels + patch_size**2``: one mask feature per packed pixel plus the latent features).
    """

    in_channels: int = 64
    vec_in_dim: int = 768
    context_in_dim: int = 4096
    hidden_size: int = 3072
    mlp_ratio: float = 4.0
    num_heads: int = 24
    depth: int = 19
    depth_single_blocks: int = 38
    axes_dim: tuple[int, ...] = (16, 56, 56)
    theta: int = 10000
    qkv_bias: bool = True
    guidance_embed: bool = False
    cond_embed: bool = True
    fused_qkv: bool = False
    rope_layout: RopeLayout = "rotate_half"
    patch_size: int = 2

    def __post_init__(self) -> None:
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}")
        if sum(self.axes_dim) != self.head_dim or any(d % 2 for d in self.axes_dim):
            raise ValueError(
                f"axes_dim {tuple(self.axes_dim)} must be even sizes summing to the head dim {self.head_dim}"
            )
        if self.rope_layout not in ("rotate_half", "interleaved"):
            raise ValueError(f"rope_layout must be 'rotate_half' or 'interleaved', not {self.rope_layout!r}")
        object.__setattr__(self, "axes_dim", tuple(int(d) for d in self.axes_dim))

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def mlp_hidden_dim(self) -> int:
        return int(self.hidden_size * self.mlp_ratio)

    @property
    def cond_in_channels(self) -> int:
        """Width of the i2v condition: mask features (``patch_size**2``) + latent features."""
        return self.in_channels + self.patch_size**2

    @property
    def latent_channels(self) -> int:
        """Channels of the unpacked latent (``in_channels / patch_size**2``)."""
        return self.in_channels // self.patch_size**2

    @classmethod
    def video_dc_ae(cls) -> "MMDiTConfig":
        """The high-compression Open-Sora 2.0 model (Video DC-AE latents, 128 channels, patch 1)."""
        return cls(in_channels=128, patch_size=1)

    @classmethod
    def flux_dev(cls) -> "MMDiTConfig":
        """Black Forest Labs' FLUX.1-dev as Open-Sora's t2i2v image step uses it."""
        return cls(guidance_embed=True, cond_embed=False, fused_qkv=True, rope_layout="interleaved")

    def with_changes(self, **changes) -> "MMDiTConfig":
        """A copy with some fields changed."""
        return replace(self, **changes)
