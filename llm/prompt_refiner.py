"""Prompt refinement and the dynamic motion score, asked of any OpenAI-compatible chat endpoint.

Open-Sora's inference can rewrite short prompts into the detailed captions the model was trained on, and
can ask the language model how much motion a prompt implies (``--motion-score dynamic``). It calls the
official Chat Completions API with temperature 0.01, top_p 0.7, at most 250 answer tokens (100 for the
motion score) and up to 3 attempts; we use the same settings against any endpoint that speaks that API
(OpenAI, vLLM, llama.cpp server, Ollama, LM Studio...) through the ``openai`` client package, which is
optional: it is imported only when a request is made. The instruction texts are our own.

For image-to-video the condition image is sent along (as a data URL) when the endpoint accepts images;
an endpoint that rejects the image part gets the text-only request instead.
"""

from __future__ import annotations

import base64
import io
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

OFFICIAL_BASE_URL = "https://api.openai.com/v1"
DEFAULT_MODEL = "gpt-4o"
DEFAULT_KEY_ENV = "OPENAI_API_KEY"
KINDS = ("t2v", "t2i", "i2v")
# Sampling settings of the reference's refinement requests.
TEMPERATURE = 0.01
TOP_P = 0.7
MAX_TOKENS = 250
MAX_TOKENS_MOTION = 100
ATTEMPTS = 3
MOTION_RANGE = (1, 7)  # the scores offered by the Text Encode node besides 'off'
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")  # references sent to the endpoint (not videos)
NO_KEY = "none"  # what local servers that need no key are sent (the client insists on some key)

_SHARED_RULES = (
    "Reply with the rewritten description only: one paragraph in English, no preamble, no quotes, no lists, "
    "at most about 120 words. Keep every subject, action, object, count, colour and style the user asked for; "
    "do not add text overlays, brand names or people that were not asked for. If the request is already long "
    "and detailed, only polish it. Translate it into English if it is in another language."
)
INSTRUCTIONS = {
    "t2v": (
        "You turn a short idea for a video clip into the kind of caption a text-to-video model was trained on. "
        "Describe what is seen from the first to the last moment: the main subject and its appearance, what it "
        "does and how it moves, the setting, lighting and atmosphere, and how the camera frames or moves "
        "(static, pan, tracking, close-up...). " + _SHARED_RULES
    ),
    "t2i": (
        "You turn a short idea for a picture into the kind of caption a text-to-image model was trained on. "
        "Describe one still frame: the main subject and its appearance and pose, the setting, composition, "
        "lighting, colours and photographic or artistic style. Do not describe motion over time. "
        + _SHARED_RULES
    ),
    "i2v": (
        "You write the caption for a video clip that starts from the given first frame. Describe what the "
        "first frame shows only as far as needed to stay faithful to it, then what happens next: how the "
        "subject moves, what changes in the scene and how the camera moves, following the user's idea. "
        "When no image is attached, work from the user's idea alone. " + _SHARED_RULES
    ),
}
MOTION_INSTRUCTION = (
    "Rate how much motion a video made from the user's description would contain, on a scale from "
    f"{MOTION_RANGE[0]} (nearly still: a landscape, a slow zoom) to {MOTION_RANGE[1]} (very dynamic: fast "
    "action, quick camera moves, many moving things). Reply with the single whole number only."
)


class RefineError(RuntimeError):
    """A refinement failed; the message is one line that says what to change."""


class RequestRejected(RefineError):
    """The endpoint refused the request itself (HTTP 4xx other than a key or rate problem)."""


@dataclass(frozen=True)
class Endpoint:
    """Where to ask: an OpenAI-compatible base URL, a model name, the key (never shown) and a timeout."""

    base_url: str = OFFICIAL_BASE_URL
    model: str = DEFAULT_MODEL
    api_key: str = field(default=NO_KEY, repr=False)
    timeout: float = 60.0


def read_api_key(env_var: str = DEFAULT_KEY_ENV, key_file: str = "", base_url: str = OFFICIAL_BASE_URL) -> str:
    """The API key from ``key_file`` (its first line) if named, else from the ``env_var`` environment variable.

    A custom endpoint (local servers) may go without a key; the official API may not.
    """
    if key_file.strip():
        path = Path(os.path.expanduser(key_file.strip()))
        try:
            key = path.read_text(encoding="utf-8").strip().splitlines()
        except OSError as error:
            raise RefineError(f"Cannot read the API key file {path}: {error.strerror or error}.") from None
        if not key or not key[0].strip():
            raise RefineError(f"The API key file {path} is empty.")
        return key[0].strip()
    if env_var.strip() and os.environ.get(env_var.strip(), "").strip():
        return os.environ[env_var.strip()].strip()
    if _is_official(base_url):
        raise RefineError(
            f"No API key for {OFFICIAL_BASE_URL}: set the {env_var or DEFAULT_KEY_ENV} environment variable or name "
            "a key file (the key is never taken from a widget)."
        )
    return NO_KEY


def _is_official(base_url: str) -> bool:
    return not base_url.strip() or base_url.strip().rstrip("/") == OFFICIAL_BASE_URL


def _png_url(picture) -> str:
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def png_data_url(image: Any) -> str:
    """A ``data:image/png;base64,...`` URL of an ``[H, W, 3]`` float image in [0, 1] (ComfyUI IMAGE frame)."""
    import numpy as np
    from PIL import Image

    array = (image.detach().cpu().float().clamp(0, 1).numpy() * 255.0 + 0.5).astype(np.uint8)
    return _png_url(Image.fromarray(array[..., :3]))


def image_file_data_url(path: str | os.PathLike) -> str:
    """A PNG data URL of an image file (any format Pillow reads), as RGB."""
    from PIL import Image

    with Image.open(path) as picture:
        return _png_url(picture.convert("RGB"))


def _client(endpoint: Endpoint):
    try:
        import openai
    except ImportError:
        raise RefineError("Prompt refinement needs the 'openai' package: pip install openai") from None
    base_url = endpoint.base_url.strip() or OFFICIAL_BASE_URL
    # Retries are ours (counted like the reference's), so the client's own are off.
    return openai, openai.OpenAI(base_url=base_url, api_key=endpoint.api_key, timeout=endpoint.timeout, max_retries=0)


def _one_line(text: str, limit: int = 200) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _error_detail(error: Exception) -> str:
    """The server's own error message when it sent one (OpenAI's ``{"error": {"message": ...}}``)."""
    body = getattr(error, "body", None)
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        body = body["error"]
    message = body.get("message") if isinstance(body, dict) else None
    return _one_line(message or getattr(error, "message", "") or error)


def _ask(endpoint: Endpoint, messages: list[dict], max_tokens: int, seed: int | None) -> str:
    """The answer text, after up to :data:`ATTEMPTS` tries for failures that may pass (network, 429, 5xx,
    empty answers); other failures raise at once."""
    openai, client = _client(endpoint)
    where = endpoint.base_url.strip() or OFFICIAL_BASE_URL
    problem = ""
    for _attempt in range(ATTEMPTS):
        try:
            response = client.chat.completions.create(
                model=endpoint.model, messages=messages, temperature=TEMPERATURE, top_p=TOP_P,
                max_tokens=max_tokens, **({"seed": int(seed)} if seed is not None else {}),
            )
        except openai.APITimeoutError:
            problem = f"no answer from {where} within {endpoint.timeout:g} s"
            continue
        except openai.APIConnectionError:
            problem = f"cannot reach {where} (is the server running and the base URL right?)"
            continue
        except openai.APIStatusError as error:
            detail = _error_detail(error)
            if error.status_code == 429 or error.status_code >= 500:
                problem = f"{where} answered {error.status_code}: {detail}"
                continue
            if error.status_code in (401, 403):
                raise RefineError(f"{where} refused the API key ({error.status_code}): {detail}") from None
            raise RequestRejected(f"{where} rejected the request ({error.status_code}): {detail}") from None
        except openai.OpenAIError as error:
            problem = f"unusable answer from {where}: {_one_line(error)}"
            continue
        choice = response.choices[0] if getattr(response, "choices", None) else None
        message = getattr(choice, "message", None)
        if message is not None and getattr(message, "refusal", None):
            raise RefineError(f"The model {endpoint.model} refused: {_one_line(message.refusal)}")
        if choice is not None and choice.finish_reason == "content_filter":
            raise RefineError(f"The model {endpoint.model} refused (content filter).")
        text = (getattr(message, "content", None) or "").strip()
        if text:
            return text
        problem = f"{where} sent an empty answer"
    raise RefineError(f"Prompt refinement failed after {ATTEMPTS} attempts: {problem}.")


def _clean(answer: str) -> str:
    """The answer as one prompt: whitespace joined, wrapping quotes removed."""
    text = " ".join(answer.split())
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'":
        text = text[1:-1].strip()
    return text


def refine_prompt(endpoint: Endpoint, prompt: str, kind: str = "t2v", image_url: str | None = None,
                  seed: int | None = None) -> str:
    """``prompt`` rewritten for ``kind`` (t2v, t2i, i2v). ``image_url`` (a data URL) goes with i2v requests;
    when the endpoint rejects it, the text-only request is sent instead."""
    if kind not in KINDS:
        raise RefineError(f"kind must be one of {', '.join(KINDS)}, not {kind!r}.")
    if not prompt.strip():
        raise RefineError("The prompt to refine is empty.")
    system = {"role": "system", "content": INSTRUCTIONS[kind]}
    if kind == "i2v" and image_url:
        parts = [{"type": "text", "text": prompt.strip()}, {"type": "image_url", "image_url": {"url": image_url}}]
        try:
            return _clean(_ask(endpoint, [system, {"role": "user", "content": parts}], MAX_TOKENS, seed))
        except RequestRejected:
            pass  # an endpoint without image input: ask with the text alone
    answer = _ask(endpoint, [system, {"role": "user", "content": prompt.strip()}], MAX_TOKENS, seed)
    return _clean(answer)


def parse_motion_score(answer: str) -> str:
    """The score in an answer such as ``"5"``, ``"5 motion score"`` or ``"Score: 5."``, as the string ``"5"``."""
    low, high = MOTION_RANGE
    found = re.search(r"\d+(?:\.\d+)?", answer)
    if found is None or "." in found.group(0) or not low <= int(found.group(0)) <= high:
        raise RefineError(f"The motion score answer is not a whole number from {low} to {high}: {_one_line(answer, 80)!r}")
    return str(int(found.group(0)))


def dynamic_motion_score(endpoint: Endpoint, prompt: str, seed: int | None = None) -> str:
    """The motion score (``"1"`` ... ``"7"``) the language model gives ``prompt``."""
    messages = [{"role": "system", "content": MOTION_INSTRUCTION}, {"role": "user", "content": prompt.strip()}]
    return parse_motion_score(_ask(endpoint, messages, MAX_TOKENS_MOTION, seed))
