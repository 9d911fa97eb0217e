"""The sampler's side of a warm worker group: launch with torchrun, send jobs, follow them.

The group is ``python -m torch.distributed.run --nproc-per-node N worker.py ...`` started as a
subprocess (its own session, output in ``workers.log`` of a private temporary folder). The sampler
hosts a ``torch.distributed.TCPStore`` on ``port`` for signalling; torchrun's rendezvous and the
workers' process group meet in that same store, so the group opens no other listening port.
Requests and results are files in the temporary folder.

Exposure: every socket listens on 127.0.0.1 unless the user sets ``OPENSORA_PARALLEL_ADDRESS``. PyTorch's
TCPStore would listen on all interfaces, so the store is handed a socket already bound to the address;
torchrun is told to use it (c10d rendezvous, not its own store) and the workers' gloo/NCCL sockets are
kept on the loopback interface (``GLOO_SOCKET_IFNAME``/``NCCL_SOCKET_IFNAME``, unless already set).
"""

from __future__ import annotations

import errno
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Callable

import torch
import torch.distributed as dist

from .protocol import (
    CANCELLED, FAILED, OK, POLL_SECONDS, SHUTDOWN, SamplingCancelled, WorkerJob, cancel_key, decode, done_key,
    encode, error_key, job_key, pid_key, progress_key, ready_key,
)

WORKER_SCRIPT = Path(__file__).resolve().parent / "worker.py"
LOOPBACK = "127.0.0.1"
ADDRESS_VARIABLE = "OPENSORA_PARALLEL_ADDRESS"
RENDEZVOUS_ID = "opensora-workers"


def listen_address() -> str:
    """The address the control store listens on: loopback unless the user names another interface."""
    return os.environ.get(ADDRESS_VARIABLE, "").strip() or LOOPBACK


DEVICE_TYPES = ("cuda", "cpu")


class WorkerGroupError(RuntimeError):
    """The worker group could not start or stopped; the message says why and what to change."""


class WorkerGroupDied(WorkerGroupError):
    """A worker process ended during a job; the group is gone and is started again on the next run."""


@dataclass(frozen=True)
class GroupSettings:
    """What identifies a warm group: processes, device type and the ports it uses."""

    ranks: int = 2
    device: str = "cuda"
    port: int = 29600

    def validate(self) -> None:
        """Raise a ValueError naming the setting to change when this group cannot be started here."""
        if self.ranks < 1:
            raise ValueError("ranks must be at least 1.")
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
            raise WorkerGroupError(f"{ADDRESS_VARIABLE}={address} is not an address of this machine.") from exc
        raise _port_in_use_error(port, "control store") from exc
    return sock


def _worker_environment(address: str) -> dict[str, str]:
    env = dict(os.environ, PYTHONUNBUFFERED="1", TORCH_DISABLE_SHARE_RDZV_TCP_STORE="1")
    if address == LOOPBACK:  # keep the collectives' own sockets off the network too
        env.setdefault("GLOO_SOCKET_IFNAME", "lo")
        env.setdefault("NCCL_SOCKET_IFNAME", "lo")
    return env


class WorkerGroup:
    """One running torchrun group of sampling workers (start it with :meth:`start`)."""

    def __init__(self, settings: GroupSettings, startup_timeout: float = 300.0):
        self.settings = settings
        self.startup_timeout = startup_timeout
        self.store: dist.TCPStore | None = None
        self.process: subprocess.Popen | None = None
        self.folder: Path | None = None
        self._log = None
        self._next_job = 1
        self.last_outcome: dict = {}  # rank 0's report of the last finished job (sampling_seconds, peak memory)

    # ------------------------------------------------------------------------------- lifecycle

    def start(self) -> "WorkerGroup":
        """Launch the workers and wait until every rank has joined; raises WorkerGroupError otherwise."""
        settings = self.settings
        settings.validate()
        address = listen_address()
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
        command = [
            sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={settings.ranks}", "--nnodes=1",
            "--rdzv-backend=c10d", f"--rdzv-endpoint={address}:{settings.port}", "--rdzv-conf=is_host=false",
            f"--rdzv-id={RENDEZVOUS_ID}", f"--local-addr={address}", "--max-restarts=0",
            str(WORKER_SCRIPT), "--store-host", address, "--store-port", str(settings.port),
            "--device", settings.device,
        ]
        env = _worker_environment(address)
        self.process = subprocess.Popen(command, stdout=self._log, stderr=subprocess.STDOUT, env=env,
                                        start_new_session=True)
        deadline = time.monotonic() + self.startup_timeout
        keys = [ready_key(r) for r in range(settings.ranks)]
        while not self.store.check(keys):
            if self.process.poll() is not None:
                message = self.log_tail()
                self.shutdown()
                raise WorkerGroupError(f"The worker group failed to start:\n{message}")
            if time.monotonic() > deadline:
                self.shutdown()
                raise WorkerGroupError(f"The worker group did not start within {self.startup_timeout:.0f} s.")
            time.sleep(POLL_SECONDS)
        return self

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def worker_pids(self) -> list[int]:
        """Process ids of the ranks, in rank order."""
        return [int(self.store.get(pid_key(r))) for r in range(self.settings.ranks)]

    def shutdown(self, timeout: float = 10.0) -> None:
        """Ask the workers to exit, stop them if they do not, and remove the temporary folder."""
        if self.process is not None and self.process.poll() is None:
            try:
                self.store.set(SHUTDOWN, "1")
                self.process.wait(timeout=timeout)
            except (subprocess.TimeoutExpired, RuntimeError):
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

    def log_tail(self, lines: int = 30) -> str:
        if self.folder is None:
            return ""
        text = (self.folder / "workers.log").read_text(errors="replace")
        return "\n".join(text.splitlines()[-lines:])

    # ------------------------------------------------------------------------------------ jobs

    def run(self, job: WorkerJob, on_progress: Callable[[int, torch.Tensor | None], None] | None = None,
            cancel_requested: Callable[[], bool] | None = None) -> torch.Tensor:
        """Send ``job``, report finished steps to ``on_progress``, and return the final latent.

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
        request_path, result_path = self.folder / f"request_{number}.pt", self.folder / f"result_{number}.pt"
        preview_path = self.folder / f"preview_{number}.pt"
        job.save(request_path)
        self.store.set(job_key(number), encode({"request": str(request_path), "result": str(result_path),
                                                "preview": str(preview_path)}))
        reported, cancel_sent = 0, False
        try:
            while not self.store.check([done_key(number)]):
                if self.process.poll() is not None:
                    raise WorkerGroupDied(self._death_message(number))
                if on_progress is not None and self.store.check([progress_key(number)]):
                    done = int(self.store.get(progress_key(number)))
                    if done > reported:
                        reported = done
                        on_progress(done, _load_preview(preview_path, job))
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
            if on_progress is not None and reported < job.num_steps:
                on_progress(job.num_steps, _load_preview(preview_path, job))
            return torch.load(result_path, weights_only=True)
        finally:
            for path in (request_path, result_path, preview_path):
                path.unlink(missing_ok=True)

    def _death_message(self, job: int) -> str:
        code = self.process.returncode
        errors = [self.store.get(error_key(job, r)).decode() for r in range(self.settings.ranks)
                  if self.store.check([error_key(job, r)])]
        detail = "\n".join(errors[0].strip().splitlines()[-6:]) if errors else self.log_tail()
        return (f"A sampling worker stopped (torchrun exit code {code}); the worker group will be started "
                f"again on the next run. Cause:\n{detail}")


def _load_preview(path: Path, job: WorkerJob) -> torch.Tensor | None:
    return torch.load(path, weights_only=True) if job.preview else None
