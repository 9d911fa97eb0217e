"""The pack's command line: run an example workflow headless, check an install, download weights.

``generate`` loads the API twin of an example workflow (``example_workflows/api/<name>.json``), sets the
options given on the command line on the nodes that own them, and runs it in-process through the same
node classes ComfyUI runs (:mod:`.workflow_runner`). ComfyUI is not needed; core ComfyUI nodes are
limited to the image and video loaders (:data:`workflow_runner.STANDALONE_CORE_NODES`).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from .. import host
from ..loaders.mmdit import read_mmdit_config
from ..models import latent_space
from ..parallel import joined
from ..parallel.attention import yunchang_installed
from ..samplers import geometry
from ..samplers.prompt import check_motion_score
from . import data_parallel, inference_plan
from .arguments import available_workflows, parse_arguments, report_user_error, workflow_path
from .data_parallel import RankLayout
from .downloads import DOWNLOADS, download
from .manifest import MANIFEST_NAME, append_record, host_name, peak_memory, read_manifest, reset_peak_memory
from .workflow_edit import (
    FLUX_NODE_TYPES,
    OPTION_TARGETS,
    apply_settings,
    node_classes,
    reference_loaders,
    without_flux_first_frame,
)
from .workflow_runner import WorkflowError, load_api_workflow, run_workflow

SMOKE_SETTINGS = {"num_frames": 9, "steps": 2, "weight_dtype": "fp32"}


def check_references(prompt: dict[str, dict], args: argparse.Namespace,
                     rows: Sequence[inference_plan.PromptRow]) -> None:
    """An i2v/v2v workflow needs its reference files from the command line: say which option gives them,
    and that each one exists, before any model loads."""
    if not reference_loaders(prompt):
        return
    references = [args.ref] if args.ref else [row.ref for row in rows]
    if not all(references):
        raise SystemExit(f"--workflow {args.workflow} starts from a reference image or video: give --ref FILE "
                         "(';'-separated for several), a 'ref' column in --csv, or --cond-type t2v.")
    for reference in references:
        for part in str(reference).split(";"):
            if part.strip() and not Path(part.strip()).is_file():
                raise SystemExit(f"--ref {part.strip()}: no such file.")


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
    change = latent_space.describe_frame_change(num_frames, latent_space.autoencoder_kind(autoencoder))
    return f"num_frames: {change}" if change else None


def _batch_value(rows: Sequence[inference_plan.PromptRow], column: str) -> str:
    values = {getattr(row, column) for row in rows}
    if len(values) > 1:
        raise SystemExit(f"One batch holds rows with different '{column}' values ({sorted(values)}); the rows of a "
                         "batch share them here: use --batch-size 1 or group the rows.")
    return values.pop()


def preview_writer(folder: Path, name: str) -> Callable[[int, int, Any], None]:
    """A preview listener writing step ``k``'s picture to ``folder/<name>_step<k>.png``, atomically (a viewer
    watching the folder never reads half a file)."""
    def write(step: int, _total: int, picture: Any) -> None:
        target = folder / f"{name}_step{step}.png"
        target.parent.mkdir(parents=True, exist_ok=True)
        partial_file = target.with_name(f".{target.name}.tmp")
        picture.save(partial_file, format="PNG")
        partial_file.replace(target)

    return write


Finished = Callable[[inference_plan.Generation, list[Path], float], None]


def run_generations(prompt: dict[str, dict], generations: Iterable[inference_plan.Generation],
                    settings: dict[str, Any], output_dir: Path, sub_dir: str, log=print,
                    finished: Finished | None = None, preview_dir: Path | None = None, writer: bool = True
                    ) -> list[Path]:
    """Run the workflow once per generation and give each video (and its sidecar) the reference's name.

    The sidecar is renamed into place before its video, so a video under its final name means the
    generation is complete. ``finished(generation, files, seconds)`` is called after each one. With
    ``preview_dir``, each sampling step's preview of the generation's first video is written there.
    A rank that is not its group's ``writer`` computes with the group and keeps nothing (the nodes
    write into the host's output folder, a private scratch folder on such a rank).
    """
    written: list[Path] = []
    settings = dict(settings)
    refiner = settings.pop("refiner", None)
    classes = node_classes()
    # the reference refines as an image prompt (t2i) whenever the video starts from an image
    from_image = any(node["class_type"] == "OpenSoraImageCondition"
                     for node in apply_settings(prompt, {"cond_type": settings.get("cond_type")}).values())
    target = output_dir / sub_dir
    staging = Path(tempfile.mkdtemp(prefix=".opensora-", dir=host.output_directory()))  # where the nodes save
    progress = StageProgress(log)
    remove_listener = host.add_progress_listener(progress)
    try:
        for generation in generations:
            started = time.perf_counter()
            rows = generation.rows
            texts = [row.prompt for row in rows]
            if refiner is not None:
                refined = [refiner(row.prompt, row.ref or None, from_image) for row in rows]
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
            remove_previewer = (host.add_preview_listener(preview_writer(preview_dir, generation.names[0]))
                                if preview_dir is not None else lambda: None)
            try:
                files = run_workflow(graph, classes, on_node=progress.start_node).files()
            finally:
                remove_previewer()
            # the videos (a t2i2v first frame is saved beside them, in its own folder, and stays there)
            files = [file for file in files if file.parent.name == staging.name]
            if len(files) != len(rows):
                raise SystemExit(f"The workflow wrote {len(files)} file(s) for {len(rows)} prompt(s).")
            if not writer:  # the group's first rank keeps this generation's files
                continue
            target.mkdir(parents=True, exist_ok=True)
            finals: list[Path] = []
            for file, name in zip(files, generation.names):
                moves = [(source, target / f"{name}{source.suffix}")
                         for source in (file, file.with_suffix(".txt")) if source.exists()]
                for source, destination in reversed(moves):  # the sidecar first, the video last
                    source.replace(destination)
                finals.extend(destination for _source, destination in moves)
            written.extend(finals)
            seconds = time.perf_counter() - started
            log(f"sample {generation.sample}, seed {generation.seed}: {', '.join(generation.names)} ({seconds:.1f} s)")
            if finished is not None:
                finished(generation, finals, seconds)
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
    """``(text, ref, from_image) -> (prompt, motion score or None)`` for --refine-prompt / --motion-score
    dynamic. Kinds: ``t2v`` for text to video; ``i2v`` with a still reference image (sent along);
    ``t2i`` when the video starts from an image that is not sent (t2i2v, a video reference,
    --refine-text-only), as the reference refines it."""
    from ..llm.prompt_refiner import Endpoint, RefineError, dynamic_motion_score, read_api_key, refine_prompt

    def refine(text: str, ref: str | None, from_image: bool) -> tuple[str, str | None]:
        try:
            endpoint = Endpoint(args.refine_base_url, args.refine_model,
                                read_api_key(args.refine_key_env, args.refine_key_file or "", args.refine_base_url))
            image_url = (_image_data_url(ref) if not args.refine_text_only and ref and ";" not in ref and from_image
                         else None)
            if args.refine_prompt:
                kind = "i2v" if image_url else "t2i" if from_image else "t2v"
                text = refine_prompt(endpoint, text, kind, image_url, args.seed)
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


def settings_that_matter(args: argparse.Namespace, settings: dict[str, Any], models_dir: Path) -> dict[str, Any]:
    """What, besides the row and seed, decides a generation's output: a finished generation counts as done
    on a rerun only when these are unchanged (a rerun with other settings overwrites, as before)."""
    chosen = {key: value for key, value in settings.items() if value is not None and key != "refiner"}
    return {"workflow": args.workflow, "models_dir": str(models_dir.resolve()), "text_only": args.text_only,
            "refine_prompt": args.refine_prompt, **chosen}


def generation_record(generation: inference_plan.Generation, settings: dict[str, Any]) -> dict[str, Any]:
    """The manifest fields that identify a generation (compared on a rerun to skip finished ones)."""
    return {"rows": [row.index for row in generation.rows], "sample": generation.sample, "seed": generation.seed,
            "names": list(generation.names), "prompts": [row.prompt for row in generation.rows],
            "negatives": [row.neg for row in generation.rows], "refs": [row.ref for row in generation.rows],
            "settings": settings}


IDENTITY_FIELDS = ("rows", "sample", "seed", "names", "prompts", "negatives", "refs", "settings")


def _identity(record: dict[str, Any]) -> str:
    return json.dumps([record.get(key) for key in IDENTITY_FIELDS], sort_keys=True)


def finished_generations(output_dir: Path) -> set[str]:
    """Identities of the generations the manifest lists whose files all exist under their final names
    (a file is renamed into place only once complete, so a partial write never counts)."""
    return {_identity(record) for record in read_manifest(output_dir / MANIFEST_NAME)
            if record.get("files") and all((output_dir / name).is_file() for name in record["files"])}


def _plan_and_run(args: argparse.Namespace, prompt: dict[str, dict], settings: dict[str, Any],
                  rows: list[inference_plan.PromptRow], stem: str, output_dir: Path, models_dir: Path,
                  layout: RankLayout = RankLayout()) -> tuple[list[Path], int]:
    """Plan the generations as the reference's script, say what will happen, run this rank's share of
    those not finished yet; returns the files written and the number skipped as finished."""
    generations = inference_plan.plan(rows, stem, args.batch_size, args.num_sample, args.seed, args.global_seed,
                                      args.save_prefix, args.prompt_as_path)
    frames = describe_frames(prompt, settings)
    if frames and layout.rank == 0:
        print(frames)
    if args.seed is None and layout.rank == 0:
        print(f"seed: none given, so as the official script: drawn from global seed {args.global_seed} "
              f"({generations[0].seed} first)")
    num_frames = settings.get("num_frames") or _workflow_value(prompt, "OpenSoraNoise", "num_frames")
    resolution = settings.get("resolution") or _workflow_value(prompt, "OpenSoraNoise", "resolution")
    sub_dir = inference_plan.sub_dir(num_frames, resolution)
    matters = settings_that_matter(args, settings, models_dir)
    finished = finished_generations(output_dir)
    share = [(index, generation) for index, generation in layout.share(generations)
             if _identity(generation_record(generation, matters)) not in finished]
    plan_index = {id(generation): index for index, generation in share}
    skipped = len(layout.share(generations)) - len(share) if layout.writer else 0
    device = str(host.torch_device())
    log = print if not layout.distributed else (lambda line: print(f"[rank {layout.rank}] {line}", flush=True))
    if skipped:
        log(f"{skipped} generation(s) already finished (in {MANIFEST_NAME}, files complete): skipped")

    def record(generation: inference_plan.Generation, files: list[Path], seconds: float) -> None:
        memory, measured = peak_memory(device)
        append_record(output_dir / MANIFEST_NAME, {
            **generation_record(generation, matters), "generation": plan_index[id(generation)],
            "files": [file.relative_to(output_dir).as_posix() for file in files], "seconds": round(seconds, 3),
            "peak_memory_bytes": memory, "peak_memory": measured, "device": device, "host": host_name(),
            "rank": layout.rank, "world_size": layout.world_size, "sp_size": layout.sp_size,
        })
        reset_peak_memory(device)

    reset_peak_memory(device)
    try:
        written = run_generations(prompt, [generation for _index, generation in share], settings, output_dir,
                                  sub_dir, log, record if layout.writer else None,
                                  Path(args.preview_dir) if args.preview_dir and layout.writer else None,
                                  layout.writer)
    except WorkflowError as error:
        raise SystemExit(f"The workflow cannot run: {error}") from None
    return written, skipped


SMOKE_WORKFLOWS = ("t2v_256px", "t2i2v", "t2i2v_comfy_flux")


def _generate(args: argparse.Namespace) -> int:
    settings = _settings(args)
    if args.smoke:
        ignored = [flag for flag, value in (("--csv", args.csv), ("--ref", args.ref), ("--models-dir", args.models_dir))
                   if value]
        if args.sp_size != 1:
            ignored.append(f"--sp-size {args.sp_size}")
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
    layout = _rank_layout(args.sp_size)
    device = data_parallel.rank_device(args.device, layout) if layout.distributed else args.device
    output_dir = Path(args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    host.configure_standalone(models_dir=args.models_dir, output_dir=output_dir, device=device)
    prompt = prepare_workflow(args.workflow, args.text_only)
    models = apply_settings(prompt, {k: settings.get(k) for k in MODEL_FOLDERS})
    check_model_files(models, args)
    rows, stem = load_rows(args)
    check_references(apply_settings(prompt, {"cond_type": settings.get("cond_type")}), args, rows)
    if not layout.distributed:
        written, skipped = _plan_and_run(args, prompt, settings, rows, stem, output_dir, Path(args.models_dir))
        print(f"done: {len(written)} file(s) in {output_dir}" + (f"; {skipped} finished generation(s) skipped"
                                                                 if skipped else ""))
        return 0
    data_parallel.open_process_group(str(host.torch_device()))
    scratch = None if layout.writer else tempfile.TemporaryDirectory(prefix="opensora-rank-")
    try:
        started = time.perf_counter()
        if layout.sp_size > 1:
            joined.join(layout.sp_size, diffusion_model_heads(models))
        if scratch is not None:  # what this rank's nodes save is thrown away: its group's first rank writes
            host.configure_standalone(output_dir=Path(scratch.name))
        written, skipped = _plan_and_run(args, prompt, settings, rows, stem, output_dir, Path(args.models_dir),
                                         layout)
        files, skipped = data_parallel.gather_counts([len(written), skipped])
        if layout.rank == 0:
            print(f"done: {files} file(s) in {output_dir} from {layout.world_size} ranks in {layout.num_groups} "
                  f"group(s) of {layout.sp_size} ({time.perf_counter() - started:.1f} s); {skipped} finished "
                  f"generation(s) skipped; record: {output_dir / MANIFEST_NAME}")
    finally:
        joined.leave()
        data_parallel.close_process_group()
        if scratch is not None:
            scratch.cleanup()
    return 0


def _rank_layout(sp_size: int) -> RankLayout:
    """This process's place in torchrun's job (one process without torchrun); groups of ``sp_size`` ranks
    need torchrun and, above one rank, the yunchang package."""
    if sp_size < 1:
        raise SystemExit(f"--sp-size {sp_size}: give 1 or more ranks per group.")
    layout = data_parallel.layout_from_environment(sp_size=sp_size)
    if layout is None and sp_size > 1:
        raise SystemExit(f"--sp-size {sp_size} spreads each video over {sp_size} ranks of a torchrun job: run "
                         f"torchrun --nproc-per-node {sp_size} <pack folder> generate ... --sp-size {sp_size}.")
    if sp_size > 1 and not yunchang_installed():
        raise SystemExit(f"--sp-size {sp_size} needs the 'yunchang' package (sequence-parallel attention): "
                         "pip install yunchang.")
    return layout or RankLayout()


def diffusion_model_heads(prompt: dict[str, dict]) -> list[int]:
    """The attention head counts of the diffusion models the workflow loads (read off the files' headers):
    a group prepares one sequence-parallel layout per count before the first generation."""
    heads = []
    for class_type, input_name in OPTION_TARGETS["model"]:
        for node in prompt.values():
            name = node["inputs"].get(input_name) if node["class_type"] == class_type else None
            if isinstance(name, str):
                path = host.resolve_file(host.DIFFUSION_MODELS, name)
                heads.append(read_mmdit_config(path).num_heads)
    return heads


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
    from ..tiny_checkpoints.autoencoders import TAEHV_FILE, write_tiny_taehv

    import torch

    started = time.perf_counter()
    torch.set_num_threads(1)  # tiny tensors: extra threads only add start-up and contention costs
    with tempfile.TemporaryDirectory(prefix="opensora-smoke-") as scratch:
        models = Path(scratch) / "models"
        family = "t2i2v" if args.workflow in ("t2i2v", "t2i2v_comfy_flux") else "t2v"
        write_tiny_model_folder(models, family)
        if args.preview_dir:  # previews through the TAEHV path too
            (models / host.VAE_APPROX).mkdir()
            write_tiny_taehv(models / host.VAE_APPROX / TAEHV_FILE)
        output_dir = Path(args.output_dir) if args.output_dir else Path(scratch) / "output"
        output_dir.mkdir(parents=True, exist_ok=True)
        host.configure_standalone(models_dir=models, output_dir=output_dir, device=args.device or "cpu")
        prompt = prepare_workflow(args.workflow if family == "t2i2v" else "t2v_256px")
        smoke_settings = {**SMOKE_SETTINGS, **{k: v for k, v in settings.items() if v is not None}}
        text = args.prompt or "a red panda rides a bicycle through a snowy forest"
        rows = [inference_plan.PromptRow(index=0, text=text, name="smoke")]
        written, _skipped = _plan_and_run(args, prompt, smoke_settings, rows, "smoke", output_dir, models)
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


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {}  # filled below: command name -> handler


def main(argv: Sequence[str] | None = None, args: argparse.Namespace | None = None) -> int:
    """Entry point of ``python3 <pack folder> ...`` (``args`` when the caller parsed them already)."""
    debug = args.debug if args is not None else "--debug" in (sys.argv[1:] if argv is None else argv)
    try:
        args = args if args is not None else parse_arguments(argv)
        return int(COMMANDS[args.command](args) or 0)
    except (SystemExit, ValueError, FileNotFoundError, RuntimeError, OSError) as error:
        if debug or isinstance(error, SystemExit) and not isinstance(error.code, str):
            raise
        return report_user_error(error.code if isinstance(error, SystemExit) else str(error))


def _download(args: argparse.Namespace) -> int:
    download(args.what, Path(args.models_dir))
    return 0


def _list(_args: argparse.Namespace) -> int:
    for name in available_workflows():
        print(name)
    return 0


def _tiny_models(args: argparse.Namespace) -> int:
    from ..tiny_checkpoints import write_tiny_model_folder

    folder = write_tiny_model_folder(args.models_dir, args.what)
    for name in folder.files.values():
        print(next(str(path) for path in Path(args.models_dir).glob(f"*/{name}")))
    print(f"tiny RANDOM weights (videos are noise), for trying commands: python3 <pack folder> generate "
          f"--models-dir {args.models_dir} --prompt 'a test' --steps 2 --num-frames 9 --width 64 --height 48")
    return 0


COMMANDS.update({"generate": _generate, "download": _download, "workflows": _list, "tiny-models": _tiny_models})
