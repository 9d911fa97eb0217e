"""Load time and peak host RAM of loading an MMDiT checkpoint, measured in a fresh process.

Writes a random checkpoint in the official key layout (bf16, like Open_Sora_v2.safetensors) with the
real width (3072) and fewer blocks, then loads it with ``loaders.mmdit.load_mmdit`` in a new Python
process per weight dtype and reports, from ``/proc/self/status``:

* ``baseline``  resident memory after importing torch and the pack (before loading);
* ``peak``      the high-water mark (VmHWM) minus the baseline, while loading and then touching every
                weight once (CPU loads are memory-mapped and lazy until a weight is used);
* ``ratio``     peak / bytes of the loaded weights (the goal: at most 1.1).

  python benchmarks/load_memory.py                        # 1.35 GB checkpoint, bf16 and fp8 loads
  python benchmarks/load_memory.py --preset wide-3gb --weight-dtypes bf16
  python benchmarks/load_memory.py --file /models/diffusion_models/Open_Sora_v2.safetensors --device cuda
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from common import LOAD_PRESETS, gib, host_memory, machine_description, random_model

_CHILD = "--child"


def write_checkpoint(path: Path, preset: str) -> int:
    """Write a random bf16 checkpoint for a load preset, one block at a time; returns its size."""
    from safetensors.torch import save_file

    model = random_model(LOAD_PRESETS[preset], torch.bfloat16, "cpu")
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path.stat().st_size


def child(path: str, weight_dtype: str, device: str) -> None:
    """Runs in the fresh process: load, touch every weight, print one JSON line."""
    from comfyui_opensora.loaders.mmdit import load_mmdit
    from comfyui_opensora.models.dtypes import WEIGHT_DTYPES
    from comfyui_opensora.models.fp8 import parameter_bytes

    before = host_memory()
    start = time.perf_counter()
    model = load_mmdit(path, WEIGHT_DTYPES[weight_dtype], device)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    load_seconds = time.perf_counter() - start
    after_load = host_memory()
    checksum = 0.0
    for param in model.parameters():  # make lazily mapped weights resident, as the first step would
        checksum += float(param[..., :1].float().sum()) + float(param.view(-1)[-1:].float().sum())
        param.view(torch.uint8 if param.element_size() == 1 else torch.int16).max()
    touched_seconds = time.perf_counter() - start
    after = host_memory()
    print(json.dumps(dict(
        weight_dtype=weight_dtype, device=device, load_seconds=load_seconds, load_and_touch_seconds=touched_seconds,
        weight_bytes=parameter_bytes(model), baseline_rss=before["VmRSS"],
        peak_after_load=after_load["VmHWM"] - before["VmRSS"], peak=after["VmHWM"] - before["VmRSS"],
        rss_anon=after["RssAnon"], rss_file=after["RssFile"],
    )))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=sorted(LOAD_PRESETS), default="wide-1.4gb")
    parser.add_argument("--file", help="load this checkpoint instead of writing a random one")
    parser.add_argument("--weight-dtypes", default="bf16,fp8_e4m3fn")
    parser.add_argument("--device", default="cpu", help="where load_mmdit puts the weights")
    parser.add_argument("--json", help="also write the results to this file")
    parser.add_argument(_CHILD, nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(*args.child)
        return

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(args.file) if args.file else Path(tmp) / f"{args.preset}.safetensors"
        if not args.file:
            write_checkpoint(path, args.preset)
        size = path.stat().st_size
        print(f"# {machine_description(torch.device(args.device))}; checkpoint {path.name}: {gib(size)}")
        results = []
        for weight_dtype in args.weight_dtypes.split(","):
            output = subprocess.run([sys.executable, __file__, _CHILD, str(path), weight_dtype, args.device],
                                    check=True, capture_output=True, text=True).stdout
            result = json.loads(output.strip().splitlines()[-1])
            result["file_bytes"] = size
            results.append(result)
            print(f"{weight_dtype:>10} -> {args.device}: load {result['load_seconds']:.2f} s "
                  f"(+touch {result['load_and_touch_seconds']:.2f} s), weights {gib(result['weight_bytes'])}, "
                  f"peak host RAM {gib(result['peak'])} = {result['peak'] / result['weight_bytes']:.3f}x weights "
                  f"(after load only {gib(result['peak_after_load'])}), baseline {gib(result['baseline_rss'])}",
                  flush=True)
    if args.json:
        with open(args.json, "w") as out:
            json.dump(dict(machine=machine_description(torch.device(args.device)), results=results), out, indent=1)


if __name__ == "__main__":
    main()
