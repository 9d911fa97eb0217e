"""The sampler's side of a warm worker group: launch with torchrun, send jobs, follow them.

The group is ``python -m torch.distributed.run --nproc-per-node N worker.py ...`` started as a
subprocess (its own session, output in ``workers.log`` of a private temporary folder). The sampler
hosts a ``torch.distributed.TCPStore`` on ``port``; torchrun's c10d rendezvous and the workers'
process group meet in that same store, so the group opens no other listening port. Requests, results
and previews travel through the store too (:mod:`protocol`), so with ``hosts`` > 1 the other hosts run
:func:`join_command` (``--nnodes hosts``, the same rendezvous) and need only the checkpoint at the same
path.

Exposure: every socket listens on 127.0.0.1 unless the user names another address (the settings'
``address`` or ``OPENSORA_PARALLEL_ADDRESS``). PyTorch's TCPStore would listen on all interfaces, so the
store is handed a socket already bound to the address; torchrun is told to use it (c10d rendezvous, not
its own store) and on loopback the workers' gloo/NCCL sockets are kept on the loopback interface
(``GLOO_SOCKET_IFNAME``/``NCCL_SOCKET_IFNAME``, unless already set).
"""

from __future__ import annotations

import errno
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Callable

import torch
import torch.distributed as dist

from .protocol import (
    CANCELLED, FAILED, LEFT, OK, POLL_SECONDS, SHUTDOWN, DecodeJob, SamplingCancelled, WorkerJob, loaded,
    cancel_key, decode, delete_bytes, done_key, error_key, failed_ranks_key, get_bytes, job_key, pack_version,
    preview_key, progress_key, put_bytes, ready_key, request_key, result_key,
)

WORKER_SCRIPT = Path(__file__).resolve().parent / "worker.py"
LOOPBACK = "127.0.0.1"
ADDRESS_VARIABLE = "OPENSORA_PARALLEL_ADDRESS"
RENDEZVOUS_ID = "opensora-workers"
# torchrun would otherwise open a store of its own for the workers (on all interfaces, another port).
TORCHRUN_ENVIRONMENT = {"TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "1"}
WILDCARD_ADDRESSES = ("0.0.0.0", "::")


def listen_address(address: str = "") -> str:
    """The address the control store listens on: ``address``, else ``OPENSORA_PARALLEL_ADDRESS``, else loopback."""
    return address.strip() or os.environ.get(ADDRESS_VARIABLE, "").strip() or LOOPBACK


DEVICE_TYPES = ("cuda", "cpu")


class WorkerGroupError(RuntimeError):
    """The worker group could not start or stopped; the message says why and what to change."""


class WorkerGroupDied(WorkerGroupError):
    """A worker process ended during a job; the group is gone and is started again on the next run."""


@dataclass(frozen=True)
class GroupSettings:
    """What identifies a warm group: processes per host, device type, the store's port, the number of hosts
    and the address the store listens on ("" = ``OPENSORA_PARALLEL_ADDRESS`` or 127.0.0.1). Every host
    runs ``ranks`` processes. ``join_timeout`` (seconds to wait for all ranks) does not identify a group."""

    ranks: int = 2
    device: str = "cuda"
    port: int = 29600
    hosts: int = 1
    address: str = ""
    join_timeout: float = field(default=300.0, compare=False)

    @property
    def world_size(self) -> int:
        """Ranks of the whole group, over all hosts."""
        return self.ranks * self.hosts

    def validate(self) -> None:
        """Raise a ValueError naming the setting to change when this group cannot be started here."""
        if self.ranks < 1:
            raise ValueError("ranks must be at least 1.")
        if self.hosts < 1:
            raise ValueError("hosts must be at least 1.")
        if self.join_timeout <= 0:
            raise ValueError("join_timeout must be positive.")
        if self.device not in DEVICE_TYPES:
            raise ValueError(f"device must be one of {DEVICE_TYPES}, not {self.device!r}.")
        if not 1024 <= self.port <= 65534:
            raise ValueError(f"port {self.port} is outside 1024..65534.")
        if self.device == "cuda":
            visible = torch.cuda.device_count() if torch.cuda.is_available() else 0
            if self.ranks > visible:
                raise ValueError(
                    f"ranks={self.ranks} needs {self.ranks} CUDA GPUs but {visible} are visible to ComfyUI: lower "
                    "ranks (one worker per GPU), check CUDA_VISIBLE_DEVICES, or choose device 'cpu' (slow, for tests)."
                )


def _port_in_use_error(port: int, what: str) -> WorkerGroupError:
    return WorkerGroupError(
        f"Port {port} ({what}) is in use by another program or worker group: choose another port on "
        "'Open-Sora Parallel Settings'."
    )


def _listening_socket(address: str, port: int) -> socket.socket:
    """A TCP socket bound to ``address:port`` and listening (the store serves on it, on no other interface)."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.bind((address, port))
        sock.listen(128)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRNOTAVAIL:
            raise WorkerGroupError(f"{address} (the address input or {ADDRESS_VARIABLE}) is not an address of this "
                                   "machine: give one of its own addresses, or leave it empty for 127.0.0.1.") from exc
        if isinstance(exc, socket.gaierror) or exc.errno == errno.EAFNOSUPPORT:
            raise WorkerGroupError(f"{address} (the address input or {ADDRESS_VARIABLE}) is not a usable address "
                                   f"of this machine: {exc}.") from exc
        raise _port_in_use_error(port, "control store") from exc
    return sock


def _loopback_interfaces(address: str) -> dict[str, str]:
    """On loopback, the collectives' own sockets stay off the network too."""
    return {"GLOO_SOCKET_IFNAME": "lo", "NCCL_SOCKET_IFNAME": "lo"} if address == LOOPBACK else {}


def _worker_environment(address: str) -> dict[str, str]:
    env = dict(os.environ, PYTHONUNBUFFERED="1", **TORCHRUN_ENVIRONMENT)
    for name, value in _loopback_interfaces(address).items():
        env.setdefault(name, value)
    return env


def _torchrun_arguments(settings: GroupSettings, address: str) -> list[str]:
    """torchrun's options and the worker's arguments, the same on every host (c10d rendezvous in the store).
    The launchers wait a minute longer than the sampler, so that it is the sampler that reports a missing host."""
    launcher_wait = int(settings.join_timeout) + 60
    return [
        f"--nnodes={settings.hosts}", f"--nproc-per-node={settings.ranks}", "--rdzv-backend=c10d",
        f"--rdzv-endpoint={_endpoint(address, settings.port)}",
        f"--rdzv-conf=is_host=false,join_timeout={launcher_wait},read_timeout={launcher_wait}",
        f"--rdzv-id={RENDEZVOUS_ID}",
        "--max-restarts=0", str(WORKER_SCRIPT), "--store-host", address, "--store-port", str(settings.port),
        "--device", settings.device,
    ]


def _endpoint(address: str, port: int) -> str:
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


def join_command(settings: GroupSettings, python: str = "python") -> str:
    """The shell command that starts one other host's ranks of the group for ``settings``.

    Run on each other host (``python`` of an environment with the pack's requirements; the path of the
    worker is this host's, so the pack must be at that path there too or the path changed).
    """
    address = listen_address(settings.address)
    if address in WILDCARD_ADDRESSES:  # listening everywhere: the others need a name of this machine
        address = socket.gethostname()
    variables = {**TORCHRUN_ENVIRONMENT, **_loopback_interfaces(address)}
    words = [f"{name}={value}" for name, value in variables.items()]
    words += [python, "-m", "torch.distributed.run", *_torchrun_arguments(settings, address)]
    return shlex.join(words)


class WorkerGroup:
    """One running torchrun group of sampling workers (start it with :meth:`start`)."""

    def __init__(self, settings: GroupSettings):
        self.settings = settings
        self.store: dist.TCPStore | None = None
        self.process: subprocess.Popen | None = None
        self.folder: Path | None = None
        self._log = None
        self._next_job = 1
        self.ranks_facts: list[dict] = []  # each rank's host, pid and pack version (protocol.rank_facts)
        self.last_outcome: dict = {}  # rank 0's report of the last finished job (sampling_seconds, peak memory)

    # ------------------------------------------------------------------------------- lifecycle

    def start(self) -> "WorkerGroup":
        """Launch the workers and wait until every rank has joined; raises WorkerGroupError otherwise."""
        settings = self.settings
        settings.validate()
        address = listen_address(settings.address)
        listening = _listening_socket(address, settings.port)
        try:
            self.store = dist.TCPStore(address, settings.port, is_master=True, wait_for_workers=False,
                                       timeout=timedelta(seconds=30), master_listen_fd=listening.fileno())
        except (RuntimeError, OSError) as exc:
            listening.close()
            raise _port_in_use_error(settings.port, "control store") from exc
        listening.detach()  # the store owns the descriptor now and closes it with itself
        self.folder = Path(tempfile.mkdtemp(prefix="opensora-parallel-"))
        self._log = open(self.folder / "workers.log", "wb")
        local_address = [] if address in WILDCARD_ADDRESSES else [f"--local-addr={address}"]
        command = [sys.executable, "-m", "torch.distributed.run", *local_address,
                   *_torchrun_arguments(settings, address)]
        env = _worker_environment(address)
        self.process = subprocess.Popen(command, stdout=self._log, stderr=subprocess.STDOUT, env=env,
                                        start_new_session=True)
        try:
            self._wait_for_ranks()
        except WorkerGroupError:
            self.shutdown(wait=False)
            raise
        return self

    def _wait_for_ranks(self) -> None:
        """Wait until every rank (of every host) is ready, then check they form the group asked for."""
        settings = self.settings
        wait = settings.join_timeout
        deadline = time.monotonic() + wait
        keys = [ready_key(r) for r in range(settings.world_size)]
        while not self.store.check(keys):
            if self.process.poll() is not None:
                raise WorkerGroupError(f"The worker group failed to start:\n{self.log_tail()}")
            if self.store.check([ready_key(0)]):
                self._check_world(self._rank_facts(0)["world"])
            if time.monotonic() > deadline:
                raise WorkerGroupError(self._timeout_message(wait))
            time.sleep(POLL_SECONDS)
        facts = [self._rank_facts(rank) for rank in range(settings.world_size)]
        self._check_world(facts[0]["world"])
        _check_same_pack(facts)
        self.ranks_facts = facts

    def _rank_facts(self, rank: int) -> dict:
        """What rank ``rank`` reported when it joined (:func:`protocol.rank_facts`)."""
        try:
            facts = decode(self.store.get(ready_key(rank)))
        except ValueError:
            facts = None
        if not isinstance(facts, dict):  # a pack from before ranks reported their facts wrote "1"
            raise WorkerGroupError(
                f"Rank {rank} runs an older version of ComfyUI-OpenSora than this ComfyUI (version "
                f"{pack_version()['release']}): install the same version on every host.")
        return facts

    def _check_world(self, world: int) -> None:
        if world != self.settings.world_size:
            raise WorkerGroupError(
                f"The worker group formed with {world} ranks, but the settings ask for ranks x hosts = "
                f"{self.settings.ranks} x {self.settings.hosts} = {self.settings.world_size}: start every other "
                f"host with --nproc-per-node {self.settings.ranks} (the command below), or change ranks / "
                f"hosts.\n{join_command(self.settings)}")

    def _timeout_message(self, waited: float) -> str:
        settings = self.settings
        ready = sum(self.store.check([ready_key(r)]) for r in range(settings.world_size))
        if settings.hosts == 1:
            return (f"The worker group did not start within {waited:.0f} s ({ready} of {settings.world_size} "
                    f"ranks ready). Last output:\n{self.log_tail(10)}")
        address = listen_address(settings.address)
        others = "the other host" if settings.hosts == 2 else f"each of the {settings.hosts - 1} other hosts"
        reach = (f" The store listens on {address}, which other machines cannot reach: set the address input "
                 f"(or {ADDRESS_VARIABLE}) to an address of this machine that they can reach."
                 if address == LOOPBACK else
                 f" Check that the other hosts can reach {address} port {settings.port} (firewall).")
        return (f"The other hosts did not join the worker group within {waited:.0f} s ({ready} of "
                f"{settings.world_size} ranks ready; join_timeout on 'Open-Sora Parallel Settings'). Run this on "
                f"{others} (the same version of the pack, its worker.py path changed if it is elsewhere there; "
                f"the checkpoints at the same paths as here), then queue again:\n{join_command(settings)}\n"
                f"{reach.strip()}")

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def worker_pids(self) -> list[int]:
        """Process ids of the ranks, in rank order (on their own hosts)."""
        return [facts["pid"] for facts in self.ranks_facts]

    def shutdown(self, timeout: float = 10.0, wait: bool = True) -> None:
        """Ask the workers (on every host) to exit, stop this host's if they do not within ``timeout`` (at once
        when not ``wait``: a launcher still in the rendezvous or ranks stuck in a collective with a dead
        rank cannot see the request), and remove the temporary folder."""
        if self.process is not None and self.process.poll() is None:
            stopped = False
            try:
                self.store.set(SHUTDOWN, "1")  # also for the ranks on other hosts
                if wait:
                    self.process.wait(timeout=timeout)
                    stopped = True
                    self._wait_for_other_hosts(timeout)
            except (subprocess.TimeoutExpired, RuntimeError):
                pass
            if not stopped:
                if hasattr(os, "killpg"):  # the launcher and its workers form their own session
                    os.killpg(self.process.pid, signal.SIGTERM)
                else:
                    self.process.terminate()
                self.process.wait(timeout=timeout)
        self.process = None
        self.store = None
        if self._log is not None:
            self._log.close()
            self._log = None
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)
            self.folder = None

    def _wait_for_other_hosts(self, timeout: float) -> None:
        """Keep the store until the other hosts' ranks have seen the shutdown and left (their launchers then
        end with exit code 0, ready to join again) or ``timeout`` passes."""
        deadline = time.monotonic() + timeout
        while self.settings.hosts > 1 and self.store.add(LEFT, 0) < self.settings.world_size:
            if time.monotonic() > deadline:
                return
            time.sleep(POLL_SECONDS)

    def log_tail(self, lines: int = 30) -> str:
        if self.folder is None:
            return ""
        text = (self.folder / "workers.log").read_text(errors="replace")
        return "\n".join(text.splitlines()[-lines:])

    # ------------------------------------------------------------------------------------ jobs

    def run(self, job: WorkerJob | DecodeJob, on_progress: Callable[[int, torch.Tensor | None], None] | None = None,
            cancel_requested: Callable[[], bool] | None = None) -> torch.Tensor:
        """Send ``job``, report finished steps to ``on_progress``, and return the final latent (a
        :class:`DecodeJob`: the frames, its progress in rank 0's work units).

        ``on_progress(steps_done, preview)`` gets, when ``job.preview`` is set, the latest step's
        estimate of the clean first frame ``[1, C, 1, H', W']`` (else ``None``).

        When ``cancel_requested()`` turns true the workers stop after their current step and
        :class:`SamplingCancelled` is raised. Raises :class:`WorkerGroupError` when the job failed on
        the workers (the group stays usable) and :class:`WorkerGroupDied` when a worker ended.
        """
        if not self.alive():
            raise WorkerGroupDied("The worker group is not running.")
        number = self._next_job
        self._next_job += 1
        put_bytes(self.store, request_key(number), job.to_bytes())
        self.store.set(job_key(number), "1")
        reported, cancel_sent = 0, False
        try:
            while not self.store.check([done_key(number)]):
                if self.process.poll() is not None or self.store.check([failed_ranks_key(number)]):
                    message = self._death_message(number)
                    self.shutdown(wait=False)
                    raise WorkerGroupDied(message)
                if on_progress is not None and self.store.check([progress_key(number)]):
                    done = int(self.store.get(progress_key(number)))
                    if done > reported:
                        reported = done
                        on_progress(done, self._preview(number, job))
                if not cancel_sent and cancel_requested is not None and cancel_requested():
                    self.store.set(cancel_key(number), "1")
                    cancel_sent = True
                time.sleep(POLL_SECONDS)
            outcome = self.last_outcome = decode(self.store.get(done_key(number)))
            if outcome["status"] == CANCELLED:
                raise SamplingCancelled(outcome["steps"])
            if outcome["status"] == FAILED:
                raise WorkerGroupError(f"The workers could not run the job: {outcome['message']}")
            if outcome["status"] != OK:
                raise WorkerGroupError(f"Unexpected worker outcome {outcome}.")
            if on_progress is not None and reported < job.progress_total:
                on_progress(job.progress_total, self._preview(number, job))
            return loaded(get_bytes(self.store, result_key(number)))
        finally:
            if self.store is not None:  # the job's data would otherwise stay in this process's memory
                for key in (request_key(number), result_key(number)):
                    delete_bytes(self.store, key)
                for key in (job_key(number), preview_key(number), progress_key(number), cancel_key(number)):
                    self.store.delete_key(key)

    def _preview(self, job: int, work: WorkerJob | DecodeJob) -> torch.Tensor | None:
        return loaded(self.store.get(preview_key(job))) if work.preview else None

    def _death_message(self, job: int) -> str:
        code = self.process.poll()
        errors = [self.store.get(error_key(job, r)).decode() for r in range(self.settings.world_size)
                  if self.store.check([error_key(job, r)])]
        lines = errors[0].strip().splitlines() if errors else []
        detail = "\n".join(lines[:1] + lines[max(1, len(lines) - 6):]) if errors else self.log_tail()
        ended = "torchrun on this host still running" if code is None else f"torchrun exit code {code}"
        rejoin = (" (the other hosts then run their join command again)" if self.settings.hosts > 1 else "")
        return (f"A sampling worker stopped ({ended}); the worker group will be started again on the next "
                f"run{rejoin}. Cause:\n{detail}")


def _check_same_pack(facts: list[dict]) -> None:
    """Raise when a rank runs another copy of the pack's worker code than this process."""
    here = pack_version()
    for rank in facts:
        if rank.get("version") != here:
            theirs = rank.get("version") or {"release": "older than 0.1.0", "code": "?"}
            raise WorkerGroupError(
                f"Rank {rank['rank']} on host {rank['host']} runs the pack at {rank['pack']} in version "
                f"{theirs['release']} (worker code {theirs['code']}), this ComfyUI runs version {here['release']} "
                f"(worker code {here['code']}): install the same version of ComfyUI-OpenSora on every host.")
