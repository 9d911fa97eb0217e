"""TAEHV's tiny preview decoder: the released layout, a formula-level reference, causality, the strict loader."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from comfyui_opensora.loaders.checkpoint import CheckpointError
from comfyui_opensora.loaders.taehv import load_taehv_decoder
from comfyui_opensora.tiny_checkpoints.autoencoders import TINY_TAEHV, write_tiny_hunyuan_vae, write_tiny_taehv
from comfyui_opensora.models.taehv import MemoryBlock, TinyDecoderConfig, TinyVideoDecoder


def test_released_layout_keys_and_shapes():
    """The keys and shapes of the released taehv.safetensors decoder (github:madebyollin/taehv, TAEHV with the
    Hunyuan defaults): conv in, three stages of 3 memory blocks + upsample + temporal grow + conv, conv out."""
    with torch.device("meta"):
        shapes = {k: tuple(v.shape) for k, v in TinyVideoDecoder().state_dict().items()}
    assert shapes["decoder.1.weight"] == (256, 16, 3, 3)
    assert shapes["decoder.3.conv.0.weight"] == (256, 512, 3, 3)
    assert shapes["decoder.5.conv.4.bias"] == (256,)
    assert shapes["decoder.7.conv.weight"] == (256, 256, 1, 1)  # time stride 1
    assert shapes["decoder.8.weight"] == (128, 256, 3, 3) and "decoder.8.bias" not in shapes
    assert shapes["decoder.13.conv.weight"] == (256, 128, 1, 1)  # time stride 2
    assert shapes["decoder.19.conv.weight"] == (128, 64, 1, 1)
    assert shapes["decoder.20.weight"] == (64, 64, 3, 3)
    assert shapes["decoder.22.weight"] == (3, 64, 3, 3) and shapes["decoder.22.bias"] == (3,)
    assert len(shapes) == 2 + 9 * 6 + 3 + 3 + 2  # conv in, 9 memory blocks, 3 grows, 3 stage convs, conv out
    assert not any(".skip." in k for k in shapes)  # equal widths: identity shortcuts, no weights
    assert 5e6 < sum(int(torch.Size(s).numel()) for s in shapes.values()) < 1e7


def _reference_memory_block(block: MemoryBlock, x: torch.Tensor, past: torch.Tensor) -> torch.Tensor:
    """relu(conv3(relu(conv2(relu(conv1([x, past]))))) + x), 3x3 convs with padding 1."""
    c1, c2, c3 = block.conv[0], block.conv[2], block.conv[4]
    h = F.relu(F.conv2d(torch.cat([x, past], 1), c1.weight, c1.bias, padding=1))
    h = F.relu(F.conv2d(h, c2.weight, c2.bias, padding=1))
    return F.relu(F.conv2d(h, c3.weight, c3.bias, padding=1) + x)


def _reference_decode(decoder: TinyVideoDecoder, latent: torch.Tensor) -> torch.Tensor:
    """Frame by frame, each memory block remembering its previous input (the streaming view of the model)."""
    layers = list(decoder.decoder)
    memory: dict[int, torch.Tensor] = {}

    def run(index: int, x: torch.Tensor) -> list[torch.Tensor]:
        if index == len(layers):
            return [x]
        layer = layers[index]
        name = type(layer).__name__
        if name == "MemoryBlock":
            past = memory.get(index, torch.zeros_like(x))
            memory[index] = x
            return run(index + 1, _reference_memory_block(layer, x, past))
        if name == "TemporalGrow":
            grown = F.conv2d(x, layer.conv.weight)
            channels = x.shape[1]
            return [out for j in range(layer.stride) for out in run(index + 1, grown[:, j * channels:(j + 1) * channels])]
        if name == "SoftClamp":
            return run(index + 1, 3 * torch.tanh(x / 3))
        if name == "Upsample":
            return run(index + 1, x.repeat_interleave(2, 2).repeat_interleave(2, 3))
        return run(index + 1, layer(x))  # convs and ReLUs

    frames = [out for t in range(latent.shape[2]) for out in run(0, latent[:, :, t])]
    return torch.stack(frames[decoder.config.time_upscale - 1:], 2).clamp(0, 1)


def test_decoder_matches_the_frame_by_frame_reference(tmp_path):
    decoder = load_taehv_decoder(write_tiny_taehv(tmp_path / "taehv.safetensors", seed=3))
    latent = 1.5 * torch.randn(2, 16, 3, 4, 5, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        frames = decoder(latent)
        expected = _reference_decode(decoder, latent)
    assert frames.shape == (2, 3, 9, 32, 40)  # 4T-3 frames, 8x in space
    torch.testing.assert_close(frames, expected, rtol=1e-5, atol=1e-5)
    assert 0.0 <= frames.min() and frames.max() <= 1.0 and frames.std() > 0


def test_memory_block_formula():
    torch.manual_seed(1)
    block = MemoryBlock(6)
    x, past = torch.randn(2, 6, 5, 7), torch.randn(2, 6, 5, 7)
    torch.testing.assert_close(block(x, past), _reference_memory_block(block, x, past))


def test_causal_first_latent_frame_alone_gives_the_first_frame(tmp_path):
    """The preview decodes latent frame 0 alone: that must be pixel frame 0 of the whole decode."""
    decoder = load_taehv_decoder(write_tiny_taehv(tmp_path / "taehv.safetensors"))
    latent = torch.randn(1, 16, 4, 3, 3, generator=torch.Generator().manual_seed(2))
    with torch.inference_mode():
        first = decoder(latent[:, :, :1])
        whole = decoder(latent)
    assert first.shape[2] == 1
    torch.testing.assert_close(first[:, :, 0], whole[:, :, 0])


def test_loader_reads_the_decoder_and_ignores_the_encoder(tmp_path):
    path = write_tiny_taehv(tmp_path / "taehv.safetensors", seed=4)
    tensors = load_file(str(path))
    save_file({**tensors, "encoder.0.weight": torch.zeros(64, 3, 3, 3)}, str(path))  # the released file has both
    decoder = load_taehv_decoder(path, dtype=torch.bfloat16)
    assert decoder.config == TINY_TAEHV and not decoder.training
    assert all(p.dtype == torch.bfloat16 and not p.requires_grad for p in decoder.parameters())
    torch.testing.assert_close(decoder.state_dict()["decoder.22.weight"].float(),
                               tensors["decoder.22.weight"].bfloat16().float())


def test_wrong_files_name_their_keys(tmp_path):
    vae = write_tiny_hunyuan_vae(tmp_path / "hunyuan_vae.safetensors")
    with pytest.raises(CheckpointError, match=r"not a TAEHV tiny autoencoder.*HunyuanVideo causal VAE.*missing key"
                                              r"\(s\), first: decoder\.1\.bias"):
        load_taehv_decoder(vae)
    path = write_tiny_taehv(tmp_path / "taehv.safetensors")
    tensors = load_file(str(path))
    del tensors["decoder.16.conv.2.weight"]
    save_file(tensors, str(path))
    with pytest.raises(CheckpointError, match=r"1 missing key\(s\), first: decoder\.16\.conv\.2\.weight"):
        load_taehv_decoder(path)
    save_file({**load_file(str(write_tiny_taehv(path))), "decoder.23.weight": torch.zeros(1)}, str(path))
    with pytest.raises(CheckpointError, match=r"1 unexpected key\(s\), first: decoder\.23\.weight"):
        load_taehv_decoder(path)


def test_other_latent_spaces_are_refused(tmp_path):
    """taehv1_5 / taew2_2 style decoders (other channel counts) are not HunyuanVideo's."""
    path = write_tiny_taehv(tmp_path / "taehv.safetensors", TinyDecoderConfig((16, 8, 8, 8), latent_channels=32))
    with pytest.raises(CheckpointError, match="another latent space"):
        load_taehv_decoder(path)
