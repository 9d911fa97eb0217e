"""Model Loader node: an Open-Sora 2.0 (or Flux-dev) MMDiT file -> OPENSORA_MODEL."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ..loaders.mmdit_setup import MMDiTSetup, load_mmdit_for_sampling
from ..models.attention_backends import BACKENDS
from ..models.dtypes import WEIGHT_DTYPES
from ..models.mmdit import MMDiT, MMDiTConfig
from .. import host
from .spec import Input, NodeSpec, Output, register

host.register_folders()

MAX_OFFLOAD_BLOCKS = 57  # 19 double + 38 single blocks of the released model


@dataclass
class OpenSoraModel:
    """The OPENSORA_MODEL socket value: a host-managed MMDiT and what it was loaded from.

    Samplers call ``host.load_models([model.managed])`` and then use ``model.module``.
    """

    managed: Any
    config: MMDiTConfig
    path: str
    setup: MMDiTSetup  # how the loader prepared it; the parallel workers repeat it
    adapters: tuple[str, ...] = ()  # LoRA adapters added by 'Open-Sora LoRA Loader' ("name @ strength")

    @property
    def module(self) -> MMDiT:
        return host.unwrap_model(self.managed)

    @property
    def dtype(self) -> torch.dtype:
        """The compute dtype (bf16 for fp8-stored weights): latents and inputs use it."""
        return self.setup.compute_dtype


@register("OpenSoraModelLoader", "Open-Sora Model Loader")
class OpenSoraModelLoader:
    """Load the Open-Sora 2.0 diffusion transformer from ComfyUI's diffusion_models folder."""

    SPEC = NodeSpec(
        inputs=(
            Input("model_name", choices=lambda: host.list_files(host.DIFFUSION_MODELS),
                  tooltip="A .safetensors file in models/diffusion_models: Open_Sora_v2.safetensors (video "
                          "model), the high-compression (Video DC-AE) model, or a Flux-dev transformer for "
                          "the text-to-image-to-video first frame. The architecture is read from the file."),
            Input("weight_dtype", choices=WEIGHT_DTYPES, default="bf16",
                  tooltip="Precision the weights are kept and run in. bf16 is what the reference uses "
                          "(about 24 GB for the 11B model); fp16 may overflow; fp32 doubles memory. "
                          "fp8_e4m3fn / fp8_e5m2 store the block weights in 8 bits (about 12 GB) and "
                          "compute in bf16: slightly different results, half the memory."),
            Input("attention", choices=BACKENDS, default="auto",
                  tooltip="Attention kernel. auto: flash-attn if installed (CUDA, 16-bit), else PyTorch "
                          "SDPA. sageattention (pip install sageattention) is faster but approximate. "
                          "Choosing a package that is not installed is an error naming it."),
            Input("offload_blocks", "INT", default=0, min=0, max=MAX_OFFLOAD_BLOCKS,
                  tooltip="Keep this many transformer blocks (the last ones) in system RAM and copy each "
                          "to the GPU just before it runs, prefetching the next. 0 = all on the GPU "
                          "(ignored when running on the CPU). With bf16 on a 24 GB card try 30; fp8 fits "
                          "without offload."),
            Input("compile", "BOOLEAN", default=False,
                  tooltip="torch.compile the transformer blocks: faster steps after a slow first step. "
                          "Needs Triton on the GPU."),
        ),
        outputs=(Output("OPENSORA_MODEL", "model", "The MMDiT, kept on the offload device until a sampler "
                                                   "needs it."),),
        description=(
            "Loads an Open-Sora 2.0 MMDiT (or Flux-dev) checkpoint with strict key checks. The weights go to "
            "ComfyUI's offload device in the chosen precision; samplers move them to the GPU when they run. "
            "For 24 GB cards: fp8 weights (about 12 GB) or bf16 with offload_blocks (blocks streamed from RAM)."
        ),
    )

    def execute(self, model_name: str, weight_dtype: str, attention: str = "auto", offload_blocks: int = 0,
                compile: bool = False) -> tuple[OpenSoraModel]:
        setup = MMDiTSetup(weight_dtype, attention, offload_blocks, compile)
        path = host.resolve_file(host.DIFFUSION_MODELS, model_name)
        module = load_mmdit_for_sampling(path, setup, host.torch_device(), host.offload_device())
        return (OpenSoraModel(host.manage_model(module), module.config, str(path), setup),)

