"""The t2i2v first frame: decoded by the Flux AE, saved as the reference saves it (PNG + .txt, 8-bit rounding
in the decoder's precision) and handed on as the 8-bit image the reference reads back."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from comfyui_opensora.tiny_checkpoints.autoencoders import write_tiny_flux_ae
from comfyui_opensora.nodes.first_frame import OpenSoraSaveFirstFrame
from comfyui_opensora.nodes.vae import OpenSoraVAEDecode, OpenSoraVAELoader
from comfyui_opensora.samplers.conditioning import TextConditioning
from comfyui_opensora.samplers.first_frame import arithmetic_dtype, reference_uint8
from comfyui_opensora.media.pixels import to_uint8
from comfyui_opensora.models.latent_space import FLUX_AE
from comfyui_opensora.samplers.geometry import VideoGeometry
from comfyui_opensora.samplers.latent import make_latent


def _reference_png_pixels(decoded: torch.Tensor) -> torch.Tensor:
    """What the reference's save_image(normalize=True, value_range=(-1, 1)) writes, step by step in the
    decoder output's own dtype: clamp, (x - low) / (high - low), * 255 + 0.5, clamp, truncate."""
    x = decoded.clone().clamp_(-1, 1)
    x = x.sub_(-1).div_(2)
    return x.mul(255).add_(0.5).clamp_(0, 255).permute(1, 2, 0).to(torch.uint8)


@pytest.mark.parametrize("dtype", ["bf16", "fp32"])
def test_first_frame_png_and_output_are_the_reference_pixels(standalone_host, tmp_path, dtype):
    path = write_tiny_flux_ae(standalone_host.standalone_state().models_dir / "vae" / "flux1-dev-ae.safetensors", seed=4)
    (vae,) = OpenSoraVAELoader().execute(path.name, dtype)
    geometry = VideoGeometry(height=48, width=80, num_frames=1, autoencoder=FLUX_AE.name)
    z = 3 * torch.randn(2, 16, 1, 6, 10, generator=torch.Generator().manual_seed(7))
    (frames,) = OpenSoraVAEDecode().execute(vae, make_latent(z, geometry), "reference")  # one IMAGE per prompt
    with torch.no_grad():  # the decoder output itself, in the decoder's dtype (one prompt at a time, as decoded)
        decoded = torch.cat([vae.module.decode(z[i:i + 1])[:, :, 0] for i in range(2)])
    expected = torch.stack([_reference_png_pixels(d) for d in decoded])

    conditioning = TextConditioning(t5=torch.zeros(2, 1, 1), clip=torch.zeros(2, 1), neg_t5=torch.zeros(2, 1, 1),
                                    neg_clip=torch.zeros(2, 1), prompts=("raining, sea", "a red panda"),
                                    negative_prompts=("", ""))
    result = OpenSoraSaveFirstFrame().execute(frames, "OpenSora/t2i2v/generated_condition/frame", conditioning)
    (rounded,) = result["result"]
    assert torch.equal(rounded, expected.float() / 255)
    assert torch.equal(to_uint8(rounded), expected)  # the Image Condition reads back exactly these pixels

    folder = standalone_host.output_directory() / "OpenSora" / "t2i2v" / "generated_condition"
    entries = result["ui"]["images"]
    assert [e["filename"] for e in entries] == ["frame_00001_.png", "frame_00002_.png"]
    for index, entry in enumerate(entries):
        png = np.asarray(Image.open(folder / entry["filename"]))
        assert np.array_equal(png, expected[index].numpy())
        text = (folder / entry["filename"]).with_suffix(".txt").read_text(encoding="utf-8")
        assert text == conditioning.prompts[index]
    assert arithmetic_dtype(torch.cat(frames)) == (torch.bfloat16 if dtype == "bf16" else torch.float32)


def test_bf16_rounding_differs_from_float32_rounding_where_the_reference_would():
    """bf16 cannot hold v * 255 + 0.5 exactly above 128: rounding in float32 would give other pixels."""
    values = torch.linspace(0, 1, 4096).to(torch.bfloat16).float()
    bf16 = reference_uint8(values)
    float32 = values.mul(255).add(0.5).clamp(0, 255).to(torch.uint8)
    assert arithmetic_dtype(values) == torch.bfloat16
    assert not torch.equal(bf16, float32)
    assert (bf16.int() - float32.int()).abs().max() <= 1
