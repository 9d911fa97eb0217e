"""Citations of docs/reference.md stay valid: every section anchor cited in the pack's code, tests, benchmarks
and docs names a heading of that file, and nothing cites the workspace-only spec instead."""

from __future__ import annotations

import re
from pathlib import Path

PACK_ROOT = Path(__file__).resolve().parent.parent
REFERENCE = PACK_ROOT / "docs" / "reference.md"
CITATION = re.compile(r"docs/reference\.md#([A-Za-z0-9_-]+)")
SCANNED_SUFFIXES = {".py", ".md", ".js", ".sh", ".toml"}
WORKSPACE_SPEC = "opensora_spec" + ".md"  # split so this file does not match itself


def _anchor(heading: str) -> str:
    """GitHub's anchor for a Markdown heading: lower case, punctuation dropped, spaces as hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _headings() -> set[str]:
    lines = REFERENCE.read_text(encoding="utf-8").splitlines()
    return {_anchor(line.lstrip("#")) for line in lines if re.match(r"#{1,6} ", line)}


def _pack_files() -> list[Path]:
    return [p for p in PACK_ROOT.rglob("*") if p.is_file() and p.suffix in SCANNED_SUFFIXES
            and not {".git", "__pycache__", "node_modules"} & set(p.relative_to(PACK_ROOT).parts)]


def test_heading_anchor_rule():
    assert _anchor("Noise and seeds") == "noise-and-seeds"
    assert _anchor("DC-AE") == "dc-ae"
    assert _anchor("Hunyuan VAE (causal, 3-D)") == "hunyuan-vae-causal-3-d"


def test_every_cited_anchor_is_a_heading():
    headings = _headings()
    cited = {(str(p.relative_to(PACK_ROOT)), anchor)
             for p in _pack_files() for anchor in CITATION.findall(p.read_text(encoding="utf-8", errors="replace"))}
    assert cited, "no code cites docs/reference.md"
    missing = sorted((path, anchor) for path, anchor in cited if anchor not in headings)
    assert not missing, f"anchors that are not headings of docs/reference.md: {missing}"


def test_nothing_cites_the_workspace_spec():
    citing = sorted(str(p.relative_to(PACK_ROOT)) for p in _pack_files()
                    if WORKSPACE_SPEC in p.read_text(encoding="utf-8", errors="replace"))
    assert not citing, f"cite docs/reference.md instead of {WORKSPACE_SPEC}: {citing}"
