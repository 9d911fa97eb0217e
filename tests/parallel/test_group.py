"""Sequence-parallel sampling on real torchrun worker groups (CPU, gloo), against the in-process sampler.

One warm 2-rank group runs every 2-rank layout (Ulysses all-to-all, ring, guidance branches on two
groups; text split or replicated) on a latent whose token counts do not divide evenly (45 image and 5
text tokens), survives several runs, a cancel and a job whose file cannot be loaded; a 4-rank group
runs the hybrid layouts; a killed rank is reported and the group is started again. Two "hosts" on
127.0.0.1 (the sampler's torchrun and the documented join command, one rank each) give the latent of
the one-host group; a host that never joins and one with another copy of the pack are reported. fp32,
tiny model, 3 steps: final latents must match the in-process denoiser (and the in-process sampler
node) to 1e-5.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from comfyui_opensora.loaders.mmdit import load_mmdit
from comfyui_opensora.loaders.mmdit_setup import MMDiTSetup
from comfyui_opensora.nodes import parallel as parallel_node
from comfyui_opensora.nodes.model_loader import OpenSoraModel, OpenSoraModelLoader
from comfyui_opensora.nodes.noise import OpenSoraNoise
from comfyui_opensora.nodes.parallel import OpenSoraParallelSettings
from comfyui_opensora.nodes.sampler import OpenSoraSampler
from comfyui_opensora.parallel import warm_groups
from comfyui_opensora.parallel.group import (
    WORKER_SCRIPT, GroupSettings, WorkerGroup, WorkerGroupDied, WorkerGroupError, join_command,
)
from comfyui_opensora.parallel.layout import ParallelLayout
from comfyui_opensora.parallel.protocol import SamplingCancelled, WorkerJob
from comfyui_opensora.parallel.settings import ParallelSettings
from comfyui_opensora.samplers import denoisers
from comfyui_opensora.samplers.conditioning import TextConditioning
from comfyui_opensora.samplers.geometry import VideoGeometry
from comfyui_opensora.samplers.image_condition import ImageCondition
from comfyui_opensora.samplers.request import SamplingRequest, run_sampling
from factories_mmdit import TINY_FLUX_CONFIG, write_tiny_mmdit

pytest.importorskip("yunchang", reason="the parallel worker tests need yunchang: pip install -r requirements-test.txt")

TOLERANCE = 1e-5
GEOMETRY = VideoGeometry(48, 80, 9)  # latent [16, 3, 6, 10] -> 3 x 3 x 5 = 45 image tokens
TIMESTEPS = [1.0, 0.8, 0.45, 0.0]
FP32 = MMDiTSetup("fp32")


def _free_port_pair() -> int:
    for _ in range(50):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        if port >= 65534:
            continue
        with socket.socket() as second:
            try:
                second.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
        return port
    raise RuntimeError("no free port pair")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("parallel") / "tiny_mmdit.safetensors"
    write_tiny_mmdit(path)
    return str(path)


@pytest.fixture(scope="module")
def model(checkpoint):
    return load_mmdit(checkpoint, dtype=torch.float32)


@pytest.fixture(scope="module")
def two_ranks():
    settings = GroupSettings(2, "cpu", _free_port_pair())
    yield settings
    warm_groups.shutdown_worker_groups()


def _inputs(seed: int = 0, with_condition: bool = False, text_tokens: int = 5):
    g = torch.Generator().manual_seed(seed)
    noise = torch.randn(1, 16, 3, 6, 10, generator=g)
    text = denoisers.TextInputs(torch.randn(1, text_tokens, 32, generator=g), torch.randn(1, 24, generator=g),
                                torch.randn(1, text_tokens, 32, generator=g), torch.randn(1, 24, generator=g))
    condition = None
    if with_condition:
        mask = torch.zeros(1, 1, 3, 6, 10)
        mask[:, :, 0] = 1
        condition = ImageCondition("i2v_head", GEOMETRY, mask, torch.randn(1, 16, 3, 6, 10, generator=g) * mask)
    return noise, text, condition


def _request(checkpoint, layout, seed=0, with_condition=False, timesteps=TIMESTEPS, text_tokens=5) -> WorkerJob:
    noise, text, condition = _inputs(seed, with_condition, text_tokens)
    request = SamplingRequest("i2v", noise, text, timesteps, denoisers.Guidance(7.5, 3.0), condition=condition)
    return WorkerJob(checkpoint, FP32, layout, request)


def _in_process(model, job: WorkerJob) -> torch.Tensor:
    request = job.sampling
    with torch.inference_mode():
        return denoisers.denoise_i2v(model, request.noise, request.text, request.timesteps, request.guidance,
                                     request.condition, request.policy)


def _check_equal_to_in_process(model, request, latent):
    expected = _in_process(model, request)
    assert latent.shape == expected.shape and latent.dtype == torch.float32
    assert (latent - expected).abs().max().item() <= TOLERANCE


LAYOUTS_2 = [
    ParallelLayout(2, 1, "split"),
    ParallelLayout(2, 1, "replicated"),
    ParallelLayout(1, 2, "split"),
    ParallelLayout(1, 2, "replicated"),
    ParallelLayout(1, 1, "split", cfg_degree=2),
]


def test_two_rank_layouts_match_in_process_and_the_group_stays_warm(two_ranks, checkpoint, model):
    group = warm_groups.worker_group(two_ranks)
    pids = group.worker_pids()
    for index, layout in enumerate(LAYOUTS_2):
        request = _request(checkpoint, layout, seed=index, with_condition=index % 2 == 0)
        steps: list[int] = []
        latent = group.run(request, on_progress=lambda done, preview: steps.append(done))
        _check_equal_to_in_process(model, request, latent)
        assert steps[-1] == 3
    assert warm_groups.worker_group(two_ranks) is group and group.worker_pids() == pids


def test_distilled_flux_model_through_the_workers(two_ranks, tmp_path):
    path = tmp_path / "tiny_flux.safetensors"
    write_tiny_mmdit(path, TINY_FLUX_CONFIG)
    flux = load_mmdit(path, dtype=torch.float32)
    noise, text, _ = _inputs(seed=9)
    request = WorkerJob(str(path), FP32, ParallelLayout(1, 2, "replicated"),
                        SamplingRequest("distill", noise, text, TIMESTEPS, distilled_guidance=3.5))
    latent = warm_groups.worker_group(two_ranks).run(request)
    with torch.inference_mode():
        expected = denoisers.denoise_distilled(flux, noise, text.txt, text.y_vec, TIMESTEPS, 3.5)
    assert (latent - expected).abs().max().item() <= TOLERANCE


def test_cancel_stops_all_ranks_at_one_step_and_the_group_keeps_working(two_ranks, checkpoint, model):
    group = warm_groups.worker_group(two_ranks)
    long_run = _request(checkpoint, ParallelLayout(1, 2), timesteps=torch.linspace(1, 0, 1001).tolist())
    seen: list[int] = []
    with pytest.raises(SamplingCancelled) as cancelled:
        group.run(long_run, on_progress=lambda done, preview: seen.append(done), cancel_requested=lambda: bool(seen))
    assert 1 <= cancelled.value.steps_done < 1000
    request = _request(checkpoint, ParallelLayout(2, 1), seed=7)
    _check_equal_to_in_process(model, request, group.run(request))


def test_cancel_through_the_host_raises_the_hosts_interrupt(two_ranks, checkpoint, standalone_host):
    host = standalone_host
    remove = host.add_progress_listener(lambda value, total: host.request_interrupt())
    noise, text, _ = _inputs()
    settings = ParallelSettings(two_ranks, 1, "split")
    model_value = OpenSoraModel(None, load_mmdit(checkpoint, torch.float32).config, checkpoint, FP32)
    try:
        with pytest.raises(host.Interrupted):
            parallel_node.sample_in_workers(settings, model_value,
                                            SamplingRequest("i2v", noise, text, torch.linspace(1, 0, 1001).tolist()))
    finally:
        remove()
    assert warm_groups.worker_group(two_ranks).alive()


def test_a_file_the_workers_cannot_load_is_a_clear_error_and_the_group_survives(two_ranks, checkpoint, model,
                                                                                 tmp_path):
    broken = tmp_path / "not_a_model.safetensors"
    broken.write_bytes(b"this is not a safetensors file")
    group = warm_groups.worker_group(two_ranks)
    with pytest.raises(WorkerGroupError, match="could not run the job: rank 0: .*not_a_model"):
        group.run(_request(str(broken), ParallelLayout(2, 1)))
    request = _request(checkpoint, ParallelLayout(1, 2, "replicated"), seed=3)
    _check_equal_to_in_process(model, request, group.run(request))


def test_a_killed_rank_is_reported_and_the_group_restarts_on_the_next_run(two_ranks, checkpoint, model):
    group = warm_groups.worker_group(two_ranks)
    victim = group.worker_pids()[1]
    long_run = _request(checkpoint, ParallelLayout(2, 1), timesteps=torch.linspace(1, 0, 401).tolist())

    def kill_rank_1(step: int, preview) -> None:
        if not killed:
            killed.append(step)
            os.kill(victim, signal.SIGKILL)

    killed: list[int] = []

    with pytest.raises(WorkerGroupDied, match="worker group will be started again"):
        group.run(long_run, on_progress=kill_rank_1)
    assert not group.alive()
    restarted = warm_groups.worker_group(two_ranks)
    assert restarted is not group and victim not in restarted.worker_pids()
    request = _request(checkpoint, ParallelLayout(1, 2), seed=5)
    _check_equal_to_in_process(model, request, restarted.run(request))


def test_a_port_in_use_is_a_clear_error():
    port = _free_port_pair()
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", port))
        with pytest.raises(WorkerGroupError, match=f"Port {port} .* in use"):
            WorkerGroup(GroupSettings(2, "cpu", port)).start()


def _listening_ports(pids: set[int]) -> list[tuple[str, int]]:
    """(address, port) of the TCP sockets the processes ``pids`` listen on, from /proc (Linux)."""
    inodes = set()
    for pid in pids:
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    found = []
    for table, width in (("/proc/net/tcp", 8), ("/proc/net/tcp6", 32)):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inodes:  # state LISTEN
                address, port = fields[1].split(":")
                found.append((address, int(port, 16)))
    return found


@pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="reads listening sockets from Linux's /proc")
def test_the_group_listens_on_loopback_only(two_ranks):
    """The control store, torchrun's rendezvous and the workers' gloo sockets: nothing on other interfaces."""
    group = warm_groups.worker_group(two_ranks)
    pids = {os.getpid(), group.process.pid, *group.worker_pids()}
    children = Path(f"/proc/{group.process.pid}/task/{group.process.pid}/children")
    pids |= {int(p) for p in children.read_text().split()} if children.exists() else set()
    listening = _listening_ports(pids)
    assert ("0100007F", two_ranks.port) in listening  # 127.0.0.1 in /proc's byte order
    assert all(address == "0100007F" for address, _ in listening), listening


def test_four_ranks_hybrid_ulysses_and_ring(checkpoint, model):
    group = WorkerGroup(GroupSettings(4, "cpu", _free_port_pair())).start()
    try:
        for index, layout in enumerate([ParallelLayout(2, 2, "split"), ParallelLayout(2, 2, "replicated"),
                                        ParallelLayout(4, 1, "split"), ParallelLayout(1, 2, "replicated", 2)]):
            # 3 text tokens on 4 ranks: one rank's text piece is only padding.
            request = _request(checkpoint, layout, seed=10 + index, with_condition=index == 1, text_tokens=3)
            _check_equal_to_in_process(model, request, group.run(request))
    finally:
        group.shutdown()


# ------------------------------------------------------------------------- through the sampler node

SAMPLER_ARGS = dict(method="i2v", steps=3, guidance=7.5, guidance_img=3.0, text_osci=True, image_osci=True,
                    scale_temporal_osci=True, shift=True, flow_shift=0.0, branch_mode="fast")


def _node_inputs(host, checkpoint):
    shutil.copy(checkpoint, host.folder_paths(host.DIFFUSION_MODELS)[0] / "tiny.safetensors")
    (model,) = OpenSoraModelLoader().execute("tiny.safetensors", "fp32")
    (noise,) = OpenSoraNoise().execute("hunyuan_vae", "custom", "16:9", 80, 48, 9, 1, 0, "cpu", "fp32")
    g = torch.Generator().manual_seed(4)
    conditioning = TextConditioning(torch.randn(1, 5, 32, generator=g), torch.randn(1, 24, generator=g),
                                    torch.randn(1, 5, 32, generator=g), torch.randn(1, 24, generator=g),
                                    ("a prompt",), ("",))
    return model, noise, conditioning


def test_sampler_node_with_parallel_settings_equals_in_process(two_ranks, checkpoint, standalone_host,
                                                               monkeypatch):
    host = standalone_host
    images: dict[str, list] = {"parallel": [], "in-process": []}
    run = ["parallel"]

    class RecordingProgress(host.Progress):
        def update(self, steps=1, preview=None):
            images[run[0]].append(preview)
            super().update(steps, preview)

    monkeypatch.setattr(host, "Progress", RecordingProgress)
    monkeypatch.setattr(host, "previews_enabled", lambda: True)
    model, noise, conditioning = _node_inputs(host, checkpoint)
    (settings,) = OpenSoraParallelSettings().execute(2, 1, 0, "replicated", two_ranks.port, "cpu")
    (parallel,) = OpenSoraSampler().execute(model, conditioning, noise, **SAMPLER_ARGS, parallel=settings)
    run[0] = "in-process"
    (in_process,) = OpenSoraSampler().execute(model, conditioning, noise, **SAMPLER_ARGS)
    assert (parallel["samples"] - in_process["samples"]).abs().max().item() <= TOLERANCE
    assert parallel["samples"].shape == (1, 16, 3, 6, 10)
    # Latent previews come back from rank 0: the last step's picture equals the in-process one.
    assert images["parallel"] and images["parallel"][-1].size == images["in-process"][-1].size == (10, 6)
    pixels = {run: torch.tensor(list(pictures[-1].tobytes())) for run, pictures in images.items()}
    difference = pixels["parallel"] - pixels["in-process"]
    assert difference.abs().max().item() <= 1  # one 8-bit level for rounding


def test_sampler_node_reports_a_busy_port_and_keeps_working_in_process(checkpoint, standalone_host):
    model, noise, conditioning = _node_inputs(standalone_host, checkpoint)
    port = _free_port_pair()
    (settings,) = OpenSoraParallelSettings().execute(2, 1, 0, "split", port, "cpu")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", port))
        with pytest.raises(WorkerGroupError, match=f"Port {port} .* in use"):
            OpenSoraSampler().execute(model, conditioning, noise, **SAMPLER_ARGS, parallel=settings)
    (latent,) = OpenSoraSampler().execute(model, conditioning, noise, **SAMPLER_ARGS)
    assert torch.isfinite(latent["samples"]).all()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU: the one-GPU NCCL worker path is "
                                                          "compared with in-process sampling on the GPU")
def test_one_gpu_worker_equals_in_process_sampling(checkpoint):
    gpu_model = load_mmdit(checkpoint, dtype=torch.float32, device="cuda")
    group = WorkerGroup(GroupSettings(1, "cuda", _free_port_pair())).start()
    try:
        request = _request(checkpoint, ParallelLayout(1, 1), with_condition=True)
        latent = group.run(request)
        expected = run_sampling(gpu_model, request.sampling, torch.device("cuda"), torch.float32)
        assert (latent - expected.cpu()).abs().max().item() <= TOLERANCE
    finally:
        group.shutdown()


# ------------------------------------------------------------------------- a group over two "hosts"

def _join_as_other_host(settings: GroupSettings, log: Path, pack: Path | None = None) -> subprocess.Popen:
    """Run the documented join command, as a user would on the other host (here on the same machine)."""
    command = join_command(settings, python=sys.executable)
    if pack is not None:
        command = command.replace(str(WORKER_SCRIPT), str(pack / "parallel" / "worker.py"))
    with open(log, "wb") as output:
        return subprocess.Popen(command, shell=True, stdout=output, stderr=subprocess.STDOUT, start_new_session=True)


def _join_with_other_ranks(settings: GroupSettings, ranks: int, log: Path) -> subprocess.Popen:
    """The join command with another --nproc-per-node than the ComfyUI host's, a user's mistake."""
    command = join_command(settings, python=sys.executable)
    command = command.replace(f"--nproc-per-node={settings.ranks}", f"--nproc-per-node={ranks}")
    with open(log, "wb") as output:
        return subprocess.Popen(command, shell=True, stdout=output, stderr=subprocess.STDOUT, start_new_session=True)


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=30)


def test_two_hosts_give_the_latent_of_one_host_and_of_in_process_sampling(two_ranks, checkpoint, model,
                                                                          standalone_host, tmp_path):
    """Host 1 is the sampler with 1 rank, host 2 a second torchrun (--nnodes 2) with 1 rank: the job, the
    result and the previews go through the store; checkpoint errors name the host and what to change."""
    job = _request(checkpoint, ParallelLayout(1, 2, "split"), seed=11, with_condition=True)
    one_host = warm_groups.worker_group(two_ranks).run(job)
    (settings,) = OpenSoraParallelSettings().execute(1, 1, 0, "split", _free_port_pair(), "cpu", 2, "", 120)
    other = _join_as_other_host(settings.group, tmp_path / "other_host.log")
    try:
        group = warm_groups.worker_group(settings.group)  # stops the one-host group, waits for the other host
        assert sorted(facts["node"] for facts in group.ranks_facts) == [0, 1]
        assert sorted(facts["rank"] for facts in group.ranks_facts) == [0, 1]
        two_hosts = group.run(job)
        assert (two_hosts - one_host).abs().max().item() <= TOLERANCE
        _check_equal_to_in_process(model, job, two_hosts)

        size = os.path.getsize(checkpoint)
        with pytest.raises(WorkerGroupError, match=f"on host .* has {size} bytes, the ComfyUI host's has "
                                                   f"{size + 1}: every host .* same file at the same path"):
            group.run(replace(job, checkpoint_bytes=size + 1))
        missing = str(tmp_path / "only_on_this_host.safetensors")
        with pytest.raises(WorkerGroupError, match=f"{missing} does not exist on host .*: every host of the "
                                                   "group needs the same file at the same path"):
            group.run(replace(job, checkpoint=missing))

        # Through the sampler node, on the same warm group: equal to in-process sampling.
        model_value, noise, conditioning = _node_inputs(standalone_host, checkpoint)
        (parallel,) = OpenSoraSampler().execute(model_value, conditioning, noise, **SAMPLER_ARGS, parallel=settings)
        assert warm_groups.worker_group(settings.group) is group
        (in_process,) = OpenSoraSampler().execute(model_value, conditioning, noise, **SAMPLER_ARGS)
        assert (parallel["samples"] - in_process["samples"]).abs().max().item() <= TOLERANCE
        warm_groups.shutdown_worker_groups()
        assert other.wait(timeout=30) == 0  # the other host's ranks leave when the sampler stops the group
    finally:
        warm_groups.shutdown_worker_groups()
        _stop(other)


def test_a_host_that_never_joins_is_reported_with_the_command_to_run():
    settings = GroupSettings(1, "cpu", _free_port_pair(), hosts=2, join_timeout=3)
    group = WorkerGroup(settings)
    with pytest.raises(WorkerGroupError) as failed:
        group.start()
    message = str(failed.value)
    assert "did not join the worker group within 3 s (0 of 2 ranks ready" in message
    assert join_command(settings) in message and "--nnodes=2" in join_command(settings)
    assert "127.0.0.1, which other machines cannot reach: set the address input" in message
    assert group.process is None  # the launcher waiting in the rendezvous is stopped
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", settings.port))  # and the store's port is free again


def test_a_host_running_another_copy_of_the_pack_is_refused(checkpoint, tmp_path):
    pack = tmp_path / "ComfyUI-OpenSora"
    shutil.copytree(WORKER_SCRIPT.parents[1], pack,
                    ignore=shutil.ignore_patterns("tests", ".git", "__pycache__", "example_workflows", "web"))
    with open(pack / "parallel" / "serve.py", "a") as changed:
        changed.write("\n# a local edit on the other host\n")
    settings = GroupSettings(1, "cpu", _free_port_pair(), hosts=2, join_timeout=120)
    other = _join_as_other_host(settings, tmp_path / "other_host.log", pack)
    try:
        with pytest.raises(WorkerGroupError, match=f"runs the pack at {pack} in version .* \\(worker code .*\\), this "
                                                   "ComfyUI runs .*: install the same version of ComfyUI-OpenSora"):
            WorkerGroup(settings).start()
        other.wait(timeout=30)  # the refused host's launcher ends too
    finally:
        _stop(other)


def test_a_host_with_another_number_of_ranks_is_refused_with_the_setting_to_change(tmp_path):
    settings = GroupSettings(1, "cpu", _free_port_pair(), hosts=2, join_timeout=120)
    other = _join_with_other_ranks(settings, 2, tmp_path / "other_host.log")
    try:
        with pytest.raises(WorkerGroupError, match="formed with 3 ranks, but the settings ask for ranks x hosts = "
                                                   "1 x 2 = 2: start every other host with --nproc-per-node 1"):
            WorkerGroup(settings).start()
        other.wait(timeout=30)  # the refused host's launcher ends too
    finally:
        _stop(other)


def _parent(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="finds the other host's rank in Linux's /proc")
def test_a_host_that_goes_away_during_a_job_is_reported(checkpoint, tmp_path):
    settings = GroupSettings(1, "cpu", _free_port_pair(), hosts=2, join_timeout=120)
    other = _join_as_other_host(settings, tmp_path / "other_host.log")
    group = None
    try:
        group = WorkerGroup(settings).start()
        (remote_rank,) = [pid for pid in group.worker_pids() if _parent(pid) != group.process.pid]
        long_run = _request(checkpoint, ParallelLayout(1, 2), timesteps=torch.linspace(1, 0, 401).tolist())

        def end_the_other_host(step: int, preview) -> None:
            if other.poll() is None:  # its launcher and its rank (torchrun gives each rank its own session)
                os.killpg(other.pid, signal.SIGKILL)
                os.kill(remote_rank, signal.SIGKILL)

        with pytest.raises(WorkerGroupDied, match="started again on the next run \\(the other hosts then run their "
                                                  "join command again\\). Cause:\\nrank 0 on host"):
            group.run(long_run, on_progress=end_the_other_host)
        assert not group.alive()
    finally:
        if group is not None:
            group.shutdown(wait=False)
        _stop(other)


def test_the_readme_shows_the_join_command_the_error_prints():
    readme = (WORKER_SCRIPT.parents[1] / "README.md").read_text()
    shown = readme.split("# ComfyUI host 10.0.0.5; Parallel Settings: ranks 8, hosts 2, address 10.0.0.5, port 29600, "
                         "join_timeout 300\n")[1].split("\n# ")[0].replace(" \\\n    ", " ").strip()
    printed = join_command(GroupSettings(8, "cuda", 29600, hosts=2, address="10.0.0.5", join_timeout=300))
    pack_there = "/path/to/ComfyUI/custom_nodes/ComfyUI-OpenSora"
    assert shown == printed.replace(str(WORKER_SCRIPT.parents[1]), pack_there)
