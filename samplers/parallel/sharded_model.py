"""The MMDiT run on this rank's share of the tokens, returning the full velocity.

:class:`ShardedMMDiT` has the call signature and ``config`` of the MMDiT, so the ordinary denoisers
(``samplers/denoisers.py``) drive it unchanged: every rank runs the same Euler loop on the whole
(small) latent, and only the transformer's tokens are split. Per-token work (projections, modulation,
MLPs, RoPE with the tokens' global positions) runs on the local tokens; attention goes through
:class:`~.attention.SequenceParallelAttention`; the image-token velocities are all-gathered.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn

from .attention import SequenceParallelAttention, SequenceParallelGroups
from .layout import TEXT_SPLIT, ParallelLayout, TokenSplit, check_sequence_fits


class ShardedMMDiT:
    """Callable like ``MMDiT.forward`` (keyword arguments), computed by all ranks together."""

    def __init__(self, model: nn.Module, layout: ParallelLayout, groups: SequenceParallelGroups):
        layout.validate(groups.world_size, model.config.num_heads)
        self.model = model
        self.config = model.config
        self.layout = layout
        self.rank, self.world_size = groups.rank, groups.world_size
        self.layer = groups.attention_layer(layout)

    def __call__(self, img: torch.Tensor, img_ids: torch.Tensor, txt: torch.Tensor, txt_ids: torch.Tensor,
                 timesteps: torch.Tensor, y_vec: torch.Tensor, cond: torch.Tensor | None = None,
                 guidance: torch.Tensor | None = None) -> torch.Tensor:
        check_sequence_fits(img.shape[1], self.world_size)
        rank = self.rank
        image = TokenSplit(img.shape[1], self.world_size)
        text = TokenSplit(txt.shape[1], self.world_size)
        attention = SequenceParallelAttention(self.layer, self.layout, text, image, rank)
        for block in (*self.model.double_blocks, *self.model.single_blocks):
            block.attention_backend = attention
        if self.layout.text == TEXT_SPLIT:
            txt, txt_ids = text.shard(txt, rank), text.shard(txt_ids, rank)
        local = self.model(
            img=image.shard(img, rank),
            img_ids=image.shard(img_ids, rank),
            txt=txt,
            txt_ids=txt_ids,
            timesteps=timesteps,
            y_vec=y_vec,
            cond=None if cond is None else image.shard(cond, rank),
            guidance=guidance,
        ).contiguous()
        pieces = [torch.empty_like(local) for _ in range(self.world_size)]
        dist.all_gather(pieces, local)
        return image.unshard(pieces)
