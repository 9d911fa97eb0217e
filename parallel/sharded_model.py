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
    """Callable like ``MMDiT.forward`` (keyword arguments), computed by all ranks together.

    With ``cfg_degree > 1`` the batch rows (guidance branches x batch) are first divided among the
    sequence groups (zero rows pad an uneven division and are dropped again).
    """

    def __init__(self, model: nn.Module, layout: ParallelLayout, groups: SequenceParallelGroups):
        layout.validate(layout.world_size, model.config.num_heads)  # for_layout checks it fits the ranks
        self.model = model
        self.config = model.config
        self.layout = layout
        self.groups = groups.for_layout(layout)

    def __call__(self, img: torch.Tensor, img_ids: torch.Tensor, txt: torch.Tensor, txt_ids: torch.Tensor,
                 timesteps: torch.Tensor, y_vec: torch.Tensor, cond: torch.Tensor | None = None,
                 guidance: torch.Tensor | None = None) -> torch.Tensor:
        layout, groups = self.layout, self.groups
        check_sequence_fits(img.shape[1], layout.sequence_size)
        rows = TokenSplit(img.shape[0], layout.cfg_degree)
        inputs = dict(img=img, img_ids=img_ids, txt=txt, txt_ids=txt_ids, timesteps=timesteps, y_vec=y_vec,
                      cond=cond, guidance=guidance)
        if layout.cfg_degree > 1:
            inputs = {k: None if v is None else rows.shard(v, groups.cfg_rank, dim=0) for k, v in inputs.items()}
        local = self._sequence_parallel_forward(**inputs)
        if layout.cfg_degree == 1:
            return local
        return rows.unshard(_all_gather(local, layout.cfg_degree, groups.cfg_group), dim=0)

    def _sequence_parallel_forward(self, img, img_ids, txt, txt_ids, timesteps, y_vec, cond, guidance
                                   ) -> torch.Tensor:
        """The full velocity of these rows, computed by this rank's sequence group."""
        size, rank = self.layout.sequence_size, self.groups.sequence_rank
        image = TokenSplit(img.shape[1], size)
        text = TokenSplit(txt.shape[1], size)
        if self.layout.text == TEXT_SPLIT:
            txt, txt_ids = text.shard(txt, rank), text.shard(txt_ids, rank)
        blocks = (*self.model.double_blocks, *self.model.single_blocks)
        kernels = [block.attention_backend for block in blocks]
        attention = SequenceParallelAttention(self.groups, self.layout, text, image)
        for block in blocks:
            block.attention_backend = attention
        try:
            local = self.model(
                img=image.shard(img, rank),
                img_ids=image.shard(img_ids, rank),
                txt=txt,
                txt_ids=txt_ids,
                timesteps=timesteps,
                y_vec=y_vec,
                cond=None if cond is None else image.shard(cond, rank),
                guidance=guidance,
            )
        finally:
            for block, kernel in zip(blocks, kernels):
                block.attention_backend = kernel
        return image.unshard(_all_gather(local, size, self.groups.sequence_group))


def _all_gather(tensor: torch.Tensor, size: int, group: dist.ProcessGroup) -> list[torch.Tensor]:
    tensor = tensor.contiguous()
    pieces = [torch.empty_like(tensor) for _ in range(size)]
    dist.all_gather(pieces, tensor, group=group)
    return pieces
