"""Image and video conditions (i2v / v2v): reference frames -> masks, masked reference latents and the
latents pasted into the result after sampling.

Facts: docs/reference.md#image-conditioning (reference ``collect_references_batch`` and
``prepare_inference_condition``, ``opensora/utils/inference.py:216-351``, and the post-sampling paste);
frame preparation follows ``opensora/datasets/utils.py`` (images) and ``video_transforms.py`` (videos).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ..media.pixels import to_uint8
from ..models.latent_space import AutoencoderKind, decoded_num_frames
from .geometry import VideoGeometry
from .packing import pack

I2V_TYPES = ("i2v_head", "i2v_tail", "i2v_loop")
V2V_TYPES = ("v2v_head", "v2v_tail", "v2v_head_easy", "v2v_tail_easy")
COND_TYPES = I2V_TYPES + V2V_TYPES

# Reference video frames a v2v condition reads (plus one for causal autoencoders).
_V2V_FRAMES = 32
_V2V_EASY_FRAMES = 64


def check_cond_type(cond_type: str) -> None:
    if cond_type not in COND_TYPES:
        raise ValueError(f"Unknown condition type '{cond_type}'; choose one of {', '.join(COND_TYPES)}.")


def conditioned_latent_frames(cond_type: str, kind: AutoencoderKind) -> int:
    """Latent frames at each conditioned end: 1 for i2v, 8 (+1 causal) for v2v, 16 (+1) for v2v easy."""
    check_cond_type(cond_type)
    if cond_type in I2V_TYPES:
        return 1
    pixel_frames = _V2V_EASY_FRAMES if cond_type.endswith("_easy") else _V2V_FRAMES
    return pixel_frames // kind.temporal_compression + int(kind.causal)


def reference_video_frames(cond_type: str, kind: AutoencoderKind) -> int:
    """Pixel frames a v2v condition takes from the reference video (33 / 65 for the causal VAE)."""
    pixel_frames = _V2V_EASY_FRAMES if cond_type.endswith("_easy") else _V2V_FRAMES
    return pixel_frames + int(kind.causal)


def check_condition_fits(cond_type: str, geometry: VideoGeometry) -> None:
    """Raise if the video is too short for the condition type (the reference only conditions videos
    with more than one latent frame, and v2v needs its 9 or 17 latent frames)."""
    kind = geometry.kind
    needed = max(2, conditioned_latent_frames(cond_type, kind))
    if geometry.latent_frames < needed:
        raise ValueError(
            f"cond_type '{cond_type}' needs a video of at least {decoded_num_frames(needed, kind)} frames "
            f"({needed} latent frames); the noise has {geometry.num_frames}. Raise num_frames on the noise node."
        )


def select_reference_clips(
    cond_type: str, image: torch.Tensor, last_image: torch.Tensor | None, kind: AutoencoderKind
) -> list[torch.Tensor]:
    """The frame runs to encode, each ``[n, H, W, 3]``, in the reference's order.

    i2v_head: the first frame of ``image``; i2v_tail: the last frame of ``last_image`` (or of ``image``);
    i2v_loop: both, encoded separately; v2v: the first / last 33 (65 for ``_easy``) frames of ``image``.
    """
    check_cond_type(cond_type)
    tail_source = last_image if last_image is not None else image
    if cond_type == "i2v_head":
        return [image[:1]]
    if cond_type == "i2v_tail":
        return [tail_source[-1:]]
    if cond_type == "i2v_loop":
        return [image[:1], tail_source[-1:]]
    needed = reference_video_frames(cond_type, kind)
    if image.shape[0] < needed:
        raise ValueError(
            f"cond_type '{cond_type}' needs a reference video of at least {needed} frames; the image input "
            f"has {image.shape[0]}. Load more frames or use "
            f"{'the non-easy type (33 frames)' if cond_type.endswith('_easy') else 'an i2v condition type'}."
        )
    return [image[:needed]] if "head" in cond_type else [image[-needed:]]


# ------------------------------------------------------------------------------ frame preparation


def _fill_size(height: int, width: int, target_height: int, target_width: int) -> tuple[int, int, bool]:
    """Resized ``(height, width)`` that covers the target, and whether the height is the fitted side."""
    scale_h, scale_w = target_height / height, target_width / width
    if scale_h > scale_w:
        return target_height, round(width * scale_h), True
    return round(height * scale_w), target_width, False


def resize_crop_image(frame: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """One uint8 frame ``[H, W, 3]`` as the reference reads an image file: PIL bicubic resize so it
    covers ``height x width``, centre crop (offset rounded), then ``[3, height, width]`` in [-1, 1]."""
    image = Image.fromarray(frame.numpy())
    new_h, new_w, fitted_height = _fill_size(frame.shape[0], frame.shape[1], height, width)
    resized = np.array(image.resize((new_w, new_h), Image.BICUBIC))
    top = 0 if fitted_height else int(round((new_h - height) / 2.0))
    left = int(round((new_w - width) / 2.0)) if fitted_height else 0
    crop = torch.from_numpy(np.ascontiguousarray(resized[top : top + height, left : left + width]))
    return (crop.permute(2, 0, 1).float().div(255) - 0.5) / 0.5


def resize_crop_video(frames: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """uint8 frames ``[N, H, W, 3]`` as the reference reads a video file: bilinear resize (no
    antialiasing) so they cover ``height x width``, centre crop (offset truncated), then
    ``[3, N, height, width]`` in [-1, 1]."""
    clip = frames.permute(0, 3, 1, 2).float() / 255.0
    new_h, new_w, fitted_height = _fill_size(clip.shape[-2], clip.shape[-1], height, width)
    clip = F.interpolate(clip, size=(new_h, new_w), mode="bilinear", align_corners=False)
    top = 0 if fitted_height else int(round(new_h - height) / 2.0)
    left = int(round(new_w - width) / 2.0) if fitted_height else 0
    clip = clip[..., top : top + height, left : left + width]
    return ((clip - 0.5) / 0.5).permute(1, 0, 2, 3)


def prepare_clip(frames: torch.Tensor, height: int, width: int, from_video: bool | None = None) -> torch.Tensor:
    """IMAGE frames ``[N, H, W, 3]`` in [0, 1] -> ``[3, N, height, width]`` in [-1, 1].

    Frames cut from a video take the reference's video-file path (bilinear), a picture its image-file
    path (PIL bicubic), so a LoadImage picture and a loaded video match what the reference would read.
    ``from_video`` says which; by default several frames are a video and one frame a picture.
    """
    pixels = to_uint8(frames)
    if from_video is None:
        from_video = pixels.shape[0] > 1
    if not from_video:
        if pixels.shape[0] != 1:
            raise ValueError(f"A picture is one frame; got {pixels.shape[0]}.")
        return resize_crop_image(pixels[0], height, width).unsqueeze(1)
    return resize_crop_video(pixels, height, width)


def clips_from_video(cond_type: str, image: torch.Tensor, last_image: torch.Tensor | None) -> list[bool]:
    """For each clip of :func:`select_reference_clips`: whether its source is a video (several frames).

    The reference reads a video reference whole with its video transform (bilinear) and only then takes
    the first or last frame, so even a single i2v frame of a video is resized as video frames are.
    """
    tail_source = last_image if last_image is not None else image
    sources = {"i2v_tail": [tail_source], "i2v_loop": [image, tail_source]}.get(cond_type, [image])
    return [source.shape[0] > 1 for source in sources]


# --------------------------------------------------------------------------------- the condition


@dataclass(frozen=True)
class ImageCondition:
    """The OPENSORA_IMAGE_COND value: what the sampler needs to condition on reference frames.

    ``mask`` ``[B, 1, T, H', W']`` is 1 on conditioned latent frames; ``masked_ref`` ``[B, C, T, H', W']``
    holds the reference latents there and 0 elsewhere (float32). ``head`` / ``tail`` (``[C, 1, H', W']``)
    are pasted into the first / last latent frame of batch element 0 after sampling (i2v types only).
    """

    cond_type: str
    geometry: VideoGeometry
    mask: torch.Tensor
    masked_ref: torch.Tensor
    head: torch.Tensor | None = None
    tail: torch.Tensor | None = None

    @property
    def batch_size(self) -> int:
        return self.mask.shape[0]

    @property
    def temporal_image_guidance(self) -> bool:
        """The reference ramps image guidance over time for i2v types only."""
        return self.cond_type in I2V_TYPES

    def tokens(self, patch_size: int, dtype: torch.dtype, device: torch.device | str) -> torch.Tensor:
        """Packed model input ``[B, tokens, p*p + C*p*p]``: mask features first, then the reference."""
        cond = torch.cat((self.mask, self.masked_ref), dim=1).to(device=device, dtype=dtype)
        return pack(cond, patch_size)

    def check_matches(self, geometry: VideoGeometry, batch_size: int) -> None:
        """Raise if this condition was built for another video size, length, autoencoder or batch."""
        if self.geometry != geometry:
            raise ValueError(
                f"The image condition was built for {_describe(self.geometry)} but the noise is "
                f"{_describe(geometry)}. Connect the same noise LATENT to the image condition node."
            )
        if self.batch_size != batch_size:
            raise ValueError(
                f"The image condition has batch size {self.batch_size} but the noise has {batch_size}; "
                "connect the same noise LATENT to the image condition node."
            )


def _describe(geometry: VideoGeometry) -> str:
    return f"{geometry.width}x{geometry.height}, {geometry.num_frames} frames, {geometry.kind.display_name}"


def build_image_condition(
    cond_type: str, geometry: VideoGeometry, batch_size: int, references: list[torch.Tensor]
) -> ImageCondition:
    """Masks and masked reference latents from encoded reference clips (each ``[C, t, H', W']``, in
    :func:`select_reference_clips` order), identical for every batch element, like the reference given
    the same reference for every prompt."""
    check_cond_type(cond_type)
    check_condition_fits(cond_type, geometry)
    _, channels, frames, lat_h, lat_w = geometry.latent_shape(batch_size)
    for latent in references:
        if latent.ndim != 4 or (latent.shape[0], *latent.shape[2:]) != (channels, lat_h, lat_w):
            raise ValueError(
                f"Reference latent of shape {tuple(latent.shape)} does not fit the noise latent "
                f"(channels {channels}, size {lat_h}x{lat_w}); is the VAE the one the noise was made for?"
            )
    mask = torch.zeros(1, 1, frames, lat_h, lat_w)
    masked_ref = torch.zeros(1, channels, frames, lat_h, lat_w)
    first, last = references[0].float().cpu(), references[-1].float().cpu()
    head = tail = None
    if cond_type in ("i2v_head", "i2v_loop"):
        mask[:, :, 0] = 1
        masked_ref[0, :, 0] = first[:, 0]
        head = first
    if cond_type in ("i2v_tail", "i2v_loop"):
        mask[:, :, -1] = 1
        masked_ref[0, :, -1] = last[:, -1]
        tail = last if cond_type == "i2v_loop" else first
    if cond_type in V2V_TYPES:
        k = conditioned_latent_frames(cond_type, geometry.kind)
        if first.shape[1] < k:
            raise ValueError(f"The reference video encodes to {first.shape[1]} latent frames; {k} are needed.")
        span = slice(0, k) if "head" in cond_type else slice(frames - k, frames)
        ref_span = slice(0, k) if "head" in cond_type else slice(first.shape[1] - k, first.shape[1])
        mask[:, :, span] = 1
        masked_ref[0, :, span] = first[:, ref_span]
    expand = (batch_size, -1, -1, -1, -1)
    return ImageCondition(
        cond_type=cond_type,
        geometry=geometry,
        mask=mask.expand(expand).contiguous(),
        masked_ref=masked_ref.expand(expand).contiguous(),
        head=head,
        tail=tail,
    )


def encode_image_condition(
    encode: Callable[[torch.Tensor], torch.Tensor],
    image: torch.Tensor,
    last_image: torch.Tensor | None,
    cond_type: str,
    geometry: VideoGeometry,
    batch_size: int,
) -> ImageCondition:
    """Prepare the reference frames like the reference reads files, encode each clip separately with
    ``encode`` (pixels ``[1, 3, n, H, W]`` in [-1, 1] -> latent ``[1, C, t, H', W']``) and build the
    condition. All checks run before the first encode."""
    check_cond_type(cond_type)
    check_condition_fits(cond_type, geometry)
    for name, frames in (("image", image), ("last_image", last_image)):
        if frames is not None and (frames.ndim != 4 or frames.shape[-1] != 3 or frames.shape[0] < 1):
            raise ValueError(f"{name} must be IMAGE frames [N, H, W, 3]; got shape {tuple(frames.shape)}.")
    clips = select_reference_clips(cond_type, image, last_image, geometry.kind)
    references = []
    for clip, from_video in zip(clips, clips_from_video(cond_type, image, last_image)):
        pixels = prepare_clip(clip, geometry.height, geometry.width, from_video)
        references.append(encode(pixels.unsqueeze(0))[0].float().cpu())
    return build_image_condition(cond_type, geometry, batch_size, references)


def paste_references(latent: torch.Tensor, condition: ImageCondition) -> torch.Tensor:
    """Overwrite the conditioned end frames of batch element 0 with the reference latents, as the
    reference does after sampling (other batch elements keep their generated frames)."""
    if condition.head is None and condition.tail is None:
        return latent
    latent = latent.clone()
    if condition.head is not None:
        latent[0, :, :1] = condition.head.to(latent.device, latent.dtype)
    if condition.tail is not None:
        latent[0, :, -1:] = condition.tail.to(latent.device, latent.dtype)
    return latent
