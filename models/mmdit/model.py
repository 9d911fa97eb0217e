"""The Open-Sora 2.0 MMDiT: a Flux-style double/single stream transformer over packed video latents."""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from .config import MMDiTConfig
from .layers import DoubleStreamBlock, LastLayer, MLPEmbedder, SingleStreamBlock, timestep_embedding
from .rope import RopeTables, RotaryEmbedding


class BlockInputs(NamedTuple):
    """What the transformer blocks consume: projected image and text tokens, conditioning vector, RoPE."""

    img: torch.Tensor
    txt: torch.Tensor
    vec: torch.Tensor
    rope: RopeTables


class MMDiT(nn.Module):
    """Predicts the flow-matching velocity of packed latent tokens.

    Parameter names equal the official checkpoint keys. ``double_blocks`` and ``single_blocks`` are
    plain ModuleLists run in order, so callers can stream blocks between devices.
    """

    def __init__(self, config: MMDiTConfig):
        super().__init__()
        self.config = config
        hidden = config.hidden_size
        self.rope = RotaryEmbedding(config.axes_dim, config.theta, config.rope_layout)
        self.img_in = nn.Linear(config.in_channels, hidden)
        self.time_in = MLPEmbedder(256, hidden)
        self.vector_in = MLPEmbedder(config.vec_in_dim, hidden)
        if config.guidance_embed:
            self.guidance_in = MLPEmbedder(256, hidden)
        if config.cond_embed:
            self.cond_in = nn.Linear(config.cond_in_channels, hidden)
            nn.init.zeros_(self.cond_in.weight)
            nn.init.zeros_(self.cond_in.bias)
        self.txt_in = nn.Linear(config.context_in_dim, hidden)
        self.double_blocks = nn.ModuleList(DoubleStreamBlock(config) for _ in range(config.depth))
        self.single_blocks = nn.ModuleList(SingleStreamBlock(config) for _ in range(config.depth_single_blocks))
        self.final_layer = LastLayer(hidden, config.in_channels)

    def embed_inputs(
        self,
        img: torch.Tensor,
        img_ids: torch.Tensor,
        txt: torch.Tensor,
        txt_ids: torch.Tensor,
        timesteps: torch.Tensor,
        y_vec: torch.Tensor,
        cond: torch.Tensor | None = None,
        guidance: torch.Tensor | None = None,
    ) -> BlockInputs:
        """Project the inputs and build the RoPE tables (the reference's ``prepare_block_inputs``).

        ``timesteps`` and ``guidance`` are first cast to ``img``'s dtype, as the reference builds them,
        so a bf16 run embeds bf16-rounded times.
        """
        if img.ndim != 3 or txt.ndim != 3:
            raise ValueError(f"img and txt must be [batch, tokens, features], got {tuple(img.shape)}, {tuple(txt.shape)}")
        x = self.img_in(img)
        if self.config.cond_embed:
            if cond is None:
                raise ValueError("This model takes an image condition: pass cond (zeros for text-to-video).")
            x = x + self.cond_in(cond)
        vec = self.time_in(timestep_embedding(timesteps.to(img.dtype), 256))
        if self.config.guidance_embed:
            if guidance is None:
                raise ValueError("This guidance-distilled model needs a guidance strength.")
            vec = vec + self.guidance_in(timestep_embedding(guidance.to(img.dtype), 256))
        vec = vec + self.vector_in(y_vec)
        rope = self.rope(torch.cat((txt_ids, img_ids), dim=1))
        return BlockInputs(x, self.txt_in(txt), vec, rope)

    def forward(
        self,
        img: torch.Tensor,
        img_ids: torch.Tensor,
        txt: torch.Tensor,
        txt_ids: torch.Tensor,
        timesteps: torch.Tensor,
        y_vec: torch.Tensor,
        cond: torch.Tensor | None = None,
        guidance: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Velocity ``[B, L_img, in_channels]`` for packed tokens ``img`` ``[B, L_img, in_channels]``.

        ``img_ids``/``txt_ids``: ``[B, L, 3]`` (t, h, w) positions; ``txt``: ``[B, L_txt, context_in_dim]``
        (T5); ``timesteps``: ``[B]`` flow time in [0, 1]; ``y_vec``: ``[B, vec_in_dim]`` (CLIP pooled);
        ``cond``: ``[B, L_img, in_channels + patch_size**2]`` (mask features first) when ``cond_embed``;
        ``guidance``: ``[B]`` for guidance-distilled models (Flux-dev).
        """
        img, txt, vec, rope = self.embed_inputs(img, img_ids, txt, txt_ids, timesteps, y_vec, cond, guidance)
        for block in self.double_blocks:
            img, txt = block(img, txt, vec, rope)
        tokens = torch.cat((txt, img), dim=1)
        for block in self.single_blocks:
            tokens = block(tokens, vec, rope)
        return self.final_layer(tokens[:, txt.shape[1]:], vec)
