"""Seconds per sampler step and peak device memory of the MMDiT sampler, random weights.

Compares, on one machine in one run, the guidance-branch policies of ``samplers.denoisers``:

* ``baseline``  all three guidance branches every step, one forward each (unbatched);
* ``reference`` all three branches every step in one batched forward (what Open-Sora runs);
* ``fast``      redundant branches skipped (t2v: the image-free branch; odd steps >= 10: both
                unconditional branches) and the rest batched (the sampler's default);

for each attention backend and weight dtype asked for, over a full schedule (guidance oscillation
included, so the mix of 3-, 2- and 1-branch steps is the real one).

  python benchmarks/step_time.py --preset cpu-small --device cpu
  python benchmarks/step_time.py --preset 11b-256px --device cuda --steps 50 --attention all
  python benchmarks/step_time.py --preset 11b-256px --device cuda --weight-dtypes fp8_e4m3fn --offload-blocks 0
  python benchmarks/step_time.py --preset 11b-768px-short --device cuda --steps 12 --policies reference,fast
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from common import PRESETS, gib, machine_description, peak_device_bytes, random_model, reset_peak, synchronize
from comfyui_opensora.models.attention_backends import available_backends, resolve_backend, set_attention_backend
from comfyui_opensora.models.block_compile import compile_blocks
from comfyui_opensora.models.block_offload import install_block_offload
from comfyui_opensora.models.dtypes import WEIGHT_DTYPES, compute_dtype
from comfyui_opensora.models.fp8 import parameter_bytes
from comfyui_opensora.samplers.denoisers import REFERENCE_BRANCHES, BranchPolicy, Guidance, TextInputs, denoise_i2v
from comfyui_opensora.samplers.image_condition import ImageCondition
from comfyui_opensora.samplers.schedule import get_schedule

POLICIES = {
    "baseline": BranchPolicy(skip_redundant=False, batched=False),
    "reference": REFERENCE_BRANCHES,
    "fast": BranchPolicy(skip_redundant=True, batched=True),
}


def _inputs(preset, dtype, device, mode, seed=0):
    generator = torch.Generator().manual_seed(seed)
    config = preset.config()

    def rand(*shape):
        return torch.randn(*shape, generator=generator).to(device=device, dtype=dtype)

    latent = (1, config.latent_channels, preset.latent_frames, preset.latent_height, preset.latent_width)
    noise = rand(*latent)
    text = TextInputs(rand(1, preset.text_tokens, config.context_in_dim), rand(1, config.vec_in_dim),
                      rand(1, preset.text_tokens, config.context_in_dim), rand(1, config.vec_in_dim))
    condition = None
    if mode == "i2v":  # first latent frame given, as the i2v_head condition type
        mask = torch.zeros(1, 1, *latent[2:])
        mask[:, :, 0] = 1
        condition = ImageCondition("i2v_head", None, mask, torch.randn(latent, generator=generator) * mask)
    return noise, text, condition


def _count_rows(model):
    """Forward pre-hook that counts evaluated sequences (batch rows)."""
    rows = [0]

    def hook(_module, _args, kwargs):
        rows[0] += kwargs["img"].shape[0]

    return rows, model.register_forward_pre_hook(hook, with_kwargs=True)


def run(args) -> list[dict]:
    device = torch.device(args.device)
    preset = PRESETS[args.preset]
    config = preset.config()
    timesteps = get_schedule(args.steps, preset.image_tokens // preset.latent_frames, preset.latent_frames)
    backends = available_backends() if args.attention == "all" else args.attention.split(",")
    clock = time.process_time if args.clock == "process" else time.perf_counter
    results = []
    for weight_name in args.weight_dtypes.split(","):
        weight_dtype = WEIGHT_DTYPES[weight_name]
        dtype = compute_dtype(weight_dtype) if args.dtype is None else WEIGHT_DTYPES[args.dtype]
        build_on = "cpu" if args.offload_blocks else device
        model = random_model(config, weight_dtype, build_on)
        weight_bytes = parameter_bytes(model)
        if args.offload_blocks:
            install_block_offload(model, args.offload_blocks, device)
            model.to(device)  # streamed blocks stay in host memory
        if args.compile:
            compile_blocks(model)
        noise, text, condition = _inputs(preset, dtype, device, args.mode)
        guidance = Guidance()
        rows, handle = _count_rows(model)
        for backend_name in backends:
            backend = resolve_backend(backend_name, device, dtype)
            set_attention_backend(model, backend)
            policies = args.policies.split(",")
            best = {name: (float("inf"), 0.0, None) for name in policies}
            with torch.inference_mode():
                for name in policies:  # warm-up (and compilation) outside the timings
                    denoise_i2v(model, noise, text, timesteps[:2], guidance, condition, POLICIES[name])
                for _ in range(args.repeats):  # interleaved, best of N: robust to a busy machine
                    for name in policies:
                        synchronize(device)
                        reset_peak(device)
                        rows[0] = 0
                        start = clock()
                        denoise_i2v(model, noise, text, timesteps, guidance, condition, POLICIES[name])
                        synchronize(device)
                        seconds = clock() - start
                        if seconds < best[name][0]:
                            best[name] = (seconds, rows[0], peak_device_bytes(device))
            for name in policies:
                seconds, sequences, peak = best[name]
                results.append(dict(
                    weight_dtype=weight_name, compute_dtype=str(dtype).removeprefix("torch."), attention=backend,
                    policy=name, steps=args.steps, seconds_per_step=seconds / args.steps,
                    sequences_per_step=sequences / args.steps, peak_device_bytes=peak,
                    weight_bytes=weight_bytes, offload_blocks=args.offload_blocks, compile=args.compile,
                    clock=args.clock,
                ))
                print(_row(results[-1], next(r for r in results if r["weight_dtype"] == weight_name)), flush=True)
        handle.remove()
        del model
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return results


def _row(result: dict, baseline: dict) -> str:
    """One result line; the speed-up is against the first (baseline) run of the same weight dtype."""
    speedup = baseline["seconds_per_step"] / result["seconds_per_step"]
    return (f"{result['weight_dtype']:>10} {result['attention']:>13} {result['policy']:>9}  "
            f"{result['seconds_per_step']:8.3f} s/step  x{speedup:4.2f}  "
            f"{result['sequences_per_step']:4.2f} seq/step  peak {gib(result['peak_device_bytes'])}  "
            f"weights {gib(result['weight_bytes'])}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=sorted(PRESETS), default="cpu-small")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--steps", type=int, default=20, help="schedule length (50 in the reference)")
    parser.add_argument("--mode", choices=("t2v", "i2v"), default="t2v")
    parser.add_argument("--policies", default="baseline,reference,fast")
    parser.add_argument("--attention", default="sdpa", help="comma list of backends, or 'all' installed ones")
    parser.add_argument("--weight-dtypes", default=None, help="comma list: bf16,fp16,fp32,fp8_e4m3fn,fp8_e5m2 "
                        "(default bf16 on CUDA, fp32 on CPU)")
    parser.add_argument("--dtype", choices=("bf16", "fp16", "fp32"), default=None,
                        help="compute dtype (default: the weight dtype; bf16 for fp8)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per policy; the fastest counts")
    parser.add_argument("--offload-blocks", type=int, default=0)
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU threads for torch (1 is steadier on a busy machine)")
    parser.add_argument("--clock", choices=("wall", "process"), default="wall",
                        help="process: CPU seconds of this process (with --threads 1, immune to other jobs)")
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.weight_dtypes is None:
        args.weight_dtypes = "bf16" if args.device.startswith("cuda") else "fp32"
    device = torch.device(args.device)
    print(f"# {machine_description(device)}; preset {args.preset} ({PRESETS[args.preset].note}); "
          f"{args.mode}, {args.steps} steps, best of {args.repeats}, {torch.get_num_threads()} threads, "
          f"{args.clock} clock, "
          f"offload_blocks {args.offload_blocks}, compile {args.compile}")
    results = run(args)
    if args.json:
        with open(args.json, "w") as out:
            json.dump(dict(machine=machine_description(device), preset=args.preset, mode=args.mode,
                           results=results), out, indent=1)


if __name__ == "__main__":
    main()
