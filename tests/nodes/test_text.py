"""Text nodes: golden embeddings through loader + encode, batching, the native-CONDITIONING bridge."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from factories_text import CLIP_TOKENIZER, GOLDEN_TEXT, T5_TOKENIZER, tiny_clip, tiny_t5, write_clip_file, write_t5_file
from golden_tolerance import Reductions, assert_matches
from safetensors.torch import load_file

from comfyui_opensora.nodes import NODE_CLASS_MAPPINGS
from comfyui_opensora.nodes.text import (
    OpenSoraConditioningFromNative,
    OpenSoraTextEncode,
    OpenSoraTextEncoderLoader,
)
from comfyui_opensora.samplers.conditioning import TextConditioning


@pytest.fixture
def golden_models(standalone_host):
    """The golden fixture's HF folders placed as a user would: models/text_encoders/google/..., openai/..."""
    root = standalone_host.folder_paths(standalone_host.TEXT_ENCODERS)[0]
    manifest = json.loads((GOLDEN_TEXT / "manifest.json").read_text())
    for folder in manifest["folders"].values():
        shutil.copytree(GOLDEN_TEXT / folder, root / folder.removeprefix("hf/"))
    return standalone_host


def load(t5_name="google/t5-tiny", clip_name="openai/clip-tiny", dtype="fp32"):
    return OpenSoraTextEncoderLoader().execute(t5_name, clip_name, dtype)[0]


def test_golden_embeddings_through_the_nodes(golden_models):
    golden = load_file(str(GOLDEN_TEXT / "embeddings.safetensors"))
    choices = OpenSoraTextEncoderLoader.INPUT_TYPES()["required"]["t5_name"][0]
    assert choices == ["google/t5-tiny", "openai/clip-tiny"]
    cond = OpenSoraTextEncode().execute(load(), "a tiny red fox runs through snow", "", 24, "4", False)[0]
    assert isinstance(cond, TextConditioning)
    assert cond.prompts == ("a tiny red fox runs through snow. 24 FPS. 4 motion score.",)
    assert cond.negative_prompts == ("",)
    encoders = load()
    budgets = {"t5": Reductions.of_module(encoders.t5, sequence_length=512),
               "clip": Reductions.of_module(encoders.clip, sequence_length=77)}
    for name, ours, row in (("t5", cond.t5[0], 0), ("clip", cond.clip[0], 0), ("t5", cond.neg_t5[0], 2),
                            ("clip", cond.neg_clip[0], 2)):
        key = "t5.last_hidden_state" if name == "t5" else "clip.pooler_output"
        assert_matches(ours, golden[key][row].clone(), budgets[name], f"{key}[{row}]")
    # the golden's second prompt: the empty prompt with its suffix
    returned = OpenSoraTextEncode().execute(load(), "", "", 24, "4", False)
    assert "The prompt is empty" in returned["ui"]["text"][0]
    empty = returned["result"][0]
    assert_matches(empty.t5[0], golden["t5.last_hidden_state"][1].clone(), budgets["t5"], "t5 of the empty prompt")
    assert_matches(empty.clip[0], golden["clip.pooler_output"][1].clone(), budgets["clip"], "clip of the empty prompt")


def test_batch_one_prompt_per_line(golden_models):
    encoder = load()
    cond = OpenSoraTextEncode().execute(encoder, "a tiny red fox runs through snow\n\nsnow at night.", "dark",
                                        16, "off", True)[0]
    assert cond.prompts == ("a tiny red fox runs through snow. 16 FPS.", "snow at night. 16 FPS.")
    assert cond.negative_prompts == ("dark", "dark")
    assert cond.t5.shape == (2, 512, 32) and cond.neg_t5.shape == (2, 512, 32)
    assert cond.clip.shape == (2, 24) and cond.neg_clip.shape == (2, 24)
    assert torch.equal(cond.neg_t5[0], cond.neg_t5[1])
    single = OpenSoraTextEncode().execute(encoder, "snow at night.", "dark", 16, "off", False)[0]
    assert torch.equal(single.t5[0], cond.t5[1]) and torch.equal(single.neg_clip[0], cond.neg_clip[1])
    with pytest.raises(ValueError, match="no non-empty line"):
        OpenSoraTextEncode().execute(encoder, "\n \n", "", 24, "4", True)


def test_single_files_with_host_tokenizers(standalone_host, monkeypatch):
    root = standalone_host.folder_paths(standalone_host.TEXT_ENCODERS)[0]
    write_t5_file(root / "t5xxl_tiny.safetensors", tiny_t5())
    write_clip_file(root / "clip_l_tiny.safetensors", tiny_clip())
    with pytest.raises(ValueError, match="No T5 tokenizer for t5xxl_tiny.safetensors"):
        load("t5xxl_tiny.safetensors", "clip_l_tiny.safetensors")
    shipped = {"t5": T5_TOKENIZER, "clip_l": CLIP_TOKENIZER}
    monkeypatch.setattr(standalone_host, "comfy_tokenizer_dir", shipped.get)
    encoder = load("t5xxl_tiny.safetensors", "clip_l_tiny.safetensors", "bf16")
    cond = OpenSoraTextEncode().execute(encoder, "a fox", "", 24, "4", False)[0]
    assert cond.t5.dtype == torch.bfloat16 and cond.t5.shape == (1, 512, 32) and cond.clip.shape == (1, 128)
    with pytest.raises(ValueError, match="it looks like a T5 text encoder"):
        load("t5xxl_tiny.safetensors", "t5xxl_tiny.safetensors")
    # ComfyUI's ModelPatcher assigns `.device` on what it manages (transformers models refuse that)
    encoder.t5_managed.model.device = torch.device("cpu")
    encoder.clip_managed.model.device = torch.device("cpu")


def test_nodes_are_registered_and_cache_friendly():
    for name in ("OpenSoraTextEncoderLoader", "OpenSoraTextEncode", "OpenSoraConditioningFromNative"):
        node = NODE_CLASS_MAPPINGS[name]
        assert not hasattr(node, "IS_CHANGED") and node.FUNCTION == "execute" and node.CATEGORY == "Open-Sora"
        inputs = node.INPUT_TYPES()["required"] if name != "OpenSoraTextEncoderLoader" else None
        if inputs:
            assert all("tooltip" in spec[1] for spec in inputs.values())
    assert list(OpenSoraTextEncode.INPUT_TYPES()["required"]) == [
        "text_encoder", "prompt", "negative_prompt", "fps", "motion_score", "one_prompt_per_line"]
    assert OpenSoraTextEncode.INPUT_TYPES()["required"]["motion_score"][1]["default"] == "4"


def test_loader_input_order(standalone_host):
    assert list(OpenSoraTextEncoderLoader.INPUT_TYPES()["required"]) == ["t5_name", "clip_name", "weight_dtype"]


# --------------------------------------------------------------------------------- native bridge

def native(length: int, batch: int = 1, pooled: bool = True) -> list:
    states = torch.randn(batch, length, 4096)
    return [[states, {"pooled_output": torch.randn(batch, 768)} if pooled else {}]]


def test_native_conditioning_is_brought_to_512_tokens():
    positive, negative = native(256), native(600)
    cond = OpenSoraConditioningFromNative().execute(positive, negative)[0]
    assert cond.t5.shape == (1, 512, 4096) and cond.neg_t5.shape == (1, 512, 4096)
    assert torch.equal(cond.t5[:, :256], positive[0][0])
    assert torch.equal(cond.t5[0, 256:], positive[0][0][0, -1].expand(256, -1))  # last (pad) state repeated
    assert torch.equal(cond.neg_t5, negative[0][0][:, :512])
    assert torch.equal(cond.clip, positive[0][1]["pooled_output"])
    exact = native(512)
    same = OpenSoraConditioningFromNative().execute(exact, exact)[0]
    assert torch.equal(same.t5, exact[0][0])


def test_native_batches_and_negative_replication():
    positive = native(256) + native(300)
    cond = OpenSoraConditioningFromNative().execute(positive, native(256))[0]
    assert cond.batch_size == 2 and torch.equal(cond.neg_t5[0], cond.neg_t5[1])
    with pytest.raises(ValueError, match="give 1 or 2"):
        OpenSoraConditioningFromNative().execute(positive, native(256, batch=3))


def test_native_bad_input():
    with pytest.raises(ValueError, match="no CLIP-L pooled output"):
        OpenSoraConditioningFromNative().execute(native(256, pooled=False), native(256))
    sd_cond = [[torch.randn(1, 77, 768), {"pooled_output": torch.randn(1, 768)}]]
    with pytest.raises(ValueError, match="not T5-XXL states"):
        OpenSoraConditioningFromNative().execute(sd_cond, native(256))
    with pytest.raises(ValueError, match="negative input is not a CONDITIONING"):
        OpenSoraConditioningFromNative().execute(native(256), [])


def test_native_bridge_carries_the_prompt_text_from_the_graph():
    """ComfyUI hands the node its prompt graph (hidden PROMPT) and id: the sidecar text is read from the
    encode nodes the CONDITIONING comes from, through linked text nodes; computed text stays unknown."""
    graph = {
        "4": {"class_type": "DualCLIPLoader", "inputs": {"clip_name1": "t5.safetensors", "type": "flux"}},
        "5": {"class_type": "CLIPTextEncode", "inputs": {"text": ["9", 0], "clip": ["4", 0]}},
        "9": {"class_type": "PrimitiveStringMultiline", "inputs": {"value": "a red fox in snow. 24 FPS."}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["4", 0]}},
        "7": {"class_type": "OpenSoraConditioningFromNative", "inputs": {"positive": ["5", 0], "negative": ["6", 0]}},
        "8": {"class_type": "CLIPTextEncodeFlux", "inputs": {"clip_l": "clip text", "t5xxl": "t5 text",
                                                              "guidance": 3.5, "clip": ["4", 0]}},
        "10": {"class_type": "StringConcatenate", "inputs": {"string_a": "a", "string_b": "b"}},
        "11": {"class_type": "CLIPTextEncode", "inputs": {"text": ["10", 0], "clip": ["4", 0]}},
        "12": {"class_type": "OpenSoraConditioningFromNative", "inputs": {"positive": ["8", 0], "negative": ["11", 0]}},
    }
    cond = OpenSoraConditioningFromNative().execute(native(256) + native(256), native(256), prompt=graph,
                                                    unique_id="7")[0]
    assert cond.prompts == ("a red fox in snow. 24 FPS.",) * 2 and cond.negative_prompts == ("",) * 2
    cond = OpenSoraConditioningFromNative().execute(native(256), native(256), prompt=graph, unique_id="12")[0]
    assert cond.prompts == ("t5 text",) and cond.negative_prompts == ("(ComfyUI CONDITIONING)",)
    cond = OpenSoraConditioningFromNative().execute(native(256), native(256))[0]  # no graph (outside ComfyUI)
    assert cond.prompts == ("(ComfyUI CONDITIONING)",)
    assert OpenSoraConditioningFromNative.INPUT_TYPES()["hidden"] == {"prompt": "PROMPT", "unique_id": "UNIQUE_ID"}


def test_truncated_and_empty_prompts_are_reported(golden_models, monkeypatch, caplog):
    encoder = load()
    shown: list[str] = []
    monkeypatch.setattr(golden_models, "show_text", shown.append)
    assert isinstance(OpenSoraTextEncode().execute(encoder, "a fox", "", 24, "4", False), tuple)  # no warning
    long_prompt = " ".join(["fox"] * 80)  # > 77 CLIP tokens, < 512 T5 tokens
    returned = OpenSoraTextEncode().execute(encoder, long_prompt, "", 24, "4", False)
    clip_count = encoder.clip.tokenizer.token_count(long_prompt + ". 24 FPS. 4 motion score.")
    assert clip_count > 77
    assert returned["ui"]["text"] == [
        f"The prompt has {clip_count} CLIP tokens; CLIP reads only the first 77, so the rest is cut and has no effect."]
    assert shown == returned["ui"]["text"] and "CLIP tokens" in caplog.text
    very_long = " ".join(f"word{i}" for i in range(600))
    returned = OpenSoraTextEncode().execute(encoder, "a fox\n" + very_long, very_long, 24, "4", True)
    warnings = returned["ui"]["text"]
    assert [w.split(" has ")[0] for w in warnings] == ["Prompt 2", "Prompt 2", "The negative prompt",
                                                       "The negative prompt"]
    assert "T5 reads only the first 512" in warnings[0] and "CLIP reads only the first 77" in warnings[1]
    assert encoder.t5.tokenizer.token_count("a fox") == len(encoder.t5.tokenizer.token_ids("a fox"))
    assert returned["result"][0].batch_size == 2


def test_motion_score_is_checked_at_queue_time():
    """VALIDATE_INPUTS takes over the menu check: any whole number, 'off'; 'dynamic' says it needs a refiner."""
    for score in ("0", "4", "15", "20", "off"):
        assert OpenSoraTextEncode.VALIDATE_INPUTS(motion_score=score) is True
    assert "no prompt refiner" in OpenSoraTextEncode.VALIDATE_INPUTS(motion_score="dynamic")
    assert "whole number" in OpenSoraTextEncode.VALIDATE_INPUTS(motion_score="4.5")
    assert OpenSoraTextEncode.VALIDATE_INPUTS() is True  # a linked input is checked when the node runs


def test_many_prompts_are_encoded_in_chunks_that_cancel_can_stop(golden_models):
    """A long prompt list is encoded ENCODE_CHUNK texts per call: the rows equal encoding each prompt
    alone, progress counts the calls, and Cancel stops between calls."""
    from comfyui_opensora.samplers.prompt import ENCODE_CHUNK

    lines = [f"a fox number {i} runs" for i in range(ENCODE_CHUNK + 3)]
    seen = []
    remove = golden_models.add_progress_listener(lambda value, total: seen.append((value, total)))
    try:
        cond = OpenSoraTextEncode().execute(load(), "\n".join(lines), "", 24, "4", True)[0]
    finally:
        remove()
    assert seen == [(1, 2), (2, 2)]  # 11 prompts + 1 negative: two encoder calls
    alone = OpenSoraTextEncode().execute(load(), lines[-1], "", 24, "4", False)[0]
    assert torch.allclose(cond.t5[-1], alone.t5[0], rtol=0, atol=1e-5 * alone.t5.abs().max().item())
    assert torch.allclose(cond.clip[-1], alone.clip[0], rtol=0, atol=1e-5 * alone.clip.abs().max().item())

    def cancel_after_first_call(value, total):
        golden_models.request_interrupt()

    remove = golden_models.add_progress_listener(cancel_after_first_call)
    try:
        with pytest.raises(golden_models.Interrupted):
            OpenSoraTextEncode().execute(load(), "\n".join(lines), "", 24, "4", True)
    finally:
        remove()
        golden_models.request_interrupt(False)
