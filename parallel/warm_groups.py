"""The warm worker groups of this process: one at a time, reused between runs, stopped at exit.

The callers (the sampler and VAE Decode nodes) pass their progress and cancel hooks in, so this module
knows nothing of the host it runs in.
"""

from __future__ import annotations

import atexit
import logging
import os
from typing import Callable

import torch

from ..loaders.mmdit_setup import MMDiTSetup
from ..models.autoencoder import Tiling
from ..models.mmdit import MMDiTConfig
from ..samplers.request import SamplingRequest
from .group import GroupSettings, WorkerGroup, WorkerGroupDied
from .layout import check_sequence_fits
from .protocol import DecodeJob, SamplingCancelled, WorkerJob
from .settings import ParallelSettings
from .shared_decode import local_work

_GROUPS: dict[GroupSettings, WorkerGroup] = {}
_log = logging.getLogger(__name__)


def worker_group(settings: GroupSettings) -> WorkerGroup:
    """The warm group for ``settings``; started (after stopping any other group) when absent or dead."""
    group = _GROUPS.get(settings)
    if group is not None and not group.alive():
        _log.warning("The parallel worker group stopped; starting it again. Last output:\n%s", group.log_tail(10))
        _GROUPS.pop(settings).shutdown()
        group = None
    if group is None:
        shutdown_worker_groups()  # one warm group at a time: the GPUs are shared
        group = WorkerGroup(settings).start()
        _GROUPS[settings] = group
    return group


def shutdown_worker_groups() -> None:
    """Stop every warm worker group (also run when the Python process exits)."""
    while _GROUPS:
        _GROUPS.popitem()[1].shutdown()


atexit.register(shutdown_worker_groups)


def sample_on_warm_group(settings: ParallelSettings, checkpoint: str, setup: MMDiTSetup, config: MMDiTConfig,
                         request: SamplingRequest, on_progress: Callable[[int, torch.Tensor | None], None],
                         check_interrupt: Callable[[], None], preview: bool = False) -> torch.Tensor:
    """Run ``request`` on the warm group for ``settings``; the workers load ``checkpoint`` as ``setup`` says.

    ``on_progress(steps_done, first_frame_estimate or None)`` follows the steps (the estimate
    ``[1, C, 1, H', W']`` when ``preview``); ``check_interrupt()`` raises to cancel. Either may raise:
    the workers then stop at one step and that exception is re-raised. A dead group is dropped so the
    next run starts a new one. Returns the final latent in the compute dtype on the CPU.
    """
    layout = settings.layout(config.num_heads)
    check_sequence_fits(request.noise[0, 0].numel() // config.patch_size**2, layout.sequence_size)
    job = WorkerJob(checkpoint, setup, layout, request, preview, os.path.getsize(checkpoint))
    return _run_on_warm_group(settings.group, job, on_progress, check_interrupt)


def group_decode_work(settings: ParallelSettings, batch: int, pass_work: list[int]) -> int:
    """The progress total of a group decode of ``batch`` elements whose decoder passes do ``pass_work``
    work units each: rank 0's share of the passes, the rank whose progress is reported."""
    return batch * local_work(pass_work, 0, settings.group.world_size)


def decode_on_warm_group(settings: ParallelSettings, vae: str, dtype: torch.dtype, latent: torch.Tensor,
                         tiling: Tiling, num_frames: int, height: int, width: int, total_work: int,
                         on_progress: Callable[[int], None], check_interrupt: Callable[[], None]) -> torch.Tensor:
    """Decode ``latent`` with the HunyuanVideo VAE file ``vae`` in ``dtype`` on the warm group for ``settings``
    (the sampler's group when the settings are the same), its decoder passes spread over the ranks.

    ``on_progress(done)`` counts rank 0's work units, of ``total_work`` (:func:`group_decode_work`);
    ``check_interrupt()`` raises to cancel (the ranks stop before their next round of passes and that
    exception is re-raised). Returns the frames ``[B*num_frames, height, width, 3]`` in 0..1, float32 on
    the CPU.
    """
    job = DecodeJob(vae, dtype, latent, tiling, num_frames, height, width, total_work, os.path.getsize(vae))
    frames = _run_on_warm_group(settings.group, job, lambda done, _preview: on_progress(done), check_interrupt)
    return frames.float()


def _run_on_warm_group(settings: GroupSettings, job: WorkerJob | DecodeJob,
                       on_progress: Callable[[int, torch.Tensor | None], None],
                       check_interrupt: Callable[[], None]) -> torch.Tensor:
    """Run ``job`` on the warm group for ``settings``; a progress hook or ``check_interrupt`` that raises cancels
    it (that exception is re-raised); a dead group is dropped so the next run starts a new one."""
    group = worker_group(settings)
    interrupts: list[Exception] = []

    def report(done: int, latent: torch.Tensor | None) -> None:
        try:
            on_progress(done, latent)
        except Exception as exc:  # e.g. Cancel raised by a progress bar
            interrupts.append(exc)

    def cancel_requested() -> bool:
        if not interrupts:
            try:
                check_interrupt()
            except Exception as exc:
                interrupts.append(exc)
        return bool(interrupts)

    try:
        return group.run(job, report, cancel_requested)
    except SamplingCancelled:
        raise interrupts[0] from None
    except WorkerGroupDied:
        _GROUPS.pop(settings, None)
        group.shutdown()
        raise
