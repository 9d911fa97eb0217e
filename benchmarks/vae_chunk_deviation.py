"""How far tiled HunyuanVideo VAE decodes (or encodes) are from the untiled ones: the reference's spatial
tiles against the ``causal_chunks`` mode (and variants of it), on the same random weights and latent.

Both approximate the untiled decode through GroupNorm: the reference's tiles normalise each tile with
its own statistics, causal chunks additionally each chunk of the decoder's tail. Pixels are clamped to
[-1, 1] (what is saved) before comparing; max and mean absolute difference are printed per setting.

Models: ``tiny`` (the test models' widths 8/16/16/16) and ``released`` (128/256/512/512), random weights
(seeded); the latent is standard normal. Variants: ``--chunks`` latent frames per chunk and ``--splits``
(``default``: the tail starts at the first temporal upsampler; ``mid``: right after the mid block, so
the up blocks at the latent frame rate are chunked too, with their GroupNorms).

``--stage encode``: the pixels of that latent size (uniform in [-1, 1]) through the encoder; latents
(scaled, posterior mean) are compared unclamped, and the untiled latent's mean magnitude is printed
for scale. ``--splits`` applies to decodes only.

Run: ``python3 benchmarks/vae_chunk_deviation.py --model tiny --latent 9 24 42`` (seconds) and
``python3 benchmarks/vae_chunk_deviation.py --model released --latent 9 8 40 --dtypes fp32`` (minutes).
"""

from __future__ import annotations

import argparse
import json
from typing import Callable

import torch

import common  # noqa: F401  (imports the pack as comfyui_opensora)
from comfyui_opensora.models import hunyuan_causal_chunks
from comfyui_opensora.models.autoencoder import NO_TILING, Tiling
from comfyui_opensora.models.dtypes import dtypes_named
from comfyui_opensora.models.hunyuan_vae import SCALE_FACTOR, HunyuanVAEConfig, HunyuanVideoVAE
from comfyui_opensora.tiny_checkpoints.autoencoders import TINY_HUNYUAN_VAE

MODELS = {"tiny": TINY_HUNYUAN_VAE, "released": HunyuanVAEConfig()}
DTYPES = dtypes_named("bf16", "fp32")


def split_index(vae: HunyuanVideoVAE, name: str) -> int | None:
    """``default`` -> None (the module's choice); ``mid`` -> the first stage after the mid block."""
    if name == "default":
        return None
    stages = hunyuan_causal_chunks.decoder_stages(vae.decoder)
    return stages.index(vae.decoder.mid_block) + 1


def decode_untiled_chunks(vae: HunyuanVideoVAE, z: torch.Tensor, chunk: int, split: int | None) -> torch.Tensor:
    """The causal-chunk decode of the whole frame (no spatial tiles) with the head/tail split at ``split``."""
    latent = vae.post_quant_conv(z.to(vae.dtype) / SCALE_FACTOR)
    return torch.cat(list(hunyuan_causal_chunks.decode_in_chunks(vae.decoder, latent, chunk, split)), dim=2)


def deviation(a: torch.Tensor, b: torch.Tensor, clamp: bool) -> tuple[float, float]:
    if clamp:
        a, b = a.clamp(-1, 1), b.clamp(-1, 1)
    difference = (a.float() - b.float()).abs()
    return difference.max().item(), difference.mean().item()


def decode_settings(args, vae: HunyuanVideoVAE, z: torch.Tensor) -> dict[str, Callable[[], torch.Tensor]]:
    settings = {"reference tiling": lambda: vae.decode(z, vae.reference_tiling())}
    for chunk in args.chunks:
        settings[f"causal_chunks, chunk {chunk}"] = lambda chunk=chunk: vae.decode(
            z, Tiling(spatial=vae.reference_tiling().spatial, causal_chunk=chunk))
        for split in args.splits:
            settings[f"chunk {chunk}, split {split}, no spatial tiles"] = (
                lambda chunk=chunk, split=split: decode_untiled_chunks(vae, z, chunk, split_index(vae, split)))
    return settings


def encode_settings(args, vae: HunyuanVideoVAE, x: torch.Tensor) -> dict[str, Callable[[], torch.Tensor]]:
    settings = {"reference tiling": lambda: vae.encode(x, tiling=vae.reference_tiling())}
    for chunk in args.chunks:
        settings[f"causal_chunks, chunk {chunk}"] = lambda chunk=chunk: vae.encode(
            x, tiling=Tiling(spatial=vae.reference_tiling().spatial, causal_chunk=chunk))
        settings[f"chunk {chunk}, no spatial tiles"] = lambda chunk=chunk: vae.encode(
            x, tiling=Tiling(causal_chunk=chunk))
    return settings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=list(MODELS), default="tiny")
    parser.add_argument("--stage", choices=("decode", "encode"), default="decode")
    parser.add_argument("--latent", type=int, nargs=3, default=(9, 24, 42), metavar=("T", "H", "W"))
    parser.add_argument("--dtypes", nargs="+", default=["fp32", "bf16"], choices=list(DTYPES))
    parser.add_argument("--chunks", type=int, nargs="+", default=[2])
    parser.add_argument("--splits", nargs="+", default=["default"], choices=("default", "mid"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", help="also write the rows to this file")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    for seed in args.seeds:
        torch.manual_seed(seed)
        base = HunyuanVideoVAE(MODELS[args.model]).eval()
        generator = torch.Generator().manual_seed(seed + 1)
        if args.stage == "encode":
            frames, height, width = 4 * (args.latent[0] - 1) + 1, 8 * args.latent[1], 8 * args.latent[2]
            source = torch.rand(1, 3, frames, height, width, generator=generator) * 2 - 1
        else:
            source = torch.randn(1, 16, *args.latent, generator=generator)
        for dtype_name in args.dtypes:
            vae = base.to(DTYPES[dtype_name])
            with torch.no_grad():
                if args.stage == "encode":
                    untiled = vae.encode(source, tiling=NO_TILING)
                    settings = encode_settings(args, vae, source)
                    print(f"untiled latent mean abs {untiled.float().abs().mean().item():.5f}")
                else:
                    untiled = vae.decode(source, NO_TILING)
                    settings = decode_settings(args, vae, source)
            for name, run in settings.items():
                with torch.no_grad():
                    result = run()
                worst, mean = deviation(result, untiled, clamp=args.stage == "decode")
                row = {"model": args.model, "stage": args.stage, "latent": list(args.latent), "dtype": dtype_name,
                       "seed": seed, "setting": name, "max_abs": worst, "mean_abs": mean}
                rows.append(row)
                print(f"{args.model:8} {str(tuple(args.latent)):13} {dtype_name:5} seed {seed}  {name:42} "
                      f"vs untiled: max abs {worst:.4f}  mean abs {mean:.5f}", flush=True)
    if args.json:
        with open(args.json, "w") as out:
            json.dump(rows, out, indent=1)


if __name__ == "__main__":
    main()
