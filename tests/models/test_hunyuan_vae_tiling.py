"""Tiled decoding of the HunyuanVideo VAE on geometries larger than the golden files: every output pixel
is either one tile's own decode (away from blend zones) or the reference's linear cross-fade of two
tiles (docs/reference.md#hunyuan-vae), there is no seam, and temporal tiles stream in order.

Note: the decoder's GroupNorm statistics and mid-block attention span a whole tile, so a tiled decode
is never the untiled decode of the whole video; what tiling guarantees is that each region comes from
a full decode of its tile and that tiles are cross-faded. With random weights the two differ by O(1)
(the golden manifest says so too), which is why the tests compare against per-tile decodes.
"""

from __future__ import annotations

import pytest
import torch

from comfyui_opensora.loaders.autoencoders import load_autoencoder
from comfyui_opensora.models.autoencoder import NO_TILING, Tiling, choose_tiling
from factories_vae import write_tiny_hunyuan_vae

S = 8  # spatial compression


@pytest.fixture(scope="module")
def vae(tmp_path_factory):
    path = write_tiny_hunyuan_vae(tmp_path_factory.mktemp("vae") / "vae.safetensors", seed=3)
    return load_autoencoder(path, dtype=torch.float32)


def smooth_latent(frames: int, height: int, width: int, seed: int = 0) -> torch.Tensor:
    """Low-frequency waves per channel: neighbouring latents differ by a fraction of the amplitude."""
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(frames).view(frames, 1, 1).float()
    y = torch.arange(height).view(1, height, 1).float()
    x = torch.arange(width).view(1, 1, width).float()
    amp, phase = torch.randn(16, 3, generator=g), 6.28 * torch.rand(16, 3, generator=g)
    channels = [amp[c, 0] * torch.sin(0.3 * x + phase[c, 0] + 0.2 * t) + amp[c, 1] * torch.cos(0.25 * y + phase[c, 1])
                + amp[c, 2] * torch.sin(0.15 * (x - y) + phase[c, 2]) for c in range(16)]
    return 0.6 * torch.stack(channels)[None]


def cross_fade(a: torch.Tensor, b: torch.Tensor, dim: int, extent: int) -> torch.Tensor:
    """The reference's blend: b[y] = a[-E + y] * (1 - y/E) + b[y] * (y/E) for y < E (in place on b)."""
    extent = min(a.shape[dim], b.shape[dim], extent)
    for y in range(extent):
        b.select(dim, y).copy_(a.select(dim, a.shape[dim] - extent + y) * (1 - y / extent)
                               + b.select(dim, y) * (y / extent))
    return b


def reference_spatial(vae, z: torch.Tensor, tile: int) -> torch.Tensor:
    """The reference's spatial tiling written out from the spec, on top of plain per-tile decodes."""
    tile_latent, stride_latent = tile // S, int(tile * 0.75) // S
    blend, keep = tile - int(tile * 0.75), int(tile * 0.75)
    h, w = z.shape[-2:]
    rows = [[vae.decode(z[..., i:i + tile_latent, j:j + tile_latent], NO_TILING)
             for j in range(0, w, stride_latent)] for i in range(0, h, stride_latent)]
    out_rows = []
    for i, row in enumerate(rows):
        pieces = []
        for j, piece in enumerate(row):
            if i > 0:
                piece = cross_fade(rows[i - 1][j], piece, 3, blend)
            if j > 0:
                piece = cross_fade(row[j - 1], piece, 4, blend)
            pieces.append(piece[..., :keep, :keep])
        out_rows.append(torch.cat(pieces, dim=4))
    return torch.cat(out_rows, dim=3)[..., :h * S, :w * S]


def test_spatial_tiles_are_tile_decodes_cross_faded(vae):
    z = smooth_latent(1, 10, 14)  # tiles of 8 latents every 6: 2 rows x 3 columns, with edge tiles
    tiled = vae.decode(z, Tiling(spatial=64))
    assert tiled.shape == (1, 3, 1, 80, 112)
    expected = reference_spatial(vae, z, 64)
    assert (tiled - expected).abs().max().item() < 1e-5
    # Away from blend zones the output is exactly the first tile's own decode.
    first = vae.decode(z[..., :8, :8], NO_TILING)
    assert torch.equal(tiled[..., :48, :48], first[..., :48, :48])


def _max_step(video: torch.Tensor, dim: int) -> torch.Tensor:
    """Largest absolute difference between neighbours along ``dim``, per position along ``dim``."""
    steps = video.diff(dim=dim).abs()
    other = [d for d in range(video.ndim) if d != dim]
    return steps.amax(dim=other)


def test_no_seam_across_spatial_tile_borders(vae):
    z = smooth_latent(1, 8, 20, seed=1)
    tiling = Tiling(spatial=64)  # column tiles start every 48 px and cross-fade over 16 px
    tiled = vae.decode(z, tiling)
    tiles = [vae.decode(z[..., :, j:j + 8], NO_TILING) for j in range(0, 20, 6)]
    inside = max(_max_step(t, 4).max().item() for t in tiles)  # steepest step inside any tile's own decode
    steps = _max_step(tiled, 4)
    for k in range(1, len(tiles)):
        border = k * 48
        a, b = tiles[k - 1], tiles[k]
        extent = min(16, b.shape[-1])
        mismatch = (a[..., 48:48 + extent] - b[..., :extent]).abs().max().item()
        zone = steps[border - 1:border + extent].max().item()
        # A linear cross-fade adds at most mismatch/extent to a step; a hard cut would add the mismatch.
        assert zone <= inside + mismatch / extent + 1e-5, (k, zone, inside, mismatch)
        hard_cut = (a[..., 48] - b[..., 0]).abs().max().item()
        assert hard_cut > inside + mismatch / extent, "the latent is too smooth to tell a seam from a cross-fade"


def test_temporal_tiles_stream_in_order_and_cross_fade(vae):
    z = smooth_latent(8, 4, 4, seed=2)  # 29 frames; tiles of 4+1 latents every 3 -> 3 tiles
    tiling = Tiling(temporal=16)
    chunks = list(vae.decode_chunks(z, tiling))
    assert [c.shape[2] for c in chunks] == [13, 12, 4]
    assert len(chunks) == vae.decode_chunk_count(8, tiling)
    video = torch.cat(chunks, dim=2)
    assert video.shape[2] == 29

    tiles = []
    for n, start in enumerate(range(0, 8, 3)):
        decoded = vae.decode(z[:, :, start:start + 5], NO_TILING)
        tiles.append(decoded if n == 0 else decoded[:, :, 1:])
    pieces = [tiles[0][:, :, :13]]
    for n in range(1, len(tiles)):
        pieces.append(cross_fade(tiles[n - 1], tiles[n], 2, 4)[:, :, :12])
    expected = torch.cat(pieces, dim=2)[:, :, :29]
    assert (video - expected).abs().max().item() < 1e-5
    assert torch.equal(video[:, :, :13], tiles[0][:, :, :13])  # causal first tile: its own decode


def test_temporal_and_spatial_tiling_together(vae):
    z = smooth_latent(5, 4, 10, seed=4)
    chunks = list(vae.decode_chunks(z, Tiling(spatial=64, temporal=16)))
    both = torch.cat(chunks, dim=2)
    assert both.shape == (1, 3, 17, 32, 80) and [c.shape[2] for c in chunks] == [13, 4]
    first_tile = vae.decode(z[:, :, :5], Tiling(spatial=64))
    assert (both[:, :, :13] - first_tile[:, :, :13]).abs().max().item() < 1e-6


def test_memory_budget_picks_less_tiling_for_more_memory(vae):
    shape = (1, 16, 33, 72, 128)  # 129 frames at 576x1024
    generous = choose_tiling(vae, "memory_budget", shape, free_bytes=1 << 50)
    assert generous == NO_TILING
    tight = choose_tiling(vae, "memory_budget", shape, free_bytes=8 << 30)
    assert tight.spatial is not None and tight.spatial % 32 == 0
    assert vae.decode_bytes(shape, tight, vae.dtype) <= 0.8 * (8 << 30)
    tiny = choose_tiling(vae, "memory_budget", shape, free_bytes=1 << 20)
    assert tiny.temporal is not None and tiny.spatial == 128  # smallest tiles when nothing fits
    with pytest.raises(ValueError, match="Unknown tiling mode"):
        choose_tiling(vae, "fastest", shape)


@pytest.mark.parametrize("tiling", [NO_TILING, Tiling(spatial=64), Tiling(temporal=16),
                                    Tiling(spatial=64, temporal=16)])
def test_decode_work_counts_every_decoder_convolution(vae, tiling):
    """The progress total (decode_work) is exactly the number of decoder convolutions run."""
    from comfyui_opensora.models.autoencoder import reporting_work, work_modules

    z = smooth_latent(8, 4, 10, seed=5)
    calls = []
    with reporting_work(work_modules(vae.decoder), lambda: calls.append(1)):
        video = vae.decode(z, tiling)
    assert video.shape[2] == 29
    assert len(calls) == vae.decode_work(tuple(z.shape), tiling) > 0
