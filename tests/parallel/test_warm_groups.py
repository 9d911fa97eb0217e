"""The VAE Decode node on a warm worker group (2 torchrun ranks, CPU, gloo, 127.0.0.1).

A tiny HunyuanVideo VAE (fp32) decodes a latent whose reference tiling makes 3 spatial tiles per element
(an uneven last round): the group's frames equal the in-process node's to 1e-6, progress counts rank 0's
share of the passes, Cancel stops every rank between rounds of passes (the group keeps working), a VAE
file the ranks refuse is a clear error, and the Video DC-AE decodes in this process.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from comfyui_opensora.models.autoencoder import Tiling
from comfyui_opensora.nodes import vae as vae_nodes
from comfyui_opensora.models.latent_space import VIDEO_DC_AE
from comfyui_opensora.parallel import warm_groups
from comfyui_opensora.parallel.group import GroupSettings, WorkerGroupError
from comfyui_opensora.parallel.protocol import DecodeJob
from comfyui_opensora.parallel.settings import ParallelSettings
from comfyui_opensora.parallel.shared_decode import local_passes
from comfyui_opensora.samplers.geometry import VideoGeometry
from comfyui_opensora.samplers.latent import make_latent
from comfyui_opensora.tiny_checkpoints.autoencoders import tiny_dc_ae_config, write_tiny_dc_ae
from factories_vae import write_tiny_hunyuan_vae
from torchrun_launch import free_port

pytestmark = pytest.mark.usefixtures("one_thread")

TOLERANCE = 1e-6
# Latent [B, 16, 3, 4, 56]: reference tiles of 32 latents every 24 -> 3 passes per element (32, 32, 8 wide).
GEOMETRY = VideoGeometry(height=32, width=448, num_frames=9)


@pytest.fixture(scope="module")
def two_ranks():
    settings = ParallelSettings(GroupSettings(2, "cpu", free_port()), 0, "split")
    yield settings
    warm_groups.shutdown_worker_groups()


@pytest.fixture
def loaded_vae(standalone_host):
    write_tiny_hunyuan_vae(standalone_host.folder_paths(standalone_host.VAE)[0] / "hunyuan_vae.safetensors", seed=3)
    (vae,) = vae_nodes.OpenSoraVAELoader().execute("hunyuan_vae.safetensors", "fp32")
    return vae


def _latent(batch: int, seed: int = 0) -> dict:
    samples = torch.randn(GEOMETRY.latent_shape(batch), generator=torch.Generator().manual_seed(seed))
    return make_latent(samples, GEOMETRY)


def test_node_on_two_ranks_gives_the_in_process_frames_and_rank_0s_progress(two_ranks, loaded_vae, standalone_host):
    host = standalone_host
    latent = _latent(2)
    updates: list[tuple[int, int]] = []
    remove = host.add_progress_listener(lambda value, total: updates.append((value, total)))
    try:
        (grouped,) = vae_nodes.OpenSoraVAEDecode().execute(loaded_vae, latent, "reference", two_ranks)
    finally:
        remove()
    assert "decode_seconds" in warm_groups.worker_group(two_ranks.group).last_outcome  # decoded by the ranks
    (in_process,) = vae_nodes.OpenSoraVAEDecode().execute(loaded_vae, latent, "reference")
    assert len(grouped) == len(in_process) == 2
    for frames, expected in zip(grouped, in_process):
        assert frames.shape == expected.shape == (9, 32, 448, 3) and frames.dtype == torch.float32
        assert (frames - expected).abs().max().item() <= TOLERANCE
    shape = tuple(latent["samples"].shape)
    pass_work = loaded_vae.module.pass_work(shape, loaded_vae.module.reference_tiling())
    assert len(pass_work) == 3
    share = 2 * sum(pass_work[index] for index in local_passes(3, 0, 2))  # rank 0: passes 0 and 2 of each element
    assert share < 2 * sum(pass_work)
    assert updates and updates[-1] == (share, share)
    assert len(updates) > 2  # moved during the decode, not only at the end


def test_cancel_during_a_group_decode_stops_every_rank_and_the_group_keeps_working(two_ranks, loaded_vae,
                                                                                  standalone_host):
    host = standalone_host
    latent = _latent(3, seed=1)  # 9 passes: 5 rounds
    updates: list[tuple[int, int]] = []

    def cancel_at_first(value: int, total: int) -> None:
        updates.append((value, total))
        host.request_interrupt()

    remove = host.add_progress_listener(cancel_at_first)
    try:
        with pytest.raises(host.Interrupted):
            vae_nodes.OpenSoraVAEDecode().execute(loaded_vae, latent, "reference", two_ranks)
    finally:
        remove()
        host.standalone_state().interrupt_requested = False
    group = warm_groups.worker_group(two_ranks.group)
    assert group.alive()
    assert group.last_outcome["status"] == "cancelled"
    assert 1 <= group.last_outcome["steps"] < updates[0][1]  # stopped before rank 0's share was done
    small = make_latent(latent["samples"][:1], GEOMETRY)
    (grouped,) = vae_nodes.OpenSoraVAEDecode().execute(loaded_vae, small, "reference", two_ranks)
    (in_process,) = vae_nodes.OpenSoraVAEDecode().execute(loaded_vae, small, "reference")
    assert (grouped[0] - in_process[0]).abs().max().item() <= TOLERANCE


def test_a_vae_the_ranks_cannot_decode_is_a_clear_error_and_the_group_survives(two_ranks, tmp_path: Path):
    dc_ae = write_tiny_dc_ae(tmp_path / "F32T4C128_AE.safetensors", tiny_dc_ae_config(latent_channels=16))
    group = warm_groups.worker_group(two_ranks.group)
    job = DecodeJob(str(dc_ae), torch.float32, torch.zeros(GEOMETRY.latent_shape(1)), Tiling(256), 9, 32, 448, 1)
    with pytest.raises(WorkerGroupError, match="rank 0: ValueError: .*holds the Video DC-AE.*not the HunyuanVideo VAE"):
        group.run(job)
    missing = DecodeJob(str(tmp_path / "gone.safetensors"), torch.float32, job.latent, job.tiling, 9, 32, 448, 1)
    with pytest.raises(WorkerGroupError, match="rank 0: FileNotFoundError: the VAE .*gone.safetensors does not "
                                               "exist on host .*same file at the same path"):
        group.run(missing)
    assert group.alive()


def test_other_autoencoders_decode_in_this_process_with_parallel_connected(two_ranks, standalone_host):
    write_tiny_dc_ae(standalone_host.folder_paths(standalone_host.VAE)[0] / "F32T4C128_AE.safetensors")
    (vae,) = vae_nodes.OpenSoraVAELoader().execute("F32T4C128_AE.safetensors", "fp32")
    geometry = VideoGeometry(height=64, width=64, num_frames=8, autoencoder=VIDEO_DC_AE.name)
    latent = make_latent(torch.randn(geometry.latent_shape(1), generator=torch.Generator().manual_seed(2)), geometry)
    warm_groups.shutdown_worker_groups()
    (with_parallel,) = vae_nodes.OpenSoraVAEDecode().execute(vae, latent, "reference", two_ranks)
    assert not warm_groups._GROUPS  # no group was started for it
    (in_process,) = vae_nodes.OpenSoraVAEDecode().execute(vae, latent, "reference")
    assert torch.equal(with_parallel[0], in_process[0])
