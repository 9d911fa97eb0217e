"""media/writers.py + media/pixels.py: pixel conversion, ffmpeg video writing (decoded back), metadata, PNG, atomic files."""

from __future__ import annotations

import json
import os
import stat
import subprocess
from pathlib import Path

import imageio.v2 as iio2
import imageio.v3 as iio
import numpy as np
import pytest
import torch
from PIL import Image

from media_doubles import ffmpeg_metadata, smooth_frames

from comfyui_opensora.media import pixels
from comfyui_opensora.media import writers as media


def as_uint8(frames: torch.Tensor) -> np.ndarray:
    return np.stack([pixels.to_uint8(f).numpy() for f in frames])


def stream_description(path: Path) -> str:
    result = subprocess.run([media.ffmpeg_exe(), "-hide_banner", "-i", str(path)], capture_output=True, text=True)
    return next(line for line in result.stderr.splitlines() if "Video:" in line)


# ------------------------------------------------------------------------------------ conversion


def test_to_uint8_matches_reference_rounding():
    values = torch.tensor([-0.5, 0.0, 0.5 / 255, 0.4999 / 255, 0.5, 127.49 / 255, 1.0, 1.7, float("nan")])
    frame = values[:, None, None].expand(-1, 1, 3)
    expected = [0, 0, 1, 0, 128, 127, 255, 255, 0]
    assert pixels.to_uint8(frame).numpy()[:, 0, 0].tolist() == expected


def test_to_uint8_float32_vs_reference_bf16_differs_by_at_most_one_level():
    # The reference rounds its bf16 decoder output with bf16 arithmetic; we round in float32.
    decoder_out = (torch.rand(4, 64, 64, 3, generator=torch.Generator().manual_seed(0)) * 2.2 - 1.1).bfloat16()
    image = (decoder_out.float().clamp(-1, 1) + 1) / 2
    ours = np.stack([pixels.to_uint8(f).numpy() for f in image]).astype(int)
    x = decoder_out.clone().clamp_(-1, 1)  # the reference: in place, in bf16
    reference = x.add_(1).div_(2).mul_(255).add_(0.5).clamp_(0, 255).to(torch.uint8).numpy().astype(int)
    difference = np.abs(ours - reference)
    assert difference.max() == 1  # measured: 28% of values one level apart, none more


def test_pad_to_repeats_last_row_and_column():
    pixels = np.arange(3 * 5 * 3, dtype=np.uint8).reshape(3, 5, 3)
    padded = media.pad_to(pixels, *media.even_size(3, 5))
    assert padded.shape == (4, 6, 3)
    assert (padded[:3, :5] == pixels).all()
    assert (padded[3, :5] == pixels[2]).all() and (padded[:3, 5] == pixels[:, 4]).all()


@pytest.mark.parametrize(
    "frames, message",
    [
        (np.zeros((2, 8, 8, 3), np.float32), "torch.Tensor"),
        (torch.zeros(8, 8, 3), "[frames, height, width, 3]"),
        (torch.zeros(2, 8, 8, 4), "[frames, height, width, 3]"),
        (torch.zeros(1, 4, 8, 8, 3), "latent"),
        (torch.zeros(2, 8, 8, 3, dtype=torch.uint8), "floating point"),
        (torch.zeros(0, 8, 8, 3), "no frames"),
    ],
)
def test_check_frames_refuses_non_image_input(frames, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        media.check_frames(frames)


@pytest.mark.parametrize(
    "settings, message",
    [
        (dict(video_format="avi"), "Unknown video format"),
        (dict(fps=0.0), "fps must be positive"),
        (dict(crf=52), "between 0 and 51"),
        (dict(video_format="webm", crf=64), "between 0 and 63"),
        (dict(pix_fmt="rgb24"), "Unknown pixel format"),
    ],
)
def test_bad_settings_are_refused_before_writing(tmp_path, settings, message):
    with pytest.raises(ValueError, match=message):
        media.write_video(tmp_path / "x.mp4", torch.zeros(2, 8, 8, 3), **settings)
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------------- video round trip


def test_mp4_round_trip_frames_size_fps_and_codec_error_bound(tmp_path):
    frames = smooth_frames(17, 192, 336)
    path = media.write_video(tmp_path / "clip.mp4", frames, fps=24)
    reader = iio2.get_reader(path)
    meta = reader.get_meta_data()
    assert meta["codec"] == "h264" and meta["fps"] == 24.0 and meta["size"] == (336, 192)
    decoded = iio.imread(path).astype(int)
    assert decoded.shape == (17, 192, 336, 3)
    error = np.abs(decoded - as_uint8(frames).astype(int))
    # Measured at CRF 23, yuv420p: mean 1.56, max 13 levels of 255 (99.9th percentile 7).
    assert error.mean() < 2.0 and error.max() <= 20


def test_mp4_is_tagged_bt709_tv_range_and_colours_do_not_shift(tmp_path):
    colours = torch.tensor(
        [[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 0], [0.5, 0.2, 0.8], [0.1, 0.6, 0.3], [1, 1, 1], [0, 0, 0]],
        dtype=torch.float32,
    )
    frames = colours[:, None, None, :].expand(-1, 32, 32, 3).contiguous()
    path = media.write_video(tmp_path / "colours.mp4", frames, fps=24)
    assert "yuv420p(tv, bt709, progressive)" in stream_description(path)
    decoded = iio.imread(path)[:, 16, 16].astype(int)
    assert np.abs(decoded - as_uint8(frames)[:, 16, 16].astype(int)).max() <= 3
    # The check can fail: reading the same file as BT.601 shifts saturated colours by far more.
    raw = subprocess.run(
        [media.ffmpeg_exe(), "-v", "error", "-i", str(path), "-vf", "scale=in_color_matrix=bt601",
         "-f", "rawvideo", "-pix_fmt", "rgb24", "-"],
        capture_output=True, check=True,
    ).stdout
    as_601 = np.frombuffer(raw, np.uint8).reshape(8, 32, 32, 3)
    assert np.abs(as_601[:, 16, 16].astype(int) - decoded).max() > 10


def test_lossless_settings_reproduce_the_pixels(tmp_path):
    frames = torch.rand(3, 24, 40, 3, generator=torch.Generator().manual_seed(1))
    path = media.write_video(tmp_path / "lossless.mp4", frames, crf=0, pix_fmt="yuv444p")
    decoded = iio.imread(path).astype(int)
    # Only TV-range YUV quantisation is left (219/255 levels for luma).
    assert np.abs(decoded - as_uint8(frames).astype(int)).max() <= 3


def test_odd_sizes_are_padded_for_yuv420p_and_kept_for_yuv444p(tmp_path):
    frames = smooth_frames(3, 33, 47)
    padded = iio.imread(media.write_video(tmp_path / "odd.mp4", frames))
    assert padded.shape == (3, 34, 48, 3)
    # The added column repeats the last one (up to the codec's error).
    assert np.abs(padded[:, :33, 47].astype(int) - padded[:, :33, 46].astype(int)).mean() < 3
    kept = iio.imread(media.write_video(tmp_path / "odd444.mp4", frames, pix_fmt="yuv444p"))
    assert kept.shape == (3, 33, 47, 3)


@pytest.mark.parametrize("video_format", ["webm", "gif"])
def test_webm_and_gif_round_trip(tmp_path, video_format):
    frames = smooth_frames(5, 32, 48)
    path = media.write_video(tmp_path / f"clip.{video_format}", frames, fps=12.5, video_format=video_format)
    decoded = iio.imread(path)
    assert decoded.shape[:3] == (5, 32, 48)
    error = np.abs(decoded[..., :3].astype(int) - as_uint8(frames).astype(int))
    assert error.mean() < (4.5 if video_format == "webm" else 6.0)  # tiny frames: larger relative error


def test_metadata_is_embedded_and_survives_special_characters_and_size(tmp_path):
    workflow = {"nodes": [{"id": i, "title": "a=b;#c\\d\nline"} for i in range(4000)]}  # > 128 KiB
    tags = {"prompt": json.dumps({"1": {"class_type": "X"}}), "workflow": json.dumps(workflow)}
    assert len(tags["workflow"]) > 131072  # longer than one command-line argument may be on Linux
    path = media.write_video(tmp_path / "meta.mp4", torch.rand(2, 16, 16, 3), metadata=tags)
    read = ffmpeg_metadata(path)
    assert json.loads(read["prompt"]) == {"1": {"class_type": "X"}}
    assert json.loads(read["workflow"]) == workflow
    webm_path = media.write_video(tmp_path / "meta.webm", torch.rand(2, 16, 16, 3), video_format="webm", metadata=tags)
    webm = ffmpeg_metadata(webm_path)
    assert json.loads(webm["PROMPT"]) == {"1": {"class_type": "X"}}  # Matroska upper-cases tag names


def test_long_clip_is_streamed_not_materialised(tmp_path, monkeypatch):
    frames = torch.rand(40, 16, 16, 3)
    converted = []
    real = media.to_uint8
    monkeypatch.setattr(media, "to_uint8", lambda f: converted.append(f.shape) or real(f))
    seen = []
    media.write_video(tmp_path / "long.mp4", frames, before_frame=lambda i: seen.append((i, len(converted))))
    assert seen == [(i, i) for i in range(40)]  # frame i is converted only after frame i-1 was sent
    assert iio2.get_reader(tmp_path / "long.mp4").count_frames() == 40


# ---------------------------------------------------------------------------------- atomic writes


def test_failure_mid_stream_leaves_no_file(tmp_path):
    def fail_at_third(index: int) -> None:
        if index == 3:
            raise RuntimeError("stop here")

    with pytest.raises(RuntimeError, match="stop here"):
        media.write_video(tmp_path / "broken.mp4", torch.rand(8, 16, 16, 3), before_frame=fail_at_third)
    assert list(tmp_path.iterdir()) == []


def test_failing_encoder_leaves_no_file_and_reports_its_message(tmp_path, monkeypatch):
    fake = tmp_path / "bin" / "ffmpeg"
    fake.parent.mkdir()
    # Writes part of the output, reads a little input, then fails like a crashing encoder.
    fake.write_text(
        '#!/bin/sh\nfor last; do :; done\nprintf half > "$last"\nhead -c 100 >/dev/null\n'
        'echo "encoder exploded" >&2\nexit 3\n'
    )
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setattr(media, "ffmpeg_exe", lambda: str(fake))
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(media.EncoderError, match="exit status 3.*encoder exploded"):
        media.write_video(out / "clip.mp4", torch.rand(30, 64, 64, 3))
    assert list(out.iterdir()) == []


def test_missing_ffmpeg_gives_an_install_hint(tmp_path, monkeypatch):
    import builtins
    import shutil

    real_import = builtins.__import__

    def no_imageio_ffmpeg(name, *args, **kwargs):
        if name == "imageio_ffmpeg":
            raise ImportError("No module named 'imageio_ffmpeg'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_imageio_ffmpeg)
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(media.EncoderError, match="pip install imageio-ffmpeg"):
        media.write_video(tmp_path / "x.mp4", torch.rand(2, 8, 8, 3))
    assert list(tmp_path.iterdir()) == []


def test_existing_file_is_only_replaced_when_the_new_one_is_complete(tmp_path):
    target = tmp_path / "clip.mp4"
    target.write_bytes(b"old")

    def ctrl_c_at_third(index: int) -> None:
        if index == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        media.write_video(target, torch.rand(4, 16, 16, 3), before_frame=ctrl_c_at_third)
    assert target.read_bytes() == b"old" and sorted(os.listdir(tmp_path)) == ["clip.mp4"]


# ------------------------------------------------------------------------------------ PNG and text


def test_png_has_reference_pixels_and_text_chunks(tmp_path):
    frame = torch.rand(12, 20, 3)
    path = media.write_png(tmp_path / "frame.png", frame, {"prompt": '{"a": 1}', "workflow": "{}"})
    image = Image.open(path)
    assert image.mode == "RGB" and image.size == (20, 12)
    assert (np.asarray(image) == pixels.to_uint8(frame).numpy()).all()
    assert image.text == {"prompt": '{"a": 1}', "workflow": "{}"}


def test_write_text_is_exact_utf8(tmp_path):
    path = media.write_text(tmp_path / "p.txt", "a cat — 猫. aesthetic score: 6.5.")
    assert path.read_bytes() == "a cat — 猫. aesthetic score: 6.5.".encode()
    assert os.listdir(tmp_path) == ["p.txt"]


def _gif_durations_cs(path) -> list[int]:
    from PIL import Image

    with Image.open(path) as image:
        durations = []
        for index in range(image.n_frames):
            image.seek(index)
            durations.append(image.info["duration"] // 10)
    return durations


def test_gif_delays_sum_to_the_requested_fps():
    assert media.gif_delays(6, 24) == [4, 4, 5, 4, 4, 4]
    assert sum(media.gif_delays(24, 24)) == 100 and sum(media.gif_delays(48, 24)) == 200
    assert media.gif_delays(4, 12.5) == [8, 8, 8, 8] and sum(media.gif_delays(7, 7)) == 100
    for fps in (24, 23.976, 30, 7, 60):
        delays = media.gif_delays(97, fps)
        assert all(abs(sum(delays[:n]) - n * 100 / fps) <= 0.5 for n in range(98))  # never drifts


@pytest.mark.parametrize("fps", [24.0, 30.0, 7.0])
def test_gif_frames_average_exactly_the_requested_fps(tmp_path, fps):
    path = media.write_video(tmp_path / "clip.gif", torch.rand(48, 16, 16, 3), fps=fps, video_format="gif")
    assert _gif_durations_cs(path) == media.gif_delays(48, fps)
    assert sum(_gif_durations_cs(path)) == round(4800 / fps)


def test_gif_timing_is_rewritten_whatever_ffmpeg_wrote(tmp_path):
    """An ffmpeg that rounds every frame alike (4 cs at 24 fps = 25 fps) is corrected in place."""
    path = media.write_video(tmp_path / "uniform.gif", torch.rand(12, 16, 16, 3), fps=25.0, video_format="gif")
    assert _gif_durations_cs(path) == [4] * 12
    media.set_gif_delays(path, media.gif_delays(12, 24))
    assert _gif_durations_cs(path) == [4, 4, 5, 4, 4, 4, 4, 4, 5, 4, 4, 4]
    decoded = iio.imread(path)
    assert decoded.shape[:3] == (12, 16, 16)  # still a valid GIF with every frame
    with pytest.raises(media.EncoderError, match="holds 12 frames with 12 timings; 3 were written"):
        media.set_gif_delays(path, [4, 4, 4])
