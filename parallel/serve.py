"""The job loop every rank of a worker group runs (entered from ``worker.py`` under torchrun).

Each rank joins the process group (NCCL on GPUs, gloo on the CPU), connects to the sampler's control
store, tells it where it runs (:func:`protocol.rank_facts`) and polls it for jobs, so the group stays
warm between queue runs; ranks on other hosts do the same through the store at the sampler's address.
For a job every rank reads the request from the store and loads the checkpoint (same path and size
on every host) as the Model Loader did (its weight dtype, attention, block offload and
compile choices come with the job; the model is kept while the next jobs use the same file and
choices), the ranks agree that all of them are ready, then denoise together. After every step rank 0
publishes the progress (and the preview), reads the cancel flag and broadcasts it, so all ranks stop
at the same step; it sends the result through the store.
An error that may leave ranks out of step is recorded in the store and ends the process; torchrun
then stops the other ranks and the sampler reports the message.
"""

from __future__ import annotations

import os
import socket
import time
import traceback
from datetime import timedelta

import torch
import torch.distributed as dist

from ..loaders.mmdit_setup import MMDiTSetup, load_mmdit_for_sampling
from ..samplers.denoisers import StepResult
from ..samplers.request import run_sampling
from .attention import SequenceParallelGroups
from .protocol import (
    CANCELLED, FAILED, LEFT, OK, POLL_SECONDS, PROCESS_GROUP_PREFIX, SHUTDOWN, SamplingCancelled, WorkerJob, cancel_key,
    done_key, encode, error_key, failed_ranks_key, get_bytes, job_key, preview_key, progress_key, put_bytes,
    rank_facts, ready_key, request_key, result_key, tensor_bytes,
)
from .sharded_model import ShardedMMDiT

HOST_MEMORY = torch.device("cpu")


class _ModelCache:
    """The MMDiT of the last checkpoint, kept while jobs use the same file, setup and file version."""

    def __init__(self, device: torch.device):
        self.device = device
        self.key: tuple | None = None
        self.model: torch.nn.Module | None = None

    def get(self, path: str, setup: MMDiTSetup) -> torch.nn.Module:
        stat = os.stat(path)
        key = (path, setup, stat.st_size, stat.st_mtime_ns)
        if key != self.key:
            self.model = self.key = None
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
            # Straight to the device unless blocks stay in host memory (then the rest is moved after).
            offload = HOST_MEMORY if setup.offload_blocks and self.device != HOST_MEMORY else self.device
            self.model = load_mmdit_for_sampling(path, setup, self.device, offload).to(self.device)
            self.key = key
        return self.model


def serve(store_host: str, store_port: int, device_type: str) -> None:
    """Join the group and run jobs until the sampler asks for shutdown (or its store goes away)."""
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    store = dist.TCPStore(store_host, store_port, is_master=False, timeout=timedelta(seconds=60))
    # The process group meets in the sampler's store (no store of its own listening on another port).
    meeting = dist.PrefixStore(PROCESS_GROUP_PREFIX, store)
    if device_type == "cuda":
        local_rank = int(os.environ["LOCAL_RANK"])
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
        dist.init_process_group("nccl", store=meeting, rank=rank, world_size=world, device_id=device)
    else:
        device = torch.device("cpu")
        dist.init_process_group("gloo", store=meeting, rank=rank, world_size=world)
    groups = SequenceParallelGroups(rank, world)
    cache = _ModelCache(device)
    store.set(ready_key(rank), encode(rank_facts(rank, world)))
    job = 1
    while True:
        if store.check([job_key(job)]):
            _run_job(store, job, rank, world, device, groups, cache)
            job += 1
        elif store.check([SHUTDOWN]):
            break
        else:
            time.sleep(POLL_SECONDS)
    dist.destroy_process_group()
    store.add(LEFT, 1)


def _run_job(store: dist.Store, job: int, rank: int, world: int, device: torch.device,
             groups: SequenceParallelGroups, cache: _ModelCache) -> None:
    error = None
    try:
        work = WorkerJob.from_bytes(get_bytes(store, request_key(job)))
        work.check_checkpoint()
        model = cache.get(work.checkpoint, work.setup)
        work.layout.validate(world, model.config.num_heads)
    except Exception as exc:  # reported to the sampler; the group stays usable
        error = f"rank {rank}: {type(exc).__name__}: {exc}"
    errors: list[str | None] = [None] * world
    dist.all_gather_object(errors, error)
    failed = list(dict.fromkeys(e for e in errors if e))  # each distinct message once, in rank order
    if failed:
        if rank == 0:
            store.set(done_key(job), encode({"status": FAILED, "message": "\n".join(failed)}))
        return

    cancel = torch.zeros(1, dtype=torch.int32, device=device)

    def on_step(result: StepResult) -> None:
        if rank == 0:
            if work.preview:  # first frame of element 0, written before the progress that announces it
                store.set(preview_key(job), tensor_bytes(result.denoised()[:1, :, :1]))
            store.set(progress_key(job), str(result.step + 1))
            cancel.fill_(int(store.check([cancel_key(job)])))
        dist.broadcast(cancel, 0)
        if cancel.item():
            raise SamplingCancelled(result.step + 1)

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    started = time.perf_counter()
    try:
        latent = run_sampling(ShardedMMDiT(model, work.layout, groups), work.sampling, device,
                              work.setup.compute_dtype, on_step)
    except SamplingCancelled as cancelled:
        if rank == 0:
            store.set(done_key(job), encode({"status": CANCELLED, "steps": cancelled.steps_done}))
        return
    except BaseException:
        # The other ranks may be waiting in a collective: record why and end this process, torchrun
        # then stops the group and the sampler reports this message.
        store.set(error_key(job, rank), f"rank {rank} on host {socket.gethostname()}:\n{traceback.format_exc()}")
        store.add(failed_ranks_key(job), 1)
        os._exit(1)
    seconds = time.perf_counter() - started
    if rank == 0:
        put_bytes(store, result_key(job), tensor_bytes(latent))
        peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
        store.set(done_key(job), encode({"status": OK, "sampling_seconds": seconds, "peak_memory_bytes": peak}))
