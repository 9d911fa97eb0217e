"""The speed/memory options of the Model Loader node: fp8 weights, attention backend, offload, compile."""

from __future__ import annotations

import pytest
import torch

from comfyui_opensora.models.attention_backends import AttentionBackendError
from comfyui_opensora.models.fp8 import FP8Linear, block_linears
from comfyui_opensora.nodes.model_loader import OpenSoraModelLoader

from factories_mmdit import TINY_VIDEO_CONFIG, tiny_mmdit_inputs, write_tiny_mmdit


@pytest.fixture
def tiny_file(standalone_host):
    write_tiny_mmdit(standalone_host.folder_paths(standalone_host.DIFFUSION_MODELS)[0] / "tiny.safetensors")
    return "tiny.safetensors"


def test_fp8_weights_run_in_bf16(standalone_host, tiny_file):
    (model,) = OpenSoraModelLoader().execute(tiny_file, "fp8_e4m3fn", "sdpa", 0, False)
    assert model.dtype == torch.bfloat16  # what the sampler makes latents in
    linears = block_linears(model.module)
    assert all(type(m) is FP8Linear and m.weight.dtype == torch.float8_e4m3fn for m in linears.values())
    inputs = {k: v if k.endswith("_ids") else v.bfloat16() for k, v in tiny_mmdit_inputs(TINY_VIDEO_CONFIG).items()}
    with torch.inference_mode():
        assert torch.isfinite(model.module(**inputs)).all()


def test_missing_attention_package_is_a_clear_error(standalone_host, tiny_file, monkeypatch):
    from comfyui_opensora.models import attention_backends

    monkeypatch.setattr(attention_backends, "_installed_module", lambda backend: None)
    with pytest.raises(AttentionBackendError, match="pip install flash-attn"):
        OpenSoraModelLoader().execute(tiny_file, "bf16", "flash_attn", 0, False)


def test_auto_attention_on_cpu_is_sdpa_and_offload_is_skipped_without_a_gpu(standalone_host, tiny_file):
    (model,) = OpenSoraModelLoader().execute(tiny_file, "bf16", "auto", 2, True)
    blocks = list(model.module.double_blocks) + list(model.module.single_blocks)
    assert {b.attention_backend for b in blocks} == {"sdpa"}
    assert not hasattr(model.module, "block_offload")  # compute and offload device are both the CPU
    assert all(hasattr(b.forward, "_torchdynamo_orig_callable") for b in blocks)  # compiled lazily


def test_outside_comfyui_loading_a_model_sends_the_others_back_to_ram(standalone_host, monkeypatch):
    """ComfyUI evicts text encoders and VAEs from the GPU when the sampler loads the MMDiT; so does
    the standalone host (here the 'device' is a dtype change, so the moves are visible on the CPU)."""
    class Handle(standalone_host.StandaloneModel):
        def load(self):
            self.model.to(torch.float64)

        def offload(self):
            self.model.to(torch.float32)

    text_encoder = Handle(torch.nn.Linear(2, 2), torch.device("cpu"), torch.device("cpu"))
    diffusion_model = Handle(torch.nn.Linear(2, 2), torch.device("cpu"), torch.device("cpu"))
    monkeypatch.setattr(standalone_host.standalone_state(), "loaded_models", [])
    standalone_host.load_models([text_encoder])
    assert text_encoder.model.weight.dtype == torch.float64
    standalone_host.load_models([diffusion_model])
    assert text_encoder.model.weight.dtype == torch.float32 and diffusion_model.model.weight.dtype == torch.float64
    standalone_host.load_models([diffusion_model])
    assert standalone_host.standalone_state().loaded_models == [diffusion_model]
