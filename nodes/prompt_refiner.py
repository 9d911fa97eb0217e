"""Prompt Refiner node: a short prompt -> a detailed one (and optionally a motion score) from an LLM endpoint."""

from __future__ import annotations

import logging

from ..llm.prompt_refiner import (
    DEFAULT_KEY_ENV,
    DEFAULT_MODEL,
    KINDS,
    Endpoint,
    RefineError,
    dynamic_motion_score as ask_motion_score,
    png_data_url,
    read_api_key,
    refine_prompt,
)
from .spec import Input, NodeSpec, Output, register

ON_ERROR = ("fail", "use original prompt")
LOG = logging.getLogger(__name__)


@register("OpenSoraPromptRefiner", "Open-Sora Prompt Refiner")
class OpenSoraPromptRefiner:
    """Rewrite a prompt with an OpenAI-compatible chat endpoint, as the reference's prompt_refine does."""

    SPEC = NodeSpec(
        inputs=(
            Input("prompt", "STRING", "The short prompt to expand.", default="", multiline=True),
            Input("kind", choices=KINDS, default="t2v",
                  tooltip="What the prompt is for: t2v (a video), t2i (a still image, e.g. the t2i2v first "
                          "frame) or i2v (a video from the connected image, which is sent along when the "
                          "endpoint accepts images)."),
            Input("model", "STRING", default=DEFAULT_MODEL,
                  tooltip="Model name at the endpoint (reference: gpt-4o; for local servers the name they "
                          "serve, e.g. llama3.1:8b for Ollama)."),
            Input("base_url", "STRING", default="",
                  tooltip="OpenAI-compatible API root. Empty = the official OpenAI API. Local servers: "
                          "http://127.0.0.1:11434/v1 (Ollama), http://127.0.0.1:8000/v1 (vLLM), "
                          "http://127.0.0.1:8080/v1 (llama.cpp), http://127.0.0.1:1234/v1 (LM Studio)."),
            Input("api_key_env", "STRING", default=DEFAULT_KEY_ENV,
                  tooltip="Name of the environment variable holding the API key (the key itself is never "
                          "typed into the workflow). Local servers usually need none."),
            Input("api_key_file", "STRING", default="",
                  tooltip="Or a file whose first line is the key (path; ~ allowed). Used instead of the "
                          "environment variable when given."),
            Input("dynamic_motion_score", "BOOLEAN", default=False,
                  tooltip="Also ask the model for a motion score (1 calm ... 7 very dynamic) for the "
                          "motion_score output, like the reference's --motion-score dynamic."),
            Input("on_error", choices=ON_ERROR, default="fail",
                  tooltip="fail: stop with the error. use original prompt: go on with the prompt as typed "
                          "(and no motion score), logging the error."),
            Input("seed", "INT", default=0, min=0, max=0xFFFFFFFF,
                  tooltip="Change it to ask again: the same inputs reuse the cached answer. Sent to the "
                          "endpoint as its sampling seed."),
            Input("timeout", "FLOAT", default=60.0, min=1.0, max=600.0, step=1.0,
                  tooltip="Seconds to wait for each answer (3 attempts)."),
            Input("image", "IMAGE", optional=True,
                  tooltip="For i2v: the first frame (the first image of a batch is sent)."),
        ),
        outputs=(
            Output("STRING", "prompt", "The refined prompt: connect it to the Text Encode prompt (which adds the "
                                       "fps / motion-score suffix)."),
            Output("STRING", "motion_score", "The model's motion score ('1'...'7'), or empty when not asked: "
                                             "connect it to Text Encode's motion_score_text."),
        ),
        description=(
            "Expands a short prompt into a detailed caption with a language model (OpenAI API or any local "
            "OpenAI-compatible server), with the reference's settings (temperature 0.01, top_p 0.7, 250 tokens, "
            "3 attempts). The API key comes from an environment variable or a key file, never from the workflow."
        ),
    )

    def execute(self, prompt: str, kind: str, model: str, base_url: str, api_key_env: str, api_key_file: str,
                dynamic_motion_score: bool, on_error: str, seed: int, timeout: float, image=None
                ) -> tuple[str, str]:
        if on_error not in ON_ERROR:
            raise ValueError(f"on_error must be one of {list(ON_ERROR)}, not {on_error!r}.")
        try:
            endpoint = Endpoint(base_url.strip(), model.strip() or DEFAULT_MODEL,
                                read_api_key(api_key_env, api_key_file, base_url), timeout)
            image_url = png_data_url(image[0]) if kind == "i2v" and image is not None else None
            refined = refine_prompt(endpoint, prompt, kind, image_url, seed)
            score = ask_motion_score(endpoint, refined, seed) if dynamic_motion_score else ""
        except RefineError as error:
            if on_error == "fail":
                raise
            LOG.warning("Open-Sora Prompt Refiner: %s Using the original prompt.", error)
            return (prompt, "")
        return (refined, score)

