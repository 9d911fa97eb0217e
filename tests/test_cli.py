"""The command line: ``python3 <pack> generate`` runs the example workflows headless."""

from __future__ import annotations

import csv
import subprocess
import sys

import pytest

from comfyui_opensora.loaders.tiny_checkpoints import write_tiny_model_folder
from comfyui_opensora.nodes import cli

from workflow_doubles import one_thread  # noqa: F401  (autouse fixture)
from workflow_doubles import PACK_ROOT, WORKFLOW_DIR, load_json, read_video, write_test_clip, write_test_image


@pytest.fixture
def tiny_models(standalone_host, tmp_path):
    """A models folder with tiny checkpoints under the released names (standalone_host restores the host)."""
    write_tiny_model_folder(tmp_path / "cli_models", "high_compression")
    return tmp_path / "cli_models"


TINY = ["--width", "48", "--height", "32", "--steps", "1", "--weight-dtype", "fp32", "--device", "cpu"]


def test_smoke_generates_a_video_offline(standalone_host, tmp_path, capsys):
    assert cli.main(["generate", "--smoke", "--output-dir", str(tmp_path / "out")]) == 0
    (video,) = (tmp_path / "out").glob("*.mp4")
    frames, fps = read_video(video)
    assert frames.shape == (9, 192, 336, 3) and fps == 24
    assert "noise" in capsys.readouterr().out  # it says the weights are random


def test_smoke_runs_the_t2i2v_graph_offline(standalone_host, tmp_path):
    """t2i2v from pack nodes only: Flux-dev first frame (saved as PNG + .txt), then the video."""
    assert cli.main(["generate", "--smoke", "--workflow", "t2i2v", "--output-dir", str(tmp_path / "out"),
                     "--prompt", "raining, sea"]) == 0
    (video,) = (tmp_path / "out").glob("*.mp4")
    (frame,) = (tmp_path / "out").rglob("generated_condition/*.png")
    assert read_video(video)[0].shape == (9, 192, 336, 3)
    assert frame.with_suffix(".txt").read_text(encoding="utf-8") == "raining, sea"  # the image prompt has no suffix
    assert video.with_suffix(".txt").read_text(encoding="utf-8").strip() == "raining, sea. 24 FPS. 4 motion score."


def test_text_only_drops_either_kind_of_first_frame():
    """--text-only leaves the same text-to-video graph from the pack-node t2i2v and the ComfyUI-Flux variant."""
    def video_part(name: str) -> dict:
        graph = cli.without_flux_first_frame(cli.load_api_workflow(cli.workflow_path(name)))
        for node in graph.values():
            node["inputs"].pop("filename_prefix", None)
        return graph

    pack = video_part("t2i2v")
    assert pack == video_part("t2i2v_comfy_flux")
    assert {n["class_type"] for n in pack.values()} == {"OpenSoraModelLoader", "OpenSoraTextEncoderLoader",
                                                         "OpenSoraVAELoader", "OpenSoraTextEncode", "OpenSoraNoise",
                                                         "OpenSoraSampler", "OpenSoraVAEDecode", "OpenSoraSaveVideo"}


def test_csv_of_prompts_with_references_and_names(tiny_models, tmp_path):
    write_test_image(tmp_path / "a.png", 40, 60, seed=1)
    write_test_image(tmp_path / "b.png", 60, 40, seed=2)
    table = tmp_path / "prompts.csv"
    with table.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["text", "ref", "name"])
        writer.writerow(["a boat on a lake", f"{tmp_path / 'a.png'};{tmp_path / 'b.png'}", "boat"])
        writer.writerow(["a fox in the snow", f"{tmp_path / 'b.png'};{tmp_path / 'a.png'}", "fox"])
    out = tmp_path / "out"
    code = cli.main(["generate", "--workflow", "i2v_loop", "--csv", str(table), "--models-dir", str(tiny_models),
                     "--output-dir", str(out), "--num-frames", "5", "--seed", "7", *TINY])
    assert code == 0
    for name, text in (("boat", "a boat on a lake"), ("fox", "a fox in the snow")):
        (video,) = out.glob(f"{name}_*.mp4")
        frames, _fps = read_video(video)
        assert frames.shape == (5, 32, 48, 3)
        assert video.with_suffix(".txt").read_text().startswith(text + ". 24 FPS.")


def test_video_extension_and_text_only_high_compression(tiny_models, tmp_path):
    clip = write_test_clip(tmp_path / "clip.mp4", frames=34, height=40, width=56)
    out = tmp_path / "out"
    assert cli.main(["generate", "--workflow", "v2v_head", "--prompt", "more", "--ref", str(clip), "--num-frames",
                     "33", "--models-dir", str(tiny_models), "--output-dir", str(out), *TINY]) == 0
    assert read_video(next(out.rglob("*.mp4")))[0].shape == (33, 32, 48, 3)
    hc = tmp_path / "hc"
    tiny_dc_ae = ["--width", "64", "--height", "32", *TINY[4:]]
    assert cli.main(["generate", "--workflow", "high_compression", "--text-only", "--prompt", "a city at night",
                     "--num-frames", "8", "--models-dir", str(tiny_models), "--output-dir", str(hc), *tiny_dc_ae]) == 0
    assert read_video(next(hc.rglob("*.mp4")))[0].shape == (8, 32, 64, 3)


def test_clear_errors_for_what_cannot_run(tiny_models, tmp_path):
    common = ["--models-dir", str(tiny_models), "--output-dir", str(tmp_path)]
    with pytest.raises(SystemExit, match="only inside ComfyUI.*--text-only"):
        cli.main(["generate", "--workflow", "t2i2v_comfy_flux", "--prompt", "x", *common])
    with pytest.raises(SystemExit, match="takes no reference"):
        cli.main(["generate", "--workflow", "t2v_256px", "--prompt", "x", "--ref", "a.png", *common])
    with pytest.raises(SystemExit, match="Unknown workflow 'nope'.*t2v_256px"):
        cli.main(["generate", "--workflow", "nope", "--prompt", "x", *common])
    with pytest.raises(SystemExit, match="cannot run: .*'missing.safetensors' is not one of the choices"):
        cli.main(["generate", "--prompt", "x", "--model", "missing.safetensors", *common])
    with pytest.raises(SystemExit, match="'text' column"):
        (tmp_path / "bad.csv").write_text("prompt\nhello\n")
        cli.main(["generate", "--csv", str(tmp_path / "bad.csv"), *common])


def test_downloads_place_every_file_the_workflows_name():
    """Each weight file an example workflow loads is fetched by `download` into the folder its loader reads."""
    loaders = {"OpenSoraModelLoader": ("model_name", "diffusion_models"), "UNETLoader": ("unet_name", "diffusion_models"),
               "OpenSoraVAELoader": ("vae_name", "vae"), "VAELoader": ("vae_name", "vae"),
               "OpenSoraTextEncoderLoader": ("t5_name", "text_encoders"), "DualCLIPLoader": ("clip_name1", "text_encoders")}
    families = {"t2v_256px": "t2v", "t2v_256px_lora": "t2v", "t2v_768px": "t2v", "i2v_head": "i2v", "i2v_loop": "i2v", "v2v_head": "i2v",
                "t2i2v": "t2i2v", "t2i2v_comfy_flux": "t2i2v", "high_compression": "high_compression",
                "high_compression_comfy_flux": "high_compression"}
    assert set(families) == set(cli.available_workflows())
    for name, family in families.items():
        placed = {(item.folder, item.name) for item in cli.DOWNLOADS[family]}
        for node in load_json(WORKFLOW_DIR / "api" / f"{name}.json").values():
            for class_type, (field, folder) in loaders.items():
                if node["class_type"] == class_type:
                    extra = ("clip_name",) if class_type == "OpenSoraTextEncoderLoader" else ("clip_name2",) \
                        if class_type == "DualCLIPLoader" else ()
                    for key in (field, *extra):
                        assert (folder, node["inputs"][key]) in placed, (name, key)


def test_downloads_fetch_no_weights_the_family_does_not_load():
    """`download --what X` fetches only the weight files X's workflows load (plus tokenizer folders for the
    command line): high_compression needs neither Open_Sora_v2.safetensors (23.8 GB) nor hunyuan_vae."""
    fields = {"OpenSoraModelLoader": ("model_name",), "UNETLoader": ("unet_name",), "OpenSoraVAELoader": ("vae_name",),
              "VAELoader": ("vae_name",), "OpenSoraTextEncoderLoader": ("t5_name", "clip_name"),
              "DualCLIPLoader": ("clip_name1", "clip_name2")}
    families = {"t2v": ("t2v_256px", "t2v_768px"), "i2v": ("i2v_head", "i2v_loop", "v2v_head"),
                "t2i2v": ("t2i2v",), "high_compression": ("high_compression",)}
    for family, names in families.items():
        loaded = {node["inputs"][key] for name in names
                  for node in load_json(WORKFLOW_DIR / "api" / f"{name}.json").values()
                  for key in fields.get(node["class_type"], ())}
        weights = {item.name for item in cli.DOWNLOADS[family] if item.name.endswith(".safetensors")}
        assert weights == loaded, family
    assert "Open_Sora_v2.safetensors" not in {item.name for item in cli.DOWNLOADS["high_compression"]}


def test_pack_folder_runs_as_a_script():
    """`python3 <pack folder> ...` imports the pack by path, without ComfyUI."""
    done = subprocess.run([sys.executable, str(PACK_ROOT), "workflows"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == cli.available_workflows()


def test_download_lays_files_out_for_comfyui(tmp_path, monkeypatch):
    """With a stand-in for huggingface_hub (no network): every file lands where the loaders look."""
    import types

    fetched = []

    def hf_hub_download(repo, filename, local_dir):
        fetched.append((repo, filename))
        (local_dir / filename).parent.mkdir(parents=True, exist_ok=True)
        (local_dir / filename).write_bytes(b"weights")

    def snapshot_download(repo, allow_patterns, local_dir):
        for pattern in allow_patterns[:2]:  # a repo folder may lack some of the optional files
            hf_hub_download(repo, pattern, local_dir)

    fake = types.SimpleNamespace(hf_hub_download=hf_hub_download, snapshot_download=snapshot_download)
    monkeypatch.setitem(sys.modules, "huggingface_hub", fake)
    assert cli.main(["download", "--what", "t2i2v", "--models-dir", str(tmp_path)]) == 0
    for path in ("diffusion_models/Open_Sora_v2.safetensors", "diffusion_models/flux1-dev.safetensors",
                 "vae/hunyuan_vae.safetensors", "vae/flux1-dev-ae.safetensors", "text_encoders/t5xxl_fp16.safetensors",
                 "text_encoders/clip_l.safetensors", "text_encoders/t5xxl_fp16_tokenizer/spiece.model",
                 "text_encoders/clip_l_tokenizer/merges.txt"):
        assert (tmp_path / path).is_file(), path
    count = len(fetched)
    assert cli.main(["download", "--what", "t2i2v", "--models-dir", str(tmp_path)]) == 0
    assert len(fetched) == count  # present files are not fetched again
