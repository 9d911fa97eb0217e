"""Peak activation memory of the released Video DC-AE decode, measured without computing anything.

The model and latent live on the meta device; a dispatch mode adds up the bytes of every storage an
operation creates and subtracts them when the storage is freed, so the peak of live activations is
exact for the shapes involved (conv workspaces and allocator slack are not included). Compares with
``VideoDCAE.decode_bytes``. Run: ``python3 benchmarks/dc_ae_decode_memory.py`` (about a minute on a CPU).
"""

from __future__ import annotations


import torch

from common import LiveStorageBytes  # imports the pack as comfyui_opensora

from comfyui_opensora.models.autoencoder import NO_TILING, Tiling  # noqa: E402
from comfyui_opensora.models.dc_ae import VideoDCAE  # noqa: E402




def measure(latent_shape: tuple[int, ...], tiling: Tiling, dtype: torch.dtype) -> None:
    with torch.device("meta"):
        model = VideoDCAE().to(dtype)
    z = torch.empty(latent_shape, device="meta", dtype=dtype)
    mode = LiveStorageBytes([p.untyped_storage() for p in model.parameters()] + [z.untyped_storage()])
    frames = 0
    with mode:
        for chunk in model.decode_chunks(z, tiling):
            frames += chunk.shape[2]
            del chunk
    tile_frames = min(frames, tiling.temporal or frames)
    tile_h, tile_w = (min(n * 32, tiling.spatial or n * 32) for n in latent_shape[3:])
    tile_pixels = tile_h * tile_w
    estimate = model.decode_bytes(latent_shape, tiling, dtype)
    print(
        f"{str(latent_shape):20} spatial={tiling.spatial} temporal={tiling.temporal} {str(dtype):15} "
        f"peak {mode.peak / 2**30:6.2f} GiB, estimate {estimate / 2**30:6.2f} GiB, "
        f"{mode.peak / (tile_frames * tile_pixels):5.0f} B per tile voxel"
    )


if __name__ == "__main__":
    for dtype in (torch.bfloat16, torch.float32):
        measure((1, 128, 8, 8, 8), NO_TILING, dtype)  # one reference tile: 32 frames at 256x256
        measure((1, 128, 32, 18, 32), Tiling(256, 32), dtype)  # 128 frames at 576x1024, reference tiles
        measure((1, 128, 32, 18, 32), Tiling(512, 64), dtype)
