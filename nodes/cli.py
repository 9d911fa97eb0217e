"""The pack's command line: run an example workflow headless, check an install, download weights.

``generate`` loads the API twin of an example workflow (``example_workflows/api/<name>.json``), sets the
options given on the command line on the nodes that own them, and runs it in-process through the same
node classes ComfyUI runs (:mod:`.workflow_runner`). ComfyUI is not needed; core ComfyUI nodes are
limited to the image and video loaders (:data:`workflow_runner.STANDALONE_CORE_NODES`).
"""

from __future__ import annotations

import argparse
import copy
import csv
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

from . import NODE_CLASS_MAPPINGS, host
from .workflow_runner import STANDALONE_CORE_NODES, WorkflowError, load_api_workflow, run_workflow

PACK_ROOT = Path(__file__).resolve().parent.parent
WORKFLOW_DIR = PACK_ROOT / "example_workflows"
API_DIR = WORKFLOW_DIR / "api"

# Command-line option -> the (node type, input) pairs it sets in a workflow.
OPTION_TARGETS: dict[str, tuple[tuple[str, str], ...]] = {
    "prompt": (("OpenSoraTextEncode", "prompt"), ("OpenSoraTextEncodeImage", "prompt"),
               ("PrimitiveStringMultiline", "value")),
    "negative": (("OpenSoraTextEncode", "negative_prompt"),),
    "seed": (("OpenSoraNoise", "seed"),),
    "num_frames": (("OpenSoraNoise", "num_frames"),),
    "resolution": (("OpenSoraNoise", "resolution"),),
    "aspect_ratio": (("OpenSoraNoise", "aspect_ratio"),),
    "width": (("OpenSoraNoise", "width"),),
    "height": (("OpenSoraNoise", "height"),),
    "steps": (("OpenSoraSampler", "steps"),),
    "weight_dtype": (("OpenSoraModelLoader", "weight_dtype"), ("OpenSoraTextEncoderLoader", "weight_dtype"),
                     ("OpenSoraVAELoader", "dtype")),
    "name": (("OpenSoraSaveVideo", "filename_prefix"),),
    "model": (("OpenSoraModelLoader", "model_name"),),
    "vae": (("OpenSoraVAELoader", "vae_name"),),
    "t5": (("OpenSoraTextEncoderLoader", "t5_name"),),
    "clip": (("OpenSoraTextEncoderLoader", "clip_name"),),
    "motion_score": (("OpenSoraTextEncode", "motion_score"),),
}
# ComfyUI's own Flux nodes (the t2i2v first frame): not available outside ComfyUI.
FLUX_NODE_TYPES = ("UNETLoader", "ModelSamplingFlux", "DualCLIPLoader", "CLIPTextEncode", "FluxGuidance",
                   "EmptySD3LatentImage", "KSampler", "VAELoader", "VAEDecode")
# Nodes that read reference media, in the order ``ref`` paths (separated by ';') are given to them.
REFERENCE_INPUTS: tuple[tuple[str, str], ...] = (("LoadImage", "image"), ("LoadVideo", "file"))

SMOKE_SETTINGS = {"num_frames": 9, "steps": 2, "weight_dtype": "fp32"}


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


def node_classes() -> dict[str, type]:
    """The pack's nodes plus the standalone stand-ins for ComfyUI's file loaders."""
    return {**STANDALONE_CORE_NODES, **NODE_CLASS_MAPPINGS}


# Options that set the video only: the t2i2v first frame keeps its own size, frame count and files.
VIDEO_ONLY_OPTIONS = {"num_frames", "resolution", "width", "height", "model", "vae"}


def is_first_frame_node(node: dict) -> bool:
    """Whether a node belongs to the t2i2v first frame (Flux-dev, its noise and its autoencoder)."""
    inputs = node["inputs"]
    return (node["class_type"] == "OpenSoraNoise" and inputs.get("autoencoder") == "flux_ae"
            or node["class_type"] in ("OpenSoraModelLoader", "OpenSoraVAELoader")
            and "flux" in str(inputs.get("model_name", inputs.get("vae_name", ""))).lower())


def set_option(prompt: dict[str, dict], option: str, value: Any) -> int:
    """Set ``value`` on every node input that ``option`` targets; returns how many were set."""
    count = 0
    for node in prompt.values():
        if option in VIDEO_ONLY_OPTIONS and is_first_frame_node(node):
            continue
        for class_type, input_name in OPTION_TARGETS[option]:
            if node["class_type"] == class_type and input_name in node["inputs"]:
                node["inputs"][input_name] = value
                count += 1
    return count


def set_references(prompt: dict[str, dict], references: Sequence[str]) -> None:
    """Give reference files (images or videos) to the workflow's loader nodes, in node-id order."""
    loaders = [
        (node_id, input_name)
        for node_id, node in sorted(prompt.items(), key=lambda item: int(item[0]) if item[0].isdigit() else 0)
        for class_type, input_name in REFERENCE_INPUTS
        if node["class_type"] == class_type
    ]
    if not loaders:
        raise SystemExit("This workflow takes no reference image or video; drop --ref (or choose an i2v/v2v workflow).")
    if len(references) not in (1, len(loaders)):
        raise SystemExit(f"This workflow reads {len(loaders)} reference file(s); got {len(references)}: {references}.")
    for index, (node_id, input_name) in enumerate(loaders):
        prompt[node_id]["inputs"][input_name] = str(Path(references[min(index, len(references) - 1)]).resolve())


def without_flux_first_frame(prompt: dict[str, dict]) -> dict[str, dict]:
    """The workflow without its Flux-dev first frame: a text-to-video graph with the same video nodes.

    Removes the Flux nodes and the image condition they feed; a prompt node shared with the video's text
    encoder is folded into it as plain text.
    """
    flux = {i for i, n in prompt.items() if n["class_type"] in FLUX_NODE_TYPES} | _pack_first_frame(prompt)
    conditions = {i for i, n in prompt.items() if n["class_type"] == "OpenSoraImageCondition"
                  and isinstance(n["inputs"].get("image"), list) and n["inputs"]["image"][0] in flux}
    texts = {i: n["inputs"]["value"] for i, n in prompt.items() if n["class_type"] == "PrimitiveStringMultiline"}
    kept: dict[str, dict] = {}
    for node_id, node in prompt.items():
        if node_id in flux or node_id in conditions or node_id in texts:
            continue
        inputs: dict[str, Any] = {}
        for name, value in node["inputs"].items():
            source = value[0] if isinstance(value, list) and value else None
            if source in conditions:
                continue
            inputs[name] = texts[source] if source in texts else value
        kept[node_id] = {**node, "inputs": inputs}
    return kept


def _pack_first_frame(prompt: dict[str, dict]) -> set[str]:
    """Nodes that only make the first frame saved by an 'Open-Sora Save First Frame' node (t2i2v from pack nodes)."""
    consumers: dict[str, set[str]] = {i: set() for i in prompt}
    for node_id, node in prompt.items():
        for value in node["inputs"].values():
            if isinstance(value, list) and value and value[0] in consumers:
                consumers[value[0]].add(node_id)
    found = {i for i, n in prompt.items() if n["class_type"] == "OpenSoraSaveFirstFrame"}
    ends = found | {c for i in found for c in consumers[i]}
    grown = True
    while grown:
        extra = {i for i, users in consumers.items() if i not in found and users and users <= ends}
        found |= extra
        ends |= extra
        grown = bool(extra)
    return found


def apply_settings(prompt: dict[str, dict], settings: dict[str, Any]) -> dict[str, dict]:
    """A copy of ``prompt`` with the command-line settings applied (``None`` values are left alone)."""
    prompt = copy.deepcopy(prompt)
    for option, value in settings.items():
        if value is None or value == "":
            continue
        if option == "ref":
            set_references(prompt, [r.strip() for r in str(value).split(";") if r.strip()])
        elif not set_option(prompt, option, value):
            raise SystemExit(f"--{option.replace('_', '-')} does not apply to this workflow (no node takes it).")
    return prompt


def read_prompt_rows(csv_path: str | None, prompt: str | None, negative: str | None, ref: str | None
                     ) -> list[dict[str, str]]:
    """One dict per sample: ``text`` and optional ``ref``, ``neg``, ``name`` (the reference's CSV columns)."""
    if csv_path is None:
        return [{"text": prompt or "", "neg": negative or "", "ref": ref or ""}]
    with open(csv_path, newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    if not rows or "text" not in rows[0]:
        raise SystemExit(f"{csv_path} needs a header row with a 'text' column (optional: ref, neg, name).")
    for row in rows:
        row.setdefault("neg", negative or "")
        if ref and not row.get("ref"):
            row["ref"] = ref
    return rows


def run_rows(prompt: dict[str, dict], rows: Iterable[dict[str, str]], settings: dict[str, Any],
             log=print) -> list[Path]:
    """Run the workflow once per row; returns the files written."""
    written: list[Path] = []
    classes = node_classes()
    remove_listener = host.add_progress_listener(_print_progress)
    try:
        for index, row in enumerate(rows):
            written.extend(_run_row(prompt, classes, index, row, settings, log))
    finally:
        remove_listener()
    return written


def _print_progress(value: int, total: int) -> None:
    """Progress of the running node (sampling steps, decoded chunks, saved frames) on one terminal line."""
    print(f"\r    {value}/{total}", end="\n" if value >= total else "", file=sys.stderr, flush=True)


def _run_row(prompt: dict[str, dict], classes: dict[str, type], index: int, row: dict[str, str],
             settings: dict[str, Any], log) -> list[Path]:
    """One sample: the row's prompt, negative, references and name on top of the command-line settings."""
    settings = dict(settings)
    refiner = settings.pop("refiner", None)
    text = refiner(row.get("text") or "", row.get("ref") or None) if refiner else (row.get("text"), None)
    if refiner:
        log(f"sample {index}: refined prompt: {text[0]}")
    row_settings = dict(settings, prompt=text[0], negative=row.get("neg") or None, ref=row.get("ref") or None)
    if text[1]:
        row_settings["motion_score"] = text[1]
    if row.get("name"):
        row_settings["name"] = row["name"]
    started = time.perf_counter()
    graph = apply_settings(prompt, row_settings)
    files = run_workflow(graph, classes, on_node=lambda i, t: log(f"  [{i}] {t}")).files()
    log(f"sample {index}: {', '.join(map(str, files)) or '(no file)'} ({time.perf_counter() - started:.1f} s)")
    return files


# ----------------------------------------------------------------------------------------- commands


def _settings(args: argparse.Namespace) -> dict[str, Any]:
    settings = {
        "seed": args.seed, "num_frames": args.num_frames, "resolution": args.resolution,
        "aspect_ratio": args.aspect_ratio, "steps": args.steps, "weight_dtype": args.weight_dtype,
        "model": args.model, "vae": args.vae, "t5": args.t5, "clip": args.clip,
    }
    if args.refine_prompt or args.motion_score == "dynamic":
        settings["refiner"] = command_line_refiner(args)
    elif args.motion_score:
        settings["motion_score"] = args.motion_score
    if args.width or args.height:
        if not (args.width and args.height):
            raise SystemExit("Give both --width and --height (or neither).")
        settings.update(resolution="custom", width=args.width, height=args.height)
    return settings


def command_line_refiner(args: argparse.Namespace):
    """``(text, ref) -> (prompt, motion score or None)`` for --refine-prompt / --motion-score dynamic."""
    from ..llm.prompt_refiner import Endpoint, RefineError, dynamic_motion_score, read_api_key, refine_prompt

    def refine(text: str, ref: str | None) -> tuple[str, str | None]:
        try:
            endpoint = Endpoint(args.refine_base_url, args.refine_model,
                                read_api_key(args.refine_key_env, args.refine_key_file or "", args.refine_base_url))
            image_url = _image_data_url(ref) if ref and ";" not in ref and args.refine_prompt else None
            if args.refine_prompt:
                text = refine_prompt(endpoint, text, "i2v" if ref else "t2v", image_url, args.seed)
            score = dynamic_motion_score(endpoint, text, args.seed) if args.motion_score == "dynamic" else None
        except RefineError as error:
            raise SystemExit(str(error)) from None
        return text, score

    return refine


def _image_data_url(path: str) -> str | None:
    """A still image reference as a PNG data URL for the refiner (videos are not sent)."""
    from ..llm.prompt_refiner import IMAGE_SUFFIXES, image_file_data_url

    return image_file_data_url(path) if Path(path).suffix.lower() in IMAGE_SUFFIXES else None


def prepare_workflow(name: str, text_only: bool = False) -> dict[str, dict]:
    """Load an example workflow's API twin for a standalone run (optionally without its Flux first frame)."""
    prompt = load_api_workflow(workflow_path(name))
    if text_only:
        prompt = without_flux_first_frame(prompt)
    missing = sorted({n["class_type"] for n in prompt.values()} - set(node_classes()))
    if missing:
        hint = (" Run it inside ComfyUI, or add --text-only to drop the Flux-dev first frame."
                if set(missing) & set(FLUX_NODE_TYPES) else "")
        raise SystemExit(f"The workflow '{name}' uses nodes that exist only inside ComfyUI: {', '.join(missing)}.{hint}")
    return prompt


def _generate(args: argparse.Namespace) -> int:
    settings = _settings(args)
    if args.smoke:
        return _smoke(args, settings)
    if args.models_dir is None:
        raise SystemExit("--models-dir is required (the folder holding diffusion_models/, vae/, text_encoders/).")
    if not args.prompt and not args.csv:
        raise SystemExit("Give --prompt TEXT or --csv FILE.")
    output_dir = Path(args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    host.configure_standalone(models_dir=args.models_dir, output_dir=output_dir, device=args.device)
    prompt = prepare_workflow(args.workflow, args.text_only)
    rows = read_prompt_rows(args.csv, args.prompt, args.negative, args.ref)
    try:
        written = run_rows(prompt, rows, settings)
    except WorkflowError as error:
        raise SystemExit(f"The workflow cannot run: {error}") from None
    print(f"done: {len(written)} file(s) in {output_dir}")
    return 0


def _smoke(args: argparse.Namespace, settings: dict[str, Any]) -> int:
    from ..loaders.tiny_checkpoints import write_tiny_model_folder

    import torch

    started = time.perf_counter()
    torch.set_num_threads(1)  # tiny tensors: extra threads only add start-up and contention costs
    with tempfile.TemporaryDirectory(prefix="opensora-smoke-") as scratch:
        models = Path(scratch) / "models"
        family = "t2i2v" if args.workflow in ("t2i2v", "t2i2v_comfy_flux") else "t2v"
        write_tiny_model_folder(models, family)
        output_dir = Path(args.output_dir) if args.output_dir else Path(scratch) / "output"
        output_dir.mkdir(parents=True, exist_ok=True)
        host.configure_standalone(models_dir=models, output_dir=output_dir, device=args.device or "cpu")
        prompt = prepare_workflow(args.workflow if family == "t2i2v" else "t2v_256px")
        smoke_settings = {**SMOKE_SETTINGS, **{k: v for k, v in settings.items() if v is not None}}
        rows = [{"text": args.prompt or "a red panda rides a bicycle through a snowy forest", "name": "smoke"}]
        written = run_rows(prompt, rows, smoke_settings)
        if not written or not all(p.is_file() and p.stat().st_size > 0 for p in written):
            print("smoke test FAILED: no video was written", file=sys.stderr)
            return 1
        print(
            f"smoke test OK in {time.perf_counter() - started:.1f} s: the whole text-to-video graph ran on tiny "
            "RANDOM weights, so the video is noise. It checks the install, not the model."
        )
        if not args.output_dir:
            print("(written to a temporary folder and deleted; pass --output-dir to keep it)")
    return 0


# ------------------------------------------------------------------------------------------ download

MAIN_REPO = "hpcai-tech/Open-Sora-v2"
DC_AE_REPO = "hpcai-tech/Open-Sora-v2-Video-DC-AE"
FLUX_TEXT_REPO = "comfyanonymous/flux_text_encoders"


@dataclass(frozen=True)
class Download:
    """One file (or, with ``files``, some files of a repo folder) and where it goes under ``models/``."""

    repo: str
    source: str
    folder: str
    name: str
    files: tuple[str, ...] = ()


# T5 and CLIP as the single safetensors files ComfyUI users have (the Open-Sora-v2 repo's T5 folder holds
# pickled .bin shards, which this pack does not read); their tokenizers come from the Open-Sora-v2 folders
# (ComfyUI has its own; the command line needs these).
_VIDEO_FILES = (
    Download(MAIN_REPO, "Open_Sora_v2.safetensors", "diffusion_models", "Open_Sora_v2.safetensors"),
    Download(MAIN_REPO, "hunyuan_vae.safetensors", "vae", "hunyuan_vae.safetensors"),
    Download(FLUX_TEXT_REPO, "t5xxl_fp16.safetensors", "text_encoders", "t5xxl_fp16.safetensors"),
    Download(FLUX_TEXT_REPO, "clip_l.safetensors", "text_encoders", "clip_l.safetensors"),
    Download(MAIN_REPO, "google/t5-v1_1-xxl", "text_encoders", "t5xxl_fp16_tokenizer",
             ("spiece.model", "tokenizer_config.json", "special_tokens_map.json")),
    Download(MAIN_REPO, "openai/clip-vit-large-patch14", "text_encoders", "clip_l_tokenizer",
             ("vocab.json", "merges.txt", "tokenizer_config.json", "special_tokens_map.json")),
)
_FLUX_FILES = (  # the t2i2v first frame: Flux-dev and its AE (Model/VAE Loader, or ComfyUI's UNETLoader/VAELoader)
    Download(MAIN_REPO, "flux1-dev.safetensors", "diffusion_models", "flux1-dev.safetensors"),
    Download(MAIN_REPO, "flux1-dev-ae.safetensors", "vae", "flux1-dev-ae.safetensors"),
)
_DC_AE_FILES = (
    Download(DC_AE_REPO, "Open_Sora_v2_Video_DC_AE.safetensors", "diffusion_models",
             "Open_Sora_v2_Video_DC_AE.safetensors"),
    Download(DC_AE_REPO, "F32T4C128_AE.safetensors", "vae", "F32T4C128_AE.safetensors"),
)
_TEXT_FILES = tuple(item for item in _VIDEO_FILES if item.folder == "text_encoders")
DOWNLOADS: dict[str, tuple[Download, ...]] = {
    "t2v": _VIDEO_FILES,
    "i2v": _VIDEO_FILES,
    "t2i2v": _VIDEO_FILES + _FLUX_FILES,
    "high_compression": _TEXT_FILES + _FLUX_FILES + _DC_AE_FILES,  # its own model and autoencoder only
}


def download(what: str, models_dir: Path, log=print) -> list[Path]:
    """Fetch the released weights a workflow family needs into ``models_dir`` (ComfyUI's layout).

    Files already present are skipped. Needs ``pip install huggingface_hub`` (imported only here).
    """
    try:
        import huggingface_hub
    except ImportError:
        raise SystemExit("Downloading needs huggingface_hub: python3 -m pip install huggingface_hub") from None
    staging = models_dir / ".download"
    placed: list[Path] = []
    for item in DOWNLOADS[what]:
        target = models_dir / item.folder / item.name
        placed.append(target)
        if target.exists():
            log(f"have {target}")
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        log(f"downloading {item.repo}: {item.source} -> {target}")
        if not item.files:
            huggingface_hub.hf_hub_download(item.repo, item.source, local_dir=staging)
            (staging / item.source).rename(target)
            continue
        patterns = [f"{item.source}/{name}" for name in item.files]
        huggingface_hub.snapshot_download(item.repo, allow_patterns=patterns, local_dir=staging)
        target.mkdir()
        for name in item.files:
            if (staging / item.source / name).is_file():
                (staging / item.source / name).rename(target / name)
    shutil.rmtree(staging, ignore_errors=True)  # download metadata only: every file was moved out
    return placed


def _download(args: argparse.Namespace) -> int:
    download(args.what, Path(args.models_dir))
    return 0


def _list(_args: argparse.Namespace) -> int:
    for name in available_workflows():
        print(name)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python3 ComfyUI-OpenSora",
        description="Open-Sora 2.0 without the ComfyUI UI: run the pack's example workflows headless.",
    )
    commands = parser.add_subparsers(dest="command", required=True)

    generate = commands.add_parser("generate", help="run an example workflow for a prompt or a CSV of prompts")
    generate.add_argument("--workflow", default="t2v_256px",
                          help="example workflow name (see 'workflows') or an API-format .json file")
    generate.add_argument("--prompt", help="the text prompt")
    generate.add_argument("--negative", help="negative prompt (default: empty, as the reference)")
    generate.add_argument("--csv", help="CSV with a 'text' column and optional 'ref', 'neg', 'name' columns")
    generate.add_argument("--ref", help="reference image/video for i2v/v2v workflows; two paths 'a.png;b.png' for i2v_loop")
    generate.add_argument("--models-dir", help="folder with diffusion_models/, vae/, text_encoders/")
    generate.add_argument("--output-dir", default=None, help="where videos go (default ./output)")
    generate.add_argument("--seed", type=int)
    generate.add_argument("--num-frames", type=int, help="4k+1 frames (Hunyuan VAE) or 4k (DC-AE)")
    generate.add_argument("--resolution", choices=("256px", "768px"))
    generate.add_argument("--aspect-ratio", help="e.g. 16:9, 9:16, 1:1, 2.39:1")
    generate.add_argument("--width", type=int, help="custom width in pixels (with --height; multiple of 16, or 32 for DC-AE)")
    generate.add_argument("--height", type=int, help="custom height in pixels (with --width)")
    generate.add_argument("--steps", type=int, help="sampling steps (reference: 50)")
    generate.add_argument("--weight-dtype", choices=("bf16", "fp16", "fp32"))
    generate.add_argument("--model", help="diffusion model file in diffusion_models/ (default: the workflow's)")
    generate.add_argument("--vae", help="autoencoder file in vae/ (default: the workflow's)")
    generate.add_argument("--t5", help="T5 file or Hugging Face folder in text_encoders/ (default: t5xxl_fp16.safetensors)")
    generate.add_argument("--clip", help="CLIP file or Hugging Face folder in text_encoders/ (default: clip_l.safetensors)")
    generate.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda when available)")
    generate.add_argument("--text-only", action="store_true",
                          help="t2i2v / high_compression: drop the Flux-dev first frame (ComfyUI's Flux nodes exist "
                               "only inside ComfyUI) and generate from the text alone")
    generate.add_argument("--motion-score", choices=("off", *(str(i) for i in range(1, 8)), "dynamic"),
                          help="motion score in the prompt (reference: 4); dynamic = ask the --refine-* endpoint")
    generate.add_argument("--refine-prompt", action="store_true",
                          help="rewrite each prompt with an OpenAI-compatible chat endpoint before encoding (i2v: the "
                               "image is sent when the endpoint accepts images)")
    generate.add_argument("--refine-model", default="gpt-4o", help="model name at the endpoint (default gpt-4o)")
    generate.add_argument("--refine-base-url", default="https://api.openai.com/v1",
                          help="OpenAI-compatible API root, e.g. http://127.0.0.1:11434/v1 for Ollama")
    generate.add_argument("--refine-key-env", default="OPENAI_API_KEY", help="environment variable with the API key")
    generate.add_argument("--refine-key-file", help="file whose first line is the API key (instead of the variable)")
    generate.add_argument("--smoke", action="store_true",
                          help="check the install: tiny random models, the whole t2v graph, seconds, offline")
    generate.set_defaults(handler=_generate)

    download = commands.add_parser("download", help="download the released weights from Hugging Face")
    download.add_argument("--what", required=True, choices=("t2v", "i2v", "t2i2v", "high_compression"))
    download.add_argument("--models-dir", required=True)
    download.set_defaults(handler=_download)

    listing = commands.add_parser("workflows", help="list the example workflows")
    listing.set_defaults(handler=_list)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python3 <pack folder> ...``."""
    args = build_parser().parse_args(argv)
    if args.command == "generate" and args.output_dir is None and not args.smoke:
        args.output_dir = "output"
    return int(args.handler(args) or 0)
