"""Prompt texts as the reference feeds them to the text encoders: the fps / motion-score suffix.

The reference (``scripts/diffusion/inference.py`` with ``opensora/utils/inference.py``) strips the
prompt, ends it with a period, appends ``" {fps} FPS."`` unless it already ends with ``"<digits> FPS."``,
then appends ``" {motion_score} motion score."`` when a motion score is configured (``"4"`` in the
shipped configs). Negative prompts are encoded as given, without any suffix.

Also here: bringing ComfyUI's native Flux CONDITIONING (T5-XXL states + CLIP-L pooled) into a
``TextConditioning`` for the bridge node.
"""

from __future__ import annotations

import re
from typing import Callable, Protocol, Sequence

import torch

from .conditioning import TextConditioning

DEFAULT_FPS = 24
DEFAULT_MOTION_SCORE = "4"
MOTION_SCORE_OFF = "off"
# "dynamic": the reference asks a language model to pick a score for each prompt.
MOTION_SCORE_DYNAMIC = "dynamic"
# Menu choices: off, the integers the reference's score predictor is told to choose from (1-15) and 0
# (a still video's VMAF motion value), and dynamic. Any non-negative integer is accepted in code.
MOTION_SCORES: tuple[str, ...] = (MOTION_SCORE_OFF, *(str(i) for i in range(16)), MOTION_SCORE_DYNAMIC)

_FPS_ENDING = re.compile(r"\d+ FPS\.$")


def check_motion_score(motion_score: str | int | None) -> str | None:
    """The motion score as written into the prompt (``"4"``), or None for none (``None`` / ``"off"``).

    The reference writes ``"<score> motion score."``; scores are VMAF motion values, so any integer
    from 0 is taken. ``"dynamic"`` needs a prompt refiner, which is not configured: a clear error.
    """
    if motion_score is None or str(motion_score).strip() == MOTION_SCORE_OFF:
        return None
    text = str(motion_score).strip()
    if text == MOTION_SCORE_DYNAMIC:
        raise ValueError(
            "motion_score 'dynamic' asks a language model to choose each prompt's motion score (the reference "
            "sends the prompt to GPT-4o); no prompt refiner is configured. Give a number instead (the "
            "reference default is 4; 1 = calm ... 15 = very dynamic) or 'off'."
        )
    if not text.isdigit():
        raise ValueError(
            f"motion_score {motion_score!r} is not a score: give a whole number from 0 (the reference default "
            "is 4; 1 = calm ... 15 = very dynamic), 'off' or 'dynamic'."
        )
    return str(int(text))


def add_prompt_suffix(prompt: str, fps: int = DEFAULT_FPS,
                      motion_score: str | int | None = DEFAULT_MOTION_SCORE) -> str:
    """The final positive prompt: ``"raining, sea"`` -> ``"raining, sea. 24 FPS. 4 motion score."``.

    ``motion_score`` of ``None`` or ``"off"`` appends no motion score (see :func:`check_motion_score`).
    """
    score = check_motion_score(motion_score)
    text = prompt.strip()
    if not text.endswith("."):
        text += "."
    if not _FPS_ENDING.search(text):
        text += f" {int(fps)} FPS."
    if score is not None:
        text += f" {score} motion score."
    return text


def split_prompts(text: str, one_prompt_per_line: bool) -> list[str]:
    """The batch of raw prompts in a prompt widget: the whole text, or each non-blank line.

    Raises ValueError when ``one_prompt_per_line`` leaves no prompt.
    """
    if not one_prompt_per_line:
        return [text]
    prompts = [line for line in text.splitlines() if line.strip()]
    if not prompts:
        raise ValueError("The prompt has no non-empty line, so 'one prompt per line' gives no prompt to encode.")
    return prompts


def final_prompts(text: str, negative: str, fps: int, motion_score: str | int | None,
                  one_prompt_per_line: bool) -> tuple[list[str], list[str]]:
    """Positive prompts with their suffix and the negative prompt replicated per batch element."""
    check_motion_score(motion_score)  # before anything else is done
    prompts = [add_prompt_suffix(p, fps, motion_score) for p in split_prompts(text, one_prompt_per_line)]
    return prompts, [negative] * len(prompts)


class TextEncoder(Protocol):
    def encode(self, texts: Sequence[str]) -> torch.Tensor: ...


ENCODE_CHUNK = 8  # texts per encoder call: Cancel and progress between calls, same rows as one batch


def encode_conditioning(t5: TextEncoder, clip: TextEncoder, prompts: Sequence[str],
                        negative_prompts: Sequence[str], out_device: torch.device | str = "cpu",
                        after_chunk: Callable[[int, int], None] | None = None) -> TextConditioning:
    """Encode final prompts and one negative per prompt (each distinct negative is encoded once).

    Texts go through the encoders ``ENCODE_CHUNK`` at a time; ``after_chunk(done, total)`` runs after
    each call (progress, and Cancel when it raises), so a table of many prompts stays interruptible.
    """
    negatives = sorted(set(negative_prompts))
    texts = [*prompts, *negatives]
    chunks = [texts[start:start + ENCODE_CHUNK] for start in range(0, len(texts), ENCODE_CHUNK)]
    t5_parts, clip_parts = [], []
    for index, chunk in enumerate(chunks):
        t5_parts.append(t5.encode(chunk).to(out_device))
        clip_parts.append(clip.encode(chunk).to(out_device))
        if after_chunk is not None:
            after_chunk(index + 1, len(chunks))
    t5_states, pooled = torch.cat(t5_parts), torch.cat(clip_parts)
    n = len(prompts)
    rows = [n + negatives.index(text) for text in negative_prompts]
    return TextConditioning(
        t5=t5_states[:n], clip=pooled[:n], neg_t5=t5_states[rows], neg_clip=pooled[rows],
        prompts=tuple(prompts), negative_prompts=tuple(negative_prompts),
    )


# ------------------------------------------------------------------- ComfyUI's native CONDITIONING

T5_TOKENS = 512
T5_WIDTH = 4096
CLIP_WIDTH = 768
NATIVE_PROMPT = "(ComfyUI CONDITIONING)"


def t5_states_to_length(states: torch.Tensor, length: int = T5_TOKENS) -> torch.Tensor:
    """``[B, L, D]`` T5 states cut to ``length`` tokens or extended by repeating the last state.

    An approximation for states ComfyUI computed with another pad count: since the reference's T5
    attends to its padding, the exact states cannot be recovered from these.
    """
    if states.shape[1] >= length:
        return states[:, :length]
    extra = states[:, -1:].expand(-1, length - states.shape[1], -1)
    return torch.cat([states, extra], dim=1)


def _native_batch(conditioning: list, name: str) -> tuple[torch.Tensor, torch.Tensor, bool]:
    if not isinstance(conditioning, (list, tuple)) or not conditioning:
        raise ValueError(f"The {name} input is not a CONDITIONING value (or it is empty).")
    states, pooled, changed = [], [], False
    for entry in conditioning:
        tensor, extras = entry[0], entry[1] if len(entry) > 1 else {}
        vector = extras.get("pooled_output") if isinstance(extras, dict) else None
        if not torch.is_tensor(tensor) or tensor.ndim != 3 or tensor.shape[-1] != T5_WIDTH:
            shape = tuple(tensor.shape) if torch.is_tensor(tensor) else type(tensor).__name__
            raise ValueError(f"The {name} CONDITIONING holds {shape} states, not T5-XXL states [1, L, {T5_WIDTH}]: "
                             "encode it with a DualCLIPLoader of type 'flux' (t5xxl + clip_l).")
        if vector is None or vector.shape[-1] != CLIP_WIDTH or vector.shape[0] != tensor.shape[0]:
            raise ValueError(f"The {name} CONDITIONING has no CLIP-L pooled output [1, {CLIP_WIDTH}]: encode it "
                             "with a DualCLIPLoader of type 'flux' (t5xxl + clip_l).")
        changed |= tensor.shape[1] != T5_TOKENS
        states.append(t5_states_to_length(tensor))
        pooled.append(vector.reshape(tensor.shape[0], CLIP_WIDTH))
    return torch.cat(states), torch.cat(pooled), changed


def from_native_conditioning(positive: list, negative: list, positive_text: str | None = None,
                             negative_text: str | None = None) -> tuple[TextConditioning, bool]:
    """A TextConditioning from ComfyUI's Flux-style CONDITIONING (entries ``[t5 [B,L,4096],
    {"pooled_output": [B,768]}]``, concatenated into one batch); the negative batch is 1 or the same size.
    The texts, when known, become its prompts (for the sidecar); else a placeholder.

    Returns it and whether any T5 sequence had to be brought to 512 tokens.
    """
    t5, clip, changed = _native_batch(positive, "positive")
    neg_t5, neg_clip, neg_changed = _native_batch(negative, "negative")
    n = t5.shape[0]
    if neg_t5.shape[0] == 1 and n > 1:
        neg_t5, neg_clip = neg_t5.expand(n, -1, -1), neg_clip.expand(n, -1)
    elif neg_t5.shape[0] != n:
        raise ValueError(f"The negative CONDITIONING has {neg_t5.shape[0]} prompts; give 1 or {n} (as the positive).")
    conditioning = TextConditioning(
        t5=t5, clip=clip, neg_t5=neg_t5.contiguous(), neg_clip=neg_clip.contiguous(),
        prompts=(NATIVE_PROMPT if positive_text is None else positive_text,) * n,
        negative_prompts=(NATIVE_PROMPT if negative_text is None else negative_text,) * n,
    )
    return conditioning, changed or neg_changed
