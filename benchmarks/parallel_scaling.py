"""Scaling of sequence-parallel sampling with 1..N ranks on warm worker groups.

For each rank count a worker group is started (torchrun, CPU/gloo or GPU/NCCL), one warm-up job
loads the checkpoint, then a timed job runs; the table gives seconds per step measured on rank 0
around the denoising loop (loading excluded), the speed-up over 1 rank, and on GPUs rank 0's peak
memory. In-process sampling on one device is timed as the baseline (on the CPU every process,
the baseline included, uses one thread, so N ranks use N cores).

    python benchmarks/parallel_scaling.py --device cpu --max-ranks 2            # small synthetic model
    python benchmarks/parallel_scaling.py --device cuda --max-ranks 8 \
        --checkpoint models/diffusion_models/Open_Sora_v2.safetensors --dtype bf16 --height 768 --width 768

Without ``--checkpoint`` a random model of ``--hidden``/``--heads``/``--depth`` is written to a
temporary file (official key layout). Needs ``yunchang`` (``pip install yunchang``).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import tempfile
import time
from pathlib import Path

import torch

from common import PACK_ROOT  # imports the pack as comfyui_opensora
sys.path.insert(0, str(PACK_ROOT / "tests"))

from comfyui_opensora.loaders.mmdit import load_mmdit  # noqa: E402
from comfyui_opensora.loaders.mmdit_setup import MMDiTSetup  # noqa: E402
from comfyui_opensora.models.dtypes import WEIGHT_DTYPES  # noqa: E402
from comfyui_opensora.models.mmdit import MMDiTConfig  # noqa: E402
from comfyui_opensora.parallel.group import GroupSettings, WorkerGroup  # noqa: E402
from comfyui_opensora.parallel.layout import ParallelLayout  # noqa: E402
from comfyui_opensora.parallel.protocol import WorkerJob  # noqa: E402
from comfyui_opensora.samplers import denoisers  # noqa: E402
from comfyui_opensora.samplers.geometry import VideoGeometry  # noqa: E402
from comfyui_opensora.samplers.request import SamplingRequest, run_sampling  # noqa: E402
from factories_mmdit import write_tiny_mmdit  # noqa: E402


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _request(args, checkpoint: str, config: MMDiTConfig, steps: int, layout: ParallelLayout) -> WorkerJob:
    geometry = VideoGeometry(args.height, args.width, args.frames)
    g = torch.Generator().manual_seed(0)
    channels = config.in_channels // config.patch_size**2
    noise = torch.randn(1, channels, geometry.latent_frames, geometry.latent_height, geometry.latent_width, generator=g)
    text = denoisers.TextInputs(
        torch.randn(1, args.text_tokens, config.context_in_dim, generator=g),
        torch.randn(1, config.vec_in_dim, generator=g),
        torch.randn(1, args.text_tokens, config.context_in_dim, generator=g),
        torch.randn(1, config.vec_in_dim, generator=g),
    )
    request = SamplingRequest("i2v", noise, text, torch.linspace(1, 0, steps + 1).tolist(),
                              denoisers.Guidance(7.5, 3.0, text_oscillation=False),
                              policy=denoisers.BranchPolicy(skip_redundant=False, batched=True))
    return WorkerJob(checkpoint, MMDiTSetup(args.dtype), layout, request)


def _layout(ranks: int, heads: int, text: str) -> ParallelLayout:
    import math

    ulysses = math.gcd(ranks, heads)
    return ParallelLayout(ulysses, ranks // ulysses, text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--max-ranks", type=int, default=2)
    parser.add_argument("--checkpoint", help="an MMDiT .safetensors; default: a random model of the sizes below")
    parser.add_argument("--dtype", choices=tuple(WEIGHT_DTYPES), default="fp32")
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--depth", type=int, default=2, help="double blocks; single blocks = 2 x depth")
    parser.add_argument("--height", type=int, default=256)
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--frames", type=int, default=33)
    parser.add_argument("--text-tokens", type=int, default=64)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--text", choices=("split", "replicated"), default="split")
    parser.add_argument("--json", help="also write the rows to this file")
    args = parser.parse_args()

    if args.device == "cpu":  # one thread per process, so that N ranks use N cores against 1 core in-process
        os.environ["OMP_NUM_THREADS"] = "1"
        torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as scratch:
        checkpoint = args.checkpoint
        if checkpoint is None:
            checkpoint = str(Path(scratch) / "random_mmdit.safetensors")
            write_tiny_mmdit(checkpoint, MMDiTConfig(
                in_channels=64, vec_in_dim=64, context_in_dim=128, hidden_size=args.hidden, num_heads=args.heads,
                depth=args.depth, depth_single_blocks=2 * args.depth,
                axes_dim=_axes(args.hidden // args.heads)))
        device = torch.device("cuda" if args.device == "cuda" else "cpu")
        setup = MMDiTSetup(args.dtype)
        model = load_mmdit(checkpoint, dtype=setup.storage_dtype, device=device)
        config = model.config
        request = _request(args, checkpoint, config, args.steps, ParallelLayout())
        tokens = request.sampling.noise[0, 0].numel() // config.patch_size**2
        print(f"model: hidden {config.hidden_size}, heads {config.num_heads}, blocks {config.depth}+"
              f"{config.depth_single_blocks}, {args.dtype}; sequence: {tokens} image + {args.text_tokens} text "
              f"tokens, batch 3 (CFG); {args.steps} steps; device {args.device}")

        warm_up = _request(args, checkpoint, config, 1, ParallelLayout()).sampling
        run_sampling(model, warm_up, device, setup.compute_dtype)
        if device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        started = time.perf_counter()
        run_sampling(model, request.sampling, device, setup.compute_dtype)
        if device.type == "cuda":
            torch.cuda.synchronize()
        baseline = (time.perf_counter() - started) / args.steps
        peak = torch.cuda.max_memory_allocated() if device.type == "cuda" else None
        del model
        rows = [{"ranks": "in-process", "layout": "-", "seconds_per_step": baseline, "speedup": 1.0,
                 "peak_memory_bytes": peak}]

        for ranks in range(1, args.max_ranks + 1):
            layout = _layout(ranks, config.num_heads, args.text)
            group = WorkerGroup(GroupSettings(ranks, args.device, _free_port())).start()
            try:
                group.run(_request(args, checkpoint, config, 1, layout))  # loads the checkpoint, warms up
                group.run(_request(args, checkpoint, config, args.steps, layout))
                outcome = group.last_outcome
            finally:
                group.shutdown()
            per_step = outcome["sampling_seconds"] / args.steps
            rows.append({"ranks": ranks, "layout": f"ulysses {layout.ulysses_degree} x ring {layout.ring_degree}",
                         "seconds_per_step": per_step, "speedup": baseline / per_step,
                         "peak_memory_bytes": outcome["peak_memory_bytes"]})

    print("| ranks | layout | s/step | speed-up vs in-process | peak memory rank 0 |")
    print("| --- | --- | --- | --- | --- |")
    for row in rows:
        memory = "-" if row["peak_memory_bytes"] is None else f"{row['peak_memory_bytes'] / 2**30:.2f} GiB"
        print(f"| {row['ranks']} | {row['layout']} | {row['seconds_per_step']:.3f} | {row['speedup']:.2f}x "
              f"| {memory} |")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


def _axes(head_dim: int) -> tuple[int, int, int]:
    """A (t, h, w) RoPE split of ``head_dim`` in even parts (the released 128 = 16 + 56 + 56)."""
    if head_dim == 128:
        return (16, 56, 56)
    third = (head_dim // 3) // 2 * 2
    return (head_dim - 2 * third, third, third)


if __name__ == "__main__":
    main()
