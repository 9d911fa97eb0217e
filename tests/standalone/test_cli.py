"""The command line: ``python3 <pack> generate`` runs the example workflows headless."""

from __future__ import annotations

import csv
import subprocess
import sys

import pytest

from comfyui_opensora.standalone import arguments, cli, downloads, workflow_edit, workflow_runner
from comfyui_opensora.tiny_checkpoints import write_tiny_model_folder

from workflow_doubles import PACK_ROOT, WORKFLOW_DIR, load_json, read_video, write_test_clip, write_test_image

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def tiny_models(standalone_host, tmp_path):
    """A models folder with tiny checkpoints under the released names (standalone_host restores the host)."""
    write_tiny_model_folder(tmp_path / "cli_models", "high_compression")
    return tmp_path / "cli_models"


TINY = ["--width", "48", "--height", "32", "--steps", "1", "--weight-dtype", "fp32", "--device", "cpu"]


def test_smoke_generates_a_video_offline(standalone_host, tmp_path, capsys):
    assert cli.main(["generate", "--smoke", "--output-dir", str(tmp_path / "out")]) == 0
    (video,) = (tmp_path / "out").rglob("*.mp4")
    assert video.relative_to(tmp_path / "out").as_posix() == "video_256px/smoke.mp4"  # the reference's layout
    frames, fps = read_video(video)
    assert frames.shape == (9, 192, 336, 3) and fps == 24
    said = capsys.readouterr().out
    assert "noise" in said  # it says the weights are random
    assert "as the official script: drawn from global seed 42 (2746317213 first)" in said


def test_smoke_of_the_issue_example_says_16_to_13(standalone_host, tmp_path, capsys):
    """SamplingOption(resolution, aspect_ratio="16:9", num_frames=16, guidance=7.0, seed=1234) on the CLI
    (144p instead of 720p keeps the test quick: same rules, 256x144)."""
    out = tmp_path / "out"
    assert cli.main(["generate", "--smoke", "--resolution", "144p", "--aspect-ratio", "16:9", "--num-frames", "16",
                     "--steps", "2", "--guidance", "7.0", "--seed", "1234", "--output-dir", str(out)]) == 0
    said = capsys.readouterr().out
    assert "num_frames: 16 -> 13 frames (as Open-Sora)" in said and "seed 1234" in said
    frames, fps = read_video(out / "video_144p" / "smoke.mp4")
    assert frames.shape == (13, 144, 256, 3) and fps == 24
    assert (out / "video_144p" / "smoke.txt").read_text().endswith(". 24 FPS. 4 motion score.")


def test_smoke_runs_the_t2i2v_graph_offline(standalone_host, tmp_path):
    """t2i2v from pack nodes only: Flux-dev first frame (saved as PNG + .txt), then the video."""
    assert cli.main(["generate", "--smoke", "--workflow", "t2i2v", "--output-dir", str(tmp_path / "out"),
                     "--prompt", "raining, sea"]) == 0
    (video,) = (tmp_path / "out").glob("video_*/*.mp4")  # the reference's naming: video_<resolution>/
    (frame,) = (tmp_path / "out").rglob("generated_condition/*.png")
    assert read_video(video)[0].shape == (9, 192, 336, 3)
    assert frame.with_suffix(".txt").read_text(encoding="utf-8") == "raining, sea"  # the image prompt has no suffix
    assert video.with_suffix(".txt").read_text(encoding="utf-8").strip() == "raining, sea. 24 FPS. 4 motion score."


def test_text_only_drops_either_kind_of_first_frame():
    """--text-only leaves the same text-to-video graph from the pack-node t2i2v and the ComfyUI-Flux variant."""
    def video_part(name: str) -> dict:
        graph = workflow_edit.without_flux_first_frame(workflow_runner.load_api_workflow(arguments.workflow_path(name)))
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
        video = out / "video_custom" / f"{name}.mp4"  # the name column names the file, as the reference
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
                     "--num-frames", "13", "--models-dir", str(tiny_models), "--output-dir", str(hc), *tiny_dc_ae]) == 0
    # 13 frames: the reference's 4 latent frames decode to 16 and the first 13 are kept (not a multiple of 4)
    assert read_video(next(hc.rglob("*.mp4")))[0].shape == (13, 32, 64, 3)


def test_clear_errors_for_what_cannot_run(tiny_models, tmp_path):
    common = ["--models-dir", str(tiny_models), "--output-dir", str(tmp_path)]
    with pytest.raises(SystemExit, match="only inside ComfyUI.*--text-only"):
        cli.main(["--debug", "generate", "--workflow", "t2i2v_comfy_flux", "--prompt", "x", *common])
    with pytest.raises(SystemExit, match="takes no reference"):
        cli.main(["--debug", "generate", "--workflow", "t2v_256px", "--prompt", "x", "--ref", "a.png", *common])
    with pytest.raises(SystemExit, match="Unknown workflow 'nope'.*t2v_256px"):
        cli.main(["--debug", "generate", "--workflow", "nope", "--prompt", "x", *common])
    with pytest.raises(SystemExit, match="diffusion_models/missing.safetensors is missing.*download --what t2v"):
        cli.main(["--debug", "generate", "--prompt", "x", "--model", "missing.safetensors", *common])
    with pytest.raises(SystemExit, match="'text' column"):
        (tmp_path / "bad.csv").write_text("prompt\nhello\n")
        cli.main(["--debug", "generate", "--csv", str(tmp_path / "bad.csv"), *common])


def test_downloads_place_every_file_the_workflows_name():
    """Each weight file an example workflow loads is fetched by `download` into the folder its loader reads."""
    loaders = {"OpenSoraModelLoader": ("model_name", "diffusion_models"), "UNETLoader": ("unet_name", "diffusion_models"),
               "OpenSoraVAELoader": ("vae_name", "vae"), "VAELoader": ("vae_name", "vae"),
               "OpenSoraTextEncoderLoader": ("t5_name", "text_encoders"), "DualCLIPLoader": ("clip_name1", "text_encoders")}
    families = {"t2v_256px": "t2v", "t2v_256px_lora": "t2v", "t2v_768px": "t2v", "i2v_head": "i2v", "i2v_loop": "i2v", "v2v_head": "i2v",
                "t2i2v": "t2i2v", "t2i2v_comfy_flux": "t2i2v", "high_compression": "high_compression",
                "high_compression_comfy_flux": "high_compression"}
    assert set(families) == set(arguments.available_workflows())
    for name, family in families.items():
        placed = {(item.folder, item.name) for item in downloads.DOWNLOADS[family]}
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
        weights = {item.name for item in downloads.DOWNLOADS[family] if item.name.endswith(".safetensors")}
        assert weights == loaded, family
    assert "Open_Sora_v2.safetensors" not in {item.name for item in downloads.DOWNLOADS["high_compression"]}


def test_pack_folder_runs_as_a_script():
    """`python3 <pack folder> ...` imports the pack by path, without ComfyUI."""
    done = subprocess.run([sys.executable, str(PACK_ROOT), "workflows"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == arguments.available_workflows()


def test_help_and_usage_mistakes_answer_before_torch_is_imported():
    """`--help`, argparse mistakes and an unknown workflow need no heavy import: run with torch unimportable."""
    blocked = "import runpy, sys; sys.modules['torch'] = None; sys.argv = [{script!r}] + {argv!r}; " \
              "runpy.run_path({script!r}, run_name='__main__')"
    script = str(PACK_ROOT / "__main__.py")
    for argv, status, said in ((["--help"], 0, "generate"), (["generate", "--steps", "x"], 2, "invalid int value"),
                               (["generate", "--workflow", "nope"], 2, "error: Unknown workflow 'nope'")):
        done = subprocess.run([sys.executable, "-c", blocked.format(script=script, argv=argv)], capture_output=True,
                              text=True, timeout=60)
        assert done.returncode == status and said in done.stdout + done.stderr, (argv, done.stderr)
        assert "Traceback" not in done.stderr


def test_weight_dtype_names_are_the_dtype_table():
    from comfyui_opensora.models import dtypes

    assert arguments.WEIGHT_DTYPE_CHOICES == tuple(dtypes.WEIGHT_DTYPES)
    assert arguments.FP8_DTYPES == tuple(dtypes.FP8_DTYPES)


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


# ----------------------------------------------------------------- the reference's options and naming


def test_table_range_batches_samples_and_names(tiny_models, tmp_path, capsys):
    """Rows 1..2 of a 3-row table, 2 samples each with seed+k, batches of 2: four files named as the
    reference names them, each with its own sidecar carrying the table's fps."""
    table = tmp_path / "scenes.csv"
    table.write_text("text,fps\nrow zero,24\na boat on a lake,24\na fox in the snow,30\n", encoding="utf-8")
    out = tmp_path / "out"
    assert cli.main(["generate", "--csv", str(table), "--start_index", "1", "--end-index", "3", "--num_sample", "2",
                     "--batch-size", "2", "--sampling_option.seed", "5", "--num-frames", "5", "--models-dir",
                     str(tiny_models), "--save-dir", str(out), *TINY]) == 0
    folder = out / "video_custom"
    names = ["scenes_0001", "scenes_0002", "scenes_0001_1", "scenes_0002_1"]
    assert sorted(p.name for p in folder.iterdir()) == sorted(f"{n}.{e}" for n in names for e in ("mp4", "txt"))
    assert (folder / "scenes_0001.txt").read_text() == "a boat on a lake 12 FPS. 4 motion score."
    assert (folder / "scenes_0002_1.txt").read_text() == "a fox in the snow 15 FPS. 4 motion score."
    said = capsys.readouterr().out
    assert "sample 0, seed 5: scenes_0001, scenes_0002" in said and "sample 1, seed 6" in said
    same_seed_other_sample = read_video(folder / "scenes_0001.mp4")[0], read_video(folder / "scenes_0001_1.mp4")[0]
    assert same_seed_other_sample[0].shape == (5, 32, 48, 3)
    assert (same_seed_other_sample[0] != same_seed_other_sample[1]).any()  # seed 5 vs 6


def test_prompt_naming_prefix_and_prompt_as_path(tiny_models, tmp_path):
    common = ["--models-dir", str(tiny_models), "--num-frames", "1", *TINY]
    out = tmp_path / "out"
    assert cli.main(["generate", "--prompt", "raining, sea", "--save-prefix", "run_", "--output-dir", str(out),
                     "--motion-score", "20", "--fps", "16", *common]) == 0
    assert (out / "image_custom" / "run_prompt_0000.png").is_file()  # one frame: a PNG, as the reference
    assert (out / "image_custom" / "run_prompt_0000.txt").read_text() == "raining, sea. 16 FPS. 20 motion score."
    assert cli.main(["generate", "--prompt", "raining, sea.", "--prompt-as-path", "--output-dir", str(out),
                     *common]) == 0
    assert (out / "image_custom" / "raining, sea-0.png").is_file()


def test_sampler_and_loader_options_reach_the_nodes():
    graph = workflow_runner.load_api_workflow(arguments.workflow_path("i2v_head"))
    settings = dict(guidance=7.0, guidance_img=2.5, text_osci=False, image_osci=False, scale_temporal_osci=False,
                    shift=False, flow_shift=3.0, branch_mode="reference", fps=16, motion_score=0,
                    weight_dtype="fp8_e4m3fn", attention="sdpa", offload_blocks=4, noise_device="gpu",
                    noise_dtype="bf16", batch_size=2, cond_type="i2v_tail", resolution="720p")
    applied = workflow_edit.apply_settings(graph, settings)
    nodes = {n["class_type"]: n["inputs"] for n in applied.values()}
    sampler = nodes["OpenSoraSampler"]
    assert (sampler["guidance"], sampler["guidance_img"], sampler["flow_shift"], sampler["branch_mode"]) == (
        7.0, 2.5, 3.0, "reference")
    assert not any(sampler[k] for k in ("text_osci", "image_osci", "scale_temporal_osci", "shift"))
    assert (nodes["OpenSoraTextEncode"]["fps"], nodes["OpenSoraSaveVideo"]["fps"]) == (16, 16.0)
    assert nodes["OpenSoraTextEncode"]["motion_score"] == "0"
    assert nodes["OpenSoraModelLoader"]["weight_dtype"] == "fp8_e4m3fn"  # fp8 for the diffusion model only
    assert nodes["OpenSoraTextEncoderLoader"]["weight_dtype"] == "bf16" and nodes["OpenSoraVAELoader"]["dtype"] == "bf16"
    assert (nodes["OpenSoraModelLoader"]["attention"], nodes["OpenSoraModelLoader"]["offload_blocks"]) == ("sdpa", 4)
    noise = nodes["OpenSoraNoise"]
    assert (noise["noise_device"], noise["noise_dtype"], noise["batch_size"], noise["resolution"]) == (
        "gpu", "bf16", 2, "720p")
    assert nodes["OpenSoraImageCondition"]["cond_type"] == "i2v_tail"


def test_cond_type_t2v_turns_an_i2v_workflow_into_text_to_video(tiny_models, tmp_path):
    t2v = workflow_edit.set_cond_type(workflow_runner.load_api_workflow(arguments.workflow_path("i2v_loop")), "t2v")
    kinds = sorted(n["class_type"] for n in t2v.values())
    assert "OpenSoraImageCondition" not in kinds and "LoadImage" not in kinds
    sampler = next(n for n in t2v.values() if n["class_type"] == "OpenSoraSampler")
    assert "image_condition" not in sampler["inputs"]
    out = tmp_path / "out"
    assert cli.main(["generate", "--workflow", "i2v_loop", "--cond_type", "t2v", "--prompt", "a lake",
                     "--num-frames", "5", "--models-dir", str(tiny_models), "--output-dir", str(out), *TINY]) == 0
    assert read_video(out / "video_custom" / "prompt_0000.mp4")[0].shape == (5, 32, 48, 3)
    with pytest.raises(SystemExit, match="needs a workflow with an image condition"):
        workflow_edit.set_cond_type(workflow_runner.load_api_workflow(arguments.workflow_path("t2v_256px")), "i2v_head")


def test_bad_reference_options_are_refused_with_what_to_write(tiny_models, tmp_path, monkeypatch):
    common = ["--prompt", "x", "--models-dir", str(tiny_models), "--output-dir", str(tmp_path)]
    with pytest.raises(SystemExit, match="--resolution: Invalid resolution '720'.*<N>px"):
        cli.main(["--debug", "generate", "--resolution", "720", *common])
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)  # dynamic asks the refiner endpoint: it needs a key
    with pytest.raises(SystemExit, match="No API key.*OPENAI_API_KEY"):
        cli.main(["--debug", "generate", "--motion-score", "dynamic", *common])
    with pytest.raises(SystemExit, match="--motion-score: .*whole number"):
        cli.main(["--debug", "generate", "--motion-score", "high", *common])
    with pytest.raises(SystemExit, match="select no row"):
        cli.main(["--debug", "generate", "--start-index", "3", *common])


# ------------------------------------------------------------------------------ first-run mistakes


def _mistake(capsys, argv: list[str]) -> str:
    """A user mistake: exit status 2 and one or two lines saying what to change, no traceback."""
    assert cli.main(argv) == arguments.USER_ERROR
    said = capsys.readouterr().err
    assert "Traceback" not in said and said.startswith("error: ")
    assert len(said.strip().splitlines()) <= 3  # the message (1-2 lines) and the --debug hint
    return said


def test_first_run_mistakes_are_short_and_say_what_to_change(tiny_models, tmp_path, capsys):
    common = ["--models-dir", str(tiny_models), "--output-dir", str(tmp_path / "out")]
    said = _mistake(capsys, ["generate", "--workflow", "nope", "--prompt", "x", *common])
    assert "Unknown workflow 'nope'" in said and "t2v_256px" in said
    said = _mistake(capsys, ["generate", "--workflow", "i2v_head", "--prompt", "x", *common])
    assert "--ref FILE" in said
    said = _mistake(capsys, ["generate", "--workflow", "i2v_head", "--prompt", "x", "--ref",
                             str(tmp_path / "missing.png"), *common])
    assert "missing.png: no such file" in said
    (tmp_path / "table.csv").write_text("text,refs\nhello,x.png\n")
    said = _mistake(capsys, ["generate", "--csv", str(tmp_path / "table.csv"), *common])
    assert "unknown column(s) 'refs'" in said and "text, ref, neg, name, fps" in said
    empty = tmp_path / "empty_models"
    empty.mkdir()
    said = _mistake(capsys, ["generate", "--prompt", "x", "--models-dir", str(empty)])
    assert "diffusion_models/Open_Sora_v2.safetensors is missing" in said and "download --what t2v" in said
    said = _mistake(capsys, ["generate", "--smoke", "--csv", str(tmp_path / "table.csv")])
    assert "--smoke" in said and "would ignore --csv" in said
    said = _mistake(capsys, ["generate", "--smoke", "--steps", "0"])
    assert "'steps': 0 is smaller than the minimum 1" in said


def test_debug_shows_the_traceback(tiny_models, tmp_path):
    with pytest.raises(SystemExit, match="Unknown workflow"):
        cli.main(["--debug", "generate", "--workflow", "nope", "--prompt", "x", "--models-dir", str(tiny_models)])


def test_progress_lines_name_the_stage(capsys, monkeypatch):
    monkeypatch.setattr(cli.sys.stderr, "isatty", lambda: False, raising=False)
    progress = cli.StageProgress(lambda line: None)
    progress.start_node("7", "OpenSoraSampler")
    for value in range(1, 51):
        progress(value, 50)
    lines = capsys.readouterr().err.split("\n")
    assert "    sampling 5/50" in lines and "    sampling 50/50" in lines and len([x for x in lines if x]) == 10
