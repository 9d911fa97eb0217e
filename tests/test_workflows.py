"""The example workflows: UI files and their API twins agree, every workflow runs end to end on tiny
random checkpoints through the pack's nodes (core ComfyUI nodes replaced by test doubles) and writes a
playable MP4, and the text-to-video graph reproduces the reference's frames on the golden checkpoints."""

from __future__ import annotations

import json
import re
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from comfyui_opensora.media import pixels
from comfyui_opensora.tiny_checkpoints import LORA_FOLDER, write_tiny_lora, write_tiny_model_folder
from comfyui_opensora.models.autoencoder import Tiling
from comfyui_opensora.models.hunyuan_vae import HunyuanVideoVAE
from comfyui_opensora.nodes import NODE_CLASS_MAPPINGS
from comfyui_opensora.standalone import workflow_runner
from comfyui_opensora.standalone.workflow_runner import WorkflowError, run_workflow, validate_workflow
from comfyui_opensora.samplers.conditioning import TextConditioning

from workflow_geometry import links_behind_nodes, node_box
from workflow_doubles import (
    API_DIR,
    CORE_NODE_DOUBLES,
    NOTE_TYPES,
    WORKFLOW_DIR,
    api_twins,
    check_video_output,
    load_json,
    prepare_test_graph,
    strip_meta,
    ui_to_api,
    two_prompt_batch_graph,
    ui_workflows,
    write_test_inputs,
)

pytestmark = pytest.mark.usefixtures("one_thread")

NOTE_FONT_PROPERTY = "opensora_note_font_px"  # read by web/opensora.js (tests/test_web_extension.py)

ALL_NODES = {**CORE_NODE_DOUBLES, **NODE_CLASS_MAPPINGS}


@pytest.fixture
def tiny_host(standalone_host, tmp_path, monkeypatch):
    """Tiny checkpoints under the released file names, the reference files in an input folder."""
    write_tiny_model_folder(standalone_host.standalone_state().models_dir, "high_compression")  # with the Flux files
    write_tiny_lora(standalone_host.standalone_state().models_dir / "loras" / LORA_FOLDER)
    inputs = tmp_path / "input"
    write_test_inputs(inputs)
    monkeypatch.setattr(workflow_runner, "INPUT_DIRECTORIES", [inputs])
    return standalone_host


# ------------------------------------------------------------------------------------- the files


def test_every_ui_workflow_has_an_api_twin():
    assert ui_workflows() == api_twins()
    assert len(ui_workflows()) >= 7


@pytest.mark.parametrize("name", ui_workflows())
def test_every_workflow_has_a_template_thumbnail(name):
    """ComfyUI's template browser shows example_workflows/<name>.jpg (taken from the real frontend)."""
    from PIL import Image

    with Image.open(WORKFLOW_DIR / f"{name}.jpg") as image:
        assert image.format == "JPEG" and 400 <= max(image.size) <= 1024, image.size


@pytest.mark.parametrize("name", ui_workflows())
def test_ui_workflow_layout_is_readable(name):
    """No node covers another (title bar included), and the saved view is not below the frontend's
    low-quality zoom (0.6), where it draws nodes and notes without any text."""
    ui = load_json(WORKFLOW_DIR / f"{name}.json")
    boxes = {n["id"]: node_box(n) for n in ui["nodes"]}  # title bar included
    overlaps = [(a, b) for a in boxes for b in boxes if a < b
                and boxes[a][0] < boxes[b][2] and boxes[b][0] < boxes[a][2]
                and boxes[a][1] < boxes[b][3] and boxes[b][1] < boxes[a][3]]
    assert not overlaps, f"nodes overlap: {overlaps}"
    assert ui["extra"]["ds"]["scale"] >= 0.6


# The canvas of ComfyUI's frontend (1.27) in a 1400x900 browser window: right of the 40 px side bar, below
# the 40 px menu bar; the workflow tabs cover its top, the minimap and the zoom tools its bottom right.
CANVAS_SIZE = (1360, 860)
TABS_HEIGHT = 36  # the workflow tabs end 75 px below the window top
MINIMAP = (1056, 584, 1360, 860)  # left, top, right, bottom in canvas pixels
READABLE_PX = 11  # the smallest note text size on screen we accept


@pytest.mark.parametrize("name", ui_workflows())
def test_saved_view_shows_the_whole_workflow(name):
    """Opened in a 1400x900 window, every node and group is on the canvas, none under the tabs or the minimap."""
    ui = load_json(WORKFLOW_DIR / f"{name}.json")
    scale, (dx, dy) = ui["extra"]["ds"]["scale"], ui["extra"]["ds"]["offset"]
    boxes = {n["id"]: node_box(n) for n in ui["nodes"]}
    boxes.update({f"group {g['title']}": (g["bounding"][0], g["bounding"][1], g["bounding"][0] + g["bounding"][2],
                                          g["bounding"][1] + g["bounding"][3]) for g in ui.get("groups", [])})
    for key, (left, top, right, bottom) in boxes.items():
        left, top, right, bottom = ((left + dx) * scale, (top + dy) * scale, (right + dx) * scale, (bottom + dy) * scale)
        assert 0 <= left and right <= CANVAS_SIZE[0] and TABS_HEIGHT <= top and bottom <= CANVAS_SIZE[1], key
        assert not (left < MINIMAP[2] and MINIMAP[0] < right and top < MINIMAP[3] and MINIMAP[1] < bottom), key


@pytest.mark.parametrize("name", ui_workflows())
def test_no_link_passes_behind_a_node(name):
    """The frontend draws links below the nodes: a link's path (its default spline) must not cross any node
    but the two it joins, or part of it is hidden."""
    ui = load_json(WORKFLOW_DIR / f"{name}.json")
    assert links_behind_nodes(ui, ALL_NODES) == []


@pytest.mark.parametrize("name", ui_workflows())
def test_notes_are_readable_at_the_saved_zoom(name):
    """The frontend draws a note's text at its font size times the zoom (10 px by default: 6 px at 0.6);
    the pack's notes ask web/opensora.js for a size that gives READABLE_PX on screen at the saved zoom."""
    ui = load_json(WORKFLOW_DIR / f"{name}.json")
    for note in (n for n in ui["nodes"] if n["type"] in NOTE_TYPES):
        font_px = note["properties"][NOTE_FONT_PROPERTY]
        assert font_px * ui["extra"]["ds"]["scale"] >= READABLE_PX, (note["id"], font_px)


@pytest.mark.parametrize("name", ui_workflows())
def test_api_twin_matches_ui_workflow(tiny_host, name):
    """The UI file converted as the frontend does equals the API twin (catches widget-order drift)."""
    ui = load_json(WORKFLOW_DIR / f"{name}.json")
    twin = load_json(API_DIR / f"{name}.json")
    assert ui_to_api(ui, ALL_NODES) == strip_meta(twin)
    validate_workflow(twin, ALL_NODES)


@pytest.mark.parametrize("name", ui_workflows())
def test_ui_workflow_is_well_formed_and_documented(name):
    ui = load_json(WORKFLOW_DIR / f"{name}.json")
    ids = {n["id"] for n in ui["nodes"]}
    assert len(ids) == len(ui["nodes"]) and ui["last_node_id"] >= max(ids)
    assert ui["last_link_id"] >= max(link[0] for link in ui["links"])
    for link_id, source, _slot, target, _tslot, _type in ui["links"]:
        assert source in ids and target in ids, link_id
    notes = [n for n in ui["nodes"] if n["type"] in NOTE_TYPES]
    assert notes, "every example workflow explains which weight files go where"
    text = notes[0]["widgets_values"][0]
    for node in ui["nodes"]:  # every file a loader names is listed in the note with its folder
        for value in node.get("widgets_values", []):
            if isinstance(value, str) and value.endswith(".safetensors"):
                assert value in text, f"{value} is not explained in the note"
    for folder in ("diffusion_models", "vae", "text_encoders"):
        assert folder in text
    loaded = {v for n in ui["nodes"] if n["type"] not in NOTE_TYPES for v in n.get("widgets_values") or []
              if isinstance(v, str)}
    named = set(re.findall(r"[\w.-]+\.safetensors", text))
    assert named <= loaded, f"the note lists files the graph never loads: {sorted(named - loaded)}"
    # the video's frame counts (a first-frame image noise node has 1 frame)
    frames = [n["widgets_values"][5] for n in ui["nodes"]
              if n["type"] == "OpenSoraNoise" and n["widgets_values"][0] == "dc_ae"]
    dc_ae = bool(frames)
    if dc_ae:  # the DC-AE takes multiples of 4 frames, not the HunyuanVideo VAE's 4k+1
        assert "4k+1" not in text and "129" not in text and all(f"{f} frames" in text for f in frames)


# ------------------------------------------------------------------------------- running them


def test_batch_of_two_saves_two_videos_with_their_own_sidecars(tiny_host):
    """Batch size 2 and two prompts: two MP4s and two .txt files, each video with its own prompt."""
    graph = two_prompt_batch_graph()
    result = run_workflow(graph, ALL_NODES)
    videos = sorted(result.files())
    assert [p.suffix for p in videos] == [".mp4", ".mp4"]
    sidecars = [p.with_suffix(".txt").read_text() for p in videos]
    assert sidecars == ["a red fox. 24 FPS. 4 motion score.", "a grey cat. 24 FPS. 4 motion score."]
    first, second = (check_video_output(graph, p) for p in videos)
    assert first.std() > 0 and second.std() > 0 and not (first == second).all()
    decode_id = next(i for i, n in graph.items() if n["class_type"] == "OpenSoraVAEDecode")
    assert len(result.outputs[decode_id][0]) == 2  # the decoder's list: one IMAGE per video


@pytest.mark.parametrize("name", api_twins())
def test_workflow_runs_end_to_end(tiny_host, name):
    graph = prepare_test_graph(name)
    result = run_workflow(graph, ALL_NODES, extra_pnginfo={"workflow": load_json(WORKFLOW_DIR / f"{name}.json")})
    files = result.files()
    videos = [f for f in files if f.suffix == ".mp4"]
    first_frames = [f for f in files if "generated_condition" in f.parts]  # t2i2v: the saved first frame
    assert len(videos) == 1 and len(files) == 1 + len(first_frames), files
    frames = check_video_output(graph, videos[0])
    assert frames.std() > 0  # not a blank video
    for png in first_frames:
        assert png.suffix == ".png" and png.with_suffix(".txt").read_text(encoding="utf-8") == _first_frame_prompt(graph)
    sidecar = videos[0].with_suffix(".txt")
    assert sidecar.read_text(encoding="utf-8").strip().endswith("24 FPS. 4 motion score.")


def _first_frame_prompt(graph: dict) -> str:
    encode = next(n for n in graph.values() if n["class_type"] == "OpenSoraTextEncodeImage")["inputs"]["prompt"]
    return graph[encode[0]]["inputs"]["value"] if isinstance(encode, list) else encode


@pytest.mark.parametrize("name, video_kind, resolution, size", [
    ("t2i2v", "hunyuan_vae", "768px", (1024, 576)),
    # The reference sizes the Flux noise with the DC-AE's 32-pixel compression: a 36x64 latent, 288x512 pixels.
    ("high_compression", "dc_ae", "custom", (512, 288)),
])
def test_t2i2v_first_frame_is_the_reference_settings(name, video_kind, resolution, size):
    """The first frame as modify_option_to_t2i sets it: 1 frame, 768px 16:9, the distilled sampler with
    guidance 4.0 on Flux-dev, the video's steps, shift and seed; the 8-bit saved frame conditions the video."""
    graph = load_json(API_DIR / f"{name}.json")

    def one(class_type: str, **match) -> dict:
        (found,) = [n["inputs"] for n in graph.values() if n["class_type"] == class_type
                    and all(n["inputs"].get(k) == v for k, v in match.items())]
        return found

    image_noise, video_noise = one("OpenSoraNoise", autoencoder="flux_ae"), one("OpenSoraNoise", autoencoder=video_kind)
    assert (image_noise["num_frames"], image_noise["resolution"], image_noise["aspect_ratio"]) == (1, resolution, "16:9")
    assert (image_noise["width"], image_noise["height"]) == size
    assert (image_noise["seed"], image_noise["aspect_ratio"]) == (video_noise["seed"], video_noise["aspect_ratio"])
    image_sampler, video_sampler = one("OpenSoraSampler", method="distill"), one("OpenSoraSampler", method="i2v")
    assert image_sampler["guidance"] == 4.0
    assert (image_sampler["steps"], image_sampler["shift"]) == (video_sampler["steps"], video_sampler["shift"])
    assert graph[image_sampler["model"][0]]["inputs"]["model_name"] == "flux1-dev.safetensors"
    assert graph[image_sampler["conditioning"][0]]["class_type"] == "OpenSoraTextEncodeImage"
    assert graph[image_sampler["noise"][0]]["inputs"] is image_noise
    condition = one("OpenSoraImageCondition")
    assert condition["cond_type"] == "i2v_head" and graph[condition["image"][0]]["class_type"] == "OpenSoraSaveFirstFrame"


def test_t2i2v_video_starts_from_the_saved_png(tiny_host, monkeypatch):
    """The Image Condition gets exactly the pixels of the PNG the first-frame node wrote (the reference
    conditions its video on the PNG it saved and read back)."""
    from PIL import Image

    condition_class = NODE_CLASS_MAPPINGS["OpenSoraImageCondition"]
    received = []
    original = condition_class.execute

    def spy(self, *args, **kwargs):
        received.append(kwargs.get("image", args[1] if len(args) > 1 else None))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(condition_class, "execute", spy)
    graph = prepare_test_graph("t2i2v")
    result = run_workflow(graph, ALL_NODES)
    (png,) = [f for f in result.files() if f.suffix == ".png"]
    pixels = torch.from_numpy(np.array(Image.open(png))).float() / 255
    (image,) = received
    assert image.shape == (1, *pixels.shape) and torch.equal(image[0], pixels)


def test_runner_refuses_what_comfyui_refuses(tiny_host):
    graph = prepare_test_graph("t2v_256px")
    noise = next(n for n in graph.values() if n["class_type"] == "OpenSoraNoise")
    bad_file = json.loads(json.dumps(graph))
    next(n for n in bad_file.values() if n["class_type"] == "OpenSoraModelLoader")["inputs"]["model_name"] = "x.safetensors"
    with pytest.raises(WorkflowError, match="not one of the choices"):
        run_workflow(bad_file, ALL_NODES)
    noise["inputs"]["num_frames"] = 0
    with pytest.raises(WorkflowError, match="smaller than the minimum"):
        run_workflow(graph, ALL_NODES)
    noise["inputs"]["num_frames"] = 9
    sampler = next(n for n in graph.values() if n["class_type"] == "OpenSoraSampler")
    sampler["inputs"]["conditioning"] = sampler["inputs"]["noise"]
    with pytest.raises(WorkflowError, match="wants OPENSORA_COND"):
        run_workflow(graph, ALL_NODES)


# ------------------------------------------------------------------------------- golden parity


class GoldenTextConditioning:
    """Stands in for the text encoders: the fixed embeddings the golden run used."""

    tensors: dict[str, torch.Tensor] = {}
    prompt = ""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {}}

    RETURN_TYPES = ("OPENSORA_COND",)
    FUNCTION = "execute"

    def execute(self):
        t = self.tensors
        return (TextConditioning(
            t5=t[f"text.t5[{self.prompt}]"], clip=t[f"text.clip[{self.prompt}]"], neg_t5=t["text.t5[]"],
            neg_clip=t["text.clip[]"], prompts=(self.prompt,), negative_prompts=("",),
        ),)


def test_t2v_workflow_reproduces_golden_frames(standalone_host, golden_dir, monkeypatch):
    """t2v_256px with the golden run's weights, seed, size, steps and text embeddings gives its frames."""
    case = golden_dir / "end_to_end"
    manifest = load_json(case / "manifest.json")
    models = standalone_host.standalone_state().models_dir
    shutil.copy(case / manifest["models"]["mmdit"]["weights"], models / "diffusion_models" / "Open_Sora_v2.safetensors")
    shutil.copy(case / manifest["models"]["vae"]["weights"], models / "vae" / "hunyuan_vae.safetensors")
    tensors = {k: v.clone() for k, v in load_file(case / "tensors.safetensors").items()}
    (prompt,) = manifest["call"]["args"]["text"]
    monkeypatch.setattr(GoldenTextConditioning, "tensors", tensors)
    monkeypatch.setattr(GoldenTextConditioning, "prompt", prompt)
    # The golden VAE config tiles at sample_size 32 px (the released model: 256); a file cannot say so.
    sample_size = manifest["models"]["vae"]["config"]["sample_size"]
    monkeypatch.setattr(HunyuanVideoVAE, "reference_tiling",
                        lambda self, temporal=False: Tiling(spatial=sample_size, temporal=None, overlap=0.25))

    option = manifest["sampling_option"]["in"]
    graph = load_json(API_DIR / "t2v_256px.json")
    for node_id, node in list(graph.items()):
        inputs = node["inputs"]
        if node["class_type"] == "OpenSoraTextEncoderLoader":
            del graph[node_id]
        elif node["class_type"] == "OpenSoraTextEncode":
            graph[node_id] = {"class_type": "GoldenTextConditioning", "inputs": {}}
        elif node["class_type"] == "OpenSoraNoise":
            inputs.update(resolution="custom", width=option["width"], height=option["height"],
                          num_frames=option["num_frames"], seed=manifest["call"]["args"]["seed"])
        elif node["class_type"] == "OpenSoraSampler":
            assert (inputs["guidance"], inputs["guidance_img"]) == (option["guidance"], option["guidance_img"])
            assert inputs["text_osci"] and inputs["image_osci"] and inputs["scale_temporal_osci"] and inputs["shift"]
            inputs["steps"] = option["num_steps"]
        elif node["class_type"] == "OpenSoraModelLoader":
            inputs["weight_dtype"] = "fp32"
        elif node["class_type"] == "OpenSoraVAELoader":
            inputs["dtype"] = "fp32"
    nodes = {**ALL_NODES, "GoldenTextConditioning": GoldenTextConditioning}
    result = run_workflow(graph, nodes)

    save_id = next(i for i, n in graph.items() if n["class_type"] == "OpenSoraSaveVideo")
    ((frames,),) = result.outputs[save_id]  # one output slot holding one video
    ours = torch.stack([torch.from_numpy(pixels.to_uint8(f).numpy()) for f in frames]).int()
    expected = tensors["frames_uint8"].int()
    assert ours.shape == expected.shape
    diff = (ours - expected).abs()
    assert diff.max().item() <= 1, f"max abs diff {diff.max().item()} levels"
    assert (diff > 0).float().mean().item() < 0.01
    check_video_output(graph, result.files()[0])


# ----------------------------------------------------------------------- ComfyUI's list semantics


class _Numbers:
    RETURN_TYPES = ("INT",)
    OUTPUT_IS_LIST = (True,)
    FUNCTION = "execute"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"count": ("INT", {"default": 3})}}

    def execute(self, count):
        return (list(range(count)),)


class _AddOffset:
    RETURN_TYPES = ("INT",)
    FUNCTION = "execute"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"value": ("INT", {}), "offset": ("INT", {"default": 0})}}

    def execute(self, value, offset):
        return (value + offset,)


class _Collect:
    RETURN_TYPES = ()
    FUNCTION = "execute"
    OUTPUT_NODE = True
    INPUT_IS_LIST = True

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"values": ("INT", {}), "tag": ("STRING", {"default": ""})}}

    def execute(self, values, tag):
        return {"ui": {"seen": [(list(values), list(tag))]}, "result": ()}


def test_runner_maps_list_outputs_like_comfyui():
    """A list output runs a plain node once per element; a list-input node sees whole lists."""
    nodes = {"Numbers": _Numbers, "AddOffset": _AddOffset, "Collect": _Collect}
    graph = {
        "1": {"class_type": "Numbers", "inputs": {"count": 3}},
        "2": {"class_type": "AddOffset", "inputs": {"value": ["1", 0], "offset": 10}},
        "3": {"class_type": "Collect", "inputs": {"values": ["2", 0], "tag": "x"}},
    }
    result = run_workflow(graph, nodes)
    assert result.outputs["1"] == ([0, 1, 2],)
    assert result.outputs["2"] == ([10, 11, 12],)
    assert result.ui["3"] == {"seen": [([10, 11, 12], ["x"])]}
