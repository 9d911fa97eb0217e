"""HunyuanVideo VAE decode (or encode): the pack against the official Open-Sora code, same weights and latent.

Needs a checkout of hpcaitech/Open-Sora (``--reference PATH``; imported unmodified through
``reference_code.py``). Both models get the same random weights at the released widths (bf16 by
default); the latent is random. Time: process CPU time of one thread, the two implementations
alternating in this process, best of ``--repeats``, printed as pack / reference. Outputs are compared
(max and mean abs difference). ``--tiling causal_chunks`` runs the pack's causal-chunk decode against
the official decode with its spatial tiling. ``--memory`` also measures each implementation's peak RSS
above its loaded state, each in a fresh process.

Run: ``python3 benchmarks/vae_side_by_side.py --reference ../Open-Sora --latent 3 24 42``
(9 frames at 192x336, the reference's spatial tiling: about 4 minutes per repeat on one core).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

import torch

import reference_code
from common import machine_description
from comfyui_opensora.models.autoencoder import NO_TILING
from comfyui_opensora.models.dtypes import dtypes_named
from comfyui_opensora.models.hunyuan_vae import HunyuanVAEConfig, HunyuanVideoVAE

DTYPES = dtypes_named("bf16", "fp32")


def build(args):
    torch.manual_seed(0)
    pack = HunyuanVideoVAE(HunyuanVAEConfig()).to(DTYPES[args.dtype]).eval()
    reference = reference_code.reference_hunyuan_vae(args.reference, pack.state_dict(), DTYPES[args.dtype],
                                                     spatial_tiling=args.tiling != "none", temporal_tiling=False)
    pack_tiling = {"reference": None, "none": NO_TILING, "causal_chunks": pack.causal_chunk_tiling()}[args.tiling]
    generator = torch.Generator().manual_seed(1)
    if args.stage == "encode":  # the pixels the latent size stands for, in [-1, 1]
        frames, height, width = 4 * (args.latent[0] - 1) + 1, 8 * args.latent[1], 8 * args.latent[2]
        x = (torch.rand(1, 3, frames, height, width, generator=generator) * 2 - 1).to(DTYPES[args.dtype])
        return {"pack": lambda: pack.encode(x, tiling=pack_tiling),
                "reference": lambda: reference.encode(x, sample_posterior=False)}
    z = torch.randn(1, 16, *args.latent, generator=generator).to(DTYPES[args.dtype])
    return {"pack": lambda: pack.decode(z, pack_tiling), "reference": lambda: reference.decode(z)}


def _status_bytes(field: str) -> int:
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(field)


def memory(args, which: str) -> int:
    """Peak RSS of one decode above the resident memory before it (Linux: the peak is reset after
    building the models, whose float32 construction would otherwise be the high-water mark)."""
    decode = build(args)[which]
    with open("/proc/self/clear_refs", "w") as clear:
        clear.write("5")
    before = _status_bytes("VmRSS")
    with torch.no_grad():
        decode()
    return _status_bytes("VmHWM") - before


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reference", required=True, help="an Open-Sora checkout (hpcaitech/Open-Sora)")
    parser.add_argument("--latent", type=int, nargs=3, default=(3, 24, 42), metavar=("T", "H", "W"))
    parser.add_argument("--stage", choices=("decode", "encode"), default="decode",
                        help="encode: the pixels of that latent size through both encoders (posterior mean)")
    parser.add_argument("--dtype", choices=list(DTYPES), default="bf16")
    parser.add_argument("--tiling", choices=("reference", "none", "causal_chunks"), default="reference")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--memory", action="store_true")
    parser.add_argument("--child", choices=("pack", "reference"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.child:
        print(json.dumps(memory(args, args.child)))
        return
    decoders = build(args)
    best = {name: float("inf") for name in decoders}
    outputs = {}
    with torch.no_grad():
        for _ in range(args.repeats):
            for name, decode in decoders.items():
                start = time.process_time()
                outputs[name] = decode()
                best[name] = min(best[name], time.process_time() - start)
    difference = (outputs["pack"].float() - outputs["reference"].float()).abs()
    print(f"machine: {machine_description(torch.device('cpu'))}; {args.stage}, latent {tuple(args.latent)} {args.dtype}, "
          f"tiling {args.tiling}, best of {args.repeats} alternating")
    print(f"time: pack {best['pack']:.2f} s, reference {best['reference']:.2f} s, "
          f"pack / reference {best['pack'] / best['reference']:.3f}; output difference max abs "
          f"{difference.max().item():.3g}, mean abs {difference.mean().item():.3g}")
    if args.memory:
        argv = [sys.executable, __file__, *sys.argv[1:]]
        peaks = {name: int(subprocess.run([*argv, "--child", name], capture_output=True, text=True,
                                          check=True).stdout.split()[-1]) for name in decoders}
        print(f"peak RSS above loaded: pack {peaks['pack'] / 2**20:.0f} MiB, reference "
              f"{peaks['reference'] / 2**20:.0f} MiB, pack / reference {peaks['pack'] / peaks['reference']:.3f}")


if __name__ == "__main__":
    main()
