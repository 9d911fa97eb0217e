"""Shared helpers of the workflow tests (in-process and real ComfyUI):

- a UI-format -> API-format converter following what ComfyUI's frontend does when it queues a UI graph:
  ``widgets_values`` are positional, in widget order (the node's inputs that are widgets, required then
  optional), with one extra UI-only entry after a seed widget (``control_after_generate``) and after an
  upload combo;
- stand-ins for the core ComfyUI nodes the example workflows use (only for in-process runs; a real
  ComfyUI runs the real ones);
- reference media, the example workflows made tiny, and checks of the videos they write.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from comfyui_opensora import host
from comfyui_opensora.nodes.spec import spec_of
from comfyui_opensora.standalone.workflow_runner import STANDALONE_CORE_NODES

NOTE_TYPES = ("Note", "MarkdownNote")
UI_ONLY = None  # a widgets_values entry that is not sent to the server

# Widget order of the core ComfyUI nodes the example workflows use (ComfyUI a125cd84 nodes.py,
# comfy_extras/nodes_flux.py, nodes_sd3.py, nodes_video.py); UI_ONLY marks control/upload entries.
CORE_WIDGETS: dict[str, tuple[str | None, ...]] = {
    "LoadImage": ("image", UI_ONLY),
    "LoadVideo": ("file", UI_ONLY),
    "GetVideoComponents": (),
    "UNETLoader": ("unet_name", "weight_dtype"),
    "ModelSamplingFlux": ("max_shift", "base_shift", "width", "height"),
    "DualCLIPLoader": ("clip_name1", "clip_name2", "type", "device"),
    "CLIPTextEncode": ("text",),
    "FluxGuidance": ("guidance",),
    "EmptySD3LatentImage": ("width", "height", "batch_size"),
    "KSampler": ("seed", UI_ONLY, "steps", "cfg", "sampler_name", "scheduler", "denoise"),
    "VAELoader": ("vae_name",),
    "VAEDecode": (),
    "PrimitiveStringMultiline": ("value",),
}


def widget_names(class_type: str, node_classes: Mapping[str, type]) -> tuple[str | None, ...]:
    """Names of a node's ``widgets_values`` entries, as the frontend lays them out."""
    if class_type in CORE_WIDGETS:
        return CORE_WIDGETS[class_type]
    names: list[str | None] = []
    for declared in spec_of(node_classes[class_type]).inputs:
        if not declared.is_widget:
            continue
        names.append(declared.name)
        if declared.control_after_generate or (declared.type == "INT" and declared.name in ("seed", "noise_seed")):
            names.append(UI_ONLY)
    return tuple(names)


def ui_to_api(ui: dict, node_classes: Mapping[str, type]) -> dict[str, dict]:
    """Convert a UI (litegraph) workflow to the API format ``POST /prompt`` takes (without ``_meta``)."""
    links = {link[0]: link for link in ui["links"]}
    prompt: dict[str, dict] = {}
    for node in ui["nodes"]:
        if node["type"] in NOTE_TYPES or node.get("mode", 0) in (2, 4):
            continue
        names = widget_names(node["type"], node_classes)
        values = node.get("widgets_values", [])
        if len(values) != len(names):
            raise AssertionError(
                f"node {node['id']} ({node['type']}): {len(values)} widget values for widgets {names}"
            )
        inputs: dict[str, Any] = {name: value for name, value in zip(names, values) if name is not UI_ONLY}
        for socket in node.get("inputs", []):
            if socket.get("link") is not None:
                _, source, slot, *_ = links[socket["link"]]
                inputs[socket["name"]] = [str(source), slot]
        prompt[str(node["id"])] = {"class_type": node["type"], "inputs": inputs}
    return prompt


def strip_meta(prompt: Mapping[str, dict]) -> dict[str, dict]:
    """An API prompt without ``_meta`` (titles), for comparisons."""
    return {key: {"class_type": n["class_type"], "inputs": n["inputs"]} for key, n in prompt.items()}


def load_json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


# ------------------------------------------------------------------------ core-node test doubles


def _stable_seed(*parts: Any) -> int:
    digest = hashlib.sha256(json.dumps(parts, default=str).encode()).digest()
    return int.from_bytes(digest[:4], "little")


class _Double:
    FUNCTION = "execute"
    CATEGORY = "test doubles"


class UNETLoaderDouble(_Double):
    """Checks the file is in diffusion_models; returns a token instead of a Flux model."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"unet_name": (host.list_files(host.DIFFUSION_MODELS),),
                             "weight_dtype": (["default", "fp8_e4m3fn", "fp8_e4m3fn_fast", "fp8_e5m2"],)}}

    RETURN_TYPES = ("MODEL",)

    def execute(self, unet_name, weight_dtype):
        return ({"double": "flux", "file": unet_name},)


class ModelSamplingFluxDouble(_Double):
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"model": ("MODEL",),
                             "max_shift": ("FLOAT", {"default": 1.15, "min": 0.0, "max": 100.0}),
                             "base_shift": ("FLOAT", {"default": 0.5, "min": 0.0, "max": 100.0}),
                             "width": ("INT", {"default": 1024, "min": 16, "max": 16384}),
                             "height": ("INT", {"default": 1024, "min": 16, "max": 16384})}}

    RETURN_TYPES = ("MODEL",)

    def execute(self, model, max_shift, base_shift, width, height):
        return ({**model, "shift": (max_shift, base_shift, width, height)},)


class PrimitiveStringMultilineDouble(_Double):
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"value": ("STRING", {"multiline": True})}}

    RETURN_TYPES = ("STRING",)

    def execute(self, value):
        return (value,)


class DualCLIPLoaderDouble(_Double):
    @classmethod
    def INPUT_TYPES(cls):
        files = host.list_files(host.TEXT_ENCODERS)
        return {"required": {"clip_name1": (files,), "clip_name2": (files,),
                             "type": (["sdxl", "sd3", "flux", "hunyuan_video", "hidream", "hunyuan_image"],)},
                "optional": {"device": (["default", "cpu"],)}}

    RETURN_TYPES = ("CLIP",)

    def execute(self, clip_name1, clip_name2, type, device="default"):
        return ({"double": "clip", "files": (clip_name1, clip_name2), "type": type},)


class CLIPTextEncodeDouble(_Double):
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"text": ("STRING", {"multiline": True}), "clip": ("CLIP",)}}

    RETURN_TYPES = ("CONDITIONING",)

    def execute(self, text, clip):
        return ([[torch.zeros(1, 4, 8), {"pooled_output": torch.zeros(1, 8), "text": text}]],)


class FluxGuidanceDouble(_Double):
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"conditioning": ("CONDITIONING",),
                             "guidance": ("FLOAT", {"default": 3.5, "min": 0.0, "max": 100.0})}}

    RETURN_TYPES = ("CONDITIONING",)

    def execute(self, conditioning, guidance):
        return ([[c, {**extra, "guidance": guidance}] for c, extra in conditioning],)


class EmptySD3LatentImageDouble(_Double):
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"width": ("INT", {"default": 1024, "min": 16, "max": 16384, "step": 16}),
                             "height": ("INT", {"default": 1024, "min": 16, "max": 16384, "step": 16}),
                             "batch_size": ("INT", {"default": 1, "min": 1, "max": 4096})}}

    RETURN_TYPES = ("LATENT",)

    def execute(self, width, height, batch_size):
        return ({"samples": torch.zeros(batch_size, 16, height // 8, width // 8)},)


class KSamplerDouble(_Double):
    """A deterministic 'sample': seeded noise keyed by the seed and the positive prompt."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": ("MODEL",),
            "seed": ("INT", {"default": 0, "min": 0, "max": 0xFFFFFFFFFFFFFFFF, "control_after_generate": True}),
            "steps": ("INT", {"default": 20, "min": 1, "max": 10000}),
            "cfg": ("FLOAT", {"default": 8.0, "min": 0.0, "max": 100.0}),
            "sampler_name": (["euler", "euler_ancestral", "dpmpp_2m"],),
            "scheduler": (["simple", "normal", "karras", "beta"],),
            "positive": ("CONDITIONING",), "negative": ("CONDITIONING",), "latent_image": ("LATENT",),
            "denoise": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0}),
        }}

    RETURN_TYPES = ("LATENT",)

    def execute(self, model, seed, steps, cfg, sampler_name, scheduler, positive, negative, latent_image, denoise):
        shape = latent_image["samples"].shape
        generator = torch.Generator().manual_seed(_stable_seed(seed, positive[0][1].get("text")))
        return ({"samples": torch.randn(shape, generator=generator)},)


class VAELoaderDouble(_Double):
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"vae_name": (host.list_files(host.VAE),)}}

    RETURN_TYPES = ("VAE",)

    def execute(self, vae_name):
        return ({"double": "vae", "file": vae_name},)


class VAEDecodeDouble(_Double):
    """A deterministic image: the latent's first three channels, squashed to 0..1, upsampled 8x."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"samples": ("LATENT",), "vae": ("VAE",)}}

    RETURN_TYPES = ("IMAGE",)

    def execute(self, samples, vae):
        latent = samples["samples"][:, :3]
        pixels = torch.nn.functional.interpolate(torch.sigmoid(latent), scale_factor=8, mode="nearest")
        return (pixels.permute(0, 2, 3, 1).contiguous().float(),)


CORE_NODE_DOUBLES: dict[str, type] = {
    **STANDALONE_CORE_NODES,
    "UNETLoader": UNETLoaderDouble,
    "ModelSamplingFlux": ModelSamplingFluxDouble,
    "PrimitiveStringMultiline": PrimitiveStringMultilineDouble,
    "DualCLIPLoader": DualCLIPLoaderDouble,
    "CLIPTextEncode": CLIPTextEncodeDouble,
    "FluxGuidance": FluxGuidanceDouble,
    "EmptySD3LatentImage": EmptySD3LatentImageDouble,
    "KSampler": KSamplerDouble,
    "VAELoader": VAELoaderDouble,
    "VAEDecode": VAEDecodeDouble,
}


# ------------------------------------------------------------------------------ media for the tests


def write_test_image(path: Path, height: int, width: int, seed: int) -> Path:
    """A smooth colour image (PNG) to use as an i2v reference."""
    from PIL import Image

    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    phase = seed * 0.7
    rgb = np.stack([np.sin(x / 9 + phase), np.cos(y / 7 - phase), np.sin((x + y) / 13)], axis=-1)
    Image.fromarray(((rgb + 1) * 127.5).astype(np.uint8)).save(path)
    return path


def write_test_clip(path: Path, frames: int, height: int, width: int, fps: int = 24) -> Path:
    """A short moving-gradient MP4 to use as a v2v reference."""
    import imageio

    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    writer = imageio.get_writer(path, fps=fps, codec="libx264", quality=None, macro_block_size=1,
                                pixelformat="yuv420p", ffmpeg_params=["-crf", "18"])
    try:
        for t in range(frames):
            rgb = np.stack([np.sin((x + 3 * t) / 8), np.cos((y - 2 * t) / 6), np.sin((x + y + t) / 11)], axis=-1)
            writer.append_data(((rgb + 1) * 127.5).astype(np.uint8))
    finally:
        writer.close()
    return path


def read_video(path: Path) -> tuple[np.ndarray, float]:
    """Decode a video file back: ``(uint8 frames [T, H, W, 3], fps)``."""
    import imageio

    reader = imageio.get_reader(path, "ffmpeg")
    try:
        fps = float(reader.get_meta_data()["fps"])
        frames = np.stack([np.asarray(frame) for frame in reader])
    finally:
        reader.close()
    return frames, fps


# ------------------------------------------------------------------- the example workflows, made tiny

PACK_ROOT = Path(__file__).resolve().parent.parent
WORKFLOW_DIR = PACK_ROOT / "example_workflows"
API_DIR = WORKFLOW_DIR / "api"

IMAGE = "example.png"  # ComfyUI ships input/example.png; the i2v workflows preselect it
CLIP = "opensora_clip.mp4"
TEST_SIZES = {"hunyuan_vae": (32, 48), "dc_ae": (32, 64), "flux_ae": (48, 80)}  # (height, width): the smallest sizes that tile
TEST_STEPS = 2


def ui_workflows() -> list[str]:
    return sorted(p.stem for p in WORKFLOW_DIR.glob("*.json"))


def api_twins() -> list[str]:
    return sorted(p.stem for p in API_DIR.glob("*.json"))


def write_test_inputs(folder: Path) -> None:
    """The reference files the example workflows name, in ComfyUI's input folder (or a test's)."""
    folder.mkdir(parents=True, exist_ok=True)
    write_test_image(folder / IMAGE, 80, 120, seed=1)
    write_test_clip(folder / CLIP, frames=36, height=72, width=112)


def _video_noise(graph: Mapping[str, dict]) -> dict:
    """The video's noise node (not the t2i2v first frame's)."""
    return next(n for n in graph.values() if n["class_type"] == "OpenSoraNoise" and n["inputs"]["autoencoder"] != "flux_ae")


def tiny_num_frames(graph: Mapping[str, dict]) -> int:
    """Frames the tiny run makes: few, but enough for the workflow's condition type."""
    noise = _video_noise(graph)
    if noise["inputs"]["autoencoder"] == "dc_ae":
        return 8
    conds = [n["inputs"]["cond_type"] for n in graph.values() if n["class_type"] == "OpenSoraImageCondition"]
    return 33 if any(c.startswith("v2v") for c in conds) else 9


def prepare_test_graph(name: str) -> dict[str, dict]:
    """The API twin of an example workflow with tiny sizes, 2 steps and fp32 weights."""
    graph = load_json(API_DIR / f"{name}.json")
    frames = tiny_num_frames(graph)
    for node in graph.values():
        inputs, kind = node["inputs"], node["class_type"]
        if kind == "OpenSoraNoise":
            height, width = TEST_SIZES[inputs["autoencoder"]]
            first_frame = inputs["autoencoder"] == "flux_ae"
            inputs.update(resolution="custom", width=width, height=height, num_frames=1 if first_frame else frames)
        elif kind == "OpenSoraSampler":
            inputs["steps"] = TEST_STEPS
        elif kind in ("OpenSoraModelLoader", "OpenSoraTextEncoderLoader"):
            inputs["weight_dtype"] = "fp32"
        elif kind == "OpenSoraVAELoader":
            inputs["dtype"] = "fp32"
        elif kind == "KSampler":
            inputs["steps"] = TEST_STEPS
        elif kind in ("EmptySD3LatentImage", "ModelSamplingFlux"):
            inputs.update(width=128, height=64)
    return graph



def two_prompt_batch_graph(name: str = "t2v_256px") -> dict[str, dict]:
    """:func:`prepare_test_graph` with batch size 2 and one prompt per line (two videos, two prompts)."""
    graph = prepare_test_graph(name)
    for node in graph.values():
        if node["class_type"] == "OpenSoraNoise":
            node["inputs"]["batch_size"] = 2
        elif node["class_type"] == "OpenSoraTextEncode":
            node["inputs"].update(prompt="a red fox\na grey cat", one_prompt_per_line=True)
    return graph

def check_video_output(graph: Mapping[str, dict], path: Path) -> np.ndarray:
    """The file is a playable MP4 with the frames, size and frame rate the graph asked for (one video of
    the batch: each is saved on its own)."""
    noise = _video_noise(graph)["inputs"]
    save = next(n for n in graph.values() if n["class_type"] == "OpenSoraSaveVideo")["inputs"]
    assert path.suffix == ".mp4" and path.is_file(), path
    frames, fps = read_video(path)
    assert frames.shape == (noise["num_frames"], noise["height"], noise["width"], 3), frames.shape
    assert abs(fps - save["fps"]) < 1e-3, fps
    return frames
