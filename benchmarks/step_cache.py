"""Step caching: speed-up against deviation of the final latent from the uncached run (CPU, test models).

Two test models, random or tiny weights (NOT the released weights: quality on real videos is not
measured by this script):

* ``golden``: the tiny MMDiT of tests/golden_v1/denoise_t2v with its recorded noise and text, t2v;
* ``cpu-small``: benchmarks/common.py's random 6-block model (width 128), t2v.

For each threshold the sampler runs ``--steps`` steps with the reference's guidance (oscillation on)
and the default window (0.2-0.9). Time is process CPU time with one thread, cached and uncached runs
alternating in this process, best of ``--repeats``; deviation is ``|x - x_uncached| / |x_uncached|``
(L2) of the final latent.

Run: ``python3 benchmarks/step_cache.py`` (about a minute on 2 CPU cores).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

from common import PACK_ROOT, PRESETS, random_model
from comfyui_opensora.loaders.mmdit import load_mmdit
from comfyui_opensora.samplers import packing
from comfyui_opensora.samplers.denoisers import Guidance, TextInputs, denoise_i2v
from comfyui_opensora.samplers.schedule import get_schedule
from comfyui_opensora.samplers.step_cache import StepCacheSettings


def golden_case():
    folder = PACK_ROOT / "tests" / "golden_v1" / "denoise_t2v"
    manifest = json.loads((folder / "manifest.json").read_text())
    tensors = load_file(folder / "tensors.safetensors")
    model = load_mmdit((folder / manifest["model"]["weights"]).resolve(), dtype=torch.float32)
    prompt = manifest["call"]["args"]["text"][0]
    text = TextInputs(tensors[f"text.t5[{prompt}]"], tensors[f"text.clip[{prompt}]"], tensors["text.t5[]"],
                      tensors["text.clip[]"])
    noise = packing.unpack(tensors[manifest["record"]["noise_packed"]["key"]], 3, 8, 12, 2)[:1]
    return model, noise, text, (3, 8 * 12 // 4)


def small_case():
    preset = PRESETS["cpu-small"]
    config = preset.config()
    model = random_model(config, torch.float32, "cpu")
    generator = torch.Generator().manual_seed(0)
    noise = torch.randn(1, config.latent_channels, preset.latent_frames, preset.latent_height,
                        preset.latent_width, generator=generator)
    t5 = torch.randn(2, preset.text_tokens, config.context_in_dim, generator=generator)
    clip = torch.randn(2, config.vec_in_dim, generator=generator)
    text = TextInputs(t5[:1], clip[:1], t5[1:], clip[1:])
    return model, noise, text, (preset.latent_frames, preset.latent_height * preset.latent_width // 4)


def run(model, noise, text, frames_tokens, steps, cache):
    timesteps = get_schedule(steps, frames_tokens[1], frames_tokens[0], True)
    calls = []
    handle = model.register_forward_hook(lambda *_: calls.append(1))
    start = time.process_time()
    with torch.inference_mode():
        final = denoise_i2v(model, noise, text, timesteps, Guidance(), cache=cache or StepCacheSettings())
    seconds = time.process_time() - start
    handle.remove()
    return final, seconds, len(calls)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--thresholds", default="0.05,0.1,0.2,0.4")
    args = parser.parse_args()
    torch.set_num_threads(1)
    thresholds = [float(t) for t in args.thresholds.split(",")]
    print("| model | threshold | forwards | CPU time vs uncached | final-latent deviation (rel. L2) |")
    print("| --- | --- | --- | --- | --- |")
    for name, build in (("golden tiny", golden_case), ("cpu-small", small_case)):
        model, noise, text, ft = build()
        for threshold in thresholds:
            best = {"off": float("inf"), "on": float("inf")}
            for _ in range(args.repeats):
                base, seconds, base_calls = run(model, noise, text, ft, args.steps, None)
                best["off"] = min(best["off"], seconds)
                cached, seconds, calls = run(model, noise, text, ft, args.steps, StepCacheSettings(threshold))
                best["on"] = min(best["on"], seconds)
            deviation = ((cached - base).norm() / base.norm()).item()
            print(f"| {name} | {threshold} | {calls}/{base_calls} | {best['on'] / best['off']:.2f}x | "
                  f"{deviation:.4f} |", flush=True)


if __name__ == "__main__":
    main()
