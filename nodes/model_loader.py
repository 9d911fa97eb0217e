"""Model Loader node: an Open-Sora 2.0 (or Flux-dev) MMDiT file -> OPENSORA_MODEL."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ..loaders.mmdit import load_mmdit
from ..models.mmdit import MMDiT, MMDiTConfig
from . import host

host.register_folders()

# Widget value -> dtype the weights are kept in. A list on purpose: quantised options are added later.
WEIGHT_DTYPES: dict[str, torch.dtype] = {
    "bf16": torch.bfloat16,
    "fp16": torch.float16,
    "fp32": torch.float32,
}


@dataclass
class OpenSoraModel:
    """The OPENSORA_MODEL socket value: a host-managed MMDiT and what it was loaded from.

    Samplers call ``host.load_models([model.managed])`` and then use ``model.module``.
    """

    managed: Any
    config: MMDiTConfig
    dtype: torch.dtype
    path: str

    @property
    def module(self) -> MMDiT:
        return host.unwrap_model(self.managed)


class OpenSoraModelLoader:
    """Load the Open-Sora 2.0 diffusion transformer from ComfyUI's diffusion_models folder."""

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {
            "required": {
                "model_name": (host.list_files(host.DIFFUSION_MODELS), {
                    "tooltip": "A .safetensors file in models/diffusion_models: Open_Sora_v2.safetensors (video "
                               "model), the high-compression (Video DC-AE) model, or a Flux-dev transformer for "
                               "the text-to-image-to-video first frame. The architecture is read from the file."}),
                "weight_dtype": (list(WEIGHT_DTYPES), {
                    "default": "bf16",
                    "tooltip": "Precision the weights are kept and run in. bf16 is what the reference uses "
                               "(about 24 GB for the 11B model); fp16 may overflow; fp32 doubles memory."}),
            }
        }

    RETURN_TYPES = ("OPENSORA_MODEL",)
    RETURN_NAMES = ("model",)
    OUTPUT_TOOLTIPS = ("The MMDiT, kept on the offload device until a sampler needs it.",)
    FUNCTION = "execute"
    CATEGORY = "Open-Sora"
    DESCRIPTION = (
        "Loads an Open-Sora 2.0 MMDiT (or Flux-dev) checkpoint with strict key checks. The weights go to "
        "ComfyUI's offload device in the chosen precision; samplers move them to the GPU when they run."
    )

    def execute(self, model_name: str, weight_dtype: str) -> tuple[OpenSoraModel]:
        if weight_dtype not in WEIGHT_DTYPES:
            raise ValueError(f"weight_dtype must be one of {list(WEIGHT_DTYPES)}, not {weight_dtype!r}.")
        path = host.resolve_file(host.DIFFUSION_MODELS, model_name)
        dtype = WEIGHT_DTYPES[weight_dtype]
        module = load_mmdit(path, dtype=dtype, device=host.offload_device())
        return (OpenSoraModel(host.manage_model(module), module.config, dtype, str(path)),)


NODE_CLASS_MAPPINGS = {"OpenSoraModelLoader": OpenSoraModelLoader}
NODE_DISPLAY_NAME_MAPPINGS = {"OpenSoraModelLoader": "Open-Sora Model Loader"}
