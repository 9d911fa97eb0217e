"""The example workflows inside a real ComfyUI, through its HTTP API, on tiny random checkpoints.

Needs a ComfyUI checkout: ``COMFYUI_DIR=/path/to/ComfyUI`` (and ``COMFYUI_PYTHON`` when ComfyUI's
interpreter is not the one running pytest). The pack is linked into a temporary base directory's
custom_nodes as ``ComfyUI-OpenSora``; models, inputs and outputs live there too, so the checkout is
not touched. ComfyUI runs with ``--cpu``.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import numpy as np
import pytest

from comfyui_opensora.tiny_checkpoints import LORA_FOLDER, write_tiny_lora, write_tiny_model_folder
from comfyui_opensora.nodes import NODE_CLASS_MAPPINGS
from comfyui_opensora.standalone.workflow_edit import FLUX_NODE_TYPES, without_flux_first_frame

from workflow_doubles import (PACK_ROOT, api_twins, check_video_output, prepare_test_graph, read_video,
                              two_prompt_batch_graph, write_test_inputs)

COMFYUI_DIR = os.environ.get("COMFYUI_DIR")
COMFYUI_PYTHON = os.environ.get("COMFYUI_PYTHON", sys.executable)
PACK_FOLDER_NAME = "ComfyUI-OpenSora"
START_TIMEOUT_S = 120
RUN_TIMEOUT_S = 180

pytestmark = [
    pytest.mark.comfyui,
    pytest.mark.skipif(
        not COMFYUI_DIR,
        reason="COMFYUI_DIR is not set: point it at a ComfyUI checkout (and COMFYUI_PYTHON at its Python) "
               "to run the example workflows inside a real ComfyUI",
    ),
]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=30) as response:
        return json.loads(response.read())


def _post(url: str, body: dict) -> tuple[int, dict]:
    request = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"{}")


class ComfyServer:
    """A ComfyUI process on a free port with its own base directory."""

    def __init__(self, base: Path):
        self.base = base
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = base / "comfyui.log"
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        command = [
            COMFYUI_PYTHON, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(self.port),
            "--base-directory", str(self.base), "--disable-auto-launch",
        ]
        env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PYTHONUNBUFFERED="1")
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(command, cwd=COMFYUI_DIR, stdout=log, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"ComfyUI exited with {self.process.returncode}:\n{self.log()[-3000:]}")
            try:
                _get(f"{self.url}/system_stats")
                return
            except (urllib.error.URLError, ConnectionError, OSError):
                time.sleep(0.5)
        raise RuntimeError(f"ComfyUI did not answer within {START_TIMEOUT_S} s:\n{self.log()[-3000:]}")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace") if self.log_path.exists() else ""

    def run(self, graph: dict) -> dict:
        """Queue an API prompt and wait for its history entry."""
        status, answer = _post(f"{self.url}/prompt", {"prompt": graph, "client_id": uuid.uuid4().hex})
        assert status == 200, f"ComfyUI refused the workflow ({status}): {json.dumps(answer)[:3000]}"
        prompt_id = answer["prompt_id"]
        deadline = time.monotonic() + RUN_TIMEOUT_S
        while time.monotonic() < deadline:
            history = _get(f"{self.url}/history/{prompt_id}")
            if prompt_id in history and history[prompt_id].get("status", {}).get("completed") is not None:
                entry = history[prompt_id]
                if entry["status"].get("status_str") in ("success", "error"):
                    return entry
            time.sleep(0.5)
        raise AssertionError(f"The workflow did not finish within {RUN_TIMEOUT_S} s.")


def _execution_error(status: dict) -> str:
    for event, data in status.get("messages", []):
        if event == "execution_error":
            return (f"node {data.get('node_id')} ({data.get('node_type')}): {data.get('exception_type')}: "
                    f"{data.get('exception_message')}\n" + "".join(data.get("traceback", []))[-3000:])
    return json.dumps(status)[-3000:]


@pytest.fixture(scope="module")
def comfy(tmp_path_factory):
    base = tmp_path_factory.mktemp("comfy_base")
    (base / "custom_nodes").mkdir()
    (base / "custom_nodes" / PACK_FOLDER_NAME).symlink_to(PACK_ROOT, target_is_directory=True)
    write_tiny_model_folder(base / "models", "high_compression")
    write_tiny_lora(base / "models" / "loras" / LORA_FOLDER)
    (base / "input").mkdir()
    write_test_inputs(base / "input")
    server = ComfyServer(base)
    server.start()
    yield server
    server.stop()


def test_pack_imports_and_registers_every_node(comfy):
    log = comfy.log()
    failures = [line for line in log.splitlines() if "IMPORT FAILED" in line or "Cannot import" in line]
    ours = [line for line in failures if PACK_FOLDER_NAME in line]
    assert not ours, "The pack failed to import:\n" + "\n".join(ours) + "\n" + log[-3000:]
    info = _get(f"{comfy.url}/object_info")
    missing = sorted(set(NODE_CLASS_MAPPINGS) - set(info))
    assert not missing, f"Nodes missing from /object_info: {missing}"


def test_example_workflows_are_listed_as_templates(comfy):
    templates = _get(f"{comfy.url}/workflow_templates")
    shipped = sorted(p.stem for p in (PACK_ROOT / "example_workflows").glob("*.json"))
    assert sorted(templates.get(PACK_FOLDER_NAME, [])) == shipped


NO_TINY_FLUX = (
    "its Flux-dev first frame needs the real flux1-dev / T5-XXL / CLIP-L files: ComfyUI's Flux detection fixes "
    "hidden size 3072, 24 heads and a 4096-wide text input (comfy/model_detection.py), so no tiny stand-in loads"
)


@pytest.mark.parametrize("name", api_twins())
def test_workflow_runs_in_comfyui(comfy, name):
    graph = prepare_test_graph(name)
    if any(n["class_type"] in FLUX_NODE_TYPES for n in graph.values()):
        if name == "t2i2v_comfy_flux":
            pytest.skip(f"{name}: {NO_TINY_FLUX}; without it the graph is t2v_256px (run above)")
        graph = without_flux_first_frame(graph)  # still runs the Video DC-AE model and autoencoder
    entry = comfy.run(graph)
    status = entry["status"]
    assert status["status_str"] == "success", _execution_error(status)
    files = [
        comfy.base / "output" / item.get("subfolder", "") / item["filename"]
        for output in entry["outputs"].values()
        for item in output.get("images", [])
    ]
    videos = [path for path in files if path.suffix == ".mp4"]  # t2i2v also reports its first-frame PNG
    assert videos, f"No video reported: {entry['outputs']}"
    for path in videos:
        check_video_output(graph, path)


def test_cancel_during_a_long_decode_takes_effect_within_2_s(comfy):
    """Cancel (POST /interrupt) while VAE Decode runs one long untiled pass stops it within 2 s: the pack
    checks ComfyUI's interrupt flag after every decoder convolution and attention block, not only between chunks."""
    graph = {
        "1": {"class_type": "OpenSoraVAELoader", "inputs": {"vae_name": "hunyuan_vae.safetensors", "dtype": "fp32"}},
        "2": {"class_type": "OpenSoraNoise", "inputs": {
            "autoencoder": "hunyuan_vae", "resolution": "custom", "aspect_ratio": "1:1", "width": 256, "height": 256,
            # 97 frames untiled: the mid-block attention over 25x32x32 positions alone was ~10 s on a CPU
            # before it was split into per-frame query blocks with a Cancel check after each.
            "num_frames": 97, "batch_size": 1, "seed": 1, "noise_device": "cpu", "noise_dtype": "fp32"}},
        "3": {"class_type": "OpenSoraVAEDecode", "inputs": {"vae": ["1", 0], "samples": ["2", 0], "tiling": "none"}},
        "4": {"class_type": "PreviewImage", "inputs": {"images": ["3", 0]}},
    }
    status, answer = _post(f"{comfy.url}/prompt", {"prompt": graph, "client_id": uuid.uuid4().hex})
    assert status == 200, answer
    prompt_id = answer["prompt_id"]
    deadline = time.monotonic() + 30
    while not _get(f"{comfy.url}/queue")["queue_running"] and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(3)  # loader and noise take well under a second; the decode alone takes tens of seconds here
    asked = time.monotonic()
    interrupt = urllib.request.Request(f"{comfy.url}/interrupt", b"{}", {"Content-Type": "application/json"})
    with urllib.request.urlopen(interrupt, timeout=30) as response:  # answers with an empty body
        assert response.status == 200
    while time.monotonic() < asked + 30:
        entry = _get(f"{comfy.url}/history/{prompt_id}").get(prompt_id)
        if entry and entry.get("status", {}).get("completed") is not None:
            break
        time.sleep(0.05)
    stopped_after = time.monotonic() - asked
    events = dict((event, data) for event, data in entry["status"]["messages"])
    assert "execution_interrupted" in events, entry["status"]
    assert events["execution_interrupted"]["node_type"] == "OpenSoraVAEDecode"  # it was mid-decode
    assert stopped_after < 2.0, f"Cancel took {stopped_after:.1f} s"


@pytest.mark.parametrize("setting, value, message", [
    ("filename_prefix", "../escape", "contains '..'"),
    ("filename_prefix", "/tmp/escape", "absolute path"),
    ("crf", 60, "crf for mp4 must be between 0 and 51"),
])
def test_bad_save_settings_are_refused_when_queued(comfy, setting, value, message):
    """VALIDATE_INPUTS turns bad Save Video settings into HTTP 400 before any node runs."""
    graph = prepare_test_graph("t2v_256px")
    save_ids = [i for i, n in graph.items() if n["class_type"] == "OpenSoraSaveVideo"]
    assert save_ids
    graph[save_ids[0]]["inputs"][setting] = value
    queue_before = _get(f"{comfy.url}/queue")
    status, answer = _post(f"{comfy.url}/prompt", {"prompt": graph, "client_id": uuid.uuid4().hex})
    assert status == 400, answer
    errors = answer["node_errors"][save_ids[0]]["errors"]
    assert errors[0]["type"] == "custom_validation_failed" and message in errors[0]["details"], errors
    assert _get(f"{comfy.url}/queue") == queue_before  # nothing was queued


def test_prompt_truncation_is_reported_on_the_node(comfy):
    """A prompt past CLIP's 77 tokens runs, and the text node's output carries the warning for the UI."""
    graph = prepare_test_graph("t2v_256px")
    encode_id = next(i for i, n in graph.items() if n["class_type"] == "OpenSoraTextEncode")
    graph[encode_id]["inputs"]["prompt"] = " ".join(["a red fox runs through deep snow"] * 20)
    entry = comfy.run(graph)
    assert entry["status"]["status_str"] == "success", _execution_error(entry["status"])
    warnings = entry["outputs"][encode_id]["text"]
    assert any("CLIP reads only the first 77" in w for w in warnings), warnings


def _video_of(comfy: ComfyServer, graph: dict):
    entry = comfy.run(graph)
    assert entry["status"]["status_str"] == "success", _execution_error(entry["status"])
    (item,) = [i for output in entry["outputs"].values() for i in output.get("images", []) if i["filename"].endswith(".mp4")]
    return read_video(comfy.base / "output" / item.get("subfolder", "") / item["filename"])[0]


def test_lora_leaves_the_shared_base_model_unchanged(comfy):
    """ComfyUI keeps one loaded base model for every graph: after a LoRA graph used it, the plain graph gives
    the same video as before (run with another seed in between, so the sampler really runs again)."""
    def graph(name: str, seed: int) -> dict:
        prompt = prepare_test_graph(name)
        next(n for n in prompt.values() if n["class_type"] == "OpenSoraNoise")["inputs"]["seed"] = seed
        return prompt

    before = _video_of(comfy, graph("t2v_256px", 1))
    adapted = _video_of(comfy, graph("t2v_256px_lora", 1))
    _video_of(comfy, graph("t2v_256px", 2))
    after = _video_of(comfy, graph("t2v_256px", 1))
    assert np.array_equal(before, after)
    assert not np.array_equal(before, adapted)


def test_prompt_refiner_asks_once_per_seed(comfy):
    """Re-queueing the same graph reuses ComfyUI's cached answer; a new seed asks again; the refined prompt
    reaches the video's sidecar."""
    if subprocess.run([COMFYUI_PYTHON, "-c", "import openai"], capture_output=True).returncode:
        pytest.skip(f"ComfyUI's Python ({COMFYUI_PYTHON}) lacks the prompt refiner's client: pip install openai")
    from llm_doubles import REFINED, FakeServer

    server = FakeServer()
    try:
        def graph(seed: int) -> dict:
            prompt = prepare_test_graph("t2v_256px")
            encode = next(n for n in prompt.values() if n["class_type"] == "OpenSoraTextEncode")
            prompt["90"] = {"class_type": "OpenSoraPromptRefiner", "inputs": {
                "prompt": "a red panda on a bike", "kind": "t2v", "model": "tiny-llm", "base_url": server.url,
                "api_key_env": "", "api_key_file": "", "dynamic_motion_score": False, "on_error": "fail",
                "seed": seed, "timeout": 10.0}}
            encode["inputs"]["prompt"] = ["90", 0]
            return prompt

        for seed in (3, 3, 4):
            entry = comfy.run(graph(seed))
            assert entry["status"]["status_str"] == "success", _execution_error(entry["status"])
        assert [r["body"]["seed"] for r in server.requests] == [3, 4]
        (item,) = [i for output in entry["outputs"].values() for i in output.get("images", [])]
        sidecar = (comfy.base / "output" / item.get("subfolder", "") / item["filename"]).with_suffix(".txt")
        assert sidecar.read_text(encoding="utf-8").strip() == f"{REFINED} 24 FPS. 4 motion score."
    finally:
        server.close()


def test_batch_of_two_saves_two_videos_and_two_sidecars_in_comfyui(comfy):
    """ComfyUI's list mapping: the decoder's two videos reach Save Video as two files with their prompts."""
    graph = two_prompt_batch_graph()
    next(n for n in graph.values() if n["class_type"] == "OpenSoraSaveVideo")["inputs"]["filename_prefix"] = "batch/two"
    entry = comfy.run(graph)
    assert entry["status"]["status_str"] == "success", _execution_error(entry["status"])
    items = [item for output in entry["outputs"].values() for item in output.get("images", [])]
    assert [item["filename"] for item in items] == ["two_00001_.mp4", "two_00002_.mp4"]
    folder = comfy.base / "output" / "batch"
    assert sorted(p.name for p in folder.iterdir()) == [
        "two_00001_.mp4", "two_00001_.txt", "two_00002_.mp4", "two_00002_.txt"]
    assert (folder / "two_00001_.txt").read_text() == "a red fox. 24 FPS. 4 motion score."
    assert (folder / "two_00002_.txt").read_text() == "a grey cat. 24 FPS. 4 motion score."
    for name in ("two_00001_.mp4", "two_00002_.mp4"):
        check_video_output(graph, folder / name)


def test_motion_score_is_checked_when_queued(comfy):
    """Text Encode's VALIDATE_INPUTS: ComfyUI refuses 'dynamic' at queue time with the node's message."""
    graph = prepare_test_graph("t2v_256px")
    for node in graph.values():
        if node["class_type"] == "OpenSoraTextEncode":
            node["inputs"]["motion_score"] = "dynamic"
    status, answer = _post(f"{comfy.url}/prompt", {"prompt": graph, "client_id": uuid.uuid4().hex})
    assert status == 400 and "no prompt refiner is configured" in json.dumps(answer), answer
