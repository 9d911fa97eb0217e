"""Decoder passes spread over a group of ranks: 2 torchrun processes (gloo, 127.0.0.1) decode a tiny
HunyuanVideo VAE latent with spatial tiles (3 per window: an uneven last round, smaller edge tiles) and
with spatial and temporal tiles; every rank gets the frames of the single-process (diffusers) tiled
decode, and each rank's work units (convolutions and attention blocks: the progress units) are its share
of the passes only.
"""

from __future__ import annotations

import pytest
import torch

from comfyui_opensora.loaders.autoencoders import load_autoencoder
from comfyui_opensora.models.autoencoder import Tiling
from comfyui_opensora.parallel.shared_decode import local_passes
from factories_vae import write_tiny_hunyuan_vae
from torchrun_launch import run_ranks
from workflow_doubles import PACK_ROOT

pytestmark = pytest.mark.usefixtures("one_thread")

TILINGS = {"spatial": Tiling(32), "spatial_temporal": Tiling(32, 16)}
LATENT_SHAPE = (1, 16, 7, 3, 7)  # 25 frames of 24 x 56 px: 3 tiles of 32 px per window, 2 temporal windows
RANKS = 2
TIMEOUT_S = 120

WORKER = """
import runpy, sys, torch, torch.distributed as dist
runpy.run_path(sys.argv[1])["import_pack"](register_nodes=False)
from comfyui_opensora.loaders.autoencoders import load_autoencoder
from comfyui_opensora.models.autoencoder import Tiling, reporting_work, work_modules
from comfyui_opensora.parallel.shared_decode import run_passes_over_group
torch.set_num_threads(1)
dist.init_process_group("gloo")
rank = dist.get_rank()
vae = load_autoencoder(sys.argv[2], dtype=torch.float32)
z = torch.load(sys.argv[3])
results = {}
for name, tiling in {"spatial": Tiling(32), "spatial_temporal": Tiling(32, 16)}.items():
    runner = lambda passes: run_passes_over_group(passes, dist.group.WORLD, rank, dist.get_world_size(),
                                                  vae.device, vae.dtype)
    work = []
    with reporting_work(work_modules(vae.decoder), lambda: work.append(1)):
        chunks = list(vae.decode_chunks_shared(z, tiling, runner))
    results[name] = (torch.cat(chunks, dim=2), [c.shape[2] for c in chunks], len(work))
torch.save(results, f"{sys.argv[4]}/rank{rank}.pt")
dist.destroy_process_group()
"""


def test_two_ranks_decode_the_frames_of_one_process(tmp_path):
    path = write_tiny_hunyuan_vae(tmp_path / "vae.safetensors", seed=3)
    vae = load_autoencoder(path, dtype=torch.float32)
    z = torch.randn(LATENT_SHAPE, generator=torch.Generator().manual_seed(0))
    torch.save(z, tmp_path / "z.pt")
    (tmp_path / "worker.py").write_text(WORKER)
    run_ranks(tmp_path / "worker.py", [str(PACK_ROOT / "__main__.py"), str(path), str(tmp_path / "z.pt"), str(tmp_path)], RANKS, TIMEOUT_S)

    for name, tiling in TILINGS.items():
        single = list(vae.decode_chunks(z, tiling))
        expected = torch.cat(single, dim=2)
        passes = vae.decode_passes(LATENT_SHAPE, tiling)
        assert passes == {"spatial": 3, "spatial_temporal": 6}[name]
        for rank in range(RANKS):
            frames, chunk_frames, work = torch.load(tmp_path / f"rank{rank}.pt")[name]
            assert frames.shape == expected.shape == (1, 3, 25, 24, 56)
            assert (frames - expected).abs().max().item() <= 1e-6, (name, rank)
            assert chunk_frames == [chunk.shape[2] for chunk in single]  # streamed in the same chunks
            pass_work = vae.pass_work(LATENT_SHAPE, tiling)  # convolutions and attention blocks of each pass
            assert work == sum(pass_work[index] for index in local_passes(passes, rank, RANKS))


def test_one_process_tile_loop_equals_diffusers_tiled_decode(tmp_path):
    """The tile loop itself (every pass run here): diffusers' tiled decode, bit for bit, for every tiling."""
    vae = load_autoencoder(write_tiny_hunyuan_vae(tmp_path / "vae.safetensors", seed=3), dtype=torch.float32)
    z = torch.randn(LATENT_SHAPE, generator=torch.Generator().manual_seed(1))
    for tiling in (*TILINGS.values(), Tiling(256), Tiling()):
        shared = torch.cat(list(vae.decode_chunks_shared(z, tiling, lambda passes: (run() for run in passes))), 2)
        assert torch.equal(shared, vae.decode(z, tiling)), tiling


def test_pass_shares_cover_every_pass_once():
    for passes in range(0, 9):
        for size in (1, 2, 3, 4):
            assert sorted(index for rank in range(size) for index in local_passes(passes, rank, size)) == list(range(passes))


def test_causal_chunks_are_not_shared(tmp_path):
    """Causal chunks carry a cache from pass to pass: a group's ranks each decode them whole, the runner unused."""
    vae = load_autoencoder(write_tiny_hunyuan_vae(tmp_path / "vae.safetensors", seed=3), dtype=torch.float32)
    z = torch.randn(LATENT_SHAPE, generator=torch.Generator().manual_seed(2))
    tiling = Tiling(32, causal_chunk=2)
    assert not vae.shares_passes(tiling) and vae.shares_passes(Tiling(32))

    def refuse(passes):
        raise AssertionError("causal chunks were handed to the pass runner")

    shared = torch.cat(list(vae.decode_chunks_shared(z, tiling, refuse)), dim=2)
    assert torch.equal(shared, vae.decode(z, tiling))
