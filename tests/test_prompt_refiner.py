"""Prompt refinement against a fake OpenAI-compatible server on 127.0.0.1 started by the tests: the request
fields, key handling, retries, timeouts, refusals, motion scores, images for i2v, the node's fallback, the
refined prompt reaching the video's sidecar, and the command-line option."""

from __future__ import annotations

import base64
import io
import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
import torch
from PIL import Image

from comfyui_opensora.llm import prompt_refiner as refiner
from comfyui_opensora.llm.prompt_refiner import Endpoint, RefineError
from comfyui_opensora.loaders.tiny_checkpoints import write_tiny_model_folder
from comfyui_opensora.nodes import NODE_CLASS_MAPPINGS
from comfyui_opensora.standalone import cli
from comfyui_opensora.nodes.prompt_refiner import OpenSoraPromptRefiner
from comfyui_opensora.standalone.workflow_runner import run_workflow

from workflow_doubles import API_DIR, CORE_NODE_DOUBLES, load_json, prepare_test_graph
from workflow_doubles import one_thread  # noqa: F401  (autouse fixture)

pytest.importorskip("openai", reason="the prompt refiner's client package (requirements-test.txt)")

REFINED = "A red panda pedals a small wooden bicycle along a snowy forest path, the camera tracking beside it."


def _answer(content: str | None = REFINED, refusal: str | None = None, finish: str = "stop") -> dict:
    return {"id": "x", "object": "chat.completion", "created": 0, "model": "fake",
            "choices": [{"index": 0, "finish_reason": finish,
                         "message": {"role": "assistant", "content": content, "refusal": refusal}}]}


class FakeServer:
    """Answers POST /v1/chat/completions from a script of (status, body, delay); records every request."""

    def __init__(self):
        self.script: list[tuple[int, dict, float]] = []
        self.default = (200, _answer(), 0.0)
        self.requests: list[dict] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 (http.server's name)
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                fake.requests.append({"path": self.path, "auth": self.headers.get("Authorization"), "body": body})
                status, answer, delay = fake.script.pop(0) if fake.script else fake.default
                if callable(answer):
                    status, answer = answer(body)
                time.sleep(delay)
                data = json.dumps(answer).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except OSError:
                    pass  # the client gave up (timeout test)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    fake = FakeServer()
    yield fake
    fake.close()


def _endpoint(server, timeout: float = 10.0) -> Endpoint:
    return Endpoint(server.url, "tiny-llm", "sk-test", timeout)


# ----------------------------------------------------------------------------------- the module


def test_request_carries_the_reference_settings_and_our_instructions(server):
    assert refiner.refine_prompt(_endpoint(server), "  a red panda on a bike ", "t2v", seed=7) == REFINED
    (request,) = server.requests
    body = request["body"]
    assert request["path"] == "/v1/chat/completions" and request["auth"] == "Bearer sk-test"
    assert body["model"] == "tiny-llm" and body["seed"] == 7
    assert (body["temperature"], body["top_p"], body["max_tokens"]) == (0.01, 0.7, 250)
    assert body["messages"] == [{"role": "system", "content": refiner.INSTRUCTIONS["t2v"]},
                                {"role": "user", "content": "a red panda on a bike"}]
    refiner.refine_prompt(_endpoint(server), "a cat", "t2i")
    assert server.requests[1]["body"]["messages"][0]["content"] == refiner.INSTRUCTIONS["t2i"]
    assert "seed" not in server.requests[1]["body"]


def test_answers_are_cleaned_to_one_prompt(server):
    server.script = [(200, _answer(f'  "{REFINED}\n"  '), 0.0)]
    assert refiner.refine_prompt(_endpoint(server), "x") == REFINED


def test_transient_failures_are_retried_three_times(server):
    server.script = [(500, {"error": {"message": "busy"}}, 0.0), (429, {"error": {"message": "slow down"}}, 0.0)]
    assert refiner.refine_prompt(_endpoint(server), "x") == REFINED
    assert len(server.requests) == 3
    server.requests.clear()
    server.script = [(503, {"error": {"message": "down for maintenance"}}, 0.0)] * 4
    with pytest.raises(RefineError, match="after 3 attempts: .* answered 503: down for maintenance") as error:
        refiner.refine_prompt(_endpoint(server), "x")
    assert len(server.requests) == 3 and "\n" not in str(error.value)


def test_a_refused_key_is_not_retried(server):
    server.script = [(401, {"error": {"message": "Incorrect API key provided"}}, 0.0)]
    with pytest.raises(RefineError, match=r"refused the API key \(401\): Incorrect API key"):
        refiner.refine_prompt(_endpoint(server), "x")
    assert len(server.requests) == 1


def test_timeouts_and_a_server_that_is_down(server):
    server.default = (200, _answer(), 1.5)
    started = time.perf_counter()
    with pytest.raises(RefineError, match=r"no answer from .* within 0.3 s"):
        refiner.refine_prompt(_endpoint(server, timeout=0.3), "x")
    assert time.perf_counter() - started < 3.0 and len(server.requests) == 3
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(RefineError, match=r"cannot reach http://127.0.0.1:\d+/v1 \(is the server running"):
        refiner.refine_prompt(Endpoint(f"http://127.0.0.1:{port}/v1", "m", "k", 2.0), "x")


def test_refusals_and_empty_answers(server):
    server.script = [(200, _answer(None, refusal="I can't help with that."), 0.0)]
    with pytest.raises(RefineError, match="refused: I can't help with that"):
        refiner.refine_prompt(_endpoint(server), "x")
    server.script = [(200, _answer(""), 0.0)] * 3
    with pytest.raises(RefineError, match="after 3 attempts: .*empty answer"):
        refiner.refine_prompt(_endpoint(server), "x")
    server.script = [(200, {"unexpected": True}, 0.0)] * 3
    with pytest.raises(RefineError, match="after 3 attempts"):
        refiner.refine_prompt(_endpoint(server), "x")


def test_dynamic_motion_score(server):
    server.script = [(200, _answer("5 motion score"), 0.0)]
    assert refiner.dynamic_motion_score(_endpoint(server), "a horse race", seed=3) == "5"
    body = server.requests[0]["body"]
    assert body["max_tokens"] == 100 and body["messages"][0]["content"] == refiner.MOTION_INSTRUCTION
    assert [refiner.parse_motion_score(a) for a in ("7", "Score: 2.", "motion score 3\n")] == ["7", "2", "3"]
    for bad in ("9", "4.5", "high", "0"):
        with pytest.raises(RefineError, match="not a whole number from 1 to 7"):
            refiner.parse_motion_score(bad)


def _image() -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    return torch.rand(1, 12, 16, 3, generator=generator)


def _decoded(data_url: str) -> np.ndarray:
    assert data_url.startswith("data:image/png;base64,")
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(data_url.split(",", 1)[1]))))


def test_i2v_sends_the_image_and_falls_back_to_text_for_text_only_endpoints(server):
    image = _image()
    url = refiner.png_data_url(image[0])
    assert refiner.refine_prompt(_endpoint(server), "it starts to rain", "i2v", url) == REFINED
    content = server.requests[0]["body"]["messages"][1]["content"]
    assert content[0] == {"type": "text", "text": "it starts to rain"}
    sent = _decoded(content[1]["image_url"]["url"])
    assert np.array_equal(sent, (image[0].numpy() * 255 + 0.5).astype(np.uint8))

    server.requests.clear()

    def text_only(body):
        if isinstance(body["messages"][1]["content"], list):
            return 400, {"error": {"message": "image input is not supported by this model"}}
        return 200, _answer()

    server.default = (200, text_only, 0.0)
    assert refiner.refine_prompt(_endpoint(server), "it starts to rain", "i2v", url) == REFINED
    assert [type(r["body"]["messages"][1]["content"]) for r in server.requests] == [list, str]


def test_keys_come_from_a_file_or_the_environment_never_a_widget(tmp_path, monkeypatch):
    monkeypatch.setenv("MY_LLM_KEY", "sk-env")
    assert refiner.read_api_key("MY_LLM_KEY") == "sk-env"
    key_file = tmp_path / "key.txt"
    key_file.write_text("sk-file\n# comment\n")
    assert refiner.read_api_key("MY_LLM_KEY", str(key_file)) == "sk-file"
    with pytest.raises(RefineError, match="Cannot read the API key file"):
        refiner.read_api_key("MY_LLM_KEY", str(tmp_path / "missing.txt"))
    monkeypatch.delenv("MY_LLM_KEY")
    with pytest.raises(RefineError, match="No API key for https://api.openai.com/v1: set the MY_LLM_KEY"):
        refiner.read_api_key("MY_LLM_KEY", "", "")
    assert refiner.read_api_key("MY_LLM_KEY", "", "http://127.0.0.1:11434/v1") == refiner.NO_KEY  # local server
    inputs = {**OpenSoraPromptRefiner.INPUT_TYPES()["required"], **OpenSoraPromptRefiner.INPUT_TYPES()["optional"]}
    assert not [name for name in inputs if name in ("api_key", "key", "token")]
    assert repr(Endpoint("u", "m", "sk-secret")).find("sk-secret") == -1


def test_missing_client_package_is_one_clear_line(monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "openai", None)
    with pytest.raises(RefineError, match="needs the 'openai' package: pip install openai"):
        refiner.refine_prompt(Endpoint("http://127.0.0.1:1/v1"), "x")


# ----------------------------------------------------------------------------------- the node


def _node_inputs(server, **changes):
    inputs = dict(prompt="a red panda on a bike", kind="t2v", model="tiny-llm", base_url=server.url,
                  api_key_env="TEST_REFINER_KEY", api_key_file="", dynamic_motion_score=False, on_error="fail",
                  seed=0, timeout=5.0)
    inputs.update(changes)
    return inputs


def test_node_refines_asks_motion_and_sends_the_image(server, monkeypatch):
    monkeypatch.setenv("TEST_REFINER_KEY", "sk-node")
    server.script = [(200, _answer(), 0.0), (200, _answer("6"), 0.0)]
    image = _image()
    prompt, score = OpenSoraPromptRefiner().execute(**_node_inputs(server, kind="i2v", dynamic_motion_score=True,
                                                                   seed=11), image=image)
    assert (prompt, score) == (REFINED, "6")
    first, second = server.requests
    assert first["auth"] == "Bearer sk-node" and first["body"]["seed"] == 11
    assert isinstance(first["body"]["messages"][1]["content"], list)
    assert second["body"]["messages"][1]["content"] == REFINED  # the score is asked for the refined prompt
    assert OpenSoraPromptRefiner().execute(**_node_inputs(server)) == (REFINED, "")


def test_node_fails_in_one_line_or_falls_back_to_the_original(server, caplog):
    server.default = (500, {"error": {"message": "overloaded"}}, 0.0)
    with pytest.raises(RefineError, match="after 3 attempts"):
        OpenSoraPromptRefiner().execute(**_node_inputs(server))
    result = OpenSoraPromptRefiner().execute(**_node_inputs(server, on_error="use original prompt",
                                                            dynamic_motion_score=True))
    assert result == ("a red panda on a bike", "")
    assert "Using the original prompt" in caplog.text


# ------------------------------------------------------------------ reaching the video's sidecar


@pytest.fixture
def tiny_t2v(standalone_host):
    write_tiny_model_folder(standalone_host._standalone.models_dir, "t2v")
    return standalone_host


def test_refined_prompt_and_motion_score_reach_the_sidecar(server, tiny_t2v):
    server.script = [(200, _answer(), 0.0), (200, _answer("6 motion score"), 0.0)]
    graph = prepare_test_graph("t2v_256px")
    encode_id = next(i for i, n in graph.items() if n["class_type"] == "OpenSoraTextEncode")
    graph["90"] = {"class_type": "OpenSoraPromptRefiner",
                   "inputs": _node_inputs(server, dynamic_motion_score=True, api_key_env="")}
    graph[encode_id]["inputs"].update(prompt=["90", 0], motion_score_text=["90", 1])
    result = run_workflow(graph, {**CORE_NODE_DOUBLES, **NODE_CLASS_MAPPINGS})
    (video,) = result.files()
    assert video.with_suffix(".txt").read_text(encoding="utf-8").strip() == f"{REFINED} 24 FPS. 6 motion score."
    assert "sk-" not in json.dumps(graph)
    assert load_json(API_DIR / "t2v_256px.json")  # the example itself is unchanged


def test_command_line_refines_each_prompt(server, standalone_host, tmp_path, monkeypatch):
    models = tmp_path / "cli_models"
    write_tiny_model_folder(models, "t2v")
    key_file = tmp_path / "llm.key"
    key_file.write_text("sk-cli\n")
    server.script = [(200, _answer(), 0.0), (200, _answer("2"), 0.0)]
    code = cli.main(["generate", "--prompt", "a red panda on a bike", "--models-dir", str(models), "--output-dir",
                     str(tmp_path / "out"), "--width", "48", "--height", "32", "--steps", "1", "--num-frames", "9",
                     "--weight-dtype", "fp32", "--device", "cpu", "--seed", "5", "--refine-prompt",
                     "--motion-score", "dynamic", "--refine-base-url", server.url, "--refine-model", "tiny-llm",
                     "--refine-key-file", str(key_file)])
    assert code == 0
    (sidecar,) = (tmp_path / "out").rglob("*.txt")
    assert sidecar.read_text(encoding="utf-8").strip() == f"{REFINED} 24 FPS. 2 motion score."
    assert [r["auth"] for r in server.requests] == ["Bearer sk-cli"] * 2
    assert server.requests[0]["body"]["seed"] == 5

    server.default = (503, {"error": {"message": "down"}}, 0.0)
    with pytest.raises(SystemExit, match="Prompt refinement failed after 3 attempts"):
        cli.main(["--debug", "generate", "--prompt", "x", "--models-dir", str(models), "--output-dir",
                  str(tmp_path / "o2"), "--refine-prompt", "--refine-base-url", server.url, "--device", "cpu"])
