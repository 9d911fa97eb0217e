"""Save node: IMAGE frames -> MP4 (or WebM/GIF, or PNG for one frame) + prompt sidecar in the output folder."""

from __future__ import annotations

import json
from typing import Any

import torch

from ..loaders import media
from . import host


def _sidecar_text(conditioning: Any, prompt_text: str | None) -> str | None:
    """The final prompt(s) for the ``.txt`` sidecar: one line per prompt, or None when there is none.

    A connected ``prompt_text`` wins (the user wired it to say exactly what the file should hold);
    otherwise the conditioning's final prompts are written.
    """
    if prompt_text:
        return prompt_text
    if conditioning is not None:
        prompts = getattr(conditioning, "prompts", None)
        if prompts is None:
            raise ValueError("The conditioning input is not an OPENSORA_COND value (it has no prompts).")
        return "\n".join(prompts)
    return None


def _metadata(prompt: Any, extra_pnginfo: Any) -> dict[str, str]:
    """ComfyUI's embedded metadata: ``prompt`` and every EXTRA_PNGINFO key (``workflow``) as JSON."""
    if host.metadata_disabled():
        return {}
    tags: dict[str, str] = {}
    if prompt is not None:
        tags["prompt"] = json.dumps(prompt)
    for key, value in (extra_pnginfo or {}).items():
        tags[key] = json.dumps(value)
    return tags


class OpenSoraSaveVideo:
    """Write frames to the output folder like the reference: H.264 MP4, CRF 23, yuv420p, 24 fps."""

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {
            "required": {
                "images": ("IMAGE", {
                    "tooltip": "Frames to save, [frames, height, width, 3] in 0..1 (e.g. from the Open-Sora "
                               "decoder). One frame is saved as a PNG."}),
                "fps": ("FLOAT", {
                    "default": 24.0, "min": 0.01, "max": 1000.0, "step": 0.01,
                    "tooltip": "Frames per second of the file (the reference saves at 24)."}),
                "filename_prefix": ("STRING", {
                    "default": "OpenSora/video",
                    "tooltip": "Name inside ComfyUI's output folder; '/' makes sub-folders, %width%, %height%, "
                               "%year%... are filled in. Files are numbered <name>_00001_.mp4, with the prompt "
                               "in <name>_00001_.txt."}),
                "format": (list(media.VIDEO_FORMATS), {
                    "default": "mp4",
                    "tooltip": "mp4: H.264, the reference's format; webm: VP9; gif: 256-colour animation "
                               "without embedded workflow."}),
                "crf": ("INT", {
                    "default": 23, "min": 0, "max": 63, "step": 1,
                    "tooltip": "Constant quality: lower is better and larger. The reference uses 23. H.264 "
                               "accepts 0-51, VP9 0-63; gif ignores it."}),
                "pix_fmt": (list(media.PIXEL_FORMATS), {
                    "default": "yuv420p",
                    "tooltip": "yuv420p plays everywhere (odd sizes get one repeated row/column); yuv444p keeps "
                               "full colour detail but some players refuse it."}),
            },
            "optional": {
                "conditioning": ("OPENSORA_COND", {
                    "tooltip": "Writes its final prompts (one per line) to a .txt file beside the video, as "
                               "the reference does."}),
                "prompt_text": ("STRING", {
                    "forceInput": True,
                    "tooltip": "Text for the .txt sidecar; when connected it is written instead of the "
                               "conditioning's prompts."}),
            },
            "hidden": {"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO"},
        }

    @classmethod
    def VALIDATE_INPUTS(cls, filename_prefix: str | None = None, format: str | None = None,
                        crf: int | None = None, pix_fmt: str | None = None) -> bool | str:
        """Check the save settings when the prompt is queued, so ComfyUI refuses a bad prefix or
        encoder setting (HTTP 400) before any model runs. ComfyUI skips its own list and range checks
        for the inputs named here; these checks cover them. A linked input arrives as None and is
        checked when the node runs."""
        try:
            if filename_prefix is not None:
                host.check_filename_prefix(filename_prefix)
            media.check_encoder_settings(format, crf, pix_fmt)
        except ValueError as error:
            return str(error)
        return True

    RETURN_TYPES = ("IMAGE",)
    RETURN_NAMES = ("images",)
    OUTPUT_TOOLTIPS = ("The same frames, unchanged, so the graph can go on.",)
    FUNCTION = "execute"
    OUTPUT_NODE = True
    CATEGORY = "Open-Sora"
    DESCRIPTION = (
        "Saves frames to the output folder as an H.264 MP4 (CRF 23, yuv420p, BT.709) like Open-Sora's "
        "reference, or WebM/GIF; a single frame becomes a PNG. Writes the prompt to a .txt sidecar and embeds "
        "the workflow unless ComfyUI runs with --disable-metadata. Shows the result on the node."
    )

    def execute(
        self,
        images: torch.Tensor,
        fps: float,
        filename_prefix: str,
        format: str,
        crf: int,
        pix_fmt: str,
        conditioning: Any = None,
        prompt_text: str | None = None,
        prompt: Any = None,
        extra_pnginfo: Any = None,
    ) -> dict:
        media.check_frames(images)
        single_image = images.shape[0] == 1
        if not single_image:
            media.check_video_settings(format, fps, crf, pix_fmt)
        sidecar = _sidecar_text(conditioning, prompt_text)
        folder, filename, counter, subfolder = host.save_path(filename_prefix, images.shape[2], images.shape[1])
        stem = f"{filename}_{counter:05}_"
        tags = _metadata(prompt, extra_pnginfo)

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

        saved = {"filename": file, "subfolder": subfolder, "type": "output"}
        return {"ui": {"images": [saved], "animated": (not single_image,)}, "result": (images,)}


NODE_CLASS_MAPPINGS = {"OpenSoraSaveVideo": OpenSoraSaveVideo}
NODE_DISPLAY_NAME_MAPPINGS = {"OpenSoraSaveVideo": "Open-Sora Save Video"}
