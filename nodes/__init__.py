"""ComfyUI glue: one module per pipeline stage, merged into the pack's node mappings."""

from importlib import import_module

# One line per stage module; each defines NODE_CLASS_MAPPINGS and NODE_DISPLAY_NAME_MAPPINGS.
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

NODE_CLASS_MAPPINGS: dict[str, type] = {}
NODE_DISPLAY_NAME_MAPPINGS: dict[str, str] = {}

for _name in _NODE_MODULES:
    _module = import_module(f".{_name}", __name__)
    NODE_CLASS_MAPPINGS.update(_module.NODE_CLASS_MAPPINGS)
    NODE_DISPLAY_NAME_MAPPINGS.update(_module.NODE_DISPLAY_NAME_MAPPINGS)
