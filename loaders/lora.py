"""LoRA adapters in PEFT's format, applied to a copy of a loaded MMDiT.

Open-Sora's training saves adapters with peft (``adapter_config.json`` + ``adapter_model.safetensors``,
keys ``base_model.model.<module>.lora_A.weight`` / ``lora_B.weight``) and its inference wraps the model
in ``peft.PeftModel``. We read the same files and let peft build the LoRA layers, but never on the
caller's model: ComfyUI keeps one loaded model for every graph that uses it, so the adapter goes on a
*structural copy* whose modules are new objects sharing the base Parameter objects. The base model's
weights and modules are left untouched (bit-identical after any number of loads), and no weight memory
is duplicated.
"""

from __future__ import annotations

import copy
import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = ("adapter_model.safetensors",)
PEFT_PREFIX = "base_model.model."
LORA_SUFFIXES = (".lora_A.weight", ".lora_B.weight")

# Per-instance attributes that bind a module to itself (block offload, torch.compile); a copy must not keep them.
_BOUND_ATTRIBUTES = ("_apply", "forward", "block_offload")


@dataclass(frozen=True)
class LoraAdapter:
    """An adapter read from disk: its peft config and weights keyed by module path (``<module>.lora_A.weight``)."""

    name: str
    config: object  # peft.LoraConfig
    weights: dict[str, torch.Tensor]

    @property
    def module_names(self) -> list[str]:
        """Modules the weights adapt, in file order."""
        names = {key[: -len(suffix)] for key in self.weights for suffix in LORA_SUFFIXES if key.endswith(suffix)}
        return sorted(names)


def _peft():
    try:
        import peft
    except ImportError as error:  # peft is in requirements.txt; say what to do if it is missing anyway
        raise ImportError("LoRA adapters need the 'peft' package: pip install peft") from error
    return peft


def read_adapter(path: str | os.PathLike) -> LoraAdapter:
    """Read a PEFT LoRA adapter: a folder, or a ``.safetensors`` file with ``adapter_config.json`` beside it."""
    peft = _peft()
    path = Path(path)
    if path.is_dir():
        weights_file = next((path / n for n in ADAPTER_WEIGHTS if (path / n).is_file()), None)
        if weights_file is None:
            raise FileNotFoundError(f"LoRA folder {path} has no {' or '.join(ADAPTER_WEIGHTS)}.")
        config_file = path / ADAPTER_CONFIG
    else:
        weights_file, config_file = path, path.parent / ADAPTER_CONFIG
    if not config_file.is_file():
        raise FileNotFoundError(
            f"LoRA {path.name}: {config_file.name} is missing (expected at {config_file}). Keep the adapter_config.json "
            "that peft saved next to the weights."
        )
    settings = json.loads(config_file.read_text(encoding="utf-8"))
    if settings.get("peft_type", "LORA") != "LORA":
        raise ValueError(f"LoRA {path.name}: adapter type {settings.get('peft_type')!r} is not supported (only LORA).")
    config = peft.LoraConfig.from_pretrained(str(config_file.parent))
    if config.use_dora:
        raise ValueError(f"LoRA {path.name}: DoRA adapters are not supported.")
    raw = load_file(str(weights_file))
    weights: dict[str, torch.Tensor] = {}
    others: list[str] = []
    for key, tensor in raw.items():
        name = key[len(PEFT_PREFIX):] if key.startswith(PEFT_PREFIX) else key
        if not name.endswith(LORA_SUFFIXES):
            others.append(key)
        weights[name] = tensor
    if others:
        raise ValueError(f"LoRA {path.name}: keys that are not LoRA A/B weights: {', '.join(sorted(others)[:8])}"
                         + (f" (+{len(others) - 8} more)" if len(others) > 8 else ""))
    if not weights:
        raise ValueError(f"LoRA {path.name}: the file holds no tensors.")
    return LoraAdapter(path.stem if path.is_file() else path.name, config, weights)


def _base_layer(module: nn.Module) -> nn.Module:
    """The layer under peft's LoRA wrapper (a module adapted by an earlier loader), else the module."""
    get_base_layer = getattr(module, "get_base_layer", None)
    return get_base_layer() if callable(get_base_layer) else module


def check_adapter_keys(model: nn.Module, adapter: LoraAdapter) -> None:
    """Every adapted module must be a Linear of ``model`` with matching shapes; else name the offending keys."""
    modules = {name: _base_layer(module) for name, module in model.named_modules()}
    unmatched = [n for n in adapter.module_names if not isinstance(modules.get(n), nn.Linear)]
    if unmatched:
        shown = ", ".join(f"{PEFT_PREFIX}{n}.lora_A.weight" for n in unmatched[:8])
        raise ValueError(
            f"LoRA {adapter.name}: {len(unmatched)} adapted module(s) do not exist in this model (is the adapter for "
            f"another model?): {shown}" + (f" (+{len(unmatched) - 8} more)" if len(unmatched) > 8 else "")
        )
    for name in adapter.module_names:
        linear = modules[name]
        down, up = adapter.weights.get(f"{name}.lora_A.weight"), adapter.weights.get(f"{name}.lora_B.weight")
        if down is None or up is None:
            raise ValueError(f"LoRA {adapter.name}: {name} has only one of lora_A / lora_B.")
        if down.shape[1] != linear.in_features or up.shape[0] != linear.out_features or down.shape[0] != up.shape[1]:
            raise ValueError(
                f"LoRA {adapter.name}: {name} has lora_A {tuple(down.shape)} / lora_B {tuple(up.shape)}, which do not fit "
                f"a Linear {linear.in_features} -> {linear.out_features}."
            )


def share_structure(module: nn.Module) -> nn.Module:
    """A copy of ``module``'s tree: new module objects holding the *same* Parameter and buffer objects.

    Hooks and self-bound attributes (block offload, compiled forwards) are not copied; the caller
    re-installs what it needs on the copy.
    """
    clone = copy.copy(module)
    # Containers are copied too: peft keeps per-adapter settings (scaling, r, active adapter) in plain
    # dicts and lists, which an adapter added to the copy must not add to the original.
    clone.__dict__ = {k: copy.copy(v) if isinstance(v, (dict, list, set)) else v for k, v in module.__dict__.items()}
    for attribute in _BOUND_ATTRIBUTES:
        clone.__dict__.pop(attribute, None)
    clone._parameters = dict(module._parameters)
    clone._buffers = dict(module._buffers)
    clone._non_persistent_buffers_set = set(module._non_persistent_buffers_set)
    for hooks in ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks",
                  "_forward_hooks_with_kwargs", "_forward_pre_hooks_with_kwargs", "_forward_hooks_always_called",
                  "_state_dict_hooks", "_state_dict_pre_hooks", "_load_state_dict_pre_hooks",
                  "_load_state_dict_post_hooks"):
        if hooks in clone.__dict__:
            clone.__dict__[hooks] = type(module.__dict__[hooks])()
    clone._modules = {name: None if child is None else share_structure(child) for name, child in module._modules.items()}
    return clone


def apply_adapter(model: nn.Module, adapter: LoraAdapter, strength: float, dtype: torch.dtype) -> nn.Module:
    """``model`` with ``adapter`` added at ``strength`` (its ``alpha / r`` scale times ``strength``), as a new
    module tree sharing ``model``'s weights; adapters already on ``model`` stay active.

    The LoRA weights are kept in ``dtype`` (the model's compute dtype: fp8-stored models compute in bf16)
    on the device of the adapted layer's weight.
    """
    peft = _peft()
    check_adapter_keys(model, adapter)
    from peft.tuners.lora import LoraLayer

    clone = share_structure(model)
    # peft makes the new adapter the only active one in every LoRA layer: remember the earlier ones.
    earlier = {name: list(layer.active_adapters) for name, layer in clone.named_modules() if isinstance(layer, LoraLayer)}
    present = {adapter for layer in clone.modules() if isinstance(layer, LoraLayer) for adapter in layer.lora_A}
    adapter_name = f"lora_{len(present)}"  # a chained loader adds its adapter next to the earlier ones
    config = copy.deepcopy(adapter.config)
    # Exactly the modules the file has weights for: a config pattern matching more would add untrained layers.
    config.target_modules = set(adapter.module_names)
    config.inference_mode = True
    with warnings.catch_warnings():  # peft warns that a chained adapter makes the model hold several: intended
        warnings.filterwarnings("ignore", message="Already found a `peft_config`")
        peft.inject_adapter_in_model(config, clone, adapter_name=adapter_name, low_cpu_mem_usage=True)  # on meta
    layers = {name: module for name, module in clone.named_modules() if adapter_name in getattr(module, "lora_A", {})}
    missing = sorted(set(adapter.module_names) - set(layers))
    if missing:
        raise ValueError(f"LoRA {adapter.name}: peft made no LoRA layer for {', '.join(missing[:8])}")
    for name, layer in layers.items():
        # The file's weights are assigned in the compute dtype directly: peft would first copy them into
        # layers cast like the base weight, which for fp8 base weights rounds them to fp8.
        device = layer.get_base_layer().weight.device
        for part in ("lora_A", "lora_B"):
            tensor = adapter.weights[f"{name}.{part}.weight"].to(device=device, dtype=dtype)
            getattr(layer, part)[adapter_name].weight = nn.Parameter(tensor, requires_grad=False)
        layer.scaling[adapter_name] *= strength
    for name, layer in clone.named_modules():
        if isinstance(layer, LoraLayer):
            layer.set_adapter(earlier.get(name, []) + ([adapter_name] if name in layers else []))
            for active in layer.active_adapters:  # set_adapter marks them trainable; this is inference
                layer.lora_A[active].requires_grad_(False)
                layer.lora_B[active].requires_grad_(False)
    return clone
