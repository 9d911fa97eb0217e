"""The house's import rules, read from the source (no import needed): only the host package imports
ComfyUI, and a room imports only rooms on its own floor or below (nodes -> samplers -> loaders -> models)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACK_ROOT = Path(__file__).resolve().parent.parent

# Top-level modules that exist only inside ComfyUI.
COMFY_MODULES = {"comfy", "comfy_api", "comfy_extras", "comfy_execution", "folder_paths", "server", "execution",
                 "latent_preview", "node_helpers", "nodes"}
# Each room's floor: a module may import its own room and rooms on a lower floor, never a higher one.
FLOORS = {
    "models": 0,
    "loaders": 1, "media": 1, "llm": 1,
    "samplers": 2, "tiny_checkpoints": 2,
    "parallel": 3,
    "nodes": 4,
    "standalone": 5,
}
HOST = "host"  # the one door to ComfyUI: imports no room; only nodes/ and standalone/ go through it
HOST_USERS = {"nodes", "standalone"}


def pack_modules() -> list[Path]:
    return sorted(p for room in (*FLOORS, HOST) for p in (PACK_ROOT / room).rglob("*.py"))


def imported_rooms(path: Path) -> tuple[set[str], set[str]]:
    """(pack rooms, top-level non-pack modules) that ``path`` imports, relative imports resolved."""
    package = path.relative_to(PACK_ROOT).parent.parts
    rooms, absolute = set(), set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = package[: len(package) - node.level + 1]
            target = [*base, *(node.module.split(".") if node.module else [])]
            if not target:  # `from .. import host` at the pack root
                target = [alias.name for alias in node.names]
                rooms.update(target)
            else:
                rooms.add(target[0])
        elif isinstance(node, ast.ImportFrom):
            absolute.add(node.module.split(".")[0])
        elif isinstance(node, ast.Import):
            absolute.update(alias.name.split(".")[0] for alias in node.names)
    return rooms, absolute


def room_of(path: Path) -> str:
    return path.relative_to(PACK_ROOT).parts[0]


def test_every_pack_module_lives_in_a_known_room():
    loose = sorted(p.name for p in PACK_ROOT.glob("*.py") if p.name not in ("__init__.py", "__main__.py"))
    assert not loose, f"modules outside a room: {loose}"
    rooms = {p.name for p in PACK_ROOT.iterdir() if p.is_dir() and (p / "__init__.py").is_file()}
    assert rooms <= {*FLOORS, HOST}, f"rooms without a floor in this test: {sorted(rooms - {*FLOORS, HOST})}"


@pytest.mark.parametrize("path", pack_modules(), ids=lambda p: str(p.relative_to(PACK_ROOT)))
def test_imports_follow_the_floors(path):
    room = room_of(path)
    rooms, absolute = imported_rooms(path)
    if room == HOST:
        assert rooms <= {HOST}, f"the host package imports pack rooms {sorted(rooms - {HOST})}"
    else:
        assert HOST not in rooms or room in HOST_USERS, f"{room}/ reaches the host; only {sorted(HOST_USERS)} may"
        higher = sorted(r for r in rooms - {HOST} if FLOORS.get(r, 99) > FLOORS[room])
        assert not higher, f"{room}/ (floor {FLOORS[room]}) imports higher rooms {higher}"
    comfy = absolute & COMFY_MODULES
    assert not comfy or path.parent.name == HOST, f"only host/ imports ComfyUI; this imports {sorted(comfy)}"
