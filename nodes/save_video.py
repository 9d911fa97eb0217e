"""Save node: IMAGE frames -> MP4 (or WebM/GIF, or PNG for one frame) + prompt sidecar in the output folder."""

from __future__ import annotations

import json
from typing import Any

import torch

from .. import host
from ..media import writers as media
from .spec import Input, NodeSpec, Output, register


def sidecar_prompts(conditioning: Any, prompt_text: str | None) -> list[str]:
    """The final prompts for the ``.txt`` sidecars (one per video), or none.

    A connected ``prompt_text`` wins (the user wired it to say exactly what the file should hold);
    otherwise the conditioning's final prompts are written.
    """
    if prompt_text:
        return [prompt_text]
    if conditioning is not None:
        prompts = getattr(conditioning, "prompts", None)
        if prompts is None:
            raise ValueError("The conditioning input is not an OPENSORA_COND value (it has no prompts).")
        return list(prompts)
    return []


def sidecar_texts(prompts: list[str], num_videos: int) -> list[str | None]:
    """The sidecar text of each video, as the reference writes one prompt beside each sample.

    N prompts for N videos: one each. One prompt: beside every video. One video with several prompts
    (frames saved as one clip): all of them, one per line. No prompt: no sidecar.
    """
    if not prompts:
        return [None] * num_videos
    if len(prompts) == num_videos:
        return list(prompts)
    if len(prompts) == 1:
        return prompts * num_videos
    if num_videos == 1:
        return ["\n".join(prompts)]
    raise ValueError(
        f"{num_videos} videos arrived with {len(prompts)} prompts; connect the conditioning that made these "
        "videos (one prompt per video) or a single prompt."
    )


def as_list(value: Any) -> list:
    """ComfyUI hands a list-input node every input as a list; direct calls may pass plain values."""
    return value if isinstance(value, list) else [value]


def media_metadata(prompt: Any, extra_pnginfo: Any) -> dict[str, str]:
    """ComfyUI's embedded metadata: ``prompt`` and every EXTRA_PNGINFO key (``workflow``) as JSON."""
    if host.metadata_disabled():
        return {}
    tags: dict[str, str] = {}
    if prompt is not None:
        tags["prompt"] = json.dumps(prompt)
    for key, value in (extra_pnginfo or {}).items():
        tags[key] = json.dumps(value)
    return tags


@register("OpenSoraSaveVideo", "Open-Sora Save Video")
class OpenSoraSaveVideo:
    """Write frames to the output folder like the reference: H.264 MP4, CRF 23, yuv420p, 24 fps."""

    SPEC = NodeSpec(
        inputs=(
            Input("images", "IMAGE",
                  "Frames to save, [frames, height, width, 3] in 0..1 (e.g. from the Open-Sora "
                  "decoder, whose batch arrives as a list: one file per video). One frame is "
                  "saved as a PNG."),
            Input("fps", "FLOAT", default=24.0, min=0.01, max=1000.0, step=0.01,
                  tooltip="Frames per second of the file (the reference saves at 24)."),
            Input("filename_prefix", "STRING", default="OpenSora/video",
                  tooltip="Name inside ComfyUI's output folder; '/' makes sub-folders, %width%, %height%, "
                          "%year%... are filled in. Files are numbered <name>_00001_.mp4, with the prompt "
                          "in <name>_00001_.txt."),
            Input("format", choices=media.VIDEO_FORMATS, default="mp4",
                  tooltip="mp4: H.264, the reference's format; webm: VP9; gif: 256-colour animation "
                          "without embedded workflow."),
            Input("crf", "INT", default=23, min=0, max=63, step=1,
                  tooltip="Constant quality: lower is better and larger. The reference uses 23. H.264 "
                          "accepts 0-51, VP9 0-63; gif ignores it."),
            Input("pix_fmt", choices=media.PIXEL_FORMATS, default="yuv420p",
                  tooltip="yuv420p plays everywhere (odd sizes get one repeated row/column); yuv444p keeps "
                          "full colour detail but some players refuse it."),
            Input("conditioning", "OPENSORA_COND", optional=True,
                  tooltip="Writes its final prompts (one per line) to a .txt file beside the video, as "
                          "the reference does."),
            Input("prompt_text", "STRING", optional=True, force_input=True,
                  tooltip="Text for the .txt sidecar; when connected it is written instead of the "
                          "conditioning's prompts."),
        ),
        hidden={"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO"},
        outputs=(Output("IMAGE", "images", "The same videos (a list, one IMAGE per video), unchanged, so the "
                                           "graph can go on.", is_list=True),),
        output_node=True,
        # Sees every video of a batch at once (ComfyUI hands lists) so video i gets prompt i as its sidecar.
        input_is_list=True,
        description=(
            "Saves frames to the output folder as an H.264 MP4 (CRF 23, yuv420p, BT.709) like Open-Sora's "
            "reference, or WebM/GIF; a single frame becomes a PNG. Writes the prompt to a .txt sidecar and embeds "
            "the workflow unless ComfyUI runs with --disable-metadata. Shows the result on the node. A batch "
            "(the decoder's list of videos) becomes one file per video, each with its own prompt sidecar."
        ),
    )

    @classmethod
    def VALIDATE_INPUTS(cls, filename_prefix: str | None = None, format: str | None = None,
                        crf: int | None = None, pix_fmt: str | None = None) -> bool | str:
        """Check the save settings when the prompt is queued, so ComfyUI refuses a bad prefix or
        encoder setting (HTTP 400) before any model runs. ComfyUI skips its own list and range checks
        for the inputs named here; these checks cover them. A linked input arrives as None and is
        checked when the node runs. As an INPUT_IS_LIST node it is handed each value as a list."""
        try:
            for prefix in as_list(filename_prefix):
                if prefix is not None:
                    host.check_filename_prefix(prefix)
            for settings in zip(as_list(format), as_list(crf), as_list(pix_fmt)):
                media.check_encoder_settings(*settings)
        except ValueError as error:
            return str(error)
        return True

    def execute(
        self,
        images: list[torch.Tensor] | torch.Tensor,
        fps: list[float] | float,
        filename_prefix: list[str] | str,
        format: list[str] | str,
        crf: list[int] | int,
        pix_fmt: list[str] | str,
        conditioning: Any = None,
        prompt_text: Any = None,
        prompt: Any = None,
        extra_pnginfo: Any = None,
    ) -> dict:
        videos = as_list(images)
        settings = [as_list(v) for v in (fps, filename_prefix, format, crf, pix_fmt)]
        per_video = [[values[min(i, len(values) - 1)] for values in settings] for i in range(len(videos))]
        for frames, (rate, _, fmt, quality, pixels) in zip(videos, per_video):
            media.check_frames(frames)
            if frames.shape[0] > 1:
                media.check_video_settings(fmt, rate, quality, pixels)
        conditioning, prompt_text = as_list(conditioning)[0], as_list(prompt_text)[0]
        texts = sidecar_texts(sidecar_prompts(conditioning, prompt_text), len(videos))
        tags = media_metadata(as_list(prompt)[0], as_list(extra_pnginfo)[0])
        saved = [
            self._save_one(frames, *settings, text, tags)
            for frames, settings, text in zip(videos, per_video, texts)
        ]
        ui = {"images": [entry for entry, _ in saved], "animated": tuple(animated for _, animated in saved)}
        return {"ui": ui, "result": (videos,)}

    @staticmethod
    def _save_one(images: torch.Tensor, fps: float, filename_prefix: str, format: str, crf: int, pix_fmt: str,
                  sidecar: str | None, tags: dict[str, str]) -> tuple[dict, bool]:
        """Write one video (or one PNG for a single frame) and its sidecar; returns its preview entry."""
        single_image = images.shape[0] == 1
        folder, filename, counter, subfolder = host.save_path(filename_prefix, images.shape[2], images.shape[1])
        stem = f"{filename}_{counter:05}_"

        if single_image:
            file = f"{stem}.png"
            media.write_png(folder / file, images[0], tags)
        else:
            file = f"{stem}.{media.VIDEO_FORMATS[format].extension}"
            progress = host.Progress(images.shape[0])

            def before_frame(index: int) -> None:
                host.check_interrupt()
                if index:
                    progress.update(1)

            media.write_video(folder / file, images, fps, format, crf, pix_fmt, tags, before_frame)
            progress.update(1)
        if sidecar is not None:
            media.write_text(folder / f"{stem}.txt", sidecar)
        return {"filename": file, "subfolder": subfolder, "type": "output"}, not single_image

