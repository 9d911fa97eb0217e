"""LoRA Loader node: OPENSORA_MODEL + a PEFT adapter from models/loras -> a new OPENSORA_MODEL."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from ..loaders.lora import apply_adapter, check_adapter_keys, read_adapter
from ..models.block_compile import compile_blocks
from ..models.block_offload import install_block_offload, transformer_blocks
from .. import host
from .model_loader import OpenSoraModel
from .spec import Input, NodeSpec, Output, register

LORAS = "loras"  # ComfyUI's folder name for LoRA files
PEFT_WEIGHTS_FILE = "adapter_model.safetensors"


def list_adapters() -> list[str]:
    """Adapter files and PEFT folders in models/loras (a folder's own weights file is listed as the folder)."""
    names = host.list_files(LORAS, directories=True)
    return [n for n in names if Path(n).name != PEFT_WEIGHTS_FILE]


@register("OpenSoraLoraLoader", "Open-Sora LoRA Loader")
class OpenSoraLoraLoader:
    """Add a LoRA adapter (peft format, as Open-Sora's training saves it) to the Open-Sora model."""

    SPEC = NodeSpec(
        inputs=(
            Input("model", "OPENSORA_MODEL", "The MMDiT from 'Open-Sora Model Loader' (or another LoRA loader)."),
            Input("lora_name", choices=list_adapters,
                  tooltip="A PEFT adapter in models/loras: a folder with adapter_config.json and "
                          "adapter_model.safetensors (what peft's save_pretrained writes), or a .safetensors "
                          "file with its adapter_config.json in the same folder."),
            Input("strength", "FLOAT", default=1.0, min=-10.0, max=10.0, step=0.01,
                  tooltip="Multiplies the adapter's effect (1 = as trained, what the reference uses; 0 = the "
                          "model without the adapter)."),
        ),
        outputs=(Output("OPENSORA_MODEL", "model", "The model with the adapter; the input model is left "
                                                   "unchanged. Chain loaders for several adapters."),),
        description=(
            "Applies a LoRA adapter trained with Open-Sora's scripts (peft) to the MMDiT, like the reference's "
            "pretrained_lora_path. The adapter runs beside the unchanged base weights (works with fp8 weights and "
            "offload_blocks); the input model stays usable without it. Keys that match no layer are an error."
        ),
    )

    def execute(self, model: OpenSoraModel, lora_name: str, strength: float) -> tuple[OpenSoraModel]:
        path = host.resolve_file(LORAS, lora_name)
        adapter = read_adapter(path)
        base = model.module
        if strength == 0:
            check_adapter_keys(base, adapter)  # still refuse an adapter for another model
            return (model,)
        adapted = apply_adapter(base, adapter, strength, model.dtype)
        offload = getattr(base, "block_offload", None)
        if offload is not None:
            install_block_offload(adapted, len(offload.streamed_blocks), offload.compute_device, offload.offload_device)
        if any(hasattr(b.forward, "_torchdynamo_orig_callable") for b in transformer_blocks(base)):
            compile_blocks(adapted)
        return (replace(model, managed=host.manage_model(adapted),
                        adapters=(*model.adapters, f"{lora_name} @ {strength:g}")),)

