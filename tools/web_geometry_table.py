"""Generates the size table of ``web/opensora.js`` (autoencoder rules and aspect ratios) from the pack's
Python facts, so the frontend and the nodes agree; ``tests/test_web_extension.py`` checks it is current.

    python3 tools/web_geometry_table.py        # rewrite the block between the BEGIN/END markers
"""

from __future__ import annotations

import json
import runpy
import sys
from pathlib import Path

PACK_ROOT = Path(__file__).resolve().parent.parent
SCRIPT = PACK_ROOT / "web" / "opensora.js"
BEGIN, END = "// BEGIN GEOMETRY TABLE\n", "// END GEOMETRY TABLE\n"


def _geometry():
    """The pack's ``(latent_space, geometry)`` modules (the pack imported by path when run as a script)."""
    if "comfyui_opensora" not in sys.modules:
        runpy.run_path(str(PACK_ROOT / "__main__.py"))["import_pack"]()
    from comfyui_opensora.models import latent_space
    from comfyui_opensora.samplers import geometry
    return latent_space, geometry


def expected_table() -> dict:
    """What the JS table must hold: the autoencoder rules and the aspect ratios, from the pack."""
    latent_space, geometry = _geometry()
    autoencoders = {}
    for name, kind in latent_space.AUTOENCODERS.items():
        autoencoders[name] = {
            "causal": kind.causal,
            "latent_channels": kind.latent_channels,
            "patch_size": kind.patch_size,
            "size_divisor": kind.size_divisor,
            "spatial_compression": kind.spatial_compression,
            "temporal_compression": kind.temporal_compression,
        }
    return {"aspect_ratios": list(geometry.ASPECT_RATIOS), "autoencoders": autoencoders}


def _js_literal(value, depth: int = 0) -> str:
    if not isinstance(value, dict) or not any(isinstance(v, dict) for v in value.values()):
        return json.dumps(value, sort_keys=True)  # innermost tables on one line
    pad = "  " * (depth + 1)
    items = [f"{pad}{json.dumps(k)}: {_js_literal(v, depth + 1)}" for k, v in sorted(value.items())]
    return "{\n" + ",\n".join(items) + "\n" + "  " * depth + "}"


def table_block() -> str:
    return f"export const GEOMETRY = {_js_literal(expected_table())};\n"


def read_table(source: str) -> dict:
    block = source.split(BEGIN, 1)[1].split(END, 1)[0]
    literal = block.strip().removeprefix("export const GEOMETRY = ").removesuffix(";")
    return json.loads(literal)


def write_table() -> None:
    source = SCRIPT.read_text(encoding="utf-8")
    head, rest = source.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    SCRIPT.write_text(head + BEGIN + table_block() + END + tail, encoding="utf-8")


# ---------------------------------------------------------------------------------------- static


if __name__ == "__main__":
    write_table()
    print(f"wrote the geometry table into {SCRIPT}")
