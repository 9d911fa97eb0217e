"""A joined group through the nodes: 2 torchrun ranks (gloo, 127.0.0.1) join one group and run the
sampler and VAE Decode nodes, then leave it and run them again in-process. Joined, each rank's MMDiT
sees half of the image tokens (sequence parallel), the latent and frames equal the in-process ones,
and the decode's progress counts the passes each rank runs.
"""

from __future__ import annotations

import pytest
import torch

from factories_mmdit import write_tiny_mmdit
from factories_vae import write_tiny_hunyuan_vae
from torchrun_launch import run_ranks
from workflow_doubles import PACK_ROOT

pytest.importorskip("yunchang", reason="sequence-parallel sampling needs yunchang: pip install -r requirements-test.txt")

RANKS = 2
TIMEOUT_S = 120
IMAGE_TOKENS = 45  # 48 x 80 px, 9 frames: latent [16, 3, 6, 10] -> 3 x 3 x 5 tokens

WORKER = """
import runpy, sys, torch, torch.distributed as dist
from pathlib import Path
runpy.run_path(sys.argv[1])["import_pack"]()
from comfyui_opensora import host
from comfyui_opensora.nodes.model_loader import OpenSoraModelLoader
from comfyui_opensora.nodes.noise import OpenSoraNoise
from comfyui_opensora.nodes.sampler import OpenSoraSampler
from comfyui_opensora.nodes.vae import OpenSoraVAEDecode, OpenSoraVAELoader
from comfyui_opensora.parallel import joined
from comfyui_opensora.samplers.conditioning import TextConditioning
torch.set_num_threads(1)
models, out = Path(sys.argv[2]), Path(sys.argv[3])
host.configure_standalone(models_dir=models, output_dir=out, device="cpu")
dist.init_process_group("gloo")
rank = dist.get_rank()
(model,) = OpenSoraModelLoader().execute("tiny.safetensors", "fp32")
(vae,) = OpenSoraVAELoader().execute("vae.safetensors", "fp32")
(noise,) = OpenSoraNoise().execute("hunyuan_vae", "custom", "16:9", 80, 48, 9, 1, 0, "cpu", "fp32")
g = torch.Generator().manual_seed(4)
conditioning = TextConditioning(torch.randn(1, 5, 32, generator=g), torch.randn(1, 24, generator=g),
                                torch.randn(1, 5, 32, generator=g), torch.randn(1, 24, generator=g), ("a prompt",), ("",))
tokens, progress = [], []
model.module.img_in.register_forward_hook(lambda module, inputs, output: tokens.append(inputs[0].shape[1]))
host.add_progress_listener(lambda value, total: progress.append((value, total)))
results = {}
joined.join(dist.get_world_size(), [model.config.num_heads])
for run in ("joined", "in_process"):
    tokens.clear()
    (latent,) = OpenSoraSampler().execute(model, conditioning, noise, "i2v", 3, 7.5, 3.0, True, True, True, True,
                                          0.0, "fast")
    progress.clear()
    (frames,) = OpenSoraVAEDecode().execute(vae, latent, "reference")
    results[run] = (latent["samples"], frames[0], sorted(set(tokens)), list(progress))
    joined.leave()
torch.save(results, out / f"rank{rank}.pt")
dist.destroy_process_group()
"""


def test_nodes_in_a_joined_group_shard_the_tokens_and_match_in_process(tmp_path):
    models = tmp_path / "models"
    for folder in ("diffusion_models", "vae"):
        (models / folder).mkdir(parents=True)
    write_tiny_mmdit(models / "diffusion_models" / "tiny.safetensors")
    write_tiny_hunyuan_vae(models / "vae" / "vae.safetensors", seed=3)
    (tmp_path / "worker.py").write_text(WORKER)
    run_ranks(tmp_path / "worker.py", [str(PACK_ROOT / "__main__.py"), str(models), str(tmp_path)], RANKS, TIMEOUT_S)

    for rank in range(RANKS):
        results = torch.load(tmp_path / f"rank{rank}.pt")
        latent, frames, tokens, progress = results["joined"]
        alone_latent, alone_frames, alone_tokens, alone_progress = results["in_process"]
        assert tokens == [-(-IMAGE_TOKENS // RANKS)] and alone_tokens == [IMAGE_TOKENS]
        assert latent.shape == (1, 16, 3, 6, 10)
        assert (latent - alone_latent).abs().max().item() <= 1e-5
        assert frames.shape == alone_frames.shape == (9, 48, 80, 3)
        assert (frames - alone_frames).abs().max().item() <= 1e-5
        assert alone_progress[-1][0] == alone_progress[-1][1] > 0
        # one untiled decoder pass: rank 0 runs it (its bar completes), rank 1 has no work and no bar to move
        assert progress[-1] == alone_progress[-1] if rank == 0 else progress == []
