"""GPU memory plan of the 11B model: weights on the GPU per weight dtype and offload_blocks (computed).

Sizes come from the model built on the meta device (exact parameter bytes); activations are the
sampler's own estimate (``samplers.denoisers.activation_bytes``), not a measurement. Use
``step_time.py --device cuda`` to measure the real peak.

  python benchmarks/memory_plan.py --preset 11b-256px --rows 2
"""

from __future__ import annotations

import argparse

import torch

from common import PRESETS, gib
from comfyui_opensora.models.block_offload import transformer_blocks
from comfyui_opensora.models.dtypes import WEIGHT_DTYPES, compute_dtype, is_fp8
from comfyui_opensora.models.fp8 import convert_blocks_to_fp8, parameter_bytes
from comfyui_opensora.models.mmdit import MMDiT
from comfyui_opensora.samplers.denoisers import activation_bytes


def plan(preset_name: str, weight_name: str, offload_blocks: list[int], rows: int) -> None:
    preset = PRESETS[preset_name]
    config = preset.config()
    weight_dtype = WEIGHT_DTYPES[weight_name]
    with torch.device("meta"):
        model = MMDiT(config).to(compute_dtype(weight_dtype))
        if is_fp8(weight_dtype):
            convert_blocks_to_fp8(model, weight_dtype)
    total = parameter_bytes(model)
    blocks = [parameter_bytes(b) for b in transformer_blocks(model)]
    activations = activation_bytes(config, rows, preset.image_tokens, preset.text_tokens, compute_dtype(weight_dtype))
    for count in offload_blocks:
        streamed = sum(blocks[len(blocks) - count:]) if count else 0
        buffers = sum(sorted(blocks[len(blocks) - count:], reverse=True)[:2]) if count else 0
        on_gpu = total - streamed + buffers
        print(f"{weight_name:>10} offload_blocks {count:2d}: weights on GPU {gib(on_gpu)} (host RAM {gib(streamed)}), "
              f"+ activations ~{gib(activations)} for {rows} rows = ~{gib(on_gpu + activations)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=sorted(PRESETS), default="11b-256px")
    parser.add_argument("--weight-dtypes", default="bf16,fp8_e4m3fn")
    parser.add_argument("--offload-blocks", default="0,20,30,38")
    parser.add_argument("--rows", type=int, default=2, help="sequences per forward (fast t2v: 2, reference: 3)")
    args = parser.parse_args()
    print(f"# preset {args.preset} ({PRESETS[args.preset].note})")
    for weight_name in args.weight_dtypes.split(","):
        plan(args.preset, weight_name, [int(n) for n in args.offload_blocks.split(",")], args.rows)


if __name__ == "__main__":
    main()
