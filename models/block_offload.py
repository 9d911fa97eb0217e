"""Block offload: run transformer blocks whose weights live in host memory, copying them in just in time.

A block's weights that are not on the compute device when it runs are copied there right before
(forward pre-hook) and dropped right after (forward hook); weights never change during inference,
so nothing is copied back. Two kinds of blocks are streamed this way:

* the last ``count`` blocks, which :func:`install_block_offload` keeps in host memory (pinned when
  the compute device is CUDA, so copies are asynchronous; ``model.to(...)`` leaves them there);
* any other block the host left (partly) in RAM: ComfyUI's partial loading moves layers one by one
  until its memory budget is used, which plain ``nn.Linear`` layers could not otherwise run with.

On CUDA the copy of the next block is started on a side stream while the current block computes
(prefetch), and the first block's copy when the model's forward starts. The CPU waits for the GPU
when it runs more than two blocks ahead, so at most three blocks' copies hold GPU memory.
Blocks are ``model.double_blocks`` then ``model.single_blocks`` (execution order); non-block
modules are moved to the compute device when the model's forward starts (they are small).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle


def transformer_blocks(model: nn.Module) -> list[nn.Module]:
    """``double_blocks`` then ``single_blocks``: the order the forward runs them."""
    return list(model.double_blocks) + list(model.single_blocks)


def _pinned(tensor: torch.Tensor) -> torch.Tensor:
    """A pinned host copy (best effort: pageable if pinning is refused, e.g. too much locked memory)."""
    try:
        return tensor.pin_memory()
    except RuntimeError:
        return tensor


def _tensors(block: nn.Module) -> dict[str, torch.Tensor]:
    named = dict(block.named_parameters())
    named.update(block.named_buffers())
    return named


@dataclass
class _Block:
    """One transformer block and the copies it runs with during the current call."""

    block: nn.Module
    kept_in_host_memory: bool
    host: dict[str, torch.Tensor] = field(default_factory=dict)  # host copies of a kept block
    originals: dict[str, torch.Tensor] = field(default_factory=dict)  # tensors swapped out for this call
    on_device: dict[str, torch.Tensor] | None = None  # compute-device copies, once prefetched
    ready: torch.cuda.Event | None = None  # copy finished (side stream)


@dataclass
class BlockOffload:
    """Installed hooks of :func:`install_block_offload`; :meth:`remove` restores plain execution."""

    model: nn.Module
    compute_device: torch.device
    offload_device: torch.device
    blocks: list[_Block]
    handles: list[RemovableHandle] = field(default_factory=list)
    stream: torch.cuda.Stream | None = None
    pending: list[tuple[int, torch.cuda.Event]] = field(default_factory=list)  # (block index, compute done)
    max_loaded: int = 0  # most blocks holding compute-device copies at once (for tests/benchmarks)

    @property
    def streamed_blocks(self) -> list[nn.Module]:
        """The blocks kept in host memory."""
        return [b.block for b in self.blocks if b.kept_in_host_memory]

    def _on_compute_device(self, tensor: torch.Tensor) -> bool:
        return tensor.device == self.compute_device

    @torch.inference_mode(False)
    def _keep_in_host_memory(self, entry: _Block) -> None:
        """Point a kept block at its host copies, taking them on first use.

        If the host (ComfyUI's loader) moved the block to the GPU meanwhile, the GPU copy is dropped
        in favour of the host copy kept from before: inference never changes weights.
        """
        for name, tensor in _tensors(entry.block).items():
            host = entry.host.get(name)
            if host is None:
                host = tensor.data.to(self.offload_device)
                entry.host[name] = host = _pinned(host) if self.stream is not None else host
            if tensor.device != host.device or tensor.data_ptr() != host.data_ptr():
                tensor.data = host

    def _away(self, entry: _Block) -> dict[str, torch.Tensor]:
        """The block's tensors that are not on the compute device now."""
        if entry.kept_in_host_memory:
            return entry.host
        return {n: t.data for n, t in _tensors(entry.block).items() if not self._on_compute_device(t)}

    @torch.inference_mode(False)
    def _prefetch(self, index: int) -> None:
        # Normal (not inference-mode) tensors: CPU kernels treat inference-tensor weights differently,
        # which would change the last bits of the output compared with the model without offload.
        entry = self.blocks[index]
        if entry.on_device is not None:
            return
        entry.originals = self._away(entry)
        if not entry.originals:
            entry.on_device = {}
            return
        if self.stream is None:
            entry.on_device = {n: t.to(self.compute_device, copy=True) for n, t in entry.originals.items()}
            return
        while self.pending and self.pending[0][0] <= index - 2:
            self.pending.pop(0)[1].synchronize()  # the GPU finished that block: its copies are free
        with torch.cuda.stream(self.stream):
            entry.on_device = {
                n: t.to(self.compute_device, non_blocking=True) for n, t in entry.originals.items()
            }
            entry.ready = torch.cuda.Event()
            entry.ready.record(self.stream)

    def _before_model(self, _module: nn.Module, _args) -> None:
        # Copies still in use by the previous call count as blocks before this call's first one.
        self.pending = [(index - len(self.blocks), done) for index, done in self.pending]
        for entry in self.blocks:
            if entry.kept_in_host_memory:
                self._keep_in_host_memory(entry)
        for name, module in self.model.named_children():
            if name not in ("double_blocks", "single_blocks"):
                module.to(self.compute_device)
        self._prefetch(0)

    def _before_block(self, index: int):
        def hook(block: nn.Module, _args) -> None:
            entry = self.blocks[index]
            self._prefetch(index)
            if entry.ready is not None:
                current = torch.cuda.current_stream(self.compute_device)
                current.wait_event(entry.ready)
                for tensor in entry.on_device.values():
                    tensor.record_stream(current)
            tensors = _tensors(block)
            for name, copy in entry.on_device.items():
                tensors[name].data = copy
            if index + 1 < len(self.blocks):
                self._prefetch(index + 1)
            self.max_loaded = max(self.max_loaded, sum(bool(b.on_device) for b in self.blocks))

        return hook

    def _after_block(self, index: int):
        def hook(block: nn.Module, _args, _output) -> None:
            entry = self.blocks[index]
            tensors = _tensors(block)
            for name, original in entry.originals.items():
                tensors[name].data = original
            if entry.on_device and self.stream is not None:
                done = torch.cuda.Event()
                done.record(torch.cuda.current_stream(self.compute_device))
                self.pending.append((index, done))
            entry.originals, entry.on_device, entry.ready = {}, None, None

        return hook

    def remove(self) -> None:
        """Remove the hooks; kept blocks stay in host memory (move the model to use it plainly)."""
        for handle in self.handles:
            handle.remove()
        self.handles.clear()
        self.pending.clear()
        for entry in self.blocks:
            entry.originals, entry.on_device, entry.ready = {}, None, None
            entry.block.__dict__.pop("_apply", None)
        if getattr(self.model, "block_offload", None) is self:
            del self.model.block_offload


def _ignore_moves(block: nn.Module, fn, recurse: bool = True) -> nn.Module:
    """``_apply`` of a kept block: ``model.to(device)`` must not pull its weights onto the GPU."""
    return block


def install_block_offload(model: nn.Module, count: int, compute_device: torch.device | str,
                          offload_device: torch.device | str = "cpu") -> BlockOffload:
    """Run ``model``'s blocks with just-in-time copies; keep the last ``count`` in host memory.

    With ``count`` 0 nothing is forced into host memory, but blocks the host leaves there (partial
    loading) still run. Replaces an offload installed before; the returned object is also stored as
    ``model.block_offload``.
    """
    previous = getattr(model, "block_offload", None)
    if previous is not None:
        previous.remove()
    blocks = transformer_blocks(model)
    if not 0 <= count <= len(blocks):
        raise ValueError(f"offload_blocks is {count} but this model has {len(blocks)} blocks.")
    compute_device, offload_device = torch.device(compute_device), torch.device(offload_device)
    if compute_device.type == "cuda" and compute_device.index is None:
        compute_device = torch.device("cuda", torch.cuda.current_device())
    kept = len(blocks) - count
    offload = BlockOffload(
        model, compute_device, offload_device,
        blocks=[_Block(block, kept_in_host_memory=i >= kept) for i, block in enumerate(blocks)],
        stream=torch.cuda.Stream(compute_device) if compute_device.type == "cuda" else None,
    )
    for index, entry in enumerate(offload.blocks):
        if entry.kept_in_host_memory:
            offload._keep_in_host_memory(entry)
            entry.block._apply = _ignore_moves.__get__(entry.block)
        offload.handles.append(entry.block.register_forward_pre_hook(offload._before_block(index)))
        offload.handles.append(entry.block.register_forward_hook(offload._after_block(index)))
    offload.handles.append(model.register_forward_pre_hook(offload._before_model))
    model.block_offload = offload
    return offload
