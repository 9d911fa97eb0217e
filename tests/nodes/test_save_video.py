"""OpenSoraSaveVideo: files, numbering, sidecar, metadata, preview dict, interrupts and bad input."""

from __future__ import annotations

import json
import os

import imageio.v2 as iio2
import numpy as np
import pytest
import torch
from PIL import Image

from comfyui_opensora import NODE_CLASS_MAPPINGS
from comfyui_opensora.media import pixels
from comfyui_opensora.nodes.save_video import OpenSoraSaveVideo
from comfyui_opensora.samplers.conditioning import TextConditioning

from media_doubles import ffmpeg_metadata, smooth_frames

DEFAULTS = dict(fps=24.0, filename_prefix="OpenSora/video", format="mp4", crf=23, pix_fmt="yuv420p")
PROMPT_GRAPH = {"7": {"class_type": "OpenSoraSaveVideo", "inputs": {"fps": 24.0}}}
WORKFLOW = {"workflow": {"nodes": [{"id": 7, "type": "OpenSoraSaveVideo"}], "links": []}}


def conditioning(*prompts: str) -> TextConditioning:
    n = len(prompts)
    return TextConditioning(
        t5=torch.zeros(n, 2, 8), clip=torch.zeros(n, 4), neg_t5=torch.zeros(1, 2, 8), neg_clip=torch.zeros(1, 4),
        prompts=prompts, negative_prompts=("",),
    )


def save(**inputs):
    return OpenSoraSaveVideo().execute(**{**DEFAULTS, **inputs})


def all_files(root) -> list[str]:
    return sorted(os.path.relpath(os.path.join(d, f), root) for d, _, files in os.walk(root) for f in files)


def test_node_contract():
    assert NODE_CLASS_MAPPINGS["OpenSoraSaveVideo"] is OpenSoraSaveVideo
    spec = OpenSoraSaveVideo.INPUT_TYPES()
    assert list(spec["required"]) == ["images", "fps", "filename_prefix", "format", "crf", "pix_fmt"]
    for group in ("required", "optional"):
        for name, (_, options) in spec[group].items():
            assert options.get("tooltip"), name
    assert spec["hidden"] == {"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO"}
    assert spec["required"]["fps"][1]["default"] == 24.0 and spec["required"]["crf"][1]["default"] == 23
    assert OpenSoraSaveVideo.OUTPUT_NODE is True and OpenSoraSaveVideo.RETURN_TYPES == ("IMAGE",)


def test_saves_reference_mp4_with_sidecar_preview_and_passthrough(standalone_host):
    frames = smooth_frames(9, 64, 96)
    cond = conditioning("a red fox running through snow. aesthetic score: 6.5. motion score: 4.")
    out = save(images=frames, conditioning=cond, prompt=PROMPT_GRAPH, extra_pnginfo=WORKFLOW)

    folder = standalone_host.output_directory() / "OpenSora"
    assert out["ui"] == {
        "images": [{"filename": "video_00001_.mp4", "subfolder": "OpenSora", "type": "output"}],
        "animated": (True,),
    }
    assert out["result"][0][0] is frames  # a list of videos (OUTPUT_IS_LIST), here one
    assert all_files(standalone_host.output_directory()) == ["OpenSora/video_00001_.mp4", "OpenSora/video_00001_.txt"]
    assert (folder / "video_00001_.txt").read_text(encoding="utf-8") == cond.prompts[0]

    reader = iio2.get_reader(folder / "video_00001_.mp4")
    assert reader.get_meta_data()["fps"] == 24.0 and reader.count_frames() == 9
    tags = ffmpeg_metadata(folder / "video_00001_.mp4")
    assert json.loads(tags["prompt"]) == PROMPT_GRAPH
    assert json.loads(tags["workflow"]) == WORKFLOW["workflow"]


def test_counter_continues_and_prompt_text_and_batch_prompts(standalone_host):
    frames = torch.rand(5, 16, 16, 3)
    save(images=frames, prompt_text="first")
    second = save(images=frames, conditioning=conditioning("one", "two"))
    third = save(images=frames)  # no prompt: no sidecar
    fourth = save(images=frames, conditioning=conditioning("one", "two"), prompt_text="wins when connected")
    folder = standalone_host.output_directory() / "OpenSora"
    assert second["ui"]["images"][0]["filename"] == "video_00002_.mp4"
    assert third["ui"]["images"][0]["filename"] == "video_00003_.mp4"
    assert (folder / "video_00001_.txt").read_text() == "first"
    assert (folder / "video_00002_.txt").read_text() == "one\ntwo"
    assert not (folder / "video_00003_.txt").exists()
    assert fourth["ui"]["images"][0]["filename"] == "video_00004_.mp4"
    assert (folder / "video_00004_.txt").read_text() == "wins when connected"


def test_prefix_variables_subfolders_and_formats(standalone_host):
    frames = torch.rand(4, 32, 48, 3)
    out = save(images=frames, filename_prefix="clips/%width%x%height%/take", format="webm")
    assert out["ui"]["images"][0] == {"filename": "take_00001_.webm", "subfolder": "clips/48x32", "type": "output"}
    out = save(images=frames, filename_prefix="plain", format="gif")
    assert out["ui"]["images"][0] == {"filename": "plain_00001_.gif", "subfolder": "", "type": "output"}
    assert iio2.get_reader(standalone_host.output_directory() / "plain_00001_.gif").get_length() == 4


def test_metadata_off_when_comfyui_disables_it(standalone_host, monkeypatch):
    monkeypatch.setattr(standalone_host, "metadata_disabled", lambda: True)
    save(images=torch.rand(3, 16, 16, 3), prompt=PROMPT_GRAPH, extra_pnginfo=WORKFLOW)
    tags = ffmpeg_metadata(standalone_host.output_directory() / "OpenSora" / "video_00001_.mp4")
    assert "prompt" not in tags and "workflow" not in tags


def test_single_frame_is_a_png_with_text_chunks(standalone_host):
    frame = torch.rand(1, 24, 40, 3)
    out = save(images=frame, prompt_text="a still lake", prompt=PROMPT_GRAPH, extra_pnginfo=WORKFLOW)
    assert out["ui"] == {
        "images": [{"filename": "video_00001_.png", "subfolder": "OpenSora", "type": "output"}],
        "animated": (False,),
    }
    image = Image.open(standalone_host.output_directory() / "OpenSora" / "video_00001_.png")
    assert (np.asarray(image) == pixels.to_uint8(frame[0]).numpy()).all()
    assert json.loads(image.text["prompt"]) == PROMPT_GRAPH
    assert json.loads(image.text["workflow"]) == WORKFLOW["workflow"]
    assert (standalone_host.output_directory() / "OpenSora" / "video_00001_.txt").read_text() == "a still lake"


def test_interrupt_mid_video_leaves_no_file(standalone_host):
    def cancel_at_third_frame(value: int, total: int) -> None:
        if value == 3:
            standalone_host.request_interrupt()

    remove = standalone_host.add_progress_listener(cancel_at_third_frame)
    try:
        with pytest.raises(standalone_host.Interrupted):
            save(images=torch.rand(12, 32, 32, 3), prompt_text="never written")
    finally:
        remove()
    assert all_files(standalone_host.output_directory()) == []


def test_progress_reaches_the_frame_count(standalone_host):
    seen = []
    remove = standalone_host.add_progress_listener(lambda value, total: seen.append((value, total)))
    try:
        save(images=torch.rand(6, 16, 16, 3))
    finally:
        remove()
    assert seen == [(i, 6) for i in range(1, 7)]


@pytest.mark.parametrize(
    "prefix", ["../escape", "a/../../escape", "/tmp/escape", "\\\\server\\share\\x", "C:/x", "", "  "]
)
def test_prefix_leaving_the_output_folder_is_refused(standalone_host, prefix):
    with pytest.raises(ValueError, match="filename_prefix"):
        save(images=torch.rand(2, 16, 16, 3), filename_prefix=prefix)
    assert all_files(standalone_host.output_directory().parent / "output") == []


@pytest.mark.parametrize(
    "images, message",
    [
        ({"samples": torch.zeros(1, 16, 2, 4, 4)}, "torch.Tensor"),
        (torch.zeros(1, 16, 2, 4, 4), "latent"),
        (torch.zeros(0, 16, 16, 3), "no frames"),
        (torch.zeros(2, 16, 16), r"\[frames, height, width, 3\]"),
    ],
)
def test_non_image_input_is_refused(standalone_host, images, message):
    with pytest.raises(ValueError, match=message):
        save(images=images)
    assert all_files(standalone_host.output_directory()) == []


def test_bad_settings_refused_before_any_file(standalone_host):
    with pytest.raises(ValueError, match="between 0 and 51"):
        save(images=torch.rand(2, 16, 16, 3), crf=60, prompt_text="x")
    assert all_files(standalone_host.output_directory()) == []


@pytest.mark.parametrize(
    "settings, message",
    [
        (dict(filename_prefix="../escape"), "contains '..'"),
        (dict(filename_prefix="/tmp/escape"), "absolute path"),
        (dict(filename_prefix=" "), "filename_prefix is empty"),
        (dict(crf=60), "crf for mp4 must be between 0 and 51, got 60"),
        (dict(format="webm", crf=64), "crf for webm must be between 0 and 63"),
        (dict(format="gif", crf=-1), "crf must be between 0 and 63"),
        (dict(format="avi"), "Unknown video format 'avi'"),
        (dict(pix_fmt="rgb24"), "Unknown pixel format 'rgb24'"),
    ],
)
def test_settings_are_refused_at_queue_time(settings, message):
    """ComfyUI calls VALIDATE_INPUTS with the widget values when the prompt is queued (an error string
    becomes HTTP 400 before anything runs); the names it takes are exactly the widgets it checks."""
    import inspect

    widgets = {k: v for k, v in DEFAULTS.items() if k != "fps"}
    assert OpenSoraSaveVideo.VALIDATE_INPUTS(**widgets) is True
    assert OpenSoraSaveVideo.VALIDATE_INPUTS(format="webm", crf=60, pix_fmt="yuv444p") is True
    result = OpenSoraSaveVideo.VALIDATE_INPUTS(**{**widgets, **settings})
    assert isinstance(result, str) and message in result
    # linked (converted) widgets arrive as None at queue time and are checked when the node runs
    assert OpenSoraSaveVideo.VALIDATE_INPUTS(filename_prefix=None, format=None, crf=40, pix_fmt=None) is True
    assert set(inspect.signature(OpenSoraSaveVideo.VALIDATE_INPUTS).parameters) == set(widgets)
    # ComfyUI hands an INPUT_IS_LIST node's validation lists, as it does its execute
    listed = OpenSoraSaveVideo.VALIDATE_INPUTS(**{k: [v] for k, v in {**widgets, **settings}.items()})
    assert isinstance(listed, str) and message in listed


# ---------------------------------------------------------------------------------------- batches


def test_batch_of_videos_gives_one_file_and_one_sidecar_each(standalone_host):
    """As the reference's saver: every sample its own video and its own prompt file."""
    assert OpenSoraSaveVideo.INPUT_IS_LIST is True and OpenSoraSaveVideo.OUTPUT_IS_LIST == (True,)
    videos = [smooth_frames(5, 32, 48), torch.rand(5, 32, 48, 3)]
    cond = conditioning("a fox. 24 FPS. 4 motion score.", "a cat. 24 FPS. 4 motion score.")
    # As ComfyUI calls a list-input node: every input a list, widgets lists of one.
    out = OpenSoraSaveVideo().execute(images=videos, **{k: [v] for k, v in DEFAULTS.items()},
                                      conditioning=[cond], prompt=[PROMPT_GRAPH], extra_pnginfo=[WORKFLOW])
    folder = standalone_host.output_directory() / "OpenSora"
    assert all_files(folder) == ["video_00001_.mp4", "video_00001_.txt", "video_00002_.mp4", "video_00002_.txt"]
    assert (folder / "video_00001_.txt").read_text() == cond.prompts[0]
    assert (folder / "video_00002_.txt").read_text() == cond.prompts[1]
    for name in ("video_00001_.mp4", "video_00002_.mp4"):
        assert iio2.get_reader(folder / name).count_frames() == 5
        assert json.loads(ffmpeg_metadata(folder / name)["prompt"]) == PROMPT_GRAPH
    assert [e["filename"] for e in out["ui"]["images"]] == ["video_00001_.mp4", "video_00002_.mp4"]
    assert out["ui"]["animated"] == (True, True)
    assert out["result"][0] is videos


def test_batch_of_images_gives_pngs_with_sidecars(standalone_host):
    images = [torch.rand(1, 16, 24, 3) for _ in range(3)]
    out = save(images=images, prompt_text="one prompt for all")
    folder = standalone_host.output_directory() / "OpenSora"
    assert all_files(folder) == [f"video_0000{i}_.{ext}" for i in (1, 2, 3) for ext in ("png", "txt")]
    assert all((folder / f"video_0000{i}_.txt").read_text() == "one prompt for all" for i in (1, 2, 3))
    assert out["ui"]["animated"] == (False, False, False)


def test_prompt_count_that_fits_no_video_count_is_refused_before_any_file(standalone_host):
    with pytest.raises(ValueError, match="3 videos arrived with 2 prompts"):
        save(images=[torch.rand(3, 16, 16, 3)] * 3, conditioning=conditioning("a", "b"))
    bad = [torch.rand(3, 16, 16, 3), torch.rand(3, 16, 16)]
    with pytest.raises(ValueError, match="Expected IMAGE frames"):
        save(images=bad)
    assert all_files(standalone_host.output_directory()) == []
