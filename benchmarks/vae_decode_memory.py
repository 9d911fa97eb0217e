"""Peak memory of the HunyuanVideo VAE decode with and without tiling, at the released model's widths.

Two measurements:

* ``live`` (default, any size, seconds): the released-size VAE (block widths 128/256/512/512, 246M
  parameters) and the latent live on the meta device; a dispatch mode adds up the bytes of every tensor
  storage the decode creates and frees, so the peak of live activations is exact for these shapes
  (attention runs PyTorch's math path here, so its scores count; conv workspaces and allocator slack
  do not). Decoded chunks are dropped as they arrive, as the Decode node streams them off the device.
  Compared with ``HunyuanVideoVAE.decode_bytes``, the estimate the ``memory_budget`` mode plans with.
* ``--real``: really decodes a small latent with random weights on ``--device`` (CPU: peak resident
  memory above the loaded model, in a fresh process per setting; CUDA: ``max_memory_allocated``).

Run: ``python3 benchmarks/vae_decode_memory.py`` (live, about a minute on 2 CPU cores) and
``python3 benchmarks/vae_decode_memory.py --real`` (about two minutes on 2 CPU cores).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import torch

from common import LiveStorageBytes  # imports the pack as comfyui_opensora

from comfyui_opensora.models.autoencoder import NO_TILING, Tiling, decode_to_frames  # noqa: E402
from comfyui_opensora.models.dtypes import FLOAT_DTYPES  # noqa: E402
from comfyui_opensora.models.hunyuan_vae import HunyuanVAEConfig, HunyuanVideoVAE  # noqa: E402

GIB = 2**30




def parse_tiling(text: str) -> Tiling:
    """``none``, ``s256`` (spatial 256 px), ``s256t64`` (spatial 256 px + temporal 64 frames), ``t64``,
    ``s256c2`` (spatial 256 px, causal chunks of 2 latent frames)."""
    if text == "none":
        return NO_TILING
    spatial = temporal = chunk = None
    rest, _, chunk_text = text.partition("c")
    if chunk_text:
        chunk = int(chunk_text)
    if rest.startswith("s"):
        digits = rest[1:].split("t")[0]
        spatial, rest = int(digits), rest[1 + len(digits):]
    if rest.startswith("t"):
        temporal = int(rest[1:])
    return Tiling(spatial=spatial, temporal=temporal, causal_chunk=chunk)


def live_peak(latent_shape: tuple[int, ...], tiling: Tiling, dtype: torch.dtype) -> None:
    with torch.device("meta"):
        vae = HunyuanVideoVAE(HunyuanVAEConfig()).to(dtype)
    z = torch.empty(latent_shape, device="meta", dtype=dtype)
    mode = LiveStorageBytes([p.untyped_storage() for p in vae.parameters()] + [z.untyped_storage()])
    frames = 0
    with mode:
        for chunk in vae.decode_chunks(z, tiling):
            frames += chunk.shape[2]
            del chunk
    _, _, t, h, w = latent_shape
    estimate = vae.decode_bytes(latent_shape, tiling, dtype)
    print(f"{str(latent_shape):22} -> {frames:3d}x{h * 8}x{w * 8} {str(tiling):48} {str(dtype)[6:]:8} "
          f"live peak {mode.peak / GIB:7.2f} GiB   estimate {estimate / GIB:7.2f} GiB", flush=True)


def real_worker(args: argparse.Namespace) -> None:
    """One real decode in this process; prints a JSON line with its peak memory above the loaded model."""
    device, dtype = torch.device(args.device), FLOAT_DTYPES[args.dtype]
    torch.manual_seed(0)
    vae = HunyuanVideoVAE(HunyuanVAEConfig()).to(device, dtype).eval().requires_grad_(False)
    z = torch.randn(args.latent, generator=torch.Generator().manual_seed(1)).to(device, dtype)
    tiling = parse_tiling(args.tiling)
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    else:
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    start = time.perf_counter()
    frames = decode_to_frames(vae, z, vae.decoded_frames(args.latent[2]), args.latent[3] * 8,
                              args.latent[4] * 8, tiling, torch.device("cpu"))
    seconds = time.perf_counter() - start
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated() - before
    else:  # the frames are on the CPU too: count them out
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before - frames.numel() * 4
    print(json.dumps({"peak": peak, "seconds": seconds, "estimate": vae.decode_bytes(tuple(args.latent), tiling, dtype)}))


def real(args: argparse.Namespace) -> None:
    print(f"real decode on {args.device} ({torch.get_num_threads()} threads), {args.dtype}, latent {args.latent}")
    for tiling in args.tilings:
        command = [sys.executable, __file__, "--worker", "--device", args.device, "--dtype", args.dtype,
                   "--tiling", tiling, "--latent", *map(str, args.latent)]
        result = json.loads(subprocess.run(command, check=True, capture_output=True, text=True).stdout.splitlines()[-1])
        print(f"  {tiling:10} peak above model {result['peak'] / GIB:6.2f} GiB   estimate "
              f"{result['estimate'] / GIB:6.2f} GiB   {result['seconds']:6.1f} s", flush=True)
        if args.device == "cpu":
            print("             live bytes of the same decode: ", end="")
            live_peak(tuple(args.latent), parse_tiling(tiling), FLOAT_DTYPES[args.dtype])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--real", action="store_true", help="really decode a small latent")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="fp32", choices=list(FLOAT_DTYPES))
    parser.add_argument("--latent", type=int, nargs=5, default=[1, 16, 2, 8, 24],
                        help="latent shape for --real (default: 5 frames at 64x192 px)")
    parser.add_argument("--tilings", nargs="+", default=["none", "s64"],
                        help="settings for --real: none, s<px>, t<frames>, s<px>t<frames>")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--tiling", default="none", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        real_worker(args)
    elif args.real:
        real(args)
    else:
        for dtype in (torch.bfloat16,):
            live_peak((1, 16, 1, 32, 32), NO_TILING, dtype)  # one reference tile: 1 frame at 256x256
            live_peak((1, 16, 2, 32, 32), NO_TILING, dtype)  # one reference tile: 5 frames at 256x256
            live_peak((1, 16, 5, 32, 32), NO_TILING, dtype)  # one reference tile: 17 frames at 256x256
            live_peak((1, 16, 33, 24, 42), NO_TILING, dtype)  # 256px 16:9, 129 frames
            live_peak((1, 16, 33, 24, 42), Tiling(256), dtype)
            live_peak((1, 16, 33, 72, 128), Tiling(256), dtype)  # 768px 16:9, 129 frames (reference)
            live_peak((1, 16, 33, 72, 128), Tiling(256, 64), dtype)  # + temporal tiles
            live_peak((1, 16, 33, 72, 128), Tiling(512, 64), dtype)
            live_peak((1, 16, 9, 24, 42), Tiling(256), dtype)  # 33 frames at 192x336: causal chunks
            live_peak((1, 16, 9, 24, 42), Tiling(256, causal_chunk=2), dtype)
            live_peak((1, 16, 33, 24, 42), Tiling(256, causal_chunk=2), dtype)
            live_peak((1, 16, 33, 72, 128), Tiling(256, causal_chunk=2), dtype)


if __name__ == "__main__":
    main()
