"""Block offload: keep some transformer blocks on the GPU and stream the others in just in time.

The streamed blocks keep their weights in host memory (pinned when the compute device is CUDA, so
copies are asynchronous). A forward pre-hook gives each streamed block a compute-device copy of its
weights right before it runs, and a forward hook drops that copy right after: weights never change
during inference, so nothing is copied back. On CUDA the copy of the next streamed block is started
on a side stream while the current block computes (prefetch), and the first streamed block is
prefetched when the model's forward starts. At most three streamed blocks hold GPU memory at a time
(the CPU waits for the GPU when it runs further ahead).

Blocks are ``model.double_blocks`` then ``model.single_blocks`` (execution order); the last
``count`` of them are streamed, the others and all non-block modules stay on the compute device.
``model.to(...)`` leaves streamed blocks in host memory (their ``_apply`` is a no-op while streamed).
Inside ComfyUI, whose loader moves layers one by one, a streamed block that the host moved to the
GPU is pointed back at its host copy at the next forward, and resident modules the host left in RAM
(a partial load) are brought in.
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


@dataclass
class _Streamed:
    """A streamed block: its weights' host copies, and its compute-device copies while loaded."""

    block: nn.Module
    host: dict[str, torch.Tensor]
    on_device: dict[str, torch.Tensor] | None = None
    ready: torch.cuda.Event | None = None  # copy finished (side stream)
    done: torch.cuda.Event | None = None  # block's compute finished (compute stream)


@dataclass
class BlockOffload:
    """Installed hooks of :func:`install_block_offload`; :meth:`remove` restores plain execution."""

    model: nn.Module
    compute_device: torch.device
    offload_device: torch.device
    streamed: list[_Streamed]
    handles: list[RemovableHandle] = field(default_factory=list)
    stream: torch.cuda.Stream | None = None
    max_loaded: int = 0  # most streamed blocks on the compute device at once (for tests/benchmarks)

    @property
    def streamed_blocks(self) -> list[nn.Module]:
        return [s.block for s in self.streamed]

    def _tensors(self, block: nn.Module) -> dict[str, torch.Tensor]:
        named = dict(block.named_parameters())
        named.update(block.named_buffers())
        return named

    @torch.inference_mode(False)
    def _store(self, entry: _Streamed) -> None:
        """Point a streamed block at its host copies, taking them on first use.

        If the host (ComfyUI's loader) moved the block to the GPU meanwhile, the GPU copy is dropped
        in favour of the host copy kept from before: inference never changes weights.
        """
        for name, tensor in self._tensors(entry.block).items():
            host = entry.host.get(name)
            if host is None:
                host = tensor.data.to(self.offload_device)
                entry.host[name] = host = _pinned(host) if self.stream is not None else host
            if tensor.device != host.device or tensor.data_ptr() != host.data_ptr():
                tensor.data = host

    @torch.inference_mode(False)
    def _prefetch(self, index: int) -> None:
        # Normal (not inference-mode) tensors: CPU kernels treat inference-tensor weights differently,
        # which would change the last bits of the output compared with the model without offload.
        entry = self.streamed[index]
        if entry.on_device is not None:
            return
        if self.stream is None:
            entry.on_device = {n: t.to(self.compute_device, copy=True) for n, t in entry.host.items()}
            return
        if index >= 2 and self.streamed[index - 2].done is not None:
            # The CPU runs ahead of the GPU: wait until the GPU finished the block two back, so that at
            # most three streamed blocks hold device memory however far ahead the CPU got.
            self.streamed[index - 2].done.synchronize()
        with torch.cuda.stream(self.stream):
            entry.on_device = {n: t.to(self.compute_device, non_blocking=True) for n, t in entry.host.items()}
            entry.ready = torch.cuda.Event()
            entry.ready.record(self.stream)

    def _loaded_count(self) -> int:
        return sum(s.on_device is not None for s in self.streamed)

    def _before_model(self, _module: nn.Module, _args) -> None:
        streamed_ids = {id(s.block) for s in self.streamed}
        for entry in self.streamed:
            self._store(entry)
        for name, module in self.model.named_children():
            if isinstance(module, nn.ModuleList) and name in ("double_blocks", "single_blocks"):
                for block in module:
                    if id(block) not in streamed_ids:
                        block.to(self.compute_device)
            else:
                module.to(self.compute_device)
        if self.streamed:
            self._prefetch(0)

    def _before_block(self, index: int):
        def hook(block: nn.Module, _args) -> None:
            entry = self.streamed[index]
            self._prefetch(index)
            if entry.ready is not None:
                current = torch.cuda.current_stream(self.compute_device)
                current.wait_event(entry.ready)
                for tensor in entry.on_device.values():
                    tensor.record_stream(current)
            for name, tensor in self._tensors(block).items():
                tensor.data = entry.on_device[name]
            if index + 1 < len(self.streamed):
                self._prefetch(index + 1)
            self.max_loaded = max(self.max_loaded, self._loaded_count())

        return hook

    def _after_block(self, index: int):
        def hook(block: nn.Module, _args, _output) -> None:
            entry = self.streamed[index]
            for name, tensor in self._tensors(block).items():
                tensor.data = entry.host[name]
            entry.on_device, entry.ready = None, None
            if self.stream is not None:
                entry.done = torch.cuda.Event()
                entry.done.record(torch.cuda.current_stream(self.compute_device))

        return hook

    def remove(self) -> None:
        """Remove the hooks; streamed blocks stay in host memory (move the model to use it plainly)."""
        for handle in self.handles:
            handle.remove()
        self.handles.clear()
        for entry in self.streamed:
            entry.on_device, entry.ready = None, None
            entry.block.__dict__.pop("_apply", None)
        if getattr(self.model, "block_offload", None) is self:
            del self.model.block_offload


def _keep_in_host_memory(block: nn.Module, fn, recurse: bool = True) -> nn.Module:
    """``_apply`` of a streamed block: ``model.to(device)`` must not pull its weights onto the GPU."""
    return block


def install_block_offload(model: nn.Module, count: int, compute_device: torch.device | str,
                          offload_device: torch.device | str = "cpu") -> BlockOffload | None:
    """Stream the last ``count`` transformer blocks of ``model`` from ``offload_device``.

    ``count`` 0 removes any offload installed before and returns ``None``. The streamed blocks are
    moved to ``offload_device`` now; the rest of the model is moved to ``compute_device`` at each
    forward. The returned object is also stored as ``model.block_offload``.
    """
    previous = getattr(model, "block_offload", None)
    if previous is not None:
        previous.remove()
    if count <= 0:
        return None
    blocks = transformer_blocks(model)
    if count > len(blocks):
        raise ValueError(f"offload_blocks is {count} but this model has only {len(blocks)} blocks.")
    compute_device, offload_device = torch.device(compute_device), torch.device(offload_device)
    offload = BlockOffload(
        model, compute_device, offload_device,
        streamed=[_Streamed(block, host={}) for block in blocks[len(blocks) - count:]],
        stream=torch.cuda.Stream(compute_device) if compute_device.type == "cuda" else None,
    )
    for entry in offload.streamed:
        offload._store(entry)
    for index, entry in enumerate(offload.streamed):
        offload.handles.append(entry.block.register_forward_pre_hook(offload._before_block(index)))
        offload.handles.append(entry.block.register_forward_hook(offload._after_block(index)))
    offload.handles.append(model.register_forward_pre_hook(offload._before_model))
    for entry in offload.streamed:
        entry.block._apply = _keep_in_host_memory.__get__(entry.block)
    model.block_offload = offload
    return offload
