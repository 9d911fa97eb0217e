"""Rules for the names users type, shared by both hosts: model files looked up in a model folder and
output prefixes. A name must stay inside its folder by its words alone (no absolute path, no ``..``); links
inside the folder are followed, since where a link points is the user's choice."""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Iterable, Iterator

MODEL_EXTENSIONS = {".safetensors", ".sft"}

# Folder names this pack reads, as ComfyUI names them.
DIFFUSION_MODELS = "diffusion_models"
TEXT_ENCODERS = "text_encoders"
VAE = "vae"
VAE_APPROX = "vae_approx"  # tiny preview decoders (TAEHV)


def has_extension(name: str, extensions: Iterable[str]) -> bool:
    """Whether ``name`` ends in one of ``extensions`` (compared without case)."""
    return Path(name).suffix.lower() in {e.lower() for e in extensions}


def walk_files(root: Path) -> Iterator[str]:
    """Relative names of the files below ``root``, following symlinked files and folders (a shared model
    store linked into the folder), each real folder once so that a link loop ends."""
    seen: set[str] = set()
    for folder, subfolders, files in os.walk(root, followlinks=True):
        real = os.path.realpath(folder)
        if real in seen:
            subfolders.clear()
            continue
        seen.add(real)
        relative = Path(folder).relative_to(root)
        for name in files:
            if os.path.isfile(os.path.join(folder, name)):
                yield (relative / name).as_posix()


def model_subfolders(roots: Iterable[Path]) -> set[str]:
    """The visible immediate sub-folders of ``roots`` (Hugging Face model folders)."""
    return {p.name for root in roots if root.is_dir() for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")}


def _is_absolute(name: str) -> bool:
    """An absolute path on any system (``/x``, ``\\x``, ``C:x``)."""
    return os.path.isabs(name) or name.startswith(("/", "\\")) or bool(PureWindowsPath(name).drive)


def _climbs(name: str) -> bool:
    """A name with a ``..`` part (either separator)."""
    return ".." in name.replace("\\", "/").split("/")


def _inside(name: str) -> bool:
    """Whether ``name`` stays inside the folder it is looked up in, by its words alone."""
    return bool(name.strip()) and not _is_absolute(name) and not _climbs(name)


def _dangling_link(root: Path, name: str) -> Path | None:
    """The first link on the way from ``root`` to ``name`` whose target does not exist, if any."""
    path = root
    for part in PurePosixPath(name.replace("\\", "/")).parts:
        path = path / part
        if path.is_symlink() and not path.exists():
            return path
    return None


def find_in_folders(folder: str, name: str, roots: list[Path]) -> Path:
    """The path of ``name`` in the first of ``roots`` (the directories of model folder ``folder``) that has
    it, or a FileNotFoundError that says why: a name leaving the folder, a dangling link, or where we looked."""
    if not _inside(name):
        raise FileNotFoundError(
            f"'{name}' is not a name inside the '{folder}' model folder: use a name relative to that folder, "
            "without '..' (link other places into the folder instead)."
        )
    for root in roots:
        candidate = root / name
        if candidate.exists():
            return candidate
        link = _dangling_link(root, name)
        if link is not None:
            raise FileNotFoundError(
                f"'{name}' in the '{folder}' model folder goes through the link {link} -> "
                f"{os.readlink(link)}, which points to nothing: fix or remove the link."
            )
    looked = ", ".join(str(r) for r in roots) or "(no folders)"
    raise FileNotFoundError(f"'{name}' is not in the '{folder}' model folder (looked in: {looked}).")


def check_filename_prefix(prefix: str) -> None:
    """Refuse an output prefix that is empty, absolute or walks out of the output folder (``..``)."""
    if not prefix or not prefix.strip():
        raise ValueError("filename_prefix is empty: give a name such as 'OpenSora/video'.")
    if _is_absolute(prefix):
        raise ValueError(
            f"filename_prefix '{prefix}' is an absolute path; files are saved inside the output folder, "
            "so give a relative prefix such as 'OpenSora/video'."
        )
    if _climbs(prefix):
        raise ValueError(
            f"filename_prefix '{prefix}' contains '..': saving outside the output folder is not allowed."
        )
