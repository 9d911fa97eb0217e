"""ComfyUI-OpenSora: Open-Sora 2.0 text/image-to-video nodes for ComfyUI.

Registration only: the node classes live in ``nodes/``.
"""

from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS

WEB_DIRECTORY = "./web"

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "WEB_DIRECTORY"]
