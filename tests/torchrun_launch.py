"""Launching test scripts under torchrun on this machine only (gloo over the loopback interface)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free now (for a rendezvous or a store)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def loopback_environment() -> dict[str, str]:
    """This environment with one thread per rank and gloo kept on the loopback interface."""
    environment = dict(os.environ, OMP_NUM_THREADS="1")
    if sys.platform.startswith("linux"):
        environment.setdefault("GLOO_SOCKET_IFNAME", "lo")
    return environment


def run_ranks(script: Path, arguments: list[str], ranks: int, timeout_s: float) -> str:
    """Run ``script arguments...`` as ``ranks`` torchrun processes on 127.0.0.1; assert that all of them
    succeed within ``timeout_s`` (a hung job is killed with its whole process group) and return the log."""
    launch = subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc-per-node", str(ranks),
         "--master-addr", "127.0.0.1", "--master-port", str(free_port()), str(script), *arguments],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=loopback_environment(),
        start_new_session=True)
    try:
        log = launch.communicate(timeout=timeout_s)[0]
    finally:
        if launch.poll() is None:
            os.killpg(launch.pid, signal.SIGKILL)
            launch.wait()
    assert launch.returncode == 0, log[-4000:]
    return log
