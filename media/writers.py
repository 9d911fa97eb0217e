"""Writing generated frames to disk: MP4 / WebM / GIF through ffmpeg, PNG through Pillow, text sidecars.

Plain Python, no ComfyUI. Frames arrive as ComfyUI IMAGE tensors ``[F, H, W, 3]`` (float, 0..1) and are
converted and streamed one at a time, so a long clip never exists as a whole uint8 video in memory.
Every file is written under a hidden temporary name in its destination folder and renamed into place
only when complete: a failed or interrupted save leaves nothing behind.

Pixels are converted by :func:`.pixels.to_uint8` (the reference's rounding, docs/reference.md#saving).

Colour: the reference hands rgb24 frames to PyAV, whose swscale conversion uses the BT.601 matrix and
writes no colour tags. We convert with the BT.709 matrix, TV range, and tag the stream as BT.709 so
players that honour tags (browsers, ffmpeg, VLC) show the intended colours instead of guessing.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch

from .pixels import to_uint8


@dataclass(frozen=True)
class VideoFormat:
    """An ffmpeg container + codec combination the save node offers."""

    name: str
    extension: str
    muxer: str
    codec: str
    max_crf: int | None  # None: the codec has no quality setting (GIF)
    metadata: bool  # whether the container keeps arbitrary key/value tags


VIDEO_FORMATS: dict[str, VideoFormat] = {
    f.name: f
    for f in (
        VideoFormat("mp4", "mp4", "mp4", "libx264", max_crf=51, metadata=True),
        VideoFormat("webm", "webm", "webm", "libvpx-vp9", max_crf=63, metadata=True),
        VideoFormat("gif", "gif", "gif", "gif", max_crf=None, metadata=False),
    )
}
PIXEL_FORMATS = ("yuv420p", "yuv444p")

# RGB -> YUV in BT.709, TV (limited) range, with the matching stream tags.
_BT709_CONVERSION = "scale=out_color_matrix=bt709:out_range=tv:flags=bicubic+accurate_rnd+full_chroma_int"
_BT709_PARAMS = "setparams=colorspace=bt709:color_primaries=bt709:color_trc=bt709:range=tv"
_BT709_TAGS = ["-colorspace", "bt709", "-color_primaries", "bt709", "-color_trc", "bt709", "-color_range", "tv"]
# One palette per frame keeps GIF encoding streaming (a global palette would buffer the whole clip).
_GIF_PALETTE = "split[a][b];[a]palettegen=stats_mode=single[p];[b][p]paletteuse=new=1"


class EncoderError(RuntimeError):
    """ffmpeg refused the settings or failed while writing."""


# ----------------------------------------------------------------------------------------- frames


def check_frames(frames: object) -> None:
    """Raise a ValueError saying what is wrong unless ``frames`` is an IMAGE batch ``[F, H, W, 3]``."""
    if not isinstance(frames, torch.Tensor):
        raise ValueError(
            f"Expected IMAGE frames (a torch.Tensor [frames, height, width, 3]), got {type(frames).__name__}."
        )
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(
            f"Expected IMAGE frames shaped [frames, height, width, 3], got {list(frames.shape)}. "
            "Connect an IMAGE output (e.g. the Open-Sora decoder), not a latent or a mask."
        )
    if not frames.is_floating_point():
        raise ValueError(f"IMAGE frames must be floating point in 0..1, got dtype {frames.dtype}.")
    if frames.shape[0] == 0:
        raise ValueError("There are no frames to save (the IMAGE batch is empty).")
    if frames.shape[1] == 0 or frames.shape[2] == 0:
        raise ValueError(f"Frames of size {frames.shape[2]}x{frames.shape[1]} cannot be saved.")


def even_size(height: int, width: int) -> tuple[int, int]:
    """The size yuv420p needs: odd sides grow by one pixel."""
    return height + height % 2, width + width % 2


def pad_to(pixels: np.ndarray, height: int, width: int) -> np.ndarray:
    """Grow ``pixels [H, W, 3]`` to ``height x width`` by repeating the last row and column."""
    pad_h, pad_w = height - pixels.shape[0], width - pixels.shape[1]
    if pad_h == 0 and pad_w == 0:
        return pixels
    return np.pad(pixels, ((0, pad_h), (0, pad_w), (0, 0)), mode="edge")


# ----------------------------------------------------------------------------------- atomic files


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a hidden temporary path beside ``path``; rename it to ``path`` if the block succeeds,
    delete it if the block raises (including KeyboardInterrupt and ComfyUI's interrupt)."""
    path = Path(path)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.partial")
    try:
        yield temporary
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Write a UTF-8 text file (the prompt sidecar) atomically."""
    with atomic_path(path) as temporary:
        temporary.write_text(text, encoding="utf-8")
    return Path(path)


def write_png(path: str | os.PathLike, frame: torch.Tensor, text: Mapping[str, str] | None = None) -> Path:
    """Write one IMAGE frame ``[H, W, 3]`` as an 8-bit PNG, with ``text`` as tEXt chunks, atomically."""
    from PIL import Image
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    for key, value in (text or {}).items():
        info.add_text(key, value)
    with atomic_path(path) as temporary:
        with open(temporary, "wb") as handle:
            Image.fromarray(to_uint8(frame).numpy()).save(handle, format="PNG", pnginfo=info, compress_level=4)
    return Path(path)


# ------------------------------------------------------------------------------------------ video


def ffmpeg_exe() -> str:
    """The ffmpeg binary shipped with imageio-ffmpeg (or the one its IMAGEIO_FFMPEG_EXE names); without
    imageio-ffmpeg, an ``ffmpeg`` on the PATH."""
    try:
        import imageio_ffmpeg

        return imageio_ffmpeg.get_ffmpeg_exe()
    except (ImportError, RuntimeError):
        found = shutil.which("ffmpeg")
        if found:
            return found
    raise EncoderError(
        "Saving videos needs ffmpeg: install the pack's requirements (pip install imageio-ffmpeg, which "
        "ships an ffmpeg binary) in ComfyUI's Python, or put ffmpeg on the PATH."
    )


def _escape_ffmetadata(text: str) -> str:
    for char in ("\\", "=", ";", "#", "\n"):
        text = text.replace(char, "\\" + char)
    return text


def _ffmetadata(metadata: Mapping[str, str]) -> str:
    """``metadata`` in ffmpeg's FFMETADATA1 format (keys and values escaped)."""
    lines = [";FFMETADATA1"]
    lines += [f"{_escape_ffmetadata(k)}={_escape_ffmetadata(v)}" for k, v in metadata.items()]
    return "\n".join(lines) + "\n"


def _encoder_args(video_format: VideoFormat, crf: int, pix_fmt: str) -> list[str]:
    if video_format.name == "gif":
        return ["-vf", _GIF_PALETTE, "-c:v", "gif", "-loop", "0"]
    conversion = f"{_BT709_CONVERSION},format={pix_fmt},{_BT709_PARAMS}"
    args = ["-vf", conversion, "-c:v", video_format.codec, "-crf", str(crf)]
    if video_format.name == "mp4":
        args += ["-preset", "medium", "-movflags", "+use_metadata_tags+faststart"]
    else:  # VP9 constant quality needs a zero bitrate target
        args += ["-b:v", "0", "-deadline", "good", "-cpu-used", "4", "-row-mt", "1"]
    return args + ["-pix_fmt", pix_fmt] + _BT709_TAGS


# The widest crf range any offered codec accepts (VP9); the bound when the format is not known yet.
MAX_CRF = max(f.max_crf for f in VIDEO_FORMATS.values() if f.max_crf is not None)


def gif_delays(frame_count: int, fps: float | Fraction) -> list[int]:
    """Per-frame GIF delays in centiseconds (the format's unit) whose running sums are the frame start
    times rounded to the nearest centisecond, so any run of frames lasts as long as ``fps`` says
    (24 fps: 4, 4, 5, 4, 4, 4, ... cs; 24 frames take exactly 1 s) instead of every frame being
    rounded alike (4 cs each = 25 fps)."""
    rate = Fraction(fps)
    starts = [int(Fraction(100 * i) / rate + Fraction(1, 2)) for i in range(frame_count + 1)]
    return [b - a for a, b in zip(starts, starts[1:])]


def set_gif_delays(path: str | os.PathLike, delays: list[int]) -> None:
    """Rewrite the delay of every frame's graphic control extension in a GIF file to ``delays``
    (centiseconds, one per frame). Raises EncoderError if the file's frames do not match."""
    data = bytearray(Path(path).read_bytes())
    if data[:3] != b"GIF":
        raise EncoderError(f"{Path(path).name} is not a GIF file.")

    def skip_sub_blocks(pos: int) -> int:
        while data[pos]:
            pos += data[pos] + 1
        return pos + 1

    pos, controls, images = 13, [], 0
    if data[10] & 0x80:
        pos += 3 << ((data[10] & 7) + 1)
    while pos < len(data) and data[pos] != 0x3B:
        if data[pos] == 0x21:  # extension: label, then sub-blocks
            if data[pos + 1] == 0xF9 and data[pos + 2] == 4:
                controls.append(pos + 4)  # little-endian delay inside the graphic control block
            pos = skip_sub_blocks(pos + 2)
        elif data[pos] == 0x2C:  # image: descriptor, optional colour table, LZW code size, data
            images += 1
            packed = data[pos + 9]
            pos += 10 + ((3 << ((packed & 7) + 1)) if packed & 0x80 else 0)
            pos = skip_sub_blocks(pos + 1)
        else:
            raise EncoderError(f"{Path(path).name}: unexpected GIF block 0x{data[pos]:02x} at byte {pos}.")
    if not images == len(controls) == len(delays):
        raise EncoderError(f"{Path(path).name} holds {images} frames with {len(controls)} timings; "
                           f"{len(delays)} were written.")
    for at, delay in zip(controls, delays):
        data[at:at + 2] = int(delay).to_bytes(2, "little")
    Path(path).write_bytes(data)


def check_encoder_settings(video_format: str | None, crf: int | None, pix_fmt: str | None) -> None:
    """Validate format, crf and pixel format together; a None (not known yet) is skipped. Errors say
    which values are allowed: each codec has its own crf range (H.264 0-51, VP9 0-63)."""
    if video_format is not None and video_format not in VIDEO_FORMATS:
        raise ValueError(f"Unknown video format '{video_format}'; choose one of {sorted(VIDEO_FORMATS)}.")
    if pix_fmt is not None and pix_fmt not in PIXEL_FORMATS:
        raise ValueError(f"Unknown pixel format '{pix_fmt}'; choose one of {list(PIXEL_FORMATS)}.")
    if crf is None:
        return
    chosen = VIDEO_FORMATS.get(video_format) if video_format is not None else None
    if chosen is not None and chosen.max_crf is not None:
        if not 0 <= crf <= chosen.max_crf:
            raise ValueError(f"crf for {video_format} must be between 0 and {chosen.max_crf}, got {crf}.")
    elif not 0 <= crf <= MAX_CRF:
        raise ValueError(f"crf must be between 0 and {MAX_CRF}, got {crf}.")


def check_video_settings(video_format: str, fps: float, crf: int, pix_fmt: str) -> VideoFormat:
    """Validate the save settings; return the format. Errors say which values are allowed."""
    check_encoder_settings(video_format, crf, pix_fmt)
    if not fps > 0:
        raise ValueError(f"fps must be positive, got {fps}.")
    return VIDEO_FORMATS[video_format]


def write_video(
    path: str | os.PathLike,
    frames: torch.Tensor,
    fps: float = 24.0,
    video_format: str = "mp4",
    crf: int = 23,
    pix_fmt: str = "yuv420p",
    metadata: Mapping[str, str] | None = None,
    before_frame: Callable[[int], None] | None = None,
) -> Path:
    """Encode IMAGE ``frames [F, H, W, 3]`` to ``path`` with ffmpeg, one frame at a time, atomically.

    ``metadata`` becomes container tags (MP4 with ``use_metadata_tags``, WebM; GIF keeps none).
    ``before_frame(i)`` runs before frame ``i`` is sent (progress, Cancel); if it raises, ffmpeg is
    stopped and no file is left. yuv420p needs even sides: odd sizes are padded by one repeated
    row/column. Raises ``EncoderError`` with ffmpeg's message if encoding fails.
    """
    check_frames(frames)
    chosen = check_video_settings(video_format, fps, crf, pix_fmt)
    height, width = frames.shape[1], frames.shape[2]
    if chosen.name != "gif" and pix_fmt == "yuv420p":
        height, width = even_size(height, width)
    rate = Fraction(round(fps * 1000), 1000)

    with tempfile.TemporaryDirectory(prefix="opensora-ffmpeg-") as work:
        command = [ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-y"]
        command += ["-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{width}x{height}", "-r", str(rate), "-i", "-"]
        tags = dict(metadata or {}) if chosen.metadata else {}
        if tags:
            metadata_file = Path(work) / "metadata.txt"
            metadata_file.write_text(_ffmetadata(tags), encoding="utf-8")
            command += ["-f", "ffmetadata", "-i", str(metadata_file), "-map_metadata", "1"]
        command += ["-map", "0:v:0", "-an"] + _encoder_args(chosen, crf, pix_fmt) + ["-r", str(rate)]

        with atomic_path(path) as temporary, open(Path(work) / "stderr.txt", "w+b") as stderr:
            process = subprocess.Popen(
                command + ["-f", chosen.muxer, str(temporary)],
                stdin=subprocess.PIPE,
                stdout=subprocess.DEVNULL,
                stderr=stderr,
            )
            written = 0
            try:
                for index in range(frames.shape[0]):
                    if before_frame is not None:
                        before_frame(index)
                    pixels = pad_to(to_uint8(frames[index]).numpy(), height, width)
                    try:
                        process.stdin.write(np.ascontiguousarray(pixels).data)
                    except OSError:  # ffmpeg quit early; its status and message are reported below
                        break
                    written += 1
                try:
                    process.stdin.close()
                except OSError:
                    pass
                returncode = process.wait()
            except BaseException:
                process.kill()
                process.wait()
                raise
            if returncode != 0 or written < frames.shape[0] or not temporary.exists():
                stderr.seek(0)
                message = stderr.read().decode("utf-8", "replace").strip()[-2000:]
                raise EncoderError(
                    f"ffmpeg could not write {Path(path).name} (exit status {returncode}, "
                    f"{written} of {frames.shape[0]} frames sent): {message or 'no message'}"
                )
            if chosen.name == "gif":  # ffmpeg's own per-frame rounding depends on its version
                set_gif_delays(temporary, gif_delays(frames.shape[0], rate))
    return Path(path)
