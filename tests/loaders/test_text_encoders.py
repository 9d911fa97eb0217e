"""T5 / CLIP loaders: both layouts give exactly what transformers' from_pretrained gives; bad files are refused."""

from __future__ import annotations

import pytest
import torch
from factories_text import (
    CLIP_TOKENIZER,
    CLIP_TOKENIZER_FILES,
    T5_TOKENIZER,
    T5_TOKENIZER_FILES,
    copy_tokenizer,
    tiny_clip,
    tiny_t5,
    write_clip_file,
    write_clip_folder,
    write_t5_file,
    write_t5_folder,
)
from safetensors.torch import save_file
from transformers import CLIPTextModel, T5EncoderModel

from comfyui_opensora.loaders.checkpoint import CheckpointError
from comfyui_opensora.loaders.text_encoders import (
    list_encoder_choices,
    load_clip,
    load_t5,
    tokenizer_folder_for,
)
from comfyui_opensora.loaders.tokenizers import TokenizerError, load_clip_tokenizer, load_t5_tokenizer

PROMPTS = ["a tiny red fox runs through snow. 24 FPS. 4 motion score.", ". 24 FPS. 4 motion score.", "",
           "snow, fox, night"]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("text_encoders")
    t5, clip = tiny_t5(), tiny_clip()
    paths = {
        "t5_folder": write_t5_folder(root / "google" / "t5-tiny", t5),
        "clip_folder": write_clip_folder(root / "openai" / "clip-tiny", clip),
        "t5_file": write_t5_file(root / "t5xxl_tiny.safetensors", t5),
        "clip_file": write_clip_file(root / "clip_l_tiny.safetensors", clip),
    }
    copy_tokenizer(T5_TOKENIZER, tokenizer_folder_for(paths["t5_file"]), T5_TOKENIZER_FILES)
    copy_tokenizer(CLIP_TOKENIZER, tokenizer_folder_for(paths["clip_file"]), CLIP_TOKENIZER_FILES)
    paths["root"] = root
    return paths


@pytest.fixture(scope="module")
def expected(files):
    """The reference settings through transformers' own from_pretrained path (fp32). T5 with eager
    attention: transformers 4.49 (the reference) had no SDPA for T5."""
    t5 = T5EncoderModel.from_pretrained(files["t5_folder"], dtype=torch.float32, attn_implementation="eager").eval()
    clip = CLIPTextModel.from_pretrained(files["clip_folder"], dtype=torch.float32).eval()
    t5_ids = load_t5_tokenizer(T5_TOKENIZER)(PROMPTS)
    clip_ids = load_clip_tokenizer(CLIP_TOKENIZER)(PROMPTS)
    with torch.no_grad():
        return t5(input_ids=t5_ids).last_hidden_state, clip(input_ids=clip_ids).pooler_output


@pytest.mark.parametrize("layout", ["folder", "file"])
def test_embeddings_equal_from_pretrained_fp32(files, expected, layout):
    t5 = load_t5(files[f"t5_{layout}"], torch.float32)
    clip = load_clip(files[f"clip_{layout}"], torch.float32)
    assert (t5.encode(PROMPTS) - expected[0]).abs().max().item() == 0.0
    assert (clip.encode(PROMPTS) - expected[1]).abs().max().item() == 0.0
    assert t5.encode(PROMPTS).shape == (4, 512, 32) and clip.encode(PROMPTS).shape == (4, 128)
    assert not any(p.device.type == "meta" for p in t5.model.parameters())
    assert not any(b.device.type == "meta" for b in clip.model.buffers())
    assert t5.model.encoder.embed_tokens.weight is t5.model.shared.weight


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_weight_dtypes_follow_from_pretrained(files, dtype):
    ours = load_t5(files["t5_file"], dtype).model.state_dict()
    theirs = T5EncoderModel.from_pretrained(files["t5_folder"], dtype=dtype).state_dict()
    assert {k: v.dtype for k, v in ours.items()} == {k: v.dtype for k, v in theirs.items()}
    assert all(torch.equal(ours[k], theirs[k]) for k in theirs)
    clip = load_clip(files["clip_file"], dtype)
    assert {p.dtype for p in clip.model.parameters()} == {dtype}
    assert clip.encode(["a fox"]).dtype == dtype


@pytest.mark.parametrize("fp8", ["plain", "scaled"])
def test_fp8_files_are_upcast(files, tmp_path, fp8):
    source = tiny_t5()
    path = write_t5_file(tmp_path / f"t5xxl_{fp8}.safetensors", source, fp8=fp8)
    copy_tokenizer(T5_TOKENIZER, tokenizer_folder_for(path), T5_TOKENIZER_FILES)
    from safetensors import safe_open

    loaded = load_t5(path, torch.float32).model.state_dict()
    with safe_open(str(path), "pt") as f:
        stored = {k: f.get_tensor(k) for k in f.keys()}
    q = "encoder.block.1.layer.0.SelfAttention.q.weight"
    assert stored[q].dtype == torch.float8_e4m3fn
    scale = stored[q[: -len("weight")] + "scale_weight"] if fp8 == "scaled" else torch.tensor(1.0)
    assert torch.equal(loaded[q], stored[q].float() * scale)
    assert loaded["shared.weight"].dtype == torch.float32
    assert (loaded[q] - source.state_dict()[q]).abs().max() < 0.1 * source.state_dict()[q].abs().max()


def test_full_clip_model_folder_uses_its_text_tower(files, tmp_path):
    """openai/clip-vit-large-patch14 is a whole CLIPModel folder (vision tower, projections, logit scale)."""
    from transformers import CLIPConfig, CLIPModel

    torch.manual_seed(1)
    text = tiny_clip().config.to_dict()
    config = CLIPConfig(text_config=text, vision_config={"hidden_size": 32, "intermediate_size": 64,
                        "num_hidden_layers": 1, "num_attention_heads": 2, "image_size": 32, "patch_size": 16},
                        projection_dim=16)
    folder = tmp_path / "clip-vit-tiny"
    CLIPModel(config).eval().save_pretrained(folder, safe_serialization=True)
    copy_tokenizer(CLIP_TOKENIZER, folder, CLIP_TOKENIZER_FILES)
    theirs = CLIPTextModel.from_pretrained(folder, dtype=torch.float32).eval()
    ids = load_clip_tokenizer(CLIP_TOKENIZER)(PROMPTS)
    with torch.no_grad():
        expected_pooled = theirs(input_ids=ids).pooler_output
    assert torch.equal(load_clip(folder, torch.float32).encode(PROMPTS), expected_pooled)


def test_encoding_is_deterministic(files):
    t5 = load_t5(files["t5_file"], torch.float32)
    assert torch.equal(t5.encode(PROMPTS), t5.encode(PROMPTS))


def test_choices_list_files_and_model_folders(files):
    choices = list_encoder_choices([files["root"]])
    assert choices == ["clip_l_tiny.safetensors", "google/t5-tiny", "openai/clip-tiny", "t5xxl_tiny.safetensors"]


# ------------------------------------------------------------------------------------ bad input

def test_file_that_is_neither_t5_nor_clip(tmp_path):
    path = tmp_path / "other.safetensors"
    save_file({"foo.weight": torch.zeros(2, 2)}, str(path))
    with pytest.raises(CheckpointError, match="not a T5 text encoder: its keys match no model"):
        load_t5(path, torch.float32)
    with pytest.raises(CheckpointError, match="not a CLIP text encoder: its keys match no model"):
        load_clip(path, torch.float32)
    (tmp_path / "broken.safetensors").write_bytes(b"not safetensors at all")
    with pytest.raises(CheckpointError, match="not a safetensors file"):
        load_t5(tmp_path / "broken.safetensors", torch.float32)


def test_t5_offered_as_clip_and_the_reverse(files):
    with pytest.raises(CheckpointError, match="not a CLIP text encoder: it looks like a T5 text encoder"):
        load_clip(files["t5_file"], torch.float32)
    with pytest.raises(CheckpointError, match="not a T5 text encoder: it looks like a CLIP text encoder"):
        load_t5(files["clip_file"], torch.float32)
    with pytest.raises(CheckpointError, match="not a CLIP folder"):
        load_clip(files["t5_folder"], torch.float32)


def test_truncated_t5_names_missing_keys(files, tmp_path):
    from safetensors.torch import load_file

    state = load_file(str(files["t5_file"]))
    del state["encoder.block.1.layer.1.DenseReluDense.wo.weight"]
    path = tmp_path / "t5_missing.safetensors"
    save_file(state, str(path))
    copy_tokenizer(T5_TOKENIZER, tokenizer_folder_for(path), T5_TOKENIZER_FILES)
    with pytest.raises(CheckpointError, match="1 missing key.*block.1.layer.1.DenseReluDense.wo.weight"):
        load_t5(path, torch.float32)


def test_missing_tokenizer(files, tmp_path):
    bare = write_t5_file(tmp_path / "t5_no_tokenizer.safetensors", tiny_t5())
    with pytest.raises(TokenizerError, match="t5_no_tokenizer_tokenizer/"):
        load_t5(bare, torch.float32)
    assert load_t5(bare, torch.float32, fallback_tokenizer=T5_TOKENIZER).tokenizer.eos_id == 1
    folder = write_clip_folder(tmp_path / "clip_no_tokenizer", tiny_clip(), tokenizer=False)
    with pytest.raises(TokenizerError, match="must carry its own tokenizer"):
        load_clip(folder, torch.float32)


def test_folder_with_only_pickles_is_refused(tmp_path):
    folder = write_t5_folder(tmp_path / "t5_bin", tiny_t5())
    (folder / "model.safetensors").unlink()
    (folder / "pytorch_model.bin").write_bytes(b"\0")
    with pytest.raises(CheckpointError, match="only .safetensors"):
        load_t5(folder, torch.float32)
