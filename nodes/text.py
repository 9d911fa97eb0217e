"""Text nodes: load T5-XXL + CLIP-L, encode prompts into OPENSORA_COND, bridge ComfyUI's CONDITIONING."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from ..loaders.text_encoders import (
    ClipTextEncoder,
    T5TextEncoder,
    list_encoder_choices,
    load_text_encoders,
)
from ..models.dtypes import FLOAT_DTYPES
from ..samplers.conditioning import TextConditioning
from ..samplers.prompt import (
    DEFAULT_FPS,
    DEFAULT_MOTION_SCORE,
    MOTION_SCORES,
    check_motion_score,
    encode_conditioning,
    final_prompts,
    from_native_conditioning,
)
from .. import host
from .output_guard import check_finite, precision_remedy
from .spec import Input, NodeSpec, Output, register

host.register_folders()
log = logging.getLogger(__name__)

WEIGHT_DTYPES = FLOAT_DTYPES  # the text encoders' weight dtype choices (no fp8)


@dataclass
class OpenSoraTextEncoder:
    """The OPENSORA_TEXT_ENCODER socket value: host-managed T5 and CLIP encoders (with their tokenizers).

    Use: ``host.load_models([enc.t5_managed, enc.clip_managed])``, then ``enc.t5.encode(texts)``.
    """

    t5_managed: Any  # host.manage_model handles (ModelPatchers inside ComfyUI)
    clip_managed: Any

    @property
    def t5(self) -> T5TextEncoder:
        return host.unwrap_model(self.t5_managed)

    @property
    def clip(self) -> ClipTextEncoder:
        return host.unwrap_model(self.clip_managed)


def _encoder_choices() -> list[str]:
    """T5 and CLIP files and Hugging Face folders in the text-encoder folders (read when the node is listed)."""
    return list_encoder_choices(host.folder_paths(host.TEXT_ENCODERS))


@register("OpenSoraTextEncoderLoader", "Open-Sora Text Encoder Loader")
class OpenSoraTextEncoderLoader:
    """Load the T5-v1.1-XXL and CLIP-L text encoders Open-Sora 2.0 conditions on."""

    SPEC = NodeSpec(
        inputs=(
            Input("t5_name", choices=_encoder_choices,
                  tooltip="T5-v1.1-XXL in models/text_encoders (or models/clip): the google/t5-v1_1-xxl "
                          "folder of hpcai-tech/Open-Sora-v2 (config.json + .safetensors + spiece.model) "
                          "or a single file such as t5xxl_fp16.safetensors / t5xxl_fp8_e4m3fn.safetensors."),
            Input("clip_name", choices=_encoder_choices,
                  tooltip="CLIP-L text encoder: the openai/clip-vit-large-patch14 folder of "
                          "hpcai-tech/Open-Sora-v2 or a single clip_l.safetensors."),
            Input("weight_dtype", choices=WEIGHT_DTYPES, default="bf16",
                  tooltip="Precision of both encoders. bf16 is what the reference uses (T5-XXL ~9.5 GB); "
                          "fp8 files are upcast to it. fp32 doubles memory; fp16 keeps T5's output "
                          "projections in fp32 as transformers does."),
        ),
        outputs=(Output("OPENSORA_TEXT_ENCODER", "text_encoder", "T5 and CLIP with their tokenizers, kept on the "
                                                                 "offload device until a prompt is encoded."),),
        description=(
            "Loads T5-v1.1-XXL and CLIP-L as the Open-Sora 2.0 reference uses them. Hugging Face folders bring "
            "their own tokenizer; a single .safetensors file uses a '<file name>_tokenizer' folder next to it "
            "if present, else the tokenizer files ComfyUI ships. Nothing is downloaded."
        ),
    )

    def execute(self, t5_name: str, clip_name: str, weight_dtype: str) -> tuple[OpenSoraTextEncoder]:
        if weight_dtype not in WEIGHT_DTYPES:
            raise ValueError(f"weight_dtype must be one of {list(WEIGHT_DTYPES)}, not {weight_dtype!r}.")
        t5, clip = load_text_encoders(
            host.resolve_file(host.TEXT_ENCODERS, t5_name),
            host.resolve_file(host.TEXT_ENCODERS, clip_name),
            WEIGHT_DTYPES[weight_dtype],
            t5_fallback_tokenizer=host.comfy_tokenizer_dir("t5"),
            clip_fallback_tokenizer=host.comfy_tokenizer_dir("clip_l"),
        )
        return (OpenSoraTextEncoder(host.manage_model(t5), host.manage_model(clip)),)


@register("OpenSoraTextEncode", "Open-Sora Text Encode")
class OpenSoraTextEncode:
    """Encode prompts exactly as the reference: fps / motion-score suffix, T5 at 512 tokens, CLIP pooled."""

    SPEC = NodeSpec(
        inputs=(
            Input("text_encoder", "OPENSORA_TEXT_ENCODER", "From 'Open-Sora Text Encoder Loader'."),
            Input("prompt", "STRING", default="", multiline=True,
                  tooltip="What the video shows. '. 24 FPS. 4 motion score.' (per the fps and motion score "
                          "inputs) is appended as the reference does."),
            Input("negative_prompt", "STRING", default="", multiline=True,
                  tooltip="Encoded as given (no suffix). Empty, as in the reference, by default."),
            Input("fps", "INT", default=DEFAULT_FPS, min=1, max=120,
                  tooltip="Frame rate written into the prompt ('24 FPS.'); set the same value on the "
                          "video saver. Not added if the prompt already ends with '<n> FPS.'."),
            Input("motion_score", choices=MOTION_SCORES, default=DEFAULT_MOTION_SCORE,
                  tooltip="Motion score appended to the prompt ('4 motion score.'; the reference default "
                          "is 4; 1 calm ... 15 very dynamic, 0 still). 'off' appends nothing; 'dynamic' "
                          "needs a prompt refiner (a language model) and is refused without one."),
            Input("one_prompt_per_line", "BOOLEAN", default=False,
                  tooltip="Each non-empty line of the prompt becomes one batch element (one video); "
                          "the negative prompt is used for every element."),
            Input("motion_score_text", "STRING", optional=True, force_input=True,
                  tooltip="A motion score from another node ('Open-Sora Prompt Refiner' with "
                          "dynamic_motion_score): replaces the motion_score widget unless empty."),
        ),
        outputs=(Output("OPENSORA_COND", "conditioning", "Positive and negative T5 states [N,512,4096] and CLIP "
                                                         "vectors [N,768], with the final prompt texts."),),
        description=(
            "Turns prompts into Open-Sora 2.0 conditioning exactly as the reference pipeline: the prompt gets "
            "'. <fps> FPS. <score> motion score.', T5 runs on 512 tokens without attention mask "
            "(last hidden state) and CLIP-L gives its pooled output."
        ),
    )

    @classmethod
    def VALIDATE_INPUTS(cls, motion_score: str | None = None) -> bool | str:
        """At queue time: any whole-number score (the menu lists 0-15), 'off'; 'dynamic' needs a refiner."""
        if motion_score is None:  # linked: checked when the node runs
            return True
        try:
            check_motion_score(motion_score)
        except ValueError as error:
            return str(error)
        return True

    def execute(self, text_encoder: OpenSoraTextEncoder, prompt: str, negative_prompt: str, fps: int,
                motion_score: str, one_prompt_per_line: bool, motion_score_text: str | None = None
                ) -> tuple[TextConditioning]:
        if motion_score_text is not None and motion_score_text.strip():
            motion_score = motion_score_text.strip()
        check_motion_score(motion_score)
        prompts, negatives = final_prompts(prompt, negative_prompt, fps, motion_score, one_prompt_per_line)
        return encode_prompts(text_encoder, prompt, prompts, negatives, "Open-Sora Text Encode")


def encode_prompts(text_encoder: OpenSoraTextEncoder, raw_prompt: str, prompts: list[str], negatives: list[str],
                   node: str) -> tuple[TextConditioning] | dict:
    """The text nodes' shared work: load the encoders, warn about empty or cut prompts (log and node text),
    encode, check the result. Returns the node's output, with the warnings for the UI when there are any."""
    host.load_models([text_encoder.t5_managed, text_encoder.clip_managed])
    host.check_interrupt()
    warnings = prompt_warnings(text_encoder, raw_prompt, prompts, negatives)
    for warning in warnings:
        log.warning("%s: %s", node, warning)
    if warnings:
        host.show_text("\n".join(warnings))
    bars: list[host.Progress] = []  # made at the first call, which knows how many calls there are

    def after_chunk(done: int, total: int) -> None:
        if not bars:
            bars.append(host.Progress(total))
        bars[0].update(done - bars[0].value)
        host.check_interrupt()

    conditioning = encode_conditioning(text_encoder.t5, text_encoder.clip, prompts, negatives,
                                       host.intermediate_device(), after_chunk)
    _check_conditioning(text_encoder, conditioning)
    if warnings:
        return {"ui": {"text": warnings}, "result": (conditioning,)}
    return (conditioning,)


def prompt_warnings(text_encoder: OpenSoraTextEncoder, raw_prompt: str, prompts: list[str],
                    negatives: list[str]) -> list[str]:
    """What the user should know before the prompts are encoded: an empty prompt (a text-to-video run
    would follow only the fps/motion suffix) and prompts the tokenizers cut (T5 at 512 tokens, CLIP at
    77, as the reference does: the words past the limit have no effect)."""
    warnings = []
    if not raw_prompt.strip():
        warnings.append("The prompt is empty: fine with an image condition, but a text-to-video run has only "
                        "the fps/motion-score suffix to follow. Write what the video should show.")
    texts = [(f"Prompt {i + 1}" if len(prompts) > 1 else "The prompt", t) for i, t in enumerate(prompts)]
    texts += [("The negative prompt", t) for t in dict.fromkeys(negatives)]
    for label, text in texts:
        for name, encoder in (("T5", text_encoder.t5), ("CLIP", text_encoder.clip)):
            count = encoder.tokenizer.token_count(text)
            if count > encoder.max_length:
                warnings.append(f"{label} has {count} {name} tokens; {name} reads only the first "
                                f"{encoder.max_length}, so the rest is cut and has no effect.")
    return warnings


# Inputs of ComfyUI's text encode nodes that hold the prompt, T5's first (CLIPTextEncodeFlux has two).
_NATIVE_TEXT_INPUTS = ("t5xxl", "text", "prompt", "value", "string")
_NATIVE_LINK_DEPTH = 8


def native_prompt_text(graph: dict | None, node_id: str | None, input_name: str) -> str | None:
    """The prompt text behind a CONDITIONING input, read from ComfyUI's prompt graph (the hidden PROMPT
    input): follow the link to the encode node and take its text widget, through text nodes linked into
    it. None when ComfyUI gave no graph or the text is computed at run time (it is not in the graph)."""
    if not isinstance(graph, dict) or node_id is None:
        return None
    value = graph.get(str(node_id), {}).get("inputs", {}).get(input_name)
    for _ in range(_NATIVE_LINK_DEPTH):
        if not (isinstance(value, list) and len(value) == 2):
            return None
        inputs = graph.get(str(value[0]), {}).get("inputs", {})
        names = [n for n in _NATIVE_TEXT_INPUTS if n in inputs]
        if not names:
            return None
        value = inputs[names[0]]
        if isinstance(value, str):
            return value
    return None


def _check_conditioning(text_encoder: OpenSoraTextEncoder, conditioning: TextConditioning) -> None:
    """Stop on NaN/inf encoder outputs (fp16 T5 overflow) before the sampler spends minutes on them."""
    remedy_widget = "weight_dtype on the Open-Sora Text Encoder Loader"
    for name, encoder, states in (("T5", text_encoder.t5, (conditioning.t5, conditioning.neg_t5)),
                                  ("CLIP", text_encoder.clip, (conditioning.clip, conditioning.neg_clip))):
        dtype = next(encoder.parameters()).dtype
        for values in states:
            check_finite(values, f"Open-Sora Text Encode ({name})", dtype, next(encoder.parameters()).device,
                         precision_remedy(dtype, remedy_widget))


@register("OpenSoraConditioningFromNative", "Open-Sora Conditioning From Native")
class OpenSoraConditioningFromNative:
    """Turn ComfyUI's Flux-style CONDITIONING (T5-XXL states + CLIP-L pooled) into OPENSORA_COND."""

    SPEC = NodeSpec(
        inputs=(
            Input("positive", "CONDITIONING",
                  "From CLIPTextEncode with a DualCLIPLoader (type flux: t5xxl + clip_l). Write "
                  "the '. 24 FPS. 4 motion score.' suffix into the text yourself."),
            Input("negative", "CONDITIONING",
                  "Required: the reference's negative is the empty prompt, so wire a "
                  "CLIPTextEncode with empty text from the same DualCLIPLoader."),
        ),
        hidden={"prompt": "PROMPT", "unique_id": "UNIQUE_ID"},
        outputs=(Output("OPENSORA_COND", "conditioning", "The same states brought to 512 text tokens; close to, "
                                                         "not equal to, the reference."),),
        description=(
            "Uses ComfyUI's own T5/CLIP encoding instead of 'Open-Sora Text Encode'. It is NOT the reference's "
            "conditioning: ComfyUI pads T5 to at least 256 tokens (not exactly 512) and never truncates, parses "
            "prompt weights like (word:1.2), and T5 runs without a mask, so every hidden state depends on the "
            "pad count; no padding of the states afterwards can make them equal. This node brings each T5 "
            "sequence to the 512 tokens the model was trained with: longer ones are cut at 512, shorter ones "
            "are extended by repeating their last (padding) state. CLIP's pooled vector is the same as the "
            "reference's for prompts under 77 tokens. For exact results use 'Open-Sora Text Encode'."
        ),
    )

    def execute(self, positive: list, negative: list, prompt: dict | None = None,
                unique_id: str | None = None) -> tuple[TextConditioning]:
        texts = [native_prompt_text(prompt, unique_id, name) for name in ("positive", "negative")]
        conditioning, changed = from_native_conditioning(positive, negative, *texts)
        if changed:
            log.warning("Open-Sora: native T5 states were brought to 512 tokens; the conditioning is close to, "
                        "not equal to, the reference's (use 'Open-Sora Text Encode' for exact results).")
        return (conditioning,)

