"""``manifest.jsonl``: one JSON line per finished generation, appended as generations finish.

Every rank of a job (on every host that shares the output folder) appends to the same file. Each line
is one ``write`` on a file opened in append mode, then flushed and fsync'ed: O_APPEND places each write
at the end of the file, so lines of different ranks do not interleave, and a line is on disk before
the next generation starts. A job killed mid-line leaves at most one broken last line, which
:func:`read_manifest` skips.
"""

from __future__ import annotations

import json
import os
import resource
import socket
import sys
from pathlib import Path
from typing import Any

MANIFEST_NAME = "manifest.jsonl"


def append_record(path: Path, record: dict[str, Any]) -> None:
    """Append ``record`` as one line (one write, flushed and fsync'ed)."""
    line = json.dumps(record, ensure_ascii=False, sort_keys=True) + "\n"
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(line)
        handle.flush()
        os.fsync(handle.fileno())


def read_manifest(path: Path) -> list[dict[str, Any]]:
    """The records of a manifest (none when it does not exist; an unfinished line is skipped)."""
    if not path.is_file():
        return []
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def reset_peak_memory(device: str) -> None:
    """Start a generation's peak-memory count (CUDA only; on CPU the process peak is all there is)."""
    if device.startswith("cuda"):
        import torch

        torch.cuda.reset_peak_memory_stats(torch.device(device))


def peak_memory(device: str) -> tuple[int, str]:
    """``(bytes, what was measured)``: the generation's CUDA peak allocation, or the process's peak RSS on CPU."""
    if device.startswith("cuda"):
        import torch

        return int(torch.cuda.max_memory_allocated(torch.device(device))), "cuda_max_allocated"
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024), "process_max_rss"


def host_name() -> str:
    return socket.gethostname()
