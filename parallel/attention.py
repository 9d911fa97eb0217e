"""Sequence-parallel joint attention for the MMDiT on yunchang's ``LongContextAttention``.

yunchang (the Ulysses + ring attention layer xDiT uses, ``pip install yunchang``) does the
communication: an all-to-all that trades tokens for heads inside each Ulysses group, then ring
attention over the Ring groups, merging key blocks with their log-sum-exp. It is optional and
imported only when a worker group runs.

Padding rows (see ``layout.py``) must get exactly zero attention weight. yunchang has no key mask, so
their keys are set to NaN before the exchange and :func:`block_attention`, the per-block kernel handed
to yunchang, removes NaN keys before calling PyTorch's attention kernels (which also return the
log-sum-exp the ring needs). Real keys are never NaN, so the result equals unpadded attention.
"""

from __future__ import annotations

import importlib
import importlib.util
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from .layout import TEXT_REPLICATED, ParallelLayout, TokenSplit

YUNCHANG = "yunchang"
_HALF = (torch.float16, torch.bfloat16)


class ParallelUnavailable(RuntimeError):
    """Sequence-parallel sampling cannot run in this Python environment; the message says what to install."""


def yunchang_installed() -> bool:
    return importlib.util.find_spec(YUNCHANG) is not None


def _yunchang() -> Any:
    if not yunchang_installed():
        raise ParallelUnavailable(
            "Multi-GPU sampling needs the 'yunchang' package (Ulysses/ring sequence-parallel attention): run "
            "`pip install yunchang` in ComfyUI's Python environment, or disconnect the parallel settings."
        )
    return importlib.import_module(YUNCHANG)


def block_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, dropout_p: float = 0.0,
                    softmax_scale: float | None = None, causal: bool = False, **_unused: Any
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention of one key block for yunchang: ``[B, L, H, D]`` in, ``(out [B, L, H, D], lse [B, H, L])``.

    Keys marked as padding (NaN) are removed first. Non-causal, no dropout (inference only).
    """
    if causal or dropout_p:
        raise ValueError("The MMDiT attention is non-causal and has no dropout.")
    valid = ~torch.isnan(k[0, :, 0, 0])
    if not bool(valid.all()):
        k, v = k[:, valid], v[:, valid]
    qh, kh, vh = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
    if not q.is_cuda:
        out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(qh, kh, vh, scale=softmax_scale)[:2]
    elif q.dtype in _HALF and _cuda_flash_usable(q):
        out, lse = torch.ops.aten._scaled_dot_product_flash_attention(qh, kh, vh, scale=softmax_scale)[:2]
    else:  # fp32, or GPUs older than Ampere
        out, lse = torch.ops.aten._scaled_dot_product_efficient_attention(
            qh, kh, vh, None, True, scale=softmax_scale)[:2]
        lse = lse[..., : q.shape[1]]  # some releases pad the log-sum-exp rows
    return out.transpose(1, 2), lse.float()


def _cuda_flash_usable(q: torch.Tensor) -> bool:
    """PyTorch's FlashAttention-2 kernel: Ampere or newer, head dim up to 256, not disabled by the user."""
    return (torch.backends.cuda.flash_sdp_enabled() and q.shape[-1] <= 256
            and torch.cuda.get_device_capability(q.device) >= (8, 0))


@dataclass(frozen=True)
class LayoutGroups:
    """This rank's process groups for one layout: its sequence group (yunchang's Ulysses/Ring groups
    inside it) and its CFG group (the ranks with the same sequence position in the other groups)."""

    attention_layer: Any
    sequence_group: dist.ProcessGroup
    sequence_rank: int
    cfg_group: dist.ProcessGroup
    cfg_rank: int


class SequenceParallelGroups:
    """Process groups and yunchang attention layers, made once per layout and reused.

    Every rank must call :meth:`for_layout` for the same layouts in the same order (the groups are
    created collectively). The ranks may be several copies of a layout (``generate --sp-size`` under
    torchrun: data-parallel groups of ``layout.world_size`` consecutive ranks, each running its own
    generation); every copy gets its own groups.
    """

    def __init__(self, rank: int, world_size: int):
        self.rank, self.world_size = rank, world_size
        self._layouts: dict[tuple[int, int, int], LayoutGroups] = {}

    def for_layout(self, layout: ParallelLayout) -> LayoutGroups:
        key = (layout.cfg_degree, layout.ulysses_degree, layout.ring_degree)
        if key not in self._layouts:
            if self.world_size % layout.world_size:
                raise ValueError(f"A layout of {layout.world_size} ranks cannot tile the {self.world_size} ranks "
                                 "of this job: use a divisor of the number of ranks.")
            yunchang = _yunchang()
            size, copy_size = layout.sequence_size, layout.world_size
            # yunchang builds its Ulysses/Ring groups inside each block of `size` consecutive ranks.
            yunchang.set_seq_parallel_pg(layout.ulysses_degree, layout.ring_degree, self.rank, self.world_size)
            # attn_type=None: yunchang then calls attn_processor for every key block.
            layer = yunchang.LongContextAttention(ring_impl_type="basic", attn_type=None,
                                                  attn_processor=block_attention)
            sequence_groups = [dist.new_group(list(range(start, start + size)))
                               for start in range(0, self.world_size, size)]
            # the CFG groups: within each copy of the layout, the ranks at one sequence position
            cfg_groups = [dist.new_group(list(range(copy + i, copy + copy_size, size)))
                          for copy in range(0, self.world_size, copy_size) for i in range(size)]
            copy_rank = self.rank % copy_size
            self._layouts[key] = LayoutGroups(layer, sequence_groups[self.rank // size], self.rank % size,
                                              cfg_groups[self.rank // copy_size * size + self.rank % size],
                                              copy_rank // size)
        return self._layouts[key]


class SequenceParallelAttention:
    """The MMDiT's joint attention over the tokens of all ranks (an injected ``attention_backend``).

    Called with this rank's ``q, k, v`` ``[B, H, L, D]`` (RoPE applied) for the sequence
    ``[text rows, image rows]``: the text rows are this rank's padded text piece (``split``) or the
    whole text (``replicated``: each rank attends for its own piece and the text outputs are
    all-gathered within the sequence group). Returns ``[B, H, L, D]`` for the same rows.
    """

    def __init__(self, groups: LayoutGroups, layout: ParallelLayout, text: TokenSplit, image: TokenSplit):
        self.layer, self.group, rank = groups.attention_layer, groups.sequence_group, groups.sequence_rank
        self.replicated = layout.text == TEXT_REPLICATED
        self.text, self.rank = text, rank
        self.padding = torch.cat((text.padding_rows(rank), image.padding_rows(rank)))

    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        if self.replicated:
            q, k, v = (self._own_text_rows(t) for t in (q, k, v))
        padding = self.padding.to(k.device)[None, :, None, None]
        q, k, v = (t.transpose(1, 2).contiguous() for t in (q, k, v))
        k = k.masked_fill(padding, float("nan"))
        out = self.layer(q, k, v, softmax_scale=q.shape[-1] ** -0.5).transpose(1, 2)
        if self.replicated:
            out = self._gather_text_rows(out)
        return out

    def _own_text_rows(self, x: torch.Tensor) -> torch.Tensor:
        length = self.text.length
        return torch.cat((self.text.shard(x[:, :, :length], self.rank, dim=2), x[:, :, length:]), dim=2)

    def _gather_text_rows(self, out: torch.Tensor) -> torch.Tensor:
        chunk = self.text.chunk
        own = out[:, :, :chunk].contiguous()
        pieces = [torch.empty_like(own) for _ in range(self.text.ranks)]
        dist.all_gather(pieces, own, group=self.group)
        return torch.cat((self.text.unshard(pieces, dim=2), out[:, :, chunk:]), dim=2)
