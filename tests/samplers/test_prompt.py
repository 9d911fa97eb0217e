"""Prompt suffix rules and T5 tokenisation, against the reference's rules and SentencePiece itself."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from factories_text import CLIP_TOKENIZER, GOLDEN_TEXT, T5_TOKENIZER
from safetensors.torch import load_file

from comfyui_opensora.loaders.tokenizers import (
    FTFY_AVAILABLE,
    T5PromptTokenizer,
    TokenizerError,
    load_clip_tokenizer,
    clean_clip_text,
    load_t5_tokenizer,
)
from comfyui_opensora.samplers.prompt import MOTION_SCORES, add_prompt_suffix, final_prompts, split_prompts

# (raw prompt, fps, motion score, what opensora/utils/inference.py gives: ensure_sentence_ends_with_period,
#  add_fps_info_to_text, then add_motion_score_to_text when a motion score is configured)
SUFFIX_CASES = [
    ("raining, sea", 24, "4", "raining, sea. 24 FPS. 4 motion score."),
    ("  a cat on a mat.  ", 24, "4", "a cat on a mat. 24 FPS. 4 motion score."),
    ("a cat!", 24, "4", "a cat!. 24 FPS. 4 motion score."),
    ("a cat. 24 FPS.", 24, "4", "a cat. 24 FPS. 4 motion score."),
    ("a cat. 24 FPS", 24, "4", "a cat. 24 FPS. 4 motion score."),
    ("a cat, 30 FPS.", 24, "4", "a cat, 30 FPS. 4 motion score."),
    ("great FPS.", 24, "4", "great FPS. 24 FPS. 4 motion score."),
    ("a 24 FPS. video", 24, "4", "a 24 FPS. video. 24 FPS. 4 motion score."),
    ("a cat", 16, "7", "a cat. 16 FPS. 7 motion score."),
    ("a cat", 24, "off", "a cat. 24 FPS."),
    ("a cat", 24, None, "a cat. 24 FPS."),
    ("", 24, "4", ". 24 FPS. 4 motion score."),
    ("", 24, "off", ". 24 FPS."),
    ("line one\nline two", 24, "1", "line one\nline two. 24 FPS. 1 motion score."),
]


@pytest.mark.parametrize("raw, fps, score, expected", SUFFIX_CASES)
def test_prompt_suffix_matches_reference(raw, fps, score, expected):
    assert add_prompt_suffix(raw, fps, score) == expected


def test_prompt_suffix_matches_golden_manifest():
    manifest = json.loads((GOLDEN_TEXT / "manifest.json").read_text())
    processing = manifest["prompt_processing"]
    assert [add_prompt_suffix(t, 24, "4") for t in processing["raw"]] == processing["result"]


@pytest.mark.parametrize("score", [0, 1, 4, 8, 10, 15, 20, "0", "9", "12", " 15 "])
def test_every_integer_motion_score_is_written_as_the_reference_writes_it(score):
    # The reference appends f" {motion_score} motion score." to the period-ended, fps-suffixed prompt.
    assert add_prompt_suffix("raining, sea", 24, score) == f"raining, sea. 24 FPS. {int(score)} motion score."


def test_motion_score_menu_offers_0_to_15_and_dynamic():
    assert MOTION_SCORES == ("off", *(str(i) for i in range(16)), "dynamic")


@pytest.mark.parametrize("score", ["-1", "4.5", "high", ""])
def test_motion_scores_that_are_not_integers_are_refused(score):
    with pytest.raises(ValueError, match="whole number"):
        add_prompt_suffix("a cat", 24, score)


def test_dynamic_motion_score_without_a_refiner_is_a_clear_error():
    with pytest.raises(ValueError, match="dynamic.*no prompt refiner is configured"):
        final_prompts("a fox", "", 24, "dynamic", one_prompt_per_line=False)


def test_prompt_batch_and_negative_replication():
    prompts, negatives = final_prompts("a fox\n\n  \na cat.\n", "blurry", 24, "4", one_prompt_per_line=True)
    assert prompts == ["a fox. 24 FPS. 4 motion score.", "a cat. 24 FPS. 4 motion score."]
    assert negatives == ["blurry", "blurry"]  # negative prompts get no suffix
    assert split_prompts("a\nb", one_prompt_per_line=False) == ["a\nb"]
    assert split_prompts("", one_prompt_per_line=False) == [""]
    with pytest.raises(ValueError, match="no non-empty line"):
        split_prompts(" \n\t\n", one_prompt_per_line=True)


# ------------------------------------------------------------------------------------ tokenizers

TRICKY = [
    "", " ", "  a  b  ", "a\tb\nc\r\nd", "tabs\t\tand  spaces", "line1\nline2",
    "hello</s>world", "hello </s> world", "x</s>", "</s>", "<pad>a<unk>b", "a<extra_id_0>b",
    "a <extra_id_10> b<extra_id_1>", "<extra_id_99>", "<s> <mask>",
    "Café naïve résumé", "ÀÉÎÕÜ", "e\u0301", "ﬁ ligature", "你好世界", "emoji 🦊🦊 fox",
    "１２３ ｆｕｌｌ", "a\u00a0b", "a\u2003b", "a\u3000b", "x\u200by", "\u2028x\u0085y",
    "123,456.78 $%&", "...!!??", "3.14 and 2,000 and 1e9", "a" * 600, "ab " * 400 + "</s>",
    "a tiny red fox runs through snow. 24 FPS. 4 motion score.",
]


@pytest.fixture(scope="module")
def sentencepiece_tokenizer() -> T5PromptTokenizer:
    return load_t5_tokenizer(T5_TOKENIZER)


@pytest.fixture(scope="module")
def json_tokenizer(tmp_path_factory) -> T5PromptTokenizer:
    """A tokenizer.json of the same vocabulary, written by transformers' SentencePiece converter."""
    from transformers import T5Tokenizer

    path = tmp_path_factory.mktemp("t5json") / "tokenizer.json"
    path.write_text(T5Tokenizer.from_pretrained(str(T5_TOKENIZER), legacy=True).backend_tokenizer.to_str())
    return T5PromptTokenizer.from_tokenizer_json(path)


def test_t5_ids_equal_golden(sentencepiece_tokenizer, json_tokenizer):
    golden = load_file(str(GOLDEN_TEXT / "embeddings.safetensors"))
    prompts = json.loads((GOLDEN_TEXT / "manifest.json").read_text())["prompts_encoded"]
    assert torch.equal(sentencepiece_tokenizer(prompts), golden["t5.input_ids"])
    assert torch.equal(json_tokenizer(prompts), golden["t5.input_ids"])


@pytest.mark.parametrize("text", TRICKY, ids=range(len(TRICKY)))
def test_tokenizer_json_path_equals_sentencepiece(text, sentencepiece_tokenizer, json_tokenizer):
    assert json_tokenizer.token_ids(text) == sentencepiece_tokenizer.token_ids(text)


def test_t5_pieces_are_sentencepiece_pieces(sentencepiece_tokenizer):
    """Each text between special tokens is SentencePiece's own encoding of it (reference legacy=True)."""
    import sentencepiece

    sp = sentencepiece.SentencePieceProcessor(model_file=str(T5_TOKENIZER / "spiece.model"))
    for text in ("a tiny red fox", "  Café 123 ", "你好"):
        assert sentencepiece_tokenizer.token_ids(text) == sp.encode(text) + [1]
    # a special token splits the text; every side is encoded on its own (so it gets its own "▁")
    assert sentencepiece_tokenizer.token_ids("fox</s>snow") == sp.encode("fox") + [1] + sp.encode("snow") + [1]
    # "</s>" already last: not appended twice (transformers 5's T5Tokenizer appends a second one)
    assert sentencepiece_tokenizer.token_ids("fox</s>") == sp.encode("fox") + [1]
    extra = sentencepiece_tokenizer.special_ids["<extra_id_0>"]
    assert extra == sp.get_piece_size() + 99


def test_t5_truncation_and_padding(sentencepiece_tokenizer):
    ids = sentencepiece_tokenizer(["a" * 2000, "", "fox"])
    assert ids.shape == (3, 512) and ids.dtype == torch.long
    assert ids[0, -1] == 1 and (ids[0] != 0).all()  # truncated to 511 pieces + </s>
    assert ids[1, 0] == 1 and (ids[1, 1:] == 0).all()
    long_with_eos = sentencepiece_tokenizer.token_ids("ab " * 400 + "</s>")
    assert len(long_with_eos) == 512 and long_with_eos[-1] == 1


REFERENCE_IDS = json.loads((Path(__file__).resolve().parents[1] / "text_reference_token_ids.json").read_text(encoding="utf-8"))


@pytest.mark.parametrize("case", REFERENCE_IDS["t5"], ids=range(len(REFERENCE_IDS["t5"])))
def test_t5_ids_equal_the_reference_slow_tokenizer(case, sentencepiece_tokenizer, json_tokenizer):
    """Ids recorded from transformers 4.49's slow T5Tokenizer(legacy=True), the reference's tokenizer."""
    assert sentencepiece_tokenizer.token_ids(case["text"]) == case["ids"]
    assert json_tokenizer.token_ids(case["text"]) == case["ids"]


@pytest.fixture(scope="module")
def clip_tokenizer():
    return load_clip_tokenizer(CLIP_TOKENIZER)


# Texts whose reference ids depend on ftfy.fix_text (curly quotes, ligatures, full width, control chars).
NEEDS_FTFY = {"ﬁ ligature", "ﬁ", "１２３ ｆｕｌｌ", "\u2028x\x85y", "don’t stop “quoted” ‘single’",
              "Ａ ｆｕｌｌ－ｗｉｄｔｈ ＦＯＸ", "mojibake: cafÃ©", "\x1b[31mred\x1b[0m"}


@pytest.mark.parametrize("case", REFERENCE_IDS["clip"], ids=range(len(REFERENCE_IDS["clip"])))
def test_clip_ids_equal_the_reference_slow_tokenizer(case, clip_tokenizer):
    """Ids recorded from transformers 4.49's slow CLIPTokenizer with ftfy (Open-Sora's requirements)."""
    if case["text"] in NEEDS_FTFY and not FTFY_AVAILABLE:
        pytest.skip("ftfy is not installed: the reference cleans this text with ftfy.fix_text")
    ids = clip_tokenizer([case["text"]])[0].tolist()
    assert ids[: len(case["ids"])] == case["ids"]
    assert all(i == case["ids"][-1] for i in ids[len(case["ids"]):])


def test_clip_text_cleaning():
    assert clean_clip_text("  a  b\tc\n ") == "a b c"
    if FTFY_AVAILABLE:
        assert clean_clip_text("don’t “stop”") == "don't \"stop\""


def test_clip_ids_equal_golden():
    golden = load_file(str(GOLDEN_TEXT / "embeddings.safetensors"))
    prompts = json.loads((GOLDEN_TEXT / "manifest.json").read_text())["prompts_encoded"]
    assert torch.equal(load_clip_tokenizer(CLIP_TOKENIZER)(prompts), golden["clip.input_ids"])


def test_missing_or_wrong_tokenizer_files(tmp_path):
    with pytest.raises(TokenizerError, match="spiece.model"):
        load_t5_tokenizer(tmp_path)
    with pytest.raises(TokenizerError, match="vocab.json"):
        load_clip_tokenizer(tmp_path)
    (tmp_path / "tokenizer.json").write_text(json.dumps({"model": {"type": "BPE", "vocab": {}}}))
    with pytest.raises(TokenizerError, match="not a T5 tokenizer"):
        load_t5_tokenizer(tmp_path)
