"""The node declarations ComfyUI sees (V1 ``INPUT_TYPES`` and class attributes) stay exactly as recorded:
saved workflows store widget values by position, so names, order, defaults and ranges must not drift.

The snapshot was taken before the nodes were declared with specs; it holds tuples as ``{"tuple": [...]}``
so a list/tuple change shows too. Model-folder choices are read from the folders this test fills.
"""

from __future__ import annotations

import inspect
import json
from pathlib import Path

from comfyui_opensora.nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS

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
