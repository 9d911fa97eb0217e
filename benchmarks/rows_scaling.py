"""Rows per hour of ``generate --csv`` against the number of torchrun ranks, with the tiny models.

For each rank count (repeat one to measure it again) a fresh output folder gets the same table from ``torchrun --standalone
--nproc-per-node N <pack> generate ...`` (on the CPU every rank has one thread, so N ranks use N
cores). Two figures per run: end to end (the command's wall time, start-up and model loading
included) and steady (``ranks * 3600 / mean seconds per generation`` from ``manifest.jsonl``).

    python benchmarks/rows_scaling.py --ranks 1,2 --rows 8                 # CPU, tiny random models
    python benchmarks/rows_scaling.py --ranks 1,2,4,8 --rows 64 --device cuda --models-dir models \\
        --extra "--resolution 256px --steps 50"                           # the released weights on GPUs
    python benchmarks/rows_scaling.py --ranks 2 --extra "--sp-size 2 ..."   # groups of 2 ranks per row

The tiny models make noise; the figures show the scaling of the row sharing, not the model's speed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PACK_ROOT = Path(__file__).resolve().parent.parent
TINY_SETTINGS = "--steps 2 --num-frames 9 --width 48 --height 32 --weight-dtype fp32 --seed 3"


def run_once(ranks: int, table: Path, models: Path, output: Path, device: str, extra: str) -> dict[str, float]:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(ranks),
               str(PACK_ROOT), "generate", "--csv", str(table), "--models-dir", str(models),
               "--output-dir", str(output), "--device", device, *shlex.split(extra)]
    started = time.perf_counter()
    finished = subprocess.run(command, capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"))
    wall = time.perf_counter() - started
    if finished.returncode:
        raise SystemExit(f"{shlex.join(command)} failed:\n{finished.stderr[-3000:]}")
    records = [json.loads(line) for line in (output / "manifest.jsonl").read_text().splitlines()]
    per_generation = sum(record["seconds"] for record in records) / len(records)
    groups = ranks // records[0].get("sp_size", 1)  # --sp-size K: groups of K ranks run one row at a time
    return {"wall_s": wall, "rows": len(records), "s_per_row": per_generation,
            "rows_per_hour": len(records) * 3600 / wall, "steady_rows_per_hour": groups * 3600 / per_generation}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ranks", default="1,2", help="comma-separated rank counts")
    parser.add_argument("--rows", type=int, default=8, help="rows of the generated prompt table")
    parser.add_argument("--device", default="cpu", help="cpu, or cuda (each rank takes cuda:LOCAL_RANK)")
    parser.add_argument("--models-dir", help="models folder (default: tiny models written to a temporary folder)")
    parser.add_argument("--extra", default=TINY_SETTINGS, help="more generate options, one string")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="rows-scaling-") as scratch:
        scratch_dir = Path(scratch)
        models = Path(args.models_dir) if args.models_dir else scratch_dir / "models"
        if not args.models_dir:
            subprocess.run([sys.executable, str(PACK_ROOT), "tiny-models", str(models)], check=True,
                           stdout=subprocess.DEVNULL)
        table = scratch_dir / "table.csv"
        table.write_text("text\n" + "\n".join(f"row {i}: a small boat on a lake" for i in range(args.rows)) + "\n")
        print(f"{platform.node()} ({os.cpu_count()} CPUs), device {args.device}, {args.rows} rows, {args.extra}")
        print(f"{'ranks':>5} {'wall s':>8} {'s/row':>7} {'rows/h':>8} {'steady rows/h':>14}")
        for run, ranks in enumerate(int(count) for count in args.ranks.split(",")):  # a fresh folder per run
            figures = run_once(ranks, table, models, scratch_dir / f"out_{run}", args.device, args.extra)
            print(f"{ranks:>5} {figures['wall_s']:>8.1f} {figures['s_per_row']:>7.2f} "
                  f"{figures['rows_per_hour']:>8.0f} {figures['steady_rows_per_hour']:>14.0f}", flush=True)


if __name__ == "__main__":
    main()
