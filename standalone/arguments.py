"""The command line's options: parsed before anything heavy is imported, so ``--help`` and argument
mistakes answer at once (torch and the models load only when a command runs)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

from ..samplers.seeds import OPEN_SORA_GLOBAL_SEED
from .downloads import DOWNLOADS

# The names of models/dtypes.py's WEIGHT_DTYPES, spelled out so parsing needs no torch (a test keeps them
# equal). fp8 weights exist for the diffusion model only; the text encoders and autoencoder then run in bf16.
FP8_DTYPES = ("fp8_e4m3fn", "fp8_e5m2")
WEIGHT_DTYPE_CHOICES = ("bf16", "fp16", "fp32", *FP8_DTYPES)
API_DIR = Path(__file__).resolve().parent.parent / "example_workflows" / "api"
TINY_MODEL_FAMILIES = ("t2v", "i2v", "t2i2v", "high_compression")  # what write_tiny_model_folder writes
USER_ERROR = 2  # argparse's exit status for a usage mistake: the same for every mistake a user can fix


def available_workflows() -> list[str]:
    """Names of the example workflows that have an API twin (what ``--workflow`` accepts)."""
    return sorted(p.stem for p in API_DIR.glob("*.json"))


def workflow_path(name: str) -> Path:
    """The API twin of an example workflow, or a file path given directly."""
    candidate = Path(name)
    if candidate.suffix == ".json" and candidate.is_file():
        return candidate
    path = API_DIR / f"{name}.json"
    if not path.is_file():
        raise SystemExit(f"Unknown workflow '{name}'. Choose one of: {', '.join(available_workflows())}.")
    return path




def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python3 ComfyUI-OpenSora",
        description="Open-Sora 2.0 without the ComfyUI UI: run the pack's example workflows headless.",
    )
    parser.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    commands = parser.add_subparsers(dest="command", required=True)

    generate = commands.add_parser("generate", help="run an example workflow for a prompt or a CSV of prompts")
    generate.add_argument("--workflow", default="t2v_256px",
                          help="example workflow name (see 'workflows') or an API-format .json file")
    generate.add_argument("--prompt", help="the text prompt")
    generate.add_argument("--negative", help="negative prompt (default: empty, as the reference)")
    generate.add_argument("--csv", help="prompt table (.csv or .parquet) with a 'text' column and optional 'ref', "
                                        "'neg', 'name', 'fps' columns, as the reference's")
    generate.add_argument("--ref", help="reference image/video for i2v/v2v workflows; two paths 'a.png;b.png' for i2v_loop")
    generate.add_argument("--models-dir", help="folder with diffusion_models/, vae/, text_encoders/")
    generate.add_argument("--output-dir", "--save-dir", "--save_dir", default=None,
                          help="where videos go (default ./output), in video_<resolution>/ as the reference")
    generate.add_argument("--seed", "--sampling-option.seed", "--sampling_option.seed", type=int,
                          help="sampling (noise) seed, the reference's sampling_option.seed; sample k of "
                               "--num-sample uses seed+k (0 stays 0). Not given: as the official script, each "
                               "generation draws random.randint(0, 2**32-1) after random.seed(--global-seed)")
    generate.add_argument("--global-seed", type=int, default=OPEN_SORA_GLOBAL_SEED,
                          help="the script's global seed (its config 'seed', 42), used only without --seed")
    generate.add_argument("--num-frames", "--num_frames", type=int,
                          help="any count >= 1, as the reference: the Hunyuan VAE writes the largest 4k+1 <= n "
                               "(16 -> 13, printed), the DC-AE writes n")
    generate.add_argument("--resolution",
                          help="<N>px (N*N pixels: 256px, 768px) or <N>p (a 16:9 frame N pixels high: 720p), "
                               "with --aspect-ratio; sizes from the reference's table (720p 16:9 = 1280x720)")
    generate.add_argument("--aspect-ratio", "--aspect_ratio", help="e.g. 16:9, 9:16, 1:1, 2.39:1, 4:3, 3:2, 2:1, 5:8")
    generate.add_argument("--width", type=int, help="custom width in pixels (with --height; multiple of 16, or 32 for DC-AE)")
    generate.add_argument("--height", type=int, help="custom height in pixels (with --width)")
    generate.add_argument("--steps", "--num-steps", "--num_steps", type=int, help="sampling steps (reference: 50)")
    generate.add_argument("--guidance", type=float, help="text guidance scale (reference configs: 7.5)")
    generate.add_argument("--guidance-img", "--guidance_img", type=float, help="image guidance scale (3.0)")
    for flag, what in (("text-osci", "text-guidance oscillation"), ("image-osci", "image-guidance oscillation"),
                       ("scale-temporal-osci", "image guidance ramped over latent frames (i2v)"),
                       ("shift", "resolution/length-dependent timestep shift")):
        generate.add_argument(f"--{flag}", action=argparse.BooleanOptionalAction, help=f"{what} (reference: on)")
    generate.add_argument("--flow-shift", "--flow_shift", type=float, help="timestep shift alpha used directly (> 0)")
    generate.add_argument("--fps", "--fps-save", "--fps_save", type=int,
                          help="frame rate written into the prompt ('24 FPS.') and of the saved file (24)")
    generate.add_argument("--motion-score", "--motion_score",
                          help="integer written as '<n> motion score.' (reference: 4), 'off', or 'dynamic' (asks "
                               "the --refine-* endpoint)")
    generate.add_argument("--cond-type", "--cond_type",
                          choices=("t2v", "i2v_head", "i2v_tail", "i2v_loop", "v2v_head", "v2v_tail",
                                   "v2v_head_easy", "v2v_tail_easy"),
                          help="t2v drops the workflow's image condition; the others need a workflow with one")
    generate.add_argument("--batch-size", "--batch_size", type=int, default=1,
                          help="prompts generated together (one seed per batch, as the reference)")
    generate.add_argument("--num-sample", "--num_sample", type=int, default=1,
                          help="samples per prompt: sample k uses seed+k and is saved with a '_k' suffix")
    generate.add_argument("--start-index", "--start_index", type=int, default=0, help="first table row to generate")
    generate.add_argument("--end-index", "--end_index", type=int, help="row after the last one to generate")
    generate.add_argument("--num-samples", "--num_samples", type=int,
                          help="rows to generate from --start-index (when no --end-index)")
    generate.add_argument("--save-prefix", "--save_prefix", default="", help="put before every file name")
    generate.add_argument("--prompt-as-path", "--prompt_as_path", action="store_true",
                          help="name files '<prompt>-<k>' instead of 'prompt_0000'")
    generate.add_argument("--weight-dtype", choices=WEIGHT_DTYPE_CHOICES,
                          help="precision of the weights; fp8 applies to the diffusion model (text encoders and "
                               "VAE then run in bf16)")
    generate.add_argument("--offload-blocks", type=int, help="transformer blocks kept in RAM and streamed to the GPU")
    generate.add_argument("--attention", help="attention kernel: auto, sdpa, flash_attn, sageattention ...")
    generate.add_argument("--branch-mode", choices=("fast", "low memory", "reference"),
                          help="how the guidance branches run (fast; reference = all three batched)")
    generate.add_argument("--noise-device", choices=("cpu", "gpu"), help="where the noise is drawn (cpu: portable)")
    generate.add_argument("--noise-dtype", choices=("fp32", "bf16"),
                          help="precision the noise is drawn in (the official script: bf16 on the gpu)")
    generate.add_argument("--model", help="diffusion model file in diffusion_models/ (default: the workflow's)")
    generate.add_argument("--vae", help="autoencoder file in vae/ (default: the workflow's)")
    generate.add_argument("--t5", help="T5 file or Hugging Face folder in text_encoders/ (default: t5xxl_fp16.safetensors)")
    generate.add_argument("--clip", help="CLIP file or Hugging Face folder in text_encoders/ (default: clip_l.safetensors)")
    generate.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda when available)")
    generate.add_argument("--text-only", action="store_true",
                          help="t2i2v / high_compression: drop the Flux-dev first frame (ComfyUI's Flux nodes exist "
                               "only inside ComfyUI) and generate from the text alone")
    generate.add_argument("--refine-prompt", action="store_true",
                          help="rewrite each prompt with an OpenAI-compatible chat endpoint before encoding: t2v for "
                               "text to video, t2i for t2i2v (first frame and video, as the reference), i2v with the "
                               "image for a still --ref (the reference sends no image and asks for t2i)")
    generate.add_argument("--refine-text-only", action="store_true",
                          help="with a --ref: ask for a t2i prompt without sending the image, as the reference does")
    generate.add_argument("--refine-model", default="gpt-4o", help="model name at the endpoint (default gpt-4o)")
    generate.add_argument("--refine-base-url", default="https://api.openai.com/v1",
                          help="OpenAI-compatible API root, e.g. http://127.0.0.1:11434/v1 for Ollama")
    generate.add_argument("--refine-key-env", default="OPENAI_API_KEY", help="environment variable with the API key")
    generate.add_argument("--refine-key-file", help="file whose first line is the API key (instead of the variable)")
    generate.add_argument("--preview-dir",
                          help="write each sampling step's preview picture here as <name>_step<k>.png: TAEHV-decoded "
                               "when <models-dir>/vae_approx/taehv.safetensors exists, else a latent-size colour sketch")
    generate.add_argument("--sp-size", type=int, default=1,
                          help="under torchrun: ranks per data-parallel group (each group generates its share of "
                               "the rows, the video spread over the group's GPUs: sequence-parallel sampling, VAE "
                               "tiles shared); must divide the number of ranks; needs the yunchang package above 1")
    generate.add_argument("--smoke", action="store_true",
                          help="check the install: tiny random models, the whole t2v graph, seconds, offline")
    generate.set_defaults(command="generate")

    download = commands.add_parser("download", help="download the released weights from Hugging Face")
    download.add_argument("--what", required=True, choices=tuple(DOWNLOADS))
    download.add_argument("--models-dir", required=True)
    download.set_defaults(command="download")

    tiny = commands.add_parser("tiny-models", help="write tiny random checkpoints (the --smoke ones) into a models "
                                                   "folder, to try every command without the released weights")
    tiny.add_argument("models_dir", metavar="DIR", help="ComfyUI-style models folder to write into")
    tiny.add_argument("--what", default="t2v", choices=TINY_MODEL_FAMILIES,
                      help="t2v/i2v: video model, Hunyuan VAE, T5, CLIP; t2i2v adds Flux-dev; high_compression "
                           "adds the DC-AE model and autoencoder (default t2v)")
    tiny.set_defaults(command="tiny-models")

    listing = commands.add_parser("workflows", help="list the example workflows")
    listing.set_defaults(command="workflows")
    return parser




def parse_arguments(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The parsed command line (``--help`` and usage mistakes exit here, status 2)."""
    args = build_parser().parse_args(argv)
    if args.command == "generate":
        workflow_path(args.workflow)  # an unknown workflow is the first thing to say
        if args.output_dir is None and not args.smoke:
            args.output_dir = "output"
    return args


def report_user_error(message: str, lines: int = 2) -> int:
    """Print a user mistake as one or two lines (what happened, what to change); returns the exit status."""
    kept = [line for line in str(message).strip().splitlines() if line.strip()][:lines]
    print(f"error: {chr(10).join(kept) or 'unknown error'}", file=sys.stderr)
    print("(run with --debug for the full traceback)", file=sys.stderr)
    return USER_ERROR
