"""Command line: ``python3 /path/to/ComfyUI-OpenSora generate ...`` (``python3 . generate`` here).

Also the pack's one bootstrap: ComfyUI imports this folder by path, so it is not an installed package.
:func:`import_pack` imports it by path under a package name; the tests and benchmarks load this file
(``runpy.run_path``) to call it. The command line parses its options before torch is imported, so
``--help`` and usage mistakes answer at once.
"""

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

PACKAGE = "comfyui_opensora"
PACK_ROOT = Path(__file__).resolve().parent


def import_pack(name: str = PACKAGE, register_nodes: bool = True) -> ModuleType:
    """The pack imported as package ``name`` (idempotent).

    ``register_nodes=False`` leaves the root ``__init__`` (which imports every node, and so torch)
    unexecuted: sub-modules still import on demand. The command line uses this to stay light.
    """
    # Python put this folder first on sys.path when run as a script; its sub-folders (nodes, models...)
    # must not shadow top-level modules of other libraries.
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != PACK_ROOT]
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, PACK_ROOT / "__init__.py",
                                                  submodule_search_locations=[str(PACK_ROOT)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    if register_nodes:
        spec.loader.exec_module(module)
    return module


if __name__ == "__main__":
    import_pack(register_nodes=False)
    from comfyui_opensora.standalone.arguments import parse_arguments, report_user_error

    try:
        arguments = parse_arguments()
    except SystemExit as mistake:  # ours carry a message; argparse's (status 2) printed theirs already
        if not isinstance(mistake.code, str) or "--debug" in sys.argv:
            raise
        sys.exit(report_user_error(mistake.code))
    from comfyui_opensora.standalone.cli import main

    sys.exit(main(args=arguments))
