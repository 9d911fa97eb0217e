"""Image conditions: reading frames like the reference, masks and masked latents, post-paste, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from comfyui_opensora.media.pixels import to_uint8
from comfyui_opensora.models import latent_space
from comfyui_opensora.samplers import geometry, image_condition as ic, packing

VIDEO = geometry.VideoGeometry(64, 96, 9)  # latent [16, 3, 8, 12]
LONG_VIDEO = geometry.VideoGeometry(64, 96, 65)  # 17 latent frames


def _pattern(height: int, width: int, frames: int = 1) -> torch.Tensor:
    """IMAGE frames [N, H, W, 3] in [0, 1] with exact uint8 values (as LoadImage produces)."""
    gen = torch.Generator().manual_seed(height * 1000 + width + frames)
    return torch.randint(0, 256, (frames, height, width, 3), generator=gen).float() / 255.0


def test_image_of_the_target_size_is_only_normalised():
    frame = _pattern(64, 96)
    out = ic.prepare_clip(frame, 64, 96)
    assert out.shape == (3, 1, 64, 96)
    assert torch.allclose(out[:, 0], frame[0].permute(2, 0, 1) * 2 - 1, atol=1e-6)


def test_image_path_is_pil_bicubic_cover_then_centre_crop():
    frame = _pattern(50, 100)  # 100x50 -> covers 64x96 at 128x64, crop columns 16..112
    pixels = to_uint8(frame)[0].numpy()
    resized = np.array(Image.fromarray(pixels).resize((128, 64), Image.BICUBIC))
    expected = torch.from_numpy(resized[:, 16:112].copy()).permute(2, 0, 1).float() / 255 * 2 - 1
    assert torch.allclose(ic.prepare_clip(frame, 64, 96)[:, 0], expected, atol=1e-6)


def test_crop_offsets_round_for_images_and_truncate_for_videos():
    """The reference rounds the image crop offset ((131-96)/2 = 17.5 -> 18) and truncates the video one (17)."""
    frame = _pattern(64, 131)
    column = frame[0].permute(2, 0, 1) * 2 - 1
    image = ic.prepare_clip(frame, 64, 96)[:, 0]
    assert torch.allclose(image, column[:, :, 18:114], atol=1e-6)
    video = ic.prepare_clip(frame.expand(2, -1, -1, -1), 64, 96)
    assert torch.allclose(video[:, 1], column[:, :, 17:113], atol=1e-6)


def test_video_path_is_bilinear_without_antialias():
    frames = _pattern(32, 40, frames=3)  # height is fitted: 64 x 80, crop rows 0.., columns 0..
    out = ic.prepare_clip(frames, 64, 80)
    expected = F.interpolate(frames.permute(0, 3, 1, 2), size=(64, 80), mode="bilinear", align_corners=False)
    assert torch.allclose(out, (expected * 2 - 1).permute(1, 0, 2, 3), atol=1e-6)


def _latents(*frames: int, seed: int = 0) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(16, t, 8, 12, generator=gen) for t in frames]


@pytest.mark.parametrize("cond_type, frames", [("i2v_head", [0]), ("i2v_tail", [2]), ("i2v_loop", [0, 2])])
def test_i2v_masks_and_paste(cond_type, frames):
    refs = _latents(1, 1) if cond_type == "i2v_loop" else _latents(1)
    cond = ic.build_image_condition(cond_type, VIDEO, 2, refs)
    assert cond.mask.shape == (2, 1, 3, 8, 12) and cond.masked_ref.shape == (2, 16, 3, 8, 12)
    assert cond.mask[:, 0, :, 0, 0].tolist() == [[1.0 if f in frames else 0.0 for f in range(3)]] * 2
    assert torch.equal(cond.masked_ref[1, :, frames[0]], refs[0][:, 0])
    assert torch.equal(cond.masked_ref[0, :, frames[-1]], refs[-1][:, 0])
    assert cond.masked_ref[:, :, [f for f in range(3) if f not in frames]].abs().sum() == 0
    assert cond.temporal_image_guidance

    latent = torch.zeros(2, 16, 3, 8, 12)
    pasted = ic.paste_references(latent, cond)
    assert torch.equal(pasted[0, :, frames[0]], refs[0][:, 0]) and torch.equal(pasted[0, :, frames[-1]], refs[-1][:, 0])
    assert pasted[1].abs().sum() == 0  # only batch element 0, as the reference
    assert latent.abs().sum() == 0  # the input is not modified

    tokens = cond.tokens(2, torch.float32, "cpu")
    assert tokens.shape == (2, 72, 68)  # mask features first, then the latent features
    assert torch.equal(tokens[:, :, :4], packing.pack(cond.mask, 2))
    assert torch.equal(tokens[:, :, 4:], packing.pack(cond.masked_ref, 2))


@pytest.mark.parametrize("cond_type, k", [("v2v_head", 9), ("v2v_tail", 9), ("v2v_head_easy", 17), ("v2v_tail_easy", 17)])
def test_v2v_masks(cond_type, k):
    assert ic.conditioned_latent_frames(cond_type, latent_space.HUNYUAN_VAE) == k
    ref = _latents(k + 2)[0]
    cond = ic.build_image_condition(cond_type, LONG_VIDEO, 1, [ref])
    span = range(k) if "head" in cond_type else range(17 - k, 17)
    ref_span = slice(0, k) if "head" in cond_type else slice(2, k + 2)
    assert cond.mask[0, 0, :, 0, 0].tolist() == [1.0 if f in span else 0.0 for f in range(17)]
    assert torch.equal(cond.masked_ref[0, :, list(span)], ref[:, ref_span])
    assert cond.head is None and cond.tail is None and not cond.temporal_image_guidance
    assert ic.paste_references(torch.ones(1, 16, 17, 8, 12), cond).eq(1).all()


def test_v2v_reads_33_or_65_frames_from_the_video():
    video = _pattern(8, 8, frames=70)
    assert torch.equal(ic.select_reference_clips("v2v_head", video, None, latent_space.HUNYUAN_VAE)[0], video[:33])
    assert torch.equal(ic.select_reference_clips("v2v_tail_easy", video, None, latent_space.HUNYUAN_VAE)[0], video[-65:])
    with pytest.raises(ValueError, match="at least 65 frames"):
        ic.select_reference_clips("v2v_head_easy", video[:64], None, latent_space.HUNYUAN_VAE)
    with pytest.raises(ValueError, match="at least 33 frames"):
        ic.select_reference_clips("v2v_tail", video[:20], None, latent_space.HUNYUAN_VAE)


def test_i2v_clip_selection_uses_last_image_for_the_end():
    first, last = _pattern(8, 8, frames=3), _pattern(8, 8, frames=2)
    head, tail = ic.select_reference_clips("i2v_loop", first, last, latent_space.HUNYUAN_VAE)
    assert torch.equal(head, first[:1]) and torch.equal(tail, last[-1:])
    (tail_only,) = ic.select_reference_clips("i2v_tail", first, None, latent_space.HUNYUAN_VAE)
    assert torch.equal(tail_only, first[-1:])


def test_conditions_that_need_more_frames_are_refused():
    with pytest.raises(ValueError, match="at least 5 frames"):
        ic.check_condition_fits("i2v_head", geometry.VideoGeometry(64, 96, 1))
    with pytest.raises(ValueError, match="at least 33 frames"):
        ic.check_condition_fits("v2v_head", VIDEO)
    with pytest.raises(ValueError, match="at least 65 frames"):
        ic.check_condition_fits("v2v_tail_easy", geometry.VideoGeometry(64, 96, 61))
    with pytest.raises(ValueError, match="Unknown condition type"):
        ic.check_cond_type("v2v_head_half")


def test_encode_checks_everything_before_encoding():
    calls = []

    def encode(pixels):
        calls.append(pixels.shape)
        return torch.zeros(1, 16, 1, 8, 12)

    with pytest.raises(ValueError, match="at least 33 frames"):
        ic.encode_image_condition(encode, _pattern(64, 96, frames=3), None, "v2v_head", LONG_VIDEO, 1)
    with pytest.raises(ValueError, match="needs a video of at least"):
        ic.encode_image_condition(encode, _pattern(64, 96), None, "i2v_head", geometry.VideoGeometry(64, 96, 1), 1)
    assert calls == []
    cond = ic.encode_image_condition(encode, _pattern(70, 90), _pattern(64, 96), "i2v_loop", VIDEO, 1)
    assert calls == [(1, 3, 1, 64, 96)] * 2 and cond.batch_size == 1


def test_reference_latents_of_another_size_are_refused():
    with pytest.raises(ValueError, match="does not fit"):
        ic.build_image_condition("i2v_head", VIDEO, 1, [torch.zeros(16, 1, 4, 6)])


def test_condition_for_another_video_is_refused():
    cond = ic.build_image_condition("i2v_head", VIDEO, 1, _latents(1))
    cond.check_matches(VIDEO, 1)
    with pytest.raises(ValueError, match="was built for 96x64"):
        cond.check_matches(geometry.VideoGeometry(64, 128, 9), 1)
    with pytest.raises(ValueError, match="batch size 1"):
        cond.check_matches(VIDEO, 2)
    with pytest.raises(ValueError, match="Video DC-AE"):
        cond.check_matches(geometry.VideoGeometry(64, 96, 8, latent_space.VIDEO_DC_AE.name), 1)


def _reference_video_resize(frames: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """The reference's video-file transform written out: uint8 frames scaled to cover the target with
    bilinear interpolation (no antialiasing), centre crop with a truncated offset, then to [-1, 1]."""
    clip = (frames * 255).round().permute(0, 3, 1, 2) / 255
    h, w = clip.shape[-2:]
    if height / h > width / w:
        size = (height, round(w * height / h))
    else:
        size = (round(h * width / w), width)
    clip = F.interpolate(clip, size=size, mode="bilinear", align_corners=False)
    top, left = int((size[0] - height) / 2), int((size[1] - width) / 2)
    return clip[..., top:top + height, left:left + width].permute(1, 0, 2, 3) * 2 - 1


@pytest.mark.parametrize("cond_type, last", [("i2v_head", False), ("i2v_tail", False), ("i2v_loop", True)])
def test_i2v_frame_of_a_video_is_resized_as_video_frames(cond_type, last):
    """A multi-frame IMAGE is a video: the reference resizes the whole video bilinearly and then takes
    one frame, so even the single i2v frame must not take the picture path (bicubic)."""
    video = _pattern(50, 100, frames=5)
    picture = _pattern(40, 70)
    seen = []

    def encode(pixels):
        seen.append(pixels[0])
        return torch.zeros(1, 16, 1, 8, 12)

    ic.encode_image_condition(encode, video, picture if last else None, cond_type, VIDEO, 1)
    first = {"i2v_head": video[:1], "i2v_tail": video[-1:], "i2v_loop": video[:1]}[cond_type]
    assert torch.allclose(seen[0], _reference_video_resize(first, 64, 96), atol=1e-6)
    bicubic = ic.prepare_clip(first, 64, 96, from_video=False)
    assert not torch.allclose(seen[0], bicubic, atol=1e-3)  # the two paths really differ here
    if last:  # last_image is one picture: the image path
        assert torch.allclose(seen[1], ic.prepare_clip(picture, 64, 96, from_video=False), atol=1e-6)
        assert not torch.allclose(seen[1], _reference_video_resize(picture, 64, 96), atol=1e-3)
