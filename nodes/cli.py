"""The pack's command line: run an example workflow headless, check an install, download weights.

``generate`` loads the API twin of an example workflow (``example_workflows/api/<name>.json``), sets the
options given on the command line on the nodes that own them, and runs it in-process through the same
node classes ComfyUI runs (:mod:`.workflow_runner`). ComfyUI is not needed; core ComfyUI nodes are
limited to the image and video loaders (:data:`workflow_runner.STANDALONE_CORE_NODES`).
"""

from __future__ import annotations

import argparse
import copy
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from ..samplers import geometry
from ..samplers.prompt import check_motion_score
from ..samplers.seeds import OPEN_SORA_GLOBAL_SEED
from . import NODE_CLASS_MAPPINGS, host, inference_plan
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
    "batch_size": (("OpenSoraNoise", "batch_size"),),
    "noise_device": (("OpenSoraNoise", "noise_device"),),
    "noise_dtype": (("OpenSoraNoise", "noise_dtype"),),
    "steps": (("OpenSoraSampler", "steps"),),
    "guidance": (("OpenSoraSampler", "guidance"),),
    "guidance_img": (("OpenSoraSampler", "guidance_img"),),
    "text_osci": (("OpenSoraSampler", "text_osci"),),
    "image_osci": (("OpenSoraSampler", "image_osci"),),
    "scale_temporal_osci": (("OpenSoraSampler", "scale_temporal_osci"),),
    "shift": (("OpenSoraSampler", "shift"),),
    "flow_shift": (("OpenSoraSampler", "flow_shift"),),
    "branch_mode": (("OpenSoraSampler", "branch_mode"),),
    "fps": (("OpenSoraTextEncode", "fps"), ("OpenSoraSaveVideo", "fps")),
    "motion_score": (("OpenSoraTextEncode", "motion_score"),),
    "one_prompt_per_line": (("OpenSoraTextEncode", "one_prompt_per_line"),),
    "cond_type": (("OpenSoraImageCondition", "cond_type"),),
    "weight_dtype": (("OpenSoraModelLoader", "weight_dtype"), ("OpenSoraTextEncoderLoader", "weight_dtype"),
                     ("OpenSoraVAELoader", "dtype")),
    "attention": (("OpenSoraModelLoader", "attention"),),
    "offload_blocks": (("OpenSoraModelLoader", "offload_blocks"),),
    "name": (("OpenSoraSaveVideo", "filename_prefix"),),
    "model": (("OpenSoraModelLoader", "model_name"),),
    "vae": (("OpenSoraVAELoader", "vae_name"),),
    "t5": (("OpenSoraTextEncoderLoader", "t5_name"),),
    "clip": (("OpenSoraTextEncoderLoader", "clip_name"),),
}
# ComfyUI's own Flux nodes (the t2i2v first frame): not available outside ComfyUI.
FLUX_NODE_TYPES = ("UNETLoader", "ModelSamplingFlux", "DualCLIPLoader", "CLIPTextEncode", "FluxGuidance",
                   "EmptySD3LatentImage", "KSampler", "VAELoader", "VAEDecode")
# Nodes that read reference media, in the order ``ref`` paths (separated by ';') are given to them.
REFERENCE_INPUTS: tuple[tuple[str, str], ...] = (("LoadImage", "image"), ("LoadVideo", "file"))

SMOKE_SETTINGS = {"num_frames": 9, "steps": 2, "weight_dtype": "fp32"}
# fp8 weights exist for the diffusion model only; the text encoders and autoencoder then run in bf16.
FP8_DTYPES = ("fp8_e4m3fn", "fp8_e5m2")
WEIGHT_DTYPE_CHOICES = ("bf16", "fp16", "fp32", *FP8_DTYPES)


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


def _value_for(option: str, class_type: str, value: Any) -> Any:
    """The value an input takes: fp8 only for the diffusion model, fps as a float for the saver."""
    if option == "weight_dtype" and value in FP8_DTYPES and class_type != "OpenSoraModelLoader":
        return "bf16"
    if option == "fps" and class_type == "OpenSoraSaveVideo":
        return float(value)
    if option == "motion_score":
        return str(value)
    return value


def set_option(prompt: dict[str, dict], option: str, value: Any) -> int:
    """Set ``value`` on every node input that ``option`` targets; returns how many were set."""
    count = 0
    for node in prompt.values():
        if option in VIDEO_ONLY_OPTIONS and is_first_frame_node(node):
            continue
        for class_type, input_name in OPTION_TARGETS[option]:
            if node["class_type"] == class_type and input_name in node["inputs"]:
                node["inputs"][input_name] = _value_for(option, class_type, value)
                count += 1
    return count


def without_image_condition(prompt: dict[str, dict]) -> dict[str, dict]:
    """The workflow as text to video (``cond_type t2v``): no image condition and nothing that only fed it."""
    dropped = {i for i, n in prompt.items() if n["class_type"] == "OpenSoraImageCondition"}
    classes = node_classes()
    while True:  # then every node whose outputs no longer go anywhere (loaders of the reference)
        used = {v[0] for i, n in prompt.items() if i not in dropped for v in n["inputs"].values() if _is_link(v)}
        orphans = {i for i, n in prompt.items() if i not in dropped and i not in used
                   and not getattr(classes.get(n["class_type"]), "OUTPUT_NODE", False)}
        if not orphans:
            break
        dropped |= orphans
    return {
        node_id: {**node, "inputs": {k: v for k, v in node["inputs"].items() if not (_is_link(v) and v[0] in dropped)}}
        for node_id, node in prompt.items() if node_id not in dropped
    }


def _is_link(value: Any) -> bool:
    return isinstance(value, list) and len(value) == 2 and isinstance(value[0], str)


def set_cond_type(prompt: dict[str, dict], cond_type: str) -> dict[str, dict]:
    """The reference's ``cond_type`` on a workflow: t2v drops the image condition; the others need one."""
    if cond_type == "t2v":
        return without_image_condition(prompt)
    if not set_option(prompt, "cond_type", cond_type):
        raise SystemExit(f"--cond-type {cond_type} needs a workflow with an image condition (i2v_head, i2v_loop, "
                         "v2v_head); this one is text to video.")
    return prompt


def check_references(prompt: dict[str, dict], args: argparse.Namespace,
                     rows: Sequence[inference_plan.PromptRow]) -> None:
    """An i2v/v2v workflow needs its reference files from the command line: say which option gives them,
    and that each one exists, before any model loads."""
    if not _reference_loaders(prompt):
        return
    references = [args.ref] if args.ref else [row.ref for row in rows]
    if not all(references):
        raise SystemExit(f"--workflow {args.workflow} starts from a reference image or video: give --ref FILE "
                         "(';'-separated for several), a 'ref' column in --csv, or --cond-type t2v.")
    for reference in references:
        for part in str(reference).split(";"):
            if part.strip() and not Path(part.strip()).is_file():
                raise SystemExit(f"--ref {part.strip()}: no such file.")


def _reference_loaders(prompt: dict[str, dict]) -> list[tuple[str, str]]:
    """(node id, input) of the workflow's reference-media loaders, in node-id order."""
    return [
        (node_id, input_name)
        for node_id, node in sorted(prompt.items(), key=lambda item: int(item[0]) if item[0].isdigit() else 0)
        for class_type, input_name in REFERENCE_INPUTS
        if node["class_type"] == class_type
    ]


def set_references(prompt: dict[str, dict], references: Sequence[str]) -> None:
    """Give reference files (images or videos) to the workflow's loader nodes, in node-id order."""
    loaders = _reference_loaders(prompt)
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
        if option == "cond_type":
            prompt = set_cond_type(prompt, value)
        elif option == "ref":
            set_references(prompt, [r.strip() for r in str(value).split(";") if r.strip()])
        elif not set_option(prompt, option, value):
            raise SystemExit(f"--{option.replace('_', '-')} does not apply to this workflow (no node takes it).")
    return prompt


def load_rows(args: argparse.Namespace) -> tuple[list[inference_plan.PromptRow], str]:
    """The rows to generate (after ``--start-index/--end-index/--num-samples``) and the name stem."""
    if args.csv is None:
        table, stem = [{"text": args.prompt or ""}], inference_plan.PROMPT_TABLE_NAME
    else:
        try:
            table, stem = inference_plan.read_prompt_table(args.csv)
        except (OSError, ValueError) as error:
            raise SystemExit(str(error)) from None
    rows = inference_plan.prompt_rows(table, args.negative or "", args.ref or "")
    try:
        rows = inference_plan.select_rows(rows, args.start_index, args.end_index, args.num_samples)
    except ValueError as error:
        raise SystemExit(str(error)) from None
    if not rows:
        raise SystemExit("--start-index/--end-index select no row of the prompt table.")
    return rows, stem


# What the progress line calls the work of a node (the others are named by their class).
STAGES = {"OpenSoraSampler": "sampling", "OpenSoraVAEDecode": "decoding", "OpenSoraSaveVideo": "saving",
          "OpenSoraSaveFirstFrame": "saving first frame", "OpenSoraImageCondition": "encoding reference",
          "OpenSoraTextEncode": "encoding text", "OpenSoraTextEncodeImage": "encoding text"}


class StageProgress:
    """Progress lines that name the running node's stage (``sampling 3/50``, ``decoding 1/2``, ``saving
    9/129``): one line rewritten on a terminal; elsewhere (logs) about ten lines per stage."""

    def __init__(self, log: Callable[[str], None]):
        self.log = log
        self.stage = "working"

    def start_node(self, node_id: str, class_type: str) -> None:
        self.stage = STAGES.get(class_type, class_type)
        self.log(f"  [{node_id}] {class_type}")

    def __call__(self, value: int, total: int) -> None:
        if sys.stderr.isatty():
            print(f"\r    {self.stage} {value}/{total}", end="\n" if value >= total else "", file=sys.stderr,
                  flush=True)
        elif value == total or value % max(1, total // 10) == 0:
            print(f"    {self.stage} {value}/{total}", file=sys.stderr, flush=True)


def _workflow_value(prompt: dict[str, dict], class_type: str, name: str) -> Any:
    return next((n["inputs"].get(name) for n in prompt.values() if n["class_type"] == class_type), None)


def describe_frames(prompt: dict[str, dict], settings: dict[str, Any]) -> str | None:
    """``"num_frames: 16 -> 13 frames (as Open-Sora)"`` when the autoencoder writes fewer frames than asked."""
    num_frames = settings.get("num_frames") or _workflow_value(prompt, "OpenSoraNoise", "num_frames")
    autoencoder = _workflow_value(prompt, "OpenSoraNoise", "autoencoder")
    if not num_frames or autoencoder is None:
        return None
    if num_frames < 1:
        raise SystemExit(f"--num-frames {num_frames}: give 1 or more (1 = an image).")
    change = geometry.describe_frame_change(num_frames, geometry.autoencoder_kind(autoencoder))
    return f"num_frames: {change}" if change else None


def _batch_value(rows: Sequence[inference_plan.PromptRow], column: str) -> str:
    values = {getattr(row, column) for row in rows}
    if len(values) > 1:
        raise SystemExit(f"One batch holds rows with different '{column}' values ({sorted(values)}); the rows of a "
                         "batch share them here: use --batch-size 1 or group the rows.")
    return values.pop()


def run_generations(prompt: dict[str, dict], generations: Iterable[inference_plan.Generation],
                    settings: dict[str, Any], output_dir: Path, sub_dir: str, log=print) -> list[Path]:
    """Run the workflow once per generation and give each video (and its sidecar) the reference's name."""
    written: list[Path] = []
    settings = dict(settings)
    refiner = settings.pop("refiner", None)
    classes = node_classes()
    target = output_dir / sub_dir
    staging = Path(tempfile.mkdtemp(prefix=".opensora-", dir=output_dir))
    progress = StageProgress(log)
    remove_listener = host.add_progress_listener(progress)
    try:
        for generation in generations:
            started = time.perf_counter()
            rows = generation.rows
            texts = [row.prompt for row in rows]
            if refiner is not None:
                refined = [refiner(row.prompt, row.ref or None) for row in rows]
                texts = [text for text, _ in refined]
                scores = {score for _, score in refined if score}
                if len(scores) > 1:
                    raise SystemExit("The refiner gave the rows of one batch different motion scores: "
                                     "use --batch-size 1 with --motion-score dynamic.")
                if scores:
                    settings = dict(settings, motion_score=scores.pop())
                for text in texts:
                    log(f"sample {generation.sample}: refined prompt: {text}")
            run_settings = dict(
                settings, prompt="\n".join(texts), one_prompt_per_line=len(rows) > 1 or None,
                batch_size=len(rows), negative=_batch_value(rows, "neg") or None,
                ref=_batch_value(rows, "ref") or None, seed=generation.seed,
                name=f"{staging.name}/sample",
            )
            graph = apply_settings(prompt, run_settings)
            files = run_workflow(graph, classes, on_node=progress.start_node).files()
            # the videos (a t2i2v first frame is saved beside them, in its own folder, and stays there)
            files = [file for file in files if file.parent.name == staging.name]
            if len(files) != len(rows):
                raise SystemExit(f"The workflow wrote {len(files)} file(s) for {len(rows)} prompt(s).")
            target.mkdir(parents=True, exist_ok=True)
            for file, name in zip(files, generation.names):
                for source in (file, file.with_suffix(".txt")):
                    if source.exists():
                        destination = target / f"{name}{source.suffix}"
                        source.replace(destination)
                        written.append(destination)
            log(f"sample {generation.sample}, seed {generation.seed}: "
                f"{', '.join(generation.names)} ({time.perf_counter() - started:.1f} s)")
    finally:
        remove_listener()
        shutil.rmtree(staging, ignore_errors=True)
    return written


# ----------------------------------------------------------------------------------------- commands

# Command-line options that set node inputs directly (argparse dest = OPTION_TARGETS key).
_NODE_OPTIONS = ("num_frames", "resolution", "aspect_ratio", "steps", "guidance", "guidance_img", "text_osci",
                 "image_osci", "scale_temporal_osci", "shift", "flow_shift", "branch_mode", "fps", "motion_score",
                 "cond_type", "weight_dtype", "attention", "offload_blocks", "noise_device", "noise_dtype",
                 "model", "vae", "t5", "clip")


def _settings(args: argparse.Namespace) -> dict[str, Any]:
    settings = {option: getattr(args, option) for option in _NODE_OPTIONS}
    if args.resolution is not None:
        try:
            geometry.num_pixels(args.resolution)
        except ValueError as error:
            raise SystemExit(f"--resolution: {error}") from None
    if args.motion_score is not None and args.motion_score != "dynamic":
        try:
            check_motion_score(args.motion_score)
        except ValueError as error:
            raise SystemExit(f"--motion-score: {error}") from None
    if args.refine_prompt or args.motion_score == "dynamic":
        settings["refiner"] = command_line_refiner(args)
        if args.motion_score == "dynamic":
            settings["motion_score"] = None
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


def _plan_and_run(args: argparse.Namespace, prompt: dict[str, dict], settings: dict[str, Any],
                  rows: list[inference_plan.PromptRow], stem: str, output_dir: Path) -> list[Path]:
    """Plan the generations as the reference's script, say what will happen, run them."""
    generations = inference_plan.plan(rows, stem, args.batch_size, args.num_sample, args.seed, args.global_seed,
                                      args.save_prefix, args.prompt_as_path)
    frames = describe_frames(prompt, settings)
    if frames:
        print(frames)
    if args.seed is None:
        print(f"seed: none given, so as the official script: drawn from global seed {args.global_seed} "
              f"({generations[0].seed} first)")
    num_frames = settings.get("num_frames") or _workflow_value(prompt, "OpenSoraNoise", "num_frames")
    resolution = settings.get("resolution") or _workflow_value(prompt, "OpenSoraNoise", "resolution")
    sub_dir = inference_plan.sub_dir(num_frames, resolution)
    try:
        return run_generations(prompt, generations, settings, output_dir, sub_dir)
    except WorkflowError as error:
        raise SystemExit(f"The workflow cannot run: {error}") from None


SMOKE_WORKFLOWS = ("t2v_256px", "t2i2v", "t2i2v_comfy_flux")


def _generate(args: argparse.Namespace) -> int:
    workflow_path(args.workflow)  # an unknown workflow is the first thing to say
    settings = _settings(args)
    if args.smoke:
        ignored = [flag for flag, value in (("--csv", args.csv), ("--ref", args.ref), ("--models-dir", args.models_dir))
                   if value]
        if args.workflow not in SMOKE_WORKFLOWS:
            ignored.append(f"--workflow {args.workflow}")
        if ignored:
            raise SystemExit(f"--smoke runs the t2v (or t2i2v) graph on tiny built-in models and would ignore "
                             f"{', '.join(ignored)}: leave them out, or drop --smoke.")
        return _smoke(args, settings)
    if args.models_dir is None:
        raise SystemExit("--models-dir is required (the folder holding diffusion_models/, vae/, text_encoders/).")
    if not args.prompt and not args.csv:
        raise SystemExit("Give --prompt TEXT or --csv FILE.")
    output_dir = Path(args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    host.configure_standalone(models_dir=args.models_dir, output_dir=output_dir, device=args.device)
    prompt = prepare_workflow(args.workflow, args.text_only)
    check_model_files(apply_settings(prompt, {k: settings.get(k) for k in MODEL_FOLDERS}), args)
    rows, stem = load_rows(args)
    check_references(apply_settings(prompt, {"cond_type": settings.get("cond_type")}), args, rows)
    written = _plan_and_run(args, prompt, settings, rows, stem, output_dir)
    print(f"done: {len(written)} file(s) in {output_dir}")
    return 0


# The options that name weight files (their loader inputs are in OPTION_TARGETS) -> their model folder.
MODEL_FOLDERS = {"model": host.DIFFUSION_MODELS, "vae": host.VAE, "t5": host.TEXT_ENCODERS,
                 "clip": host.TEXT_ENCODERS}


def check_model_files(prompt: dict[str, dict], args: argparse.Namespace) -> None:
    """Every weight file the workflow loads is in --models-dir, or one line naming the file, the
    sub-folder it belongs in and the download command."""
    for option, folder in MODEL_FOLDERS.items():
        for class_type, input_name in OPTION_TARGETS[option]:
            for node in prompt.values():
                name = node["inputs"].get(input_name) if node["class_type"] == class_type else None
                if not isinstance(name, str):
                    continue
                try:
                    host.resolve_file(folder, name)
                except FileNotFoundError:
                    family = next((what for what in DOWNLOADS if args.workflow.startswith(what)), "t2v")
                    raise SystemExit(
                        f"{Path(args.models_dir) / folder / name} is missing: put the file (or its folder) in "
                        f"{Path(args.models_dir) / folder}/, or fetch it with: python3 <pack folder> download "
                        f"--what {family} --models-dir {args.models_dir}"
                    ) from None


def _smoke(args: argparse.Namespace, settings: dict[str, Any]) -> int:
    from ..tiny_checkpoints import write_tiny_model_folder

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
        text = args.prompt or "a red panda rides a bicycle through a snowy forest"
        rows = [inference_plan.PromptRow(index=0, text=text, name="smoke")]
        written = _plan_and_run(args, prompt, smoke_settings, rows, "smoke", output_dir)
        if not written or not all(p.is_file() and p.stat().st_size > 0 for p in written):
            print("smoke test FAILED: no video was written", file=sys.stderr)
            return 1
        for path in written:
            print(f"wrote {path}")
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
    try:
        return int(args.handler(args) or 0)
    except (SystemExit, ValueError, FileNotFoundError, RuntimeError, OSError) as error:
        if args.debug or isinstance(error, SystemExit) and not isinstance(error.code, str):
            raise
        message = error.code if isinstance(error, SystemExit) else str(error)
        print(f"error: {_first_lines(message)}", file=sys.stderr)
        print("(run with --debug for the full traceback)", file=sys.stderr)
        return USER_ERROR


USER_ERROR = 2  # argparse's exit status for a usage mistake: the same for every mistake a user can fix


def _first_lines(message: str, lines: int = 2) -> str:
    """A user mistake in one or two lines: the message's own first lines (what happened, what to change)."""
    kept = [line for line in str(message).strip().splitlines() if line.strip()][:lines]
    return "\n".join(kept) or "unknown error"
