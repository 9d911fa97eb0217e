"""The node declarations ComfyUI sees (V1 ``INPUT_TYPES`` and class attributes) stay exactly as recorded:
saved workflows store widget values by position, so names, order, defaults and ranges must not drift.

The snapshot was taken before the nodes were declared with specs; it holds tuples as ``{"tuple": [...]}``
so a list/tuple change shows too. Model-folder choices are read from the folders this test fills.
"""

from __future__ import annotations

import inspect
import json
from pathlib import Path

import pytest

from comfyui_opensora.nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS
from comfyui_opensora.nodes.spec import REGISTRY, Input, NodeSpec, Output, declare, register, spec_of

SNAPSHOT = Path(__file__).resolve().parent / "node_v1_snapshot.json"
CLASS_ATTRIBUTES = ("RETURN_TYPES", "RETURN_NAMES", "OUTPUT_TOOLTIPS", "OUTPUT_IS_LIST", "FUNCTION", "CATEGORY",
                    "DESCRIPTION", "OUTPUT_NODE", "INPUT_IS_LIST")
METHODS = ("VALIDATE_INPUTS", "IS_CHANGED", "check_lazy_status")


def _tagged(value):
    """JSON-ready, keeping what JSON loses: tuples are tagged, dict order is kept by the dump."""
    if isinstance(value, tuple):
        return {"tuple": [_tagged(v) for v in value]}
    if isinstance(value, list):
        return [_tagged(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _tagged(v) for k, v in value.items()}
    return value


def v1_surface() -> list[dict]:
    """Every registered node as ComfyUI reads it, in registration order."""
    nodes = []
    for node_id, cls in NODE_CLASS_MAPPINGS.items():
        entry = {"id": node_id, "display_name": NODE_DISPLAY_NAME_MAPPINGS[node_id],
                 "INPUT_TYPES": cls.INPUT_TYPES()}
        entry.update({name: getattr(cls, name) for name in CLASS_ATTRIBUTES if hasattr(cls, name)})
        entry.update({name: list(inspect.signature(getattr(cls, name)).parameters)
                      for name in METHODS if hasattr(cls, name)})
        nodes.append(_tagged(entry))
    return nodes


def _fill_model_folders(host) -> None:
    for folder in (host.DIFFUSION_MODELS, host.VAE, host.TEXT_ENCODERS, "loras"):
        root = host.folder_paths(folder)[0]
        root.mkdir(parents=True, exist_ok=True)
        (root / f"{folder}_a.safetensors").write_bytes(b"")
        (root / "nested").mkdir(exist_ok=True)
        (root / "nested" / "b.safetensors").write_bytes(b"")


def test_v1_declarations_match_the_snapshot(standalone_host):
    _fill_model_folders(standalone_host)
    rendered = json.dumps(v1_surface(), indent=1, ensure_ascii=False)
    assert rendered == SNAPSHOT.read_text(encoding="utf-8").rstrip("\n")


# ------------------------------------------------------------------------------------ the spec API


def _comparable(spec: NodeSpec) -> tuple:
    """A spec with its choices read, for comparing a declared spec with one read back from V1."""
    inputs = tuple((i.name, i.type, i.tooltip, i.default, i.min, i.max, i.step, i.choice_list(), i.optional,
                    i.multiline, i.force_input, i.control_after_generate) for i in spec.inputs)
    outputs = tuple((o.type, o.name, o.is_list) for o in spec.outputs)
    return (inputs, outputs, spec.description, dict(spec.hidden), spec.output_node, spec.input_is_list,
            spec.category, spec.function)


def test_the_v1_reader_reads_back_every_declared_spec(standalone_host):
    """The runner and the test doubles read hand-written V1 classes with NodeSpec.from_v1: it must see
    the same inputs, outputs and flags in a rendered node as its spec holds."""
    _fill_model_folders(standalone_host)
    for node_id, cls in NODE_CLASS_MAPPINGS.items():
        assert spec_of(cls) is cls.SPEC, node_id
        assert _comparable(NodeSpec.from_v1(cls)) == _comparable(cls.SPEC), node_id


def test_the_registry_is_the_pack_mappings():
    assert list(NODE_CLASS_MAPPINGS) == list(NODE_DISPLAY_NAME_MAPPINGS)
    assert {node_id: entry.node for node_id, entry in REGISTRY.items()} == NODE_CLASS_MAPPINGS
    assert all(REGISTRY[i].display_name == name for i, name in NODE_DISPLAY_NAME_MAPPINGS.items())


def test_choices_from_a_callable_are_read_each_time_the_node_is_listed():
    listed = ["a"]

    @declare
    class Node:
        SPEC = NodeSpec((Input("name", choices=lambda: list(listed), default="a", tooltip="t"),),
                        (Output("STRING", "name"),), category=None)

    assert Node.INPUT_TYPES() == {"required": {"name": (["a"], {"default": "a", "tooltip": "t"})}}
    listed.append("b")
    assert Node.INPUT_TYPES()["required"]["name"][0] == ["a", "b"]
    assert Node.RETURN_TYPES == ("STRING",) and Node.RETURN_NAMES == ("name",) and Node.FUNCTION == "execute"
    assert not hasattr(Node, "CATEGORY") and not hasattr(Node, "OUTPUT_IS_LIST")


def test_specs_refuse_what_v1_cannot_say():
    with pytest.raises(ValueError, match="needs choices"):
        Input("mode", tooltip="no choices")
    with pytest.raises(ValueError, match="take none"):
        Input("count", "INT", choices=("1",))
    with pytest.raises(ValueError, match="required inputs before the optional"):
        NodeSpec((Input("a", "INT", optional=True), Input("b", "INT")), ())


def test_a_node_id_is_registered_once():
    taken = next(iter(REGISTRY))
    with pytest.raises(ValueError, match="is taken"):
        @register(taken, "Another")
        class Impostor:
            SPEC = NodeSpec((), ())
    assert REGISTRY[taken].node is NODE_CLASS_MAPPINGS[taken]
