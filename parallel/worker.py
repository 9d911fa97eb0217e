"""Entry script of one sampling worker, started by torchrun (one process per GPU).

The sampler starts this host's ranks itself; with ``hosts`` > 1 on the Parallel Settings node every
other host joins with (``group.join_command`` prints it, filled in, when a host is missing):

    TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1 python -m torch.distributed.run --nnodes=HOSTS \
        --nproc-per-node=RANKS --rdzv-backend=c10d --rdzv-endpoint=ADDRESS:PORT \
        --rdzv-conf=is_host=false,join_timeout=360,read_timeout=360 --rdzv-id=opensora-workers \
        --max-restarts=0 <pack>/parallel/worker.py --store-host ADDRESS --store-port PORT --device cuda

It imports the pack by file path with the pack's bootstrap (``__main__.py: import_pack``), without running
the pack's ``__init__`` (so neither ComfyUI nor the node modules are needed), and runs
:func:`parallel.serve.serve`.
"""

from __future__ import annotations

import argparse
import importlib
import runpy
from pathlib import Path

PACKAGE = "opensora_parallel_pack"


def _import_serve():
    bootstrap = runpy.run_path(str(Path(__file__).resolve().parents[1] / "__main__.py"))
    bootstrap["import_pack"](PACKAGE, register_nodes=False)
    return importlib.import_module(f"{PACKAGE}.parallel.serve")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Open-Sora sequence-parallel sampling worker (run by torchrun).")
    parser.add_argument("--store-host", default="127.0.0.1", help="host of the sampler's control TCPStore")
    parser.add_argument("--store-port", type=int, required=True, help="port of the sampler's control TCPStore")
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda", help="cuda: NCCL, cpu: gloo")
    args = parser.parse_args(argv)
    _import_serve().serve(args.store_host, args.store_port, args.device)


if __name__ == "__main__":
    main()
