"""Run an API-format ComfyUI workflow in-process, without ComfyUI.

The command line and the tests use this to drive the pack's own nodes exactly as ComfyUI would: the
graph is validated (node types, required inputs, combo choices, number ranges, socket types), then the
nodes that feed an output node are executed in dependency order, each through its ``FUNCTION``. What a
node takes and gives is read from its spec (:func:`..spec.spec_of`: the pack's ``NodeSpec``, or one read
from a hand-written V1 class).

Core ComfyUI nodes are not available here; callers pass stand-ins for the few a workflow needs
(:data:`STANDALONE_CORE_NODES` reads images and videos from disk).
"""

from __future__ import annotations

import inspect
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import torch

from .. import host
from ..nodes.spec import COMBO, Input, NodeSpec, Output, declare, spec_of


class WorkflowError(ValueError):
    """A workflow that cannot run: the message names the node and input and says what to change."""


@dataclass
class WorkflowResult:
    """What a run produced: every executed node's outputs and the ``ui`` dicts of output nodes."""

    outputs: dict[str, tuple] = field(default_factory=dict)
    ui: dict[str, dict] = field(default_factory=dict)
    order: list[str] = field(default_factory=list)

    def files(self) -> list[Path]:
        """Absolute paths of the files output nodes reported (``{"filename","subfolder"}`` entries)."""
        found: list[Path] = []
        for ui in self.ui.values():
            for entries in ui.values():
                if not isinstance(entries, list):
                    continue
                for entry in entries:
                    if isinstance(entry, dict) and "filename" in entry:
                        folder = host.output_directory() / entry.get("subfolder", "")
                        found.append(folder / entry["filename"])
        return found


def load_api_workflow(path: str | os.PathLike) -> dict[str, dict]:
    """Read an API-format workflow (``{"id": {"class_type", "inputs"}}``), refusing UI-format files."""
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    if isinstance(data, dict) and "prompt" in data and isinstance(data["prompt"], dict):
        data = data["prompt"]
    if not isinstance(data, dict) or "nodes" in data or not all(
        isinstance(v, dict) and "class_type" in v for v in data.values()
    ):
        raise WorkflowError(
            f"{Path(path).name} is not an API-format workflow. In ComfyUI use 'Export (API)' to save one."
        )
    return data


def _is_link(value: Any) -> bool:
    return isinstance(value, list) and len(value) == 2 and isinstance(value[0], str) and isinstance(value[1], int)


def _types_match(produced: str, wanted: str) -> bool:
    if wanted == COMBO:  # a combo fed by a link: ComfyUI accepts any string source
        return True
    produced_set, wanted_set = set(str(produced).split(",")), set(str(wanted).split(","))
    return "*" in produced_set or "*" in wanted_set or bool(produced_set & wanted_set)


def _check_value(node_id: str, class_type: str, declared: Input, value: Any) -> None:
    where = f"node {node_id} ({class_type}) input '{declared.name}'"
    kind = declared.type
    if kind == COMBO:
        choices = declared.choice_list()
        if value not in choices:
            shown = ", ".join(map(repr, choices[:12])) + (" ..." if len(choices) > 12 else "")
            raise WorkflowError(f"{where}: {value!r} is not one of the choices [{shown}].")
        return
    if kind in ("INT", "FLOAT"):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise WorkflowError(f"{where}: expected a number, got {value!r}.")
        if kind == "INT" and int(value) != value:
            raise WorkflowError(f"{where}: expected an integer, got {value!r}.")
        low, high = declared.min, declared.max
        if low is not None and value < low:
            raise WorkflowError(f"{where}: {value} is smaller than the minimum {low}.")
        if high is not None and value > high:
            raise WorkflowError(f"{where}: {value} is larger than the maximum {high}.")
    elif kind == "STRING" and not isinstance(value, str):
        raise WorkflowError(f"{where}: expected text, got {value!r}.")
    elif kind == "BOOLEAN" and not isinstance(value, bool):
        raise WorkflowError(f"{where}: expected true or false, got {value!r}.")


def _validated_by_node(cls: type) -> set[str]:
    """Inputs a node's ``VALIDATE_INPUTS`` names: ComfyUI skips its own checks of those and asks the node."""
    validate = getattr(cls, "VALIDATE_INPUTS", None)
    return set(inspect.signature(validate).parameters) if validate is not None else set()


def _node_validation(node_id: str, cls: type, inputs: Mapping[str, Any], names: set[str]) -> None:
    """Call ``VALIDATE_INPUTS`` with the constant inputs it names (lists for list-input nodes)."""
    constants = {k: v for k, v in inputs.items() if k in names and not _is_link(v)}
    if spec_of(cls).input_is_list:
        constants = {k: [v] for k, v in constants.items()}
    verdict = cls.VALIDATE_INPUTS(**constants)
    if verdict is not True:
        raise WorkflowError(f"node {node_id} ({cls.__name__}): {verdict}")


def validate_workflow(prompt: Mapping[str, dict], node_classes: Mapping[str, type]) -> None:
    """Raise a :class:`WorkflowError` for anything ComfyUI's validation would refuse."""
    for node_id, node in prompt.items():
        class_type = node.get("class_type")
        if class_type not in node_classes:
            raise WorkflowError(f"node {node_id}: unknown node type '{class_type}' (is its pack installed?).")
        cls = node_classes[class_type]
        inputs = node.get("inputs", {})
        by_node = _validated_by_node(cls)
        if by_node:
            _node_validation(node_id, cls, inputs, by_node)
        for declared in spec_of(cls).inputs:
            name = declared.name
            if name not in inputs:
                if not declared.optional:
                    raise WorkflowError(f"node {node_id} ({class_type}): required input '{name}' is missing.")
                continue
            value = inputs[name]
            if _is_link(value):
                source_id, index = value
                if source_id not in prompt:
                    raise WorkflowError(f"node {node_id} ({class_type}) input '{name}' links to missing node {source_id}.")
                source_cls = node_classes.get(prompt[source_id]["class_type"])
                if source_cls is None:
                    continue  # reported when that node is checked
                returns = [output.type for output in spec_of(source_cls).outputs]
                if not 0 <= index < len(returns):
                    raise WorkflowError(f"node {node_id} input '{name}': node {source_id} has no output {index}.")
                if not _types_match(returns[index], declared.type):
                    raise WorkflowError(
                        f"node {node_id} ({class_type}) input '{name}' wants {declared.type} but node {source_id} "
                        f"output {index} gives {returns[index]}."
                    )
            elif name not in by_node:
                _check_value(node_id, class_type, declared, value)


def _dependencies(node: dict) -> list[str]:
    return [v[0] for v in node.get("inputs", {}).values() if _is_link(v)]


def execution_order(prompt: Mapping[str, dict], node_classes: Mapping[str, type]) -> list[str]:
    """Ids of the output nodes and everything they need, each after its inputs."""
    outputs = [i for i, n in prompt.items() if spec_of(node_classes[n["class_type"]]).output_node]
    if not outputs:
        raise WorkflowError("The workflow has no output node (e.g. 'Open-Sora Save Video').")
    order: list[str] = []
    state: dict[str, str] = {}

    def visit(node_id: str) -> None:
        if state.get(node_id) == "done":
            return
        if state.get(node_id) == "visiting":
            raise WorkflowError(f"The workflow has a cycle through node {node_id}.")
        state[node_id] = "visiting"
        for dependency in _dependencies(prompt[node_id]):
            visit(dependency)
        state[node_id] = "done"
        order.append(node_id)

    for node_id in sorted(outputs, key=node_id_order):
        visit(node_id)
    return order


def node_id_order(node_id: str) -> tuple[int, str]:
    """Sort key for node ids: numeric ids in number order, then any others by name."""
    return (int(node_id), node_id) if node_id.isdigit() else (1 << 60, node_id)


def _call_node(cls: type, function_name: str, kwargs: dict[str, Any]) -> tuple[tuple, dict | None]:
    returned = getattr(cls(), function_name)(**kwargs)
    if isinstance(returned, dict):
        return tuple(returned.get("result", ())), returned.get("ui")
    if not isinstance(returned, tuple):
        raise WorkflowError(f"{cls.__name__}.{function_name} returned {type(returned).__name__}, not a tuple.")
    return returned, None


def _call_over_lists(cls: type, inputs: dict[str, list]) -> tuple[tuple[list, ...], dict | None]:
    """Run a node on list-valued inputs the way ComfyUI does.

    Every value travels as a list (one element unless a node declares ``OUTPUT_IS_LIST``). A node with
    ``INPUT_IS_LIST`` gets the lists; any other runs once per element of its longest input (shorter
    lists repeat their last element). Each output slot gathers one value per run, or joins the runs'
    lists where ``OUTPUT_IS_LIST`` says so; the ``ui`` dicts of the runs are joined key by key.
    """
    spec = spec_of(cls)
    if spec.input_is_list:
        runs = [inputs]
    else:
        count = max((len(v) for v in inputs.values()), default=1)
        if any(len(v) == 0 for v in inputs.values()):
            count = 0
        runs = [{k: v[min(i, len(v) - 1)] for k, v in inputs.items()} for i in range(count)]
    list_outputs = tuple(output.is_list for output in spec.outputs)
    slots: list[list] = [[] for _ in spec.outputs]
    ui: dict | None = None
    for kwargs in runs:
        outputs, run_ui = _call_node(cls, spec.function, kwargs)
        for index, value in enumerate(outputs):
            if index >= len(slots):
                slots.append([])
            if index < len(list_outputs) and list_outputs[index]:
                slots[index].extend(value)
            else:
                slots[index].append(value)
        if run_ui is not None:
            ui = {key: list(value) for key, value in run_ui.items()} if ui is None else {
                key: [*ui.get(key, []), *value] for key, value in run_ui.items()}
    return tuple(slots), ui


def run_workflow(
    prompt: Mapping[str, dict],
    node_classes: Mapping[str, type],
    extra_pnginfo: dict | None = None,
    on_node: Callable[[str, str], None] | None = None,
) -> WorkflowResult:
    """Validate and execute an API-format workflow with ``node_classes`` (``class_type -> class``).

    ``extra_pnginfo`` is handed to nodes that declare the hidden ``EXTRA_PNGINFO`` input (ComfyUI passes
    ``{"workflow": <UI graph>}``); ``on_node(node_id, class_type)`` is called before each node runs.
    ``result.outputs[node_id]`` holds one list per output slot, as ComfyUI keeps them (one element
    unless the node returns a list, e.g. one IMAGE per video from the decoder).
    """
    validate_workflow(prompt, node_classes)
    result = WorkflowResult(order=execution_order(prompt, node_classes))
    hidden_values = {"PROMPT": dict(prompt), "EXTRA_PNGINFO": extra_pnginfo, "DYNPROMPT": None}
    with torch.inference_mode():
        for node_id in result.order:
            node = prompt[node_id]
            cls = node_classes[node["class_type"]]
            if on_node is not None:
                on_node(node_id, node["class_type"])
            host.check_interrupt()
            inputs: dict[str, list] = {}
            spec = spec_of(cls)
            declared = {i.name for i in spec.inputs}
            for name, value in node.get("inputs", {}).items():
                if name not in declared:
                    continue  # ComfyUI ignores inputs a node does not declare
                inputs[name] = result.outputs[value[0]][value[1]] if _is_link(value) else [value]
            for name, kind in spec.hidden.items():
                inputs[name] = [node_id if kind == "UNIQUE_ID" else hidden_values.get(kind)]
            outputs, ui = _call_over_lists(cls, inputs)
            result.outputs[node_id] = outputs
            if ui is not None:
                result.ui[node_id] = ui
    return result


# ------------------------------------------------------------------ stand-ins for core ComfyUI nodes


# Folders searched for relative file names given to the loaders (ComfyUI's "input" folder); then the cwd.
INPUT_DIRECTORIES: list[Path] = []


def _input_path(name: str) -> Path:
    path = Path(name).expanduser()
    candidates = [path] if path.is_absolute() else [d / path for d in INPUT_DIRECTORIES] + [Path.cwd() / path]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"Input file '{name}' does not exist (looked at {', '.join(map(str, candidates))}).")


@declare
class StandaloneLoadImage:
    """ComfyUI's LoadImage outside ComfyUI: reads an image file by path into IMAGE and MASK."""

    SPEC = NodeSpec((Input("image", "STRING", "Path of the image file."),), (Output("IMAGE"), Output("MASK")),
                    category=None)

    def execute(self, image: str):
        from PIL import Image, ImageOps

        with Image.open(_input_path(image)) as picture:
            picture = ImageOps.exif_transpose(picture)
            rgba = picture.convert("RGBA")
        array = np.asarray(rgba, dtype=np.float32) / 255.0
        pixels = torch.from_numpy(array[..., :3].copy())[None]
        mask = 1.0 - torch.from_numpy(array[..., 3].copy())[None]
        return pixels, mask


@dataclass(frozen=True)
class StandaloneVideo:
    """The VIDEO value outside ComfyUI: a file path, decoded on demand."""

    path: Path

    def get_components(self) -> tuple[torch.Tensor, float]:
        """``([T, H, W, 3]`` float frames in 0..1, frame rate)`` read with imageio's ffmpeg reader."""
        import imageio

        reader = imageio.get_reader(self.path, "ffmpeg")
        try:
            fps = float(reader.get_meta_data().get("fps", 24.0))
            frames = np.stack([np.asarray(frame) for frame in reader])
        finally:
            reader.close()
        return torch.from_numpy(frames).float() / 255.0, fps


@declare
class StandaloneLoadVideo:
    """ComfyUI's LoadVideo outside ComfyUI: refers to a video file by path."""

    SPEC = NodeSpec((Input("file", "STRING", "Path of the video file."),), (Output("VIDEO"),), category=None)

    def execute(self, file: str):
        return (StandaloneVideo(_input_path(file)),)


@declare
class StandaloneGetVideoComponents:
    """ComfyUI's GetVideoComponents outside ComfyUI: frames and frame rate (no audio)."""

    SPEC = NodeSpec((Input("video", "VIDEO", "The video to split."),),
                    (Output("IMAGE"), Output("AUDIO"), Output("FLOAT")), category=None)

    def execute(self, video: StandaloneVideo):
        frames, fps = video.get_components()
        return frames, None, fps


@declare
class StandalonePrimitiveStringMultiline:
    """ComfyUI's multiline text primitive (one prompt shared by several nodes) outside ComfyUI."""

    SPEC = NodeSpec((Input("value", "STRING", "The text.", multiline=True),), (Output("STRING"),), category=None)

    def execute(self, value: str):
        return (value,)


STANDALONE_CORE_NODES: dict[str, type] = {
    "PrimitiveStringMultiline": StandalonePrimitiveStringMultiline,
    "LoadImage": StandaloneLoadImage,
    "LoadVideo": StandaloneLoadVideo,
    "GetVideoComponents": StandaloneGetVideoComponents,
}
