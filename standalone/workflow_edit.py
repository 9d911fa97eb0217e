"""Editing an example workflow's API twin from command-line options, before it runs.

Each option names the node inputs it sets (:data:`OPTION_TARGETS`); the graph surgery for ``--cond-type
t2v``, ``--ref`` and ``--text-only`` keeps the node ids of the saved workflow.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Sequence

from ..nodes import NODE_CLASS_MAPPINGS
from .arguments import FP8_DTYPES
from .workflow_runner import STANDALONE_CORE_NODES, node_id_order

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


def reference_loaders(prompt: dict[str, dict]) -> list[tuple[str, str]]:
    """(node id, input) of the workflow's reference-media loaders, in node-id order."""
    return [
        (node_id, input_name)
        for node_id, node in sorted(prompt.items(), key=lambda item: node_id_order(item[0]))
        for class_type, input_name in REFERENCE_INPUTS
        if node["class_type"] == class_type
    ]


def set_references(prompt: dict[str, dict], references: Sequence[str]) -> None:
    """Give reference files (images or videos) to the workflow's loader nodes, in node-id order."""
    loaders = reference_loaders(prompt)
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
