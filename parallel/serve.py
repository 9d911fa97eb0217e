"""The job loop every rank of a worker group runs (entered from ``worker.py`` under torchrun).

Each rank joins the process group (NCCL on GPUs, gloo on the CPU), connects to the sampler's control
store, tells it where it runs (:func:`protocol.rank_facts`) and polls it for jobs, so the group stays
warm between queue runs; ranks on other hosts do the same through the store at the sampler's address.
For a job every rank reads the request from the store and loads the checkpoint (same path and size
on every host) as the Model Loader did (its weight dtype, attention, block offload and
compile choices come with the job; the model is kept while the next jobs use the same file and
choices), the ranks agree that all of them are ready, then denoise together. After every step rank 0
publishes the progress (and the preview), reads the cancel flag and broadcasts it, so all ranks stop
at the same step; it sends the result through the store. A decode job (the VAE Decode node) loads
the HunyuanVideo VAE the same way (kept too, beside the MMDiT) and spreads its decoder passes over the
ranks; rank 0 publishes its work units done and the cancel flag is broadcast before every round of
passes; rank 0 sends the frames.
An error that may leave ranks out of step is recorded in the store and ends the process; torchrun
then stops the other ranks and the sampler reports the message.
"""

from __future__ import annotations

import os
import socket
import time
import traceback
from datetime import timedelta
from functools import partial
from typing import Callable, Hashable, Iterable, Iterator

import torch
import torch.distributed as dist

from ..loaders.autoencoders import load_autoencoder
from ..loaders.mmdit_setup import MMDiTSetup, load_mmdit_for_sampling
from ..models.autoencoder import VideoAutoencoder, decode_to_frames
from ..samplers.denoisers import StepResult
from ..samplers.request import run_sampling
from .attention import SequenceParallelGroups
from .protocol import (
    CANCELLED, FAILED, LEFT, OK, POLL_SECONDS, PROCESS_GROUP_PREFIX, SHUTDOWN, DecodeJob, SamplingCancelled, WorkerJob,
    cancel_key, done_key, encode, error_key, failed_ranks_key, get_bytes, job_from_bytes, job_key, preview_key,
    progress_key, put_bytes, rank_facts, ready_key, request_key, result_key, saved_bytes,
)
from .shared_decode import run_passes_over_group
from .sharded_model import ShardedMMDiT

HOST_MEMORY = torch.device("cpu")


class _LastLoaded:
    """The model of the last file loaded, kept while jobs use the same file, options and file version."""

    def __init__(self, device: torch.device):
        self.device = device
        self.key: tuple | None = None
        self.model: torch.nn.Module | None = None

    def get(self, path: str, options: Hashable, load: Callable[[], torch.nn.Module]) -> torch.nn.Module:
        stat = os.stat(path)
        key = (path, options, stat.st_size, stat.st_mtime_ns)
        if key != self.key:
            self.model = self.key = None
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
            self.model = load()
            self.key = key
        return self.model


def _load_mmdit(path: str, setup: MMDiTSetup, device: torch.device) -> torch.nn.Module:
    # Straight to the device unless blocks stay in host memory (then the rest is moved after).
    offload = HOST_MEMORY if setup.offload_blocks and device != HOST_MEMORY else device
    return load_mmdit_for_sampling(path, setup, device, offload).to(device)


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
    cache = _LastLoaded(device), _LastLoaded(device)  # the MMDiT and the VAE, each kept warm
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
             groups: SequenceParallelGroups, cache: tuple[_LastLoaded, _LastLoaded]) -> None:
    error = None
    try:
        work = job_from_bytes(get_bytes(store, request_key(job)))
        if isinstance(work, DecodeJob):
            work.check_vae()
            vae = cache[1].get(work.vae, work.dtype, partial(load_autoencoder, work.vae, work.dtype, device))
            if not vae.shares_passes(work.tiling):
                raise ValueError(f"{work.vae} holds the {vae.kind.display_name}, not the HunyuanVideo VAE, whose "
                                 "decode alone is spread over the group: disconnect 'parallel' from the VAE Decode "
                                 "node.")
            compute = partial(_decode, vae, work, store, job, rank, world, device)
        else:
            work.check_checkpoint()
            model = cache[0].get(work.checkpoint, work.setup, partial(_load_mmdit, work.checkpoint, work.setup, device))
            work.layout.validate(world, model.config.num_heads)
            compute = partial(_sample, model, work, store, job, rank, device, groups)
    except Exception as exc:  # reported to the ComfyUI host; the group stays usable
        error = f"rank {rank}: {type(exc).__name__}: {exc}"
    errors: list[str | None] = [None] * world
    dist.all_gather_object(errors, error)
    failed = list(dict.fromkeys(e for e in errors if e))  # each distinct message once, in rank order
    if failed:
        if rank == 0:
            store.set(done_key(job), encode({"status": FAILED, "message": "\n".join(failed)}))
        return

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    started = time.perf_counter()
    try:
        result = compute()
    except SamplingCancelled as cancelled:
        if rank == 0:
            store.set(done_key(job), encode({"status": CANCELLED, "steps": cancelled.steps_done}))
        return
    except BaseException:
        # The other ranks may be waiting in a collective: record why and end this process, torchrun
        # then stops the group and the ComfyUI host reports this message.
        store.set(error_key(job, rank), f"rank {rank} on host {socket.gethostname()}:\n{traceback.format_exc()}")
        store.add(failed_ranks_key(job), 1)
        os._exit(1)
    seconds = time.perf_counter() - started
    if rank == 0:
        put_bytes(store, result_key(job), saved_bytes(result.cpu()))
        peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
        timing = "decode_seconds" if isinstance(work, DecodeJob) else "sampling_seconds"
        store.set(done_key(job), encode({"status": OK, timing: seconds, "peak_memory_bytes": peak}))


def _cancel_agreed(store: dist.Store, job: int, rank: int, flag: torch.Tensor) -> bool:
    """Whether the job is cancelled, the same answer on every rank: rank 0 reads the flag in the store and
    broadcasts it (``flag``: a one-element int tensor on this rank's device)."""
    if rank == 0:
        flag.fill_(int(store.check([cancel_key(job)])))
    dist.broadcast(flag, 0)
    return bool(flag.item())


def _sample(model: torch.nn.Module, work: WorkerJob, store: dist.Store, job: int, rank: int, device: torch.device,
            groups: SequenceParallelGroups) -> torch.Tensor:
    """Denoise together; after every step rank 0 publishes progress (and the preview) and all ranks learn
    whether to cancel. Returns the final latent."""
    cancel = torch.zeros(1, dtype=torch.int32, device=device)

    def on_step(result: StepResult) -> None:
        if rank == 0:
            if work.preview:  # first frame of element 0, written before the progress that announces it
                store.set(preview_key(job), saved_bytes(result.denoised()[:1, :, :1].cpu()))
            store.set(progress_key(job), str(result.step + 1))
        if _cancel_agreed(store, job, rank, cancel):
            raise SamplingCancelled(result.step + 1)

    return run_sampling(ShardedMMDiT(model, work.layout, groups), work.sampling, device, work.setup.compute_dtype,
                        on_step)


def _decode(vae: VideoAutoencoder, work: DecodeJob, store: dist.Store, job: int, rank: int, world: int,
            device: torch.device) -> torch.Tensor:
    """Decode with the passes spread over all ranks; rank 0 publishes its work units done, and at the start
    of every round of passes all ranks learn whether to cancel. Returns the frames in the VAE's dtype."""
    cancel = torch.zeros(1, dtype=torch.int32, device=device)
    done = 0

    def on_work() -> None:
        nonlocal done
        if rank == 0:
            done += 1
            store.set(progress_key(job), str(done))

    def checked(passes: Iterable[Callable[[], torch.Tensor]]) -> Iterator[Callable[[], torch.Tensor]]:
        for index, one in enumerate(passes):
            if index % world == 0 and _cancel_agreed(store, job, rank, cancel):  # before each round of passes
                raise SamplingCancelled(done)
            yield one

    def run_passes(passes: Iterable[Callable[[], torch.Tensor]]) -> Iterator[torch.Tensor]:
        return run_passes_over_group(checked(passes), dist.group.WORLD, rank, world, vae.device, vae.dtype)

    frames = decode_to_frames(vae, work.latent, work.num_frames, work.height, work.width, work.tiling, HOST_MEMORY,
                              on_work, run_passes)
    return frames.to(work.dtype)  # exact: the frames were computed in this dtype
