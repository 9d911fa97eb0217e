"""Building blocks of the MMDiT: embedders, QK-RMSNorm, modulation, double/single stream blocks.

Module and parameter names follow the official checkpoints, so ``state_dict()`` keys match them.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .attention import attention
from .config import MMDiTConfig
from .rope import RopeTables, apply_rope


def timestep_embedding(t: torch.Tensor, dim: int = 256, max_period: int = 10000,
                       time_factor: float = 1000.0) -> torch.Tensor:
    """Sinusoidal embedding ``[cos, sin]`` of ``time_factor * t`` (``[N]`` -> ``[N, dim]``).

    ``time_factor * t`` is rounded in ``t``'s dtype and the result is cast back to it, as the
    reference does: with bf16 timesteps, t=0.996453 becomes 996.0.
    """
    t = time_factor * t
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32) / half).to(t.device)
    args = t[:, None].float() * freqs[None]
    embedding = torch.cat((torch.cos(args), torch.sin(args)), dim=-1)
    return embedding.to(t.dtype) if t.is_floating_point() else embedding


class MLPEmbedder(nn.Module):
    """Linear -> SiLU -> Linear."""

    def __init__(self, in_dim: int, hidden_dim: int):
        super().__init__()
        self.in_layer = nn.Linear(in_dim, hidden_dim)
        self.out_layer = nn.Linear(hidden_dim, hidden_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out_layer(F.silu(self.in_layer(x)))


class RMSNorm(nn.Module):
    """RMSNorm over the last dim, eps 1e-6: rstd in float32, normalised value cast back before the scale."""

    def __init__(self, dim: int):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        normed = x32 * torch.rsqrt(x32.pow(2).mean(dim=-1, keepdim=True) + 1e-6)
        return normed.to(x.dtype) * self.scale


class QKNorm(nn.Module):
    def __init__(self, head_dim: int):
        super().__init__()
        self.query_norm = RMSNorm(head_dim)
        self.key_norm = RMSNorm(head_dim)


def _heads(x: torch.Tensor, num_heads: int) -> torch.Tensor:
    """``[B, L, H*D]`` -> ``[B, H, L, D]``."""
    return x.unflatten(-1, (num_heads, -1)).transpose(1, 2)


def _normed_heads(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, norm: QKNorm, num_heads: int
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    q, k, v = _heads(q, num_heads), _heads(k, num_heads), _heads(v, num_heads)
    return norm.query_norm(q).to(v.dtype), norm.key_norm(k).to(v.dtype), v


class SelfAttention(nn.Module):
    """Projections of one stream of a double block: q/k/v (split or fused ``qkv``), QK norm, output proj."""

    def __init__(self, config: MMDiTConfig):
        super().__init__()
        dim, bias = config.hidden_size, config.qkv_bias
        self.num_heads = config.num_heads
        self.fused_qkv = config.fused_qkv
        if self.fused_qkv:
            self.qkv = nn.Linear(dim, 3 * dim, bias=bias)
        else:
            self.q_proj = nn.Linear(dim, dim, bias=bias)
            self.k_proj = nn.Linear(dim, dim, bias=bias)
            self.v_proj = nn.Linear(dim, dim, bias=bias)
        self.norm = QKNorm(config.head_dim)
        self.proj = nn.Linear(dim, dim)

    def qkv_heads(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Normalised ``q, k`` and ``v``, each ``[B, H, L, D]``."""
        if self.fused_qkv:
            q, k, v = self.qkv(x).chunk(3, dim=-1)
        else:
            q, k, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)
        return _normed_heads(q, k, v, self.norm, self.num_heads)


class Modulation(nn.Module):
    """``count`` vectors (shift, scale, gate, ...) of shape ``[B, 1, dim]`` from the conditioning vector."""

    def __init__(self, dim: int, count: int):
        super().__init__()
        self.count = count
        self.lin = nn.Linear(dim, count * dim)

    def forward(self, vec: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return self.lin(F.silu(vec))[:, None, :].chunk(self.count, dim=-1)


def _layer_norm(x: torch.Tensor) -> torch.Tensor:
    return F.layer_norm(x, x.shape[-1:], eps=1e-6)


def _modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return (1 + scale) * _layer_norm(x) + shift


def _mlp(config: MMDiTConfig) -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(config.hidden_size, config.mlp_hidden_dim),
        nn.GELU(approximate="tanh"),
        nn.Linear(config.mlp_hidden_dim, config.hidden_size),
    )


def _attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, rope: RopeTables, backend: str) -> torch.Tensor:
    return attention(apply_rope(q, rope), apply_rope(k, rope), v, backend)


class DoubleStreamBlock(nn.Module):
    """Image and text streams with their own weights, joined in one attention over ``[txt, img]``."""

    attention_backend = "sdpa"  # set per model by models.attention_backends.set_attention_backend

    def __init__(self, config: MMDiTConfig):
        super().__init__()
        self.img_mod = Modulation(config.hidden_size, 6)
        self.img_attn = SelfAttention(config)
        self.img_mlp = _mlp(config)
        self.txt_mod = Modulation(config.hidden_size, 6)
        self.txt_attn = SelfAttention(config)
        self.txt_mlp = _mlp(config)

    def forward(self, img: torch.Tensor, txt: torch.Tensor, vec: torch.Tensor, rope: RopeTables
                ) -> tuple[torch.Tensor, torch.Tensor]:
        img_shift1, img_scale1, img_gate1, img_shift2, img_scale2, img_gate2 = self.img_mod(vec)
        txt_shift1, txt_scale1, txt_gate1, txt_shift2, txt_scale2, txt_gate2 = self.txt_mod(vec)

        img_q, img_k, img_v = self.img_attn.qkv_heads(_modulate(img, img_shift1, img_scale1))
        txt_q, txt_k, txt_v = self.txt_attn.qkv_heads(_modulate(txt, txt_shift1, txt_scale1))
        joint = _attend(
            torch.cat((txt_q, img_q), dim=2), torch.cat((txt_k, img_k), dim=2), torch.cat((txt_v, img_v), dim=2),
            rope, self.attention_backend,
        )
        txt_out, img_out = joint[:, : txt.shape[1]], joint[:, txt.shape[1]:]

        img = img + img_gate1 * self.img_attn.proj(img_out)
        img = img + img_gate2 * self.img_mlp(_modulate(img, img_shift2, img_scale2))
        txt = txt + txt_gate1 * self.txt_attn.proj(txt_out)
        txt = txt + txt_gate2 * self.txt_mlp(_modulate(txt, txt_shift2, txt_scale2))
        return img, txt


class SingleStreamBlock(nn.Module):
    """One stream over ``[txt, img]`` with parallel attention and MLP (q/k/v_mlp split or fused ``linear1``)."""

    attention_backend = "sdpa"  # set per model by models.attention_backends.set_attention_backend

    def __init__(self, config: MMDiTConfig):
        super().__init__()
        dim, mlp_dim = config.hidden_size, config.mlp_hidden_dim
        self.num_heads = config.num_heads
        self.fused_qkv = config.fused_qkv
        self.split_sizes = (3 * dim, mlp_dim) if self.fused_qkv else (dim, mlp_dim)
        if self.fused_qkv:
            self.linear1 = nn.Linear(dim, 3 * dim + mlp_dim)
        else:
            self.q_proj = nn.Linear(dim, dim)
            self.k_proj = nn.Linear(dim, dim)
            self.v_mlp = nn.Linear(dim, dim + mlp_dim)
        self.linear2 = nn.Linear(dim + mlp_dim, dim)
        self.norm = QKNorm(config.head_dim)
        self.modulation = Modulation(dim, 3)

    def forward(self, x: torch.Tensor, vec: torch.Tensor, rope: RopeTables) -> torch.Tensor:
        shift, scale, gate = self.modulation(vec)
        x_mod = _modulate(x, shift, scale)
        if self.fused_qkv:
            qkv, mlp = self.linear1(x_mod).split(self.split_sizes, dim=-1)
            q, k, v = qkv.chunk(3, dim=-1)
        else:
            q, k = self.q_proj(x_mod), self.k_proj(x_mod)
            v, mlp = self.v_mlp(x_mod).split(self.split_sizes, dim=-1)
        q, k, v = _normed_heads(q, k, v, self.norm, self.num_heads)
        attended = _attend(q, k, v, rope, self.attention_backend)
        out = self.linear2(torch.cat((attended, F.gelu(mlp, approximate="tanh")), dim=-1))
        return x + gate * out


class LastLayer(nn.Module):
    """Modulated LayerNorm (shift first, then scale) and the projection back to packed latent features."""

    def __init__(self, hidden_size: int, out_channels: int):
        super().__init__()
        self.linear = nn.Linear(hidden_size, out_channels)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 2 * hidden_size))

    def forward(self, x: torch.Tensor, vec: torch.Tensor) -> torch.Tensor:
        shift, scale = self.adaLN_modulation(vec)[:, None, :].chunk(2, dim=-1)
        return self.linear(_modulate(x, shift, scale))
