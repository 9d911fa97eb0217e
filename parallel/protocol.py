"""What the sampler (or the VAE Decode node) hands the worker group, and the TCPStore keys both sides use.

Everything travels through the sampler's control store, so ranks on other hosts need nothing from the
ComfyUI host's disk except the checkpoint or VAE file (same path on every host, checked with its size): the job
is ``torch.save``'d plain tensors and numbers (loaded back with ``weights_only=True``), cut into
pieces under the store's 8 MiB message limit; the result and the latent previews come back the same
way (a decode's frames too). Small signals ride beside them: which job to run, progress, the cancel flag
and the outcome. A request's ``kind`` says whether it samples (:class:`WorkerJob`) or decodes
(:class:`DecodeJob`).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import socket
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from ..loaders.mmdit_setup import MMDiTSetup
from ..models.autoencoder import Tiling
from ..samplers.denoisers import BranchPolicy, Guidance, TextInputs
from ..samplers.geometry import VideoGeometry
from ..samplers.image_condition import ImageCondition
from ..samplers.request import SamplingRequest
from ..samplers.step_cache import StepCacheSettings
from .layout import ParallelLayout

POLL_SECONDS = 0.02  # how often both sides look at the store
PIECE_BYTES = 4 << 20  # one store value; TCPStore refuses messages over 8 MiB

# Store keys.
SHUTDOWN = "shutdown"
LEFT = "left"  # a counter of the ranks that left on SHUTDOWN (the store must outlive the other hosts' ranks)
PROCESS_GROUP_PREFIX = "process_group"  # where the workers' gloo/NCCL group exchanges its addresses


def ready_key(rank: int) -> str:
    """Written by a rank that has joined the process group: its :func:`rank_facts`."""
    return f"ready/{rank}"


def job_key(job: int) -> str:
    return f"job/{job}"


def request_key(job: int) -> str:
    return f"job/{job}/request"


def result_key(job: int) -> str:
    return f"job/{job}/result"


def preview_key(job: int) -> str:
    return f"job/{job}/preview"


def progress_key(job: int) -> str:
    return f"job/{job}/progress"


def cancel_key(job: int) -> str:
    return f"job/{job}/cancel"


def done_key(job: int) -> str:
    return f"job/{job}/done"


def error_key(job: int, rank: int) -> str:
    return f"job/{job}/error/{rank}"


def failed_ranks_key(job: int) -> str:
    """A counter of the ranks that ended during the job (on any host; their message is under error_key)."""
    return f"job/{job}/failed"


# Outcomes written under done_key.
OK, CANCELLED, FAILED = "ok", "cancelled", "failed"


def put_bytes(store: dist.Store, key: str, data: bytes) -> None:
    """Store ``data`` under ``key`` in pieces; ``key`` itself (the piece count) is written last."""
    pieces = [data[start:start + PIECE_BYTES] for start in range(0, len(data), PIECE_BYTES)] or [b""]
    for index, piece in enumerate(pieces):
        store.set(f"{key}/{index}", piece)
    store.set(key, str(len(pieces)))


def get_bytes(store: dist.Store, key: str) -> bytes:
    """What :func:`put_bytes` stored under ``key`` (waits for it)."""
    count = int(store.get(key))
    return b"".join(store.get(f"{key}/{index}") for index in range(count))


def delete_bytes(store: dist.Store, key: str) -> None:
    if store.check([key]):
        for index in range(int(store.get(key))):
            store.delete_key(f"{key}/{index}")
        store.delete_key(key)


def saved_bytes(value: Any) -> bytes:
    """``value`` (plain tensors on the CPU, numbers, strings, dtypes, lists and dicts of them) as bytes."""
    buffer = io.BytesIO()
    torch.save(value, buffer)
    return buffer.getvalue()


def loaded(data: bytes) -> Any:
    """What :func:`saved_bytes` saved (``weights_only``: no code is run)."""
    return torch.load(io.BytesIO(data), weights_only=True)


# ----------------------------------------------------------------------- which copy of the pack runs

PACK_ROOT = Path(__file__).resolve().parents[1]
WORKER_CODE = ("models", "loaders", "samplers", "parallel")  # what a rank runs for a job


def pack_version() -> dict[str, str]:
    """The pack's release (pyproject) and a hash of the code a rank runs: ranks on other hosts must run
    the same code, or they would compute a different video (or misread the protocol)."""
    digest = hashlib.sha256()
    for folder in WORKER_CODE:
        for path in sorted((PACK_ROOT / folder).rglob("*.py")):
            digest.update(path.relative_to(PACK_ROOT).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    found = re.search(r'^version\s*=\s*"([^"]+)"', (PACK_ROOT / "pyproject.toml").read_text(), re.MULTILINE) \
        if (PACK_ROOT / "pyproject.toml").exists() else None
    return {"release": found.group(1) if found else "unknown", "code": digest.hexdigest()[:12]}


def rank_facts(rank: int, world: int) -> dict[str, Any]:
    """What a ready rank tells the sampler: where it runs, the world it joined and its pack version."""
    return {"rank": rank, "world": world, "pid": os.getpid(), "host": socket.gethostname(),
            "node": int(os.environ.get("GROUP_RANK", 0)), "pack": str(PACK_ROOT), "version": pack_version()}


def check_same_file(path: str, expected_bytes: int | None, what: str) -> None:
    """Raise FileNotFoundError / ValueError naming this host when ``path`` is absent or differs in size from
    the ComfyUI host's file (``expected_bytes``)."""
    host = socket.gethostname()
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"the {what} {path} does not exist on host {host}: every host of the group needs "
            "the same file at the same path (copy it there, or mount the same folder at that path).")
    size = os.path.getsize(path)
    if expected_bytes is not None and size != expected_bytes:
        raise ValueError(
            f"the {what} {path} on host {host} has {size} bytes, the ComfyUI host's has "
            f"{expected_bytes}: every host of the group needs the same file at the same path.")


class SamplingCancelled(Exception):
    """The job stopped on a cancel request (all ranks at the same step)."""

    def __init__(self, steps_done: int):
        super().__init__(f"Sampling cancelled after {steps_done} steps.")
        self.steps_done = steps_done


@dataclass(frozen=True)
class WorkerJob:
    """One job for the group: the checkpoint and how the loader prepared it (every rank loads it the same
    way), the token layout, and the sampling request. With ``preview`` rank 0 sends each step's
    estimate of frame 0 for latent previews. ``checkpoint_bytes`` (the file's size on the sampler's
    host) lets ranks on other hosts tell a different file at the same path. The result comes back in
    the compute dtype."""

    checkpoint: str
    setup: MMDiTSetup
    layout: ParallelLayout
    sampling: SamplingRequest
    preview: bool = False
    checkpoint_bytes: int | None = None

    @property
    def num_steps(self) -> int:
        return self.sampling.num_steps

    @property
    def progress_total(self) -> int:
        """What rank 0's progress counts up to: the steps."""
        return self.num_steps

    def to_bytes(self) -> bytes:
        request = self.sampling
        condition = None
        if request.condition is not None:
            c = request.condition
            condition = {"cond_type": c.cond_type, "geometry": asdict(c.geometry), "mask": c.mask,
                         "masked_ref": c.masked_ref}
        text = request.text
        return saved_bytes({
            "kind": SAMPLE,
            "checkpoint": self.checkpoint, "checkpoint_bytes": self.checkpoint_bytes, "setup": asdict(self.setup),
            "layout": asdict(self.layout),
            "preview": self.preview, "method": request.method, "noise": request.noise.cpu(),
            "text": [t.cpu() for t in (text.txt, text.y_vec, text.neg_txt, text.neg_y_vec)],
            "timesteps": [float(t) for t in request.timesteps], "guidance": asdict(request.guidance),
            "distilled_guidance": float(request.distilled_guidance), "policy": asdict(request.policy),
            "condition": condition, "cache": asdict(request.cache),
        })

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "WorkerJob":
        condition = data["condition"]
        if condition is not None:
            condition = ImageCondition(condition["cond_type"], VideoGeometry(**condition["geometry"]),
                                       condition["mask"], condition["masked_ref"])
        request = SamplingRequest(data["method"], data["noise"], TextInputs(*data["text"]), data["timesteps"],
                                  Guidance(**data["guidance"]), data["distilled_guidance"],
                                  BranchPolicy(**data["policy"]), condition, StepCacheSettings(**data["cache"]))
        return cls(data["checkpoint"], MMDiTSetup(**data["setup"]), ParallelLayout(**data["layout"]), request,
                   data["preview"], data["checkpoint_bytes"])

    def check_checkpoint(self) -> None:
        """Raise FileNotFoundError / ValueError naming this host when its checkpoint is absent or differs."""
        check_same_file(self.checkpoint, self.checkpoint_bytes, "checkpoint")


@dataclass(frozen=True)
class DecodeJob:
    """A VAE decode for the group: every rank loads the HunyuanVideo VAE at ``vae`` (same path and size,
    ``vae_bytes``, on every host) in ``dtype``, the decoder passes of ``tiling`` are spread over the ranks
    (:mod:`.shared_decode`) and rank 0 returns the frames ``[B*num_frames, height, width, 3]`` in 0..1.
    They travel in the VAE's dtype: :func:`~..models.autoencoder.to_unit_range` computes them in it, so
    the cast loses nothing and bf16/fp16 halve the bytes. ``progress_total``: rank 0's work units
    (convolutions and attention blocks of its passes), what its progress counts up to."""

    vae: str
    dtype: torch.dtype
    latent: torch.Tensor
    tiling: Tiling
    num_frames: int
    height: int
    width: int
    progress_total: int
    vae_bytes: int | None = None

    preview = False  # decodes send no previews

    def to_bytes(self) -> bytes:
        return saved_bytes({"kind": DECODE, "vae": self.vae, "vae_bytes": self.vae_bytes, "dtype": self.dtype,
                            "latent": self.latent.cpu(), "tiling": asdict(self.tiling), "num_frames": self.num_frames,
                            "height": self.height, "width": self.width, "progress_total": self.progress_total})

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "DecodeJob":
        return cls(data["vae"], data["dtype"], data["latent"], Tiling(**data["tiling"]),
                   data["num_frames"], data["height"], data["width"], data["progress_total"], data["vae_bytes"])

    def check_vae(self) -> None:
        """Raise FileNotFoundError / ValueError naming this host when its VAE file is absent or differs."""
        check_same_file(self.vae, self.vae_bytes, "VAE")


# Job kinds, written under "kind" in the request.
SAMPLE, DECODE = "sample", "decode"


def job_from_bytes(data: bytes) -> WorkerJob | DecodeJob:
    """The job a request holds, of either kind."""
    fields: dict[str, Any] = loaded(data)
    return {SAMPLE: WorkerJob, DECODE: DecodeJob}[fields["kind"]].from_dict(fields)


def encode(value: dict) -> str:
    return json.dumps(value)


def decode(raw: bytes) -> dict:
    return json.loads(raw.decode())
