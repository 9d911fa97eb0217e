"""The t2i2v first-frame stage: the image prompt encoded as the reference does (no video suffix), and the
Save First Frame node (PNG + prompt .txt, and the frame as read back from it)."""

from __future__ import annotations

from typing import Any

import torch

from ..media import writers as media
from ..samplers.conditioning import TextConditioning
from ..samplers.first_frame import reference_uint8
from ..samplers.prompt import split_prompts
from .. import host
from .save_video import as_list, media_metadata, sidecar_prompts, sidecar_texts
from .spec import Input, NodeSpec, Output, register
from .text import encode_prompts


@register("OpenSoraTextEncodeImage", "Open-Sora Text Encode (first frame)")
class OpenSoraTextEncodeImage:
    """Encode the first frame's prompt as the reference's t2i step does: the text as typed, no suffix."""

    SPEC = NodeSpec(
        inputs=(
            Input("text_encoder", "OPENSORA_TEXT_ENCODER", "From 'Open-Sora Text Encoder Loader'."),
            Input("prompt", "STRING", default="", multiline=True,
                  tooltip="What the first frame shows: the same prompt as the video's, without the "
                          "'24 FPS. 4 motion score.' suffix (the reference encodes it as typed)."),
            Input("one_prompt_per_line", "BOOLEAN", default=False,
                  tooltip="Each non-empty line becomes one batch element (one first frame)."),
        ),
        outputs=(Output("OPENSORA_COND", "conditioning", "T5 (512 tokens) and CLIP-L encodings of the prompt(s) "
                                                         "for the guidance-distilled sampler."),),
        description=(
            "Encodes the text-to-image-to-video first frame's prompt like the reference: T5 at 512 tokens and CLIP "
            "pooled, from the prompt as typed (no fps / motion-score suffix, which only the video's prompt gets)."
        ),
    )

    def execute(self, text_encoder: Any, prompt: str, one_prompt_per_line: bool) -> tuple[TextConditioning] | dict:
        prompts = split_prompts(prompt, one_prompt_per_line)
        return encode_prompts(text_encoder, prompt, prompts, [""] * len(prompts), "Open-Sora Text Encode (first frame)")


@register("OpenSoraSaveFirstFrame", "Open-Sora Save First Frame")
class OpenSoraSaveFirstFrame:
    """Save the generated condition image as the reference does and pass on its 8-bit version."""

    SPEC = NodeSpec(
        inputs=(
            Input("images", "IMAGE", "The first frame(s) from the Flux AE decode, one per prompt."),
            Input("filename_prefix", "STRING", default="OpenSora/t2i2v/generated_condition/frame",
                  tooltip="Name inside the output folder; the reference keeps first frames in a "
                          "'generated_condition' sub-folder. Each frame gets <name>_00001_.png and .txt."),
            Input("conditioning", "OPENSORA_COND", "Its prompts go into the .txt files (one per frame).",
                  optional=True),
            Input("prompt_text", "STRING", "Text for the .txt when no conditioning is connected.", optional=True,
                  force_input=True),
        ),
        hidden={"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO"},
        outputs=(Output("IMAGE", "images", "The frames exactly as the PNG holds them (8-bit), for the Image "
                                           "Condition: the reference conditions the video on the PNG it saved."),),
        output_node=True,
        # The decoder hands one IMAGE per prompt as a list: seen at once, frame i gets prompt i and the output
        # is one batch for the Image Condition.
        input_is_list=True,
        description=(
            "Saves the text-to-image-to-video first frame as a PNG with its prompt in a .txt, like the reference's "
            "generated_condition files, rounding to 8 bits as the reference's image saver does (in the decoder's "
            "precision), and outputs that 8-bit frame so the video starts from exactly what was saved."
        ),
    )

    def execute(self, images: torch.Tensor, filename_prefix: str, conditioning: Any = None,
                prompt_text: str | None = None, prompt: Any = None, extra_pnginfo: Any = None) -> dict:
        images = torch.cat(as_list(images))
        filename_prefix, conditioning, prompt_text, prompt, extra_pnginfo = (
            as_list(v)[0] for v in (filename_prefix, conditioning, prompt_text, prompt, extra_pnginfo))
        media.check_frames(images)
        lines = sidecar_texts(sidecar_prompts(conditioning, prompt_text), images.shape[0])
        pixels = reference_uint8(images)
        rounded = pixels.float().div(255)
        folder, filename, counter, subfolder = host.save_path(filename_prefix, images.shape[2], images.shape[1])
        tags = media_metadata(prompt, extra_pnginfo)
        saved = []
        for index in range(images.shape[0]):
            stem = f"{filename}_{counter + index:05}_"
            media.write_png(folder / f"{stem}.png", rounded[index], tags)
            if lines[index] is not None:
                media.write_text(folder / f"{stem}.txt", lines[index])
            saved.append({"filename": f"{stem}.png", "subfolder": subfolder, "type": "output"})
        return {"ui": {"images": saved}, "result": (rounded.to(host.intermediate_device()),)}

