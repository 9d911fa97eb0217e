"""ComfyUI glue: one module per pipeline stage; their ``@register``-ed node classes make the pack's mappings."""

from importlib import import_module

from .spec import REGISTRY

# One line per stage module, in the order the nodes are listed; each registers its nodes with @register.
_NODE_MODULES: tuple[str, ...] = (
    "noise",
    "sampler",
    "image_condition",
    "model_loader",
    "save_video",
    "text",
    "vae",
    "parallel",
    "lora",
    "prompt_refiner",
    "first_frame",
)

_MODULE_ORDER = [import_module(f".{name}", __name__).__name__ for name in _NODE_MODULES]
_unlisted = {entry.node.__module__ for entry in REGISTRY.values()} - set(_MODULE_ORDER)
if _unlisted:
    raise ImportError(f"Node modules missing from _NODE_MODULES: {sorted(_unlisted)}.")
# Stable sort: module order first, then the order each module registers its nodes in.
_NODES = sorted(REGISTRY.values(), key=lambda entry: _MODULE_ORDER.index(entry.node.__module__))

NODE_CLASS_MAPPINGS: dict[str, type] = {entry.node_id: entry.node for entry in _NODES}
NODE_DISPLAY_NAME_MAPPINGS: dict[str, str] = {entry.node_id: entry.display_name for entry in _NODES}
