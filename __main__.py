"""Command line: ``python3 /path/to/ComfyUI-OpenSora generate ...`` (or ``python3 . generate`` here).

ComfyUI imports this folder by path, so it is not an installed package: import it under a package name
by path, then hand over to ``nodes/cli.py``. ComfyUI itself is not needed.
"""

import importlib.util
import sys
from pathlib import Path

PACKAGE = "comfyui_opensora"


def _import_pack():
    root = Path(__file__).resolve().parent
    # Python put this folder first on sys.path; its sub-folders (nodes, models...) must not shadow
    # top-level modules of other libraries.
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != root]
    if PACKAGE in sys.modules:
        return sys.modules[PACKAGE]
    spec = importlib.util.spec_from_file_location(PACKAGE, root / "__init__.py", submodule_search_locations=[str(root)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[PACKAGE] = module
    spec.loader.exec_module(module)
    return module


if __name__ == "__main__":
    _import_pack()
    from comfyui_opensora.nodes.cli import main

    sys.exit(main())
