"""LoRA adapters: peft-made adapters on a tiny model in the official layout, through the LoRA Loader node.

The reference applies adapters with ``peft.PeftModel.from_pretrained``; the pack must compute the same
output, scale it by ``strength``, chain adapters, and leave the loaded base model untouched.
"""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from comfyui_opensora import nodes
from comfyui_opensora.loaders.lora import read_adapter
from comfyui_opensora.loaders.mmdit_setup import MMDiTSetup
from comfyui_opensora.models.block_offload import install_block_offload
from comfyui_opensora.models.mmdit import MMDiT
from comfyui_opensora.nodes.lora import LORAS, OpenSoraLoraLoader
from comfyui_opensora.nodes.model_loader import OpenSoraModel, OpenSoraModelLoader

from factories_mmdit import TINY_VIDEO_CONFIG, tiny_mmdit_inputs, tiny_mmdit_state_dict, write_tiny_mmdit

peft = pytest.importorskip("peft", reason="LoRA adapters need peft (requirements.txt)")

TARGETS = ["img_attn.q_proj", "txt_attn.v_proj", "img_mlp.0", "linear2", "v_mlp", "img_in"]


def _base_model(seed: int = 5) -> MMDiT:
    model = MMDiT(TINY_VIDEO_CONFIG)
    model.load_state_dict(tiny_mmdit_state_dict(seed=seed))
    return model.eval().requires_grad_(False)


def _write_peft_adapter(folder, seed: int, rank: int = 4, alpha: int = 8, targets=TARGETS):
    """An adapter as Open-Sora's training saves it: peft's save_pretrained of a LoRA'd model."""
    torch.manual_seed(seed)
    config = peft.LoraConfig(r=rank, lora_alpha=alpha, target_modules=list(targets), init_lora_weights=False)
    peft.get_peft_model(_base_model(), config).save_pretrained(str(folder))
    return folder


def _peft_reference(adapters: list[tuple[str, float]]) -> torch.nn.Module:
    """peft's own PeftModel with each adapter folder active, its scale multiplied by the given strength."""
    (first, _), *rest = adapters
    model = peft.PeftModel.from_pretrained(_base_model(), first, adapter_name="a0")
    for index, (folder, _) in enumerate(rest, start=1):
        model.load_adapter(folder, adapter_name=f"a{index}")
    names = [f"a{i}" for i in range(len(adapters))]
    model.base_model.set_adapter(names)
    for layer in model.modules():
        if isinstance(layer, peft.tuners.lora.LoraLayer):
            for name, (_, strength) in zip(names, adapters):
                if name in layer.scaling:
                    layer.scaling[name] *= strength
    return model.eval()


@pytest.fixture
def lora_host(standalone_host):
    (standalone_host.standalone_state().models_dir / LORAS).mkdir()
    write_tiny_mmdit(standalone_host.folder_paths(standalone_host.DIFFUSION_MODELS)[0] / "tiny.safetensors", seed=5)
    return standalone_host


def _loras(host):
    return host.folder_paths(LORAS)[0]


def _run(model, inputs):
    with torch.inference_mode():
        return model.module(**inputs)


def test_node_is_registered_and_lists_folders_and_files(lora_host):
    assert nodes.NODE_CLASS_MAPPINGS["OpenSoraLoraLoader"] is OpenSoraLoraLoader
    _write_peft_adapter(_loras(lora_host) / "style", seed=1)
    (_loras(lora_host) / "single").mkdir()
    shutil.copy(_loras(lora_host) / "style" / "adapter_model.safetensors", _loras(lora_host) / "single" / "x.safetensors")
    required = OpenSoraLoraLoader.INPUT_TYPES()["required"]
    assert list(required) == ["model", "lora_name", "strength"]
    assert required["lora_name"][0] == ["single", "single/x.safetensors", "style"]
    assert all("tooltip" in options for _, options in required.values())


def test_output_equals_peft_and_base_model_is_untouched(lora_host):
    folder = _write_peft_adapter(_loras(lora_host) / "style", seed=1)
    (base,) = OpenSoraModelLoader().execute("tiny.safetensors", "fp32")
    weights = {k: v.clone() for k, v in base.module.state_dict().items()}
    modules = [type(m) for m in base.module.modules()]
    inputs = tiny_mmdit_inputs(TINY_VIDEO_CONFIG, batch=2)
    plain = _run(base, inputs)

    (adapted,) = OpenSoraLoraLoader().execute(base, "style", 1.0)
    ours = _run(adapted, inputs)
    with torch.no_grad():
        expected = _peft_reference([(folder, 1.0)])(**inputs)
    assert (ours - expected).abs().max().item() <= 1e-6 * expected.abs().max().item()
    assert (ours - plain).abs().max() > 0.1  # the adapter does change the output
    assert adapted.adapters == ("style @ 1",) and base.adapters == ()

    after = base.module.state_dict()
    assert after.keys() == weights.keys() and all(torch.equal(after[k], weights[k]) for k in weights)
    assert [type(m) for m in base.module.modules()] == modules
    assert torch.equal(_run(base, inputs), plain)
    # the adapted model shares the base weights instead of copying them
    shared = {p.data_ptr() for p in base.module.parameters()}
    assert shared <= {p.data_ptr() for p in adapted.module.parameters()}


def test_strength_scales_the_adapter_and_zero_is_the_base_model(lora_host):
    folder = _write_peft_adapter(_loras(lora_host) / "style", seed=2)
    (base,) = OpenSoraModelLoader().execute("tiny.safetensors", "fp32")
    inputs = tiny_mmdit_inputs(TINY_VIDEO_CONFIG)
    (zero,) = OpenSoraLoraLoader().execute(base, "style", 0.0)
    assert zero is base
    for strength in (0.5, -1.0):
        (adapted,) = OpenSoraLoraLoader().execute(base, "style", strength)
        with torch.no_grad():
            expected = _peft_reference([(folder, strength)])(**inputs)
        ours = _run(adapted, inputs)
        assert (ours - expected).abs().max().item() <= 1e-6 * expected.abs().max().item()


def test_chained_loaders_equal_peft_with_both_adapters_active(lora_host):
    first = _write_peft_adapter(_loras(lora_host) / "a", seed=3)
    second = _write_peft_adapter(_loras(lora_host) / "b", seed=4, rank=2, alpha=3, targets=["img_attn.q_proj", "proj"])
    (base,) = OpenSoraModelLoader().execute("tiny.safetensors", "fp32")
    inputs = tiny_mmdit_inputs(TINY_VIDEO_CONFIG)
    (one,) = OpenSoraLoraLoader().execute(base, "a", 1.0)
    only_first = _run(one, inputs)
    (two,) = OpenSoraLoraLoader().execute(one, "b", 0.7)
    with torch.no_grad():
        expected = _peft_reference([(first, 1.0), (second, 0.7)])(**inputs)
    ours = _run(two, inputs)
    assert (ours - expected).abs().max().item() <= 1e-6 * expected.abs().max().item()
    assert torch.equal(_run(one, inputs), only_first)  # chaining left the first adapted model as it was


def test_single_file_with_its_config_beside_it(lora_host):
    folder = _write_peft_adapter(_loras(lora_host) / "style", seed=1)
    (_loras(lora_host) / "style" / "adapter_model.safetensors").rename(_loras(lora_host) / "style" / "mine.safetensors")
    (base,) = OpenSoraModelLoader().execute("tiny.safetensors", "fp32")
    (adapted,) = OpenSoraLoraLoader().execute(base, "style/mine.safetensors", 1.0)
    (_loras(lora_host) / "style" / "mine.safetensors").rename(folder / "adapter_model.safetensors")
    inputs = tiny_mmdit_inputs(TINY_VIDEO_CONFIG)
    with torch.no_grad():
        expected = _peft_reference([(folder, 1.0)])(**inputs)
    assert (_run(adapted, inputs) - expected).abs().max().item() <= 1e-6 * expected.abs().max().item()
    (folder / "adapter_config.json").unlink()
    with pytest.raises(FileNotFoundError, match="adapter_config.json is missing"):
        OpenSoraLoraLoader().execute(base, "style", 1.0)


def test_keys_that_match_no_module_are_named(lora_host):
    folder = _write_peft_adapter(_loras(lora_host) / "other", seed=1)
    weights = load_file(str(folder / "adapter_model.safetensors"))
    weights["base_model.model.double_blocks.7.img_attn.q_proj.lora_A.weight"] = torch.zeros(4, 64)
    weights["base_model.model.double_blocks.7.img_attn.q_proj.lora_B.weight"] = torch.zeros(64, 4)
    weights["base_model.model.img_in.lora_B.weight"] = torch.zeros(3, 4)  # wrong shape for img_in (64 -> 64)
    save_file(weights, str(folder / "adapter_model.safetensors"))
    (base,) = OpenSoraModelLoader().execute("tiny.safetensors", "fp32")
    with pytest.raises(ValueError, match=r"double_blocks\.7\.img_attn\.q_proj"):
        OpenSoraLoraLoader().execute(base, "other", 1.0)
    with pytest.raises(ValueError, match=r"double_blocks\.7"):  # also at strength 0
        OpenSoraLoraLoader().execute(base, "other", 0.0)
    del weights["base_model.model.double_blocks.7.img_attn.q_proj.lora_A.weight"]
    del weights["base_model.model.double_blocks.7.img_attn.q_proj.lora_B.weight"]
    save_file(weights, str(folder / "adapter_model.safetensors"))
    with pytest.raises(ValueError, match=r"img_in has lora_A .* do not fit"):
        OpenSoraLoraLoader().execute(base, "other", 1.0)


def test_non_lora_adapter_types_are_refused(lora_host):
    folder = _write_peft_adapter(_loras(lora_host) / "ia3", seed=1)
    settings = json.loads((folder / "adapter_config.json").read_text())
    settings["peft_type"] = "IA3"
    (folder / "adapter_config.json").write_text(json.dumps(settings))
    with pytest.raises(ValueError, match="only LORA"):
        read_adapter(folder)


@pytest.mark.parametrize("name", ["fp8_e4m3fn", "fp8_e5m2"])
def test_fp8_weights_keep_their_bytes_and_match_the_bf16_adapter(lora_host, name):
    _write_peft_adapter(_loras(lora_host) / "style", seed=1)
    (fp8,) = OpenSoraModelLoader().execute("tiny.safetensors", name)
    (bf16,) = OpenSoraModelLoader().execute("tiny.safetensors", "bf16")
    stored = {k: v.clone() for k, v in fp8.module.state_dict().items()}
    inputs = {k: v.to(torch.bfloat16) if v.is_floating_point() else v for k, v in tiny_mmdit_inputs(TINY_VIDEO_CONFIG).items()}
    (fp8_lora,) = OpenSoraLoraLoader().execute(fp8, "style", 1.0)
    (bf16_lora,) = OpenSoraLoraLoader().execute(bf16, "style", 1.0)
    lora_weights = [p for n, p in fp8_lora.module.named_parameters() if ".lora_" in n]
    assert lora_weights and {p.dtype for p in lora_weights} == {torch.bfloat16}  # the adapter is not rounded to fp8
    ours, reference = _run(fp8_lora, inputs).float(), _run(bf16_lora, inputs).float()
    delta_fp8 = ours - _run(fp8, inputs).float()
    delta_bf16 = reference - _run(bf16, inputs).float()
    # the adapter's contribution is the same as with bf16 weights, up to fp8 rounding of the base weights
    assert (delta_fp8 - delta_bf16).norm() / delta_bf16.norm() < 0.1
    after = fp8.module.state_dict()
    assert all(after[k].dtype == stored[k].dtype and torch.equal(after[k].view(torch.uint8), stored[k].view(torch.uint8))
               if stored[k].element_size() == 1 else torch.equal(after[k], stored[k]) for k in stored)


def test_block_offload_runs_the_adapter_and_matches_no_offload(lora_host):
    _write_peft_adapter(_loras(lora_host) / "style", seed=1)
    # Built in memory: weights read straight from a file map can give last-bit differences under offload
    # (its copies are freshly aligned), with or without an adapter.
    model = OpenSoraModel(lora_host.manage_model(_base_model()), TINY_VIDEO_CONFIG, "tiny", MMDiTSetup("fp32"))
    inputs = tiny_mmdit_inputs(TINY_VIDEO_CONFIG)
    plain = _run(model, inputs)
    (plain_lora,) = OpenSoraLoraLoader().execute(model, "style", 1.0)
    expected = _run(plain_lora, inputs)

    base_offload = install_block_offload(model.module, 3, "cpu")
    (adapted,) = OpenSoraLoraLoader().execute(model, "style", 1.0)
    copy_offload = adapted.module.block_offload
    assert copy_offload is not base_offload and len(copy_offload.streamed_blocks) == 3
    assert model.module.block_offload is base_offload and base_offload.handles  # the base keeps its own hooks
    streamed = copy_offload.streamed_blocks[-1]
    assert any(".lora_" in n for n in dict(streamed.named_parameters()))
    assert torch.equal(_run(adapted, inputs), expected)
    assert torch.equal(_run(model, inputs), plain)


def test_multi_gpu_sampling_refuses_adapted_models(lora_host):
    from comfyui_opensora.nodes.parallel import sample_in_workers

    _write_peft_adapter(_loras(lora_host) / "style", seed=1)
    (base,) = OpenSoraModelLoader().execute("tiny.safetensors", "fp32")
    (adapted,) = OpenSoraLoraLoader().execute(base, "style", 0.5)
    with pytest.raises(ValueError, match=r"cannot apply LoRA adapters \(style @ 0.5\): sample on one GPU"):
        sample_in_workers(None, adapted, None)
