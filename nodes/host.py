"""The pack's only door to ComfyUI.

Every other module reaches the host through these functions: devices, managed models, progress and
Cancel, model/output folders and previews. When ComfyUI is absent (tests, the command line) each
function falls back to plain PyTorch behaviour, configured with :func:`configure_standalone`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any, Callable, Iterable, Iterator

import torch

try:  # pragma: no cover - exercised only inside a real ComfyUI
    import comfy.model_management as _mm
    import comfy.model_patcher as _patcher
    import comfy.utils as _comfy_utils
    import folder_paths as _folder_paths

    IN_COMFY = True
except ImportError:
    _mm = _patcher = _comfy_utils = _folder_paths = None
    IN_COMFY = False

MODEL_EXTENSIONS = {".safetensors", ".sft"}

# Folder names this pack reads, as ComfyUI names them.
DIFFUSION_MODELS = "diffusion_models"
TEXT_ENCODERS = "text_encoders"
VAE = "vae"
VAE_APPROX = "vae_approx"  # tiny preview decoders (TAEHV)


class Interrupted(Exception):
    """Raised outside ComfyUI when :func:`request_interrupt` was called (ComfyUI raises its own)."""


@dataclass
class _Standalone:
    """Settings used when ComfyUI is absent."""

    models_dir: Path | None = None
    output_dir: Path | None = None
    device: torch.device | None = None
    interrupt_requested: bool = False
    progress_listeners: list[Callable[[int, int], None]] = field(default_factory=list)
    preview_listeners: list[Callable[[int, int, Any], None]] = field(default_factory=list)
    loaded_models: list[Any] = field(default_factory=list)  # StandaloneModels on their load device


_standalone = _Standalone()


def configure_standalone(
    models_dir: str | os.PathLike | None = None,
    output_dir: str | os.PathLike | None = None,
    device: str | torch.device | None = None,
) -> None:
    """Set the model folder root (``<root>/diffusion_models``, ``<root>/vae``...), output folder and
    device used when the pack runs without ComfyUI."""
    if models_dir is not None:
        _standalone.models_dir = Path(models_dir)
    if output_dir is not None:
        _standalone.output_dir = Path(output_dir)
    if device is not None:
        _standalone.device = torch.device(device)


# ----------------------------------------------------------------------------------------- devices


def torch_device() -> torch.device:
    """The device heavy work runs on."""
    if IN_COMFY:
        return _mm.get_torch_device()
    if _standalone.device is not None:
        return _standalone.device
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def offload_device() -> torch.device:
    """Where idle weights are kept."""
    if IN_COMFY:
        return _mm.unet_offload_device()
    return torch.device("cpu")


def intermediate_device() -> torch.device:
    """Where values handed between nodes (IMAGE frames, latents) live."""
    if IN_COMFY:
        return _mm.intermediate_device()
    return torch.device("cpu")


def free_device_memory(device: torch.device | None = None) -> int:
    """Free memory on ``device`` in bytes (system RAM for the CPU)."""
    device = device or torch_device()
    if IN_COMFY:
        return int(_mm.get_free_memory(device))
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        pages = os.sysconf("SC_AVPHYS_PAGES")
        return int(pages * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return 8 << 30


def empty_cache() -> None:
    """Give cached allocator blocks back after large temporary work."""
    if IN_COMFY:
        _mm.soft_empty_cache()
    elif torch.cuda.is_available():
        torch.cuda.empty_cache()


# ----------------------------------------------------------------------------------- managed models


class StandaloneModel:
    """The stand-in for ComfyUI's ModelPatcher outside ComfyUI: holds a module and its devices."""

    def __init__(self, model: torch.nn.Module, load_device: torch.device, offload_device: torch.device):
        self.model = model
        self.load_device = load_device
        self.offload_device = offload_device

    def load(self) -> None:
        self.model.to(self.load_device)

    def offload(self) -> None:
        self.model.to(self.offload_device)


def manage_model(model: torch.nn.Module, load_device: torch.device | None = None) -> Any:
    """Wrap ``model`` so the host's memory manager can move it (a ModelPatcher inside ComfyUI)."""
    load_device = load_device or torch_device()
    if IN_COMFY:
        return _patcher.ModelPatcher(model, load_device=load_device, offload_device=offload_device())
    return StandaloneModel(model, load_device, offload_device())


def load_models(managed: Iterable[Any], memory_required: int = 0) -> None:
    """Bring managed models onto their device, letting the host evict others to make room."""
    managed = list(managed)
    if IN_COMFY:
        _mm.load_models_gpu(managed, memory_required=memory_required)
        return
    # Like ComfyUI, keep only what is asked for on the device: the text encoders and the VAE go
    # back to RAM while the diffusion model samples (simpler than ComfyUI: every other model goes).
    evicted = [h for h in _standalone.loaded_models if all(h is not m for m in managed)]
    for handle in evicted:
        handle.offload()
        _standalone.loaded_models.remove(handle)
    if evicted:
        empty_cache()
    for handle in managed:
        handle.load()
        if all(handle is not h for h in _standalone.loaded_models):
            _standalone.loaded_models.append(handle)


def unwrap_model(managed: Any) -> torch.nn.Module:
    """The ``nn.Module`` inside a managed model."""
    return managed.model


# ------------------------------------------------------------------------------ progress and cancel


def request_interrupt(value: bool = True) -> None:
    """Outside ComfyUI: ask running work to stop at its next check (ComfyUI has its own Cancel)."""
    _standalone.interrupt_requested = value


def check_interrupt() -> None:
    """Raise if the user pressed Cancel (ComfyUI) or :func:`request_interrupt` was called."""
    if IN_COMFY:
        _mm.throw_exception_if_processing_interrupted()
    elif _standalone.interrupt_requested:
        _standalone.interrupt_requested = False
        raise Interrupted("Processing interrupted")


def add_progress_listener(listener: Callable[[int, int], None]) -> Callable[[], None]:
    """Outside ComfyUI: call ``listener(value, total)`` on every progress update; returns a remover."""
    _standalone.progress_listeners.append(listener)
    return lambda: _standalone.progress_listeners.remove(listener)


class Progress:
    """A progress bar: ComfyUI's ProgressBar inside ComfyUI (which also checks Cancel), else listeners."""

    def __init__(self, total: int):
        self.total = int(total)
        self.value = 0
        self._bar = _comfy_utils.ProgressBar(self.total) if IN_COMFY else None

    def update(self, steps: int = 1, preview: Any = None) -> None:
        """Advance by ``steps``; ``preview`` is a PIL image shown on the node when previews are on."""
        self.value = min(self.total, self.value + steps)
        if self._bar is not None:
            image = ("JPEG", preview, 512) if preview is not None else None
            self._bar.update_absolute(self.value, self.total, image)
        else:
            for listener in list(_standalone.progress_listeners):
                listener(self.value, self.total)
            for listener in list(_standalone.preview_listeners) if preview is not None else ():
                listener(self.value, self.total, preview)
            check_interrupt()


def show_text(text: str) -> None:
    """Show ``text`` on the running node in ComfyUI's frontend (its progress-text line). Outside
    ComfyUI nothing is shown: callers log the text as well."""
    if not IN_COMFY:
        return
    try:
        from comfy_execution.utils import get_executing_context
        from server import PromptServer

        context = get_executing_context()
        if context is not None and PromptServer.instance is not None:
            PromptServer.instance.send_progress_text(text, context.node_id)
    except (ImportError, AttributeError):  # an older ComfyUI without progress text: the log still has it
        pass


def add_preview_listener(listener: Callable[[int, int, Any], None]) -> Callable[[], None]:
    """Outside ComfyUI: turn previews on and call ``listener(value, total, picture)`` with each one; returns a
    remover."""
    _standalone.preview_listeners.append(listener)
    return lambda: _standalone.preview_listeners.remove(listener)


def previews_enabled() -> bool:
    """Whether the user turned latent previews on (``--preview-method`` other than none; outside ComfyUI: a
    preview listener is registered)."""
    if not IN_COMFY:
        return bool(_standalone.preview_listeners)
    try:
        from comfy.cli_args import LatentPreviewMethod, args

        return args.preview_method != LatentPreviewMethod.NoPreviews
    except (ImportError, AttributeError):
        return False


def preview_decoders_allowed() -> bool:
    """Whether previews may use a learned decoder (TAEHV): not when ComfyUI runs with ``--preview-method
    latent2rgb`` (the user asked for the cheap projection)."""
    if not IN_COMFY:
        return True
    try:
        from comfy.cli_args import LatentPreviewMethod, args

        return args.preview_method != LatentPreviewMethod.Latent2RGB
    except (ImportError, AttributeError):
        return True


# ---------------------------------------------------------------------------------------- folders


def register_folders() -> None:
    """Make sure ComfyUI lists ``.safetensors``/``.sft`` files in the folders this pack reads."""
    if not IN_COMFY:
        return
    for name in (DIFFUSION_MODELS, TEXT_ENCODERS, VAE, VAE_APPROX):
        if name in _folder_paths.folder_names_and_paths:
            paths, extensions = _folder_paths.folder_names_and_paths[name]
            extensions = set(extensions) | MODEL_EXTENSIONS if extensions else extensions
            _folder_paths.folder_names_and_paths[name] = (paths, extensions)


def _standalone_folder(folder: str) -> Path:
    if _standalone.models_dir is None:
        raise RuntimeError(
            "No model folder configured: outside ComfyUI call host.configure_standalone(models_dir=...)"
        )
    return _standalone.models_dir / folder


def folder_paths(folder: str) -> list[Path]:
    """The directories of a model folder (all of them, for folders ComfyUI spreads over several)."""
    if IN_COMFY:
        return [Path(p) for p in _folder_paths.get_folder_paths(folder)]
    return [_standalone_folder(folder)]


def list_files(folder: str, extensions: Iterable[str] = MODEL_EXTENSIONS, directories: bool = False) -> list[str]:
    """Names (relative, ``/``-separated) of files in a model folder; with ``directories`` also the
    immediate sub-folders (Hugging Face model folders)."""
    extensions = {e.lower() for e in extensions}
    names: set[str] = set()
    if IN_COMFY:
        names.update(n for n in _folder_paths.get_filename_list(folder) if Path(n).suffix.lower() in extensions)
    for root in folder_paths(folder):
        if not root.is_dir():
            continue
        if not IN_COMFY:
            names.update(n for n in _walk_files(root) if Path(n).suffix.lower() in extensions)
        if directories:
            names.update(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    return sorted(names)


def _walk_files(root: Path) -> Iterator[str]:
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


def _is_absolute(name: str) -> bool:
    """An absolute path on any system (``/x``, ``\\x``, ``C:x``)."""
    return os.path.isabs(name) or name.startswith(("/", "\\")) or bool(PureWindowsPath(name).drive)


def _climbs(name: str) -> bool:
    """A name with a ``..`` part (either separator)."""
    return ".." in name.replace("\\", "/").split("/")


def _inside(name: str) -> bool:
    """Whether ``name`` stays inside the folder it is looked up in, by its words alone: no absolute path,
    no ``..``. Links are followed afterwards: where a link points is the user's choice."""
    return bool(name.strip()) and not _is_absolute(name) and not _climbs(name)


def _dangling_link(root: Path, name: str) -> Path | None:
    """The first link on the way from ``root`` to ``name`` whose target does not exist, if any."""
    path = root
    for part in PurePosixPath(name.replace("\\", "/")).parts:
        path = path / part
        if path.is_symlink() and not path.exists():
            return path
    return None


def resolve_file(folder: str, name: str) -> Path:
    """The full path of ``name`` in a model folder, or a FileNotFoundError that says where we looked.

    Files and folders reached through symbolic links inside the model folder are found; names that climb
    out of the folder (``..``, absolute paths) are refused, and a dangling link is named with its target.
    """
    if IN_COMFY:
        found = _folder_paths.get_full_path(folder, name)
        if found:
            return Path(found)
    roots = folder_paths(folder)
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


def output_directory() -> Path:
    """ComfyUI's output folder (or the configured one outside ComfyUI)."""
    if IN_COMFY:
        return Path(_folder_paths.get_output_directory())
    if _standalone.output_dir is None:
        raise RuntimeError("No output folder configured: call host.configure_standalone(output_dir=...)")
    return _standalone.output_dir


# ------------------------------------------------------------------------ saving outputs (issue 6)


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


def _standalone_prefix_vars(prefix: str, width: int, height: int) -> str:
    import time

    now = time.localtime()
    for name, value in (
        ("width", width),
        ("height", height),
        ("year", now.tm_year),
        ("month", f"{now.tm_mon:02d}"),
        ("day", f"{now.tm_mday:02d}"),
        ("hour", f"{now.tm_hour:02d}"),
        ("minute", f"{now.tm_min:02d}"),
        ("second", f"{now.tm_sec:02d}"),
    ):
        prefix = prefix.replace(f"%{name}%", str(value))
    return prefix


def save_path(prefix: str, width: int = 0, height: int = 0) -> tuple[Path, str, int, str]:
    """Where to save an output: ``(folder, filename, counter, subfolder)``.

    Files are then named ``f"{filename}_{counter:05}_.{ext}"`` in ``folder`` (created if needed);
    ``subfolder`` is ``folder`` relative to the output folder, as the UI wants it. Inside ComfyUI this
    is ``folder_paths.get_save_image_path`` (``%width%``, ``%date%``-style variables, counter = one
    past the highest existing number for that name); outside it the same rules are applied here.
    """
    check_filename_prefix(prefix)
    if IN_COMFY:
        folder, filename, counter, subfolder, _ = _folder_paths.get_save_image_path(
            prefix, _folder_paths.get_output_directory(), width, height
        )
        return Path(folder), filename, int(counter), subfolder
    prefix = os.path.normpath(_standalone_prefix_vars(prefix, width, height))
    subfolder, filename = os.path.dirname(prefix), os.path.basename(prefix)
    root = output_directory().resolve()
    folder = (root / subfolder).resolve()
    if folder != root and root not in folder.parents:
        raise ValueError(f"filename_prefix '{prefix}' leads outside the output folder {root}.")
    folder.mkdir(parents=True, exist_ok=True)
    used = [0]
    for entry in os.listdir(folder):
        stem, sep, tail = entry[: len(filename)], entry[len(filename) : len(filename) + 1], entry[len(filename) + 1 :]
        number = tail.split("_")[0]  # "<name>_00007_.mp4" -> "00007"
        if os.path.normcase(stem) == os.path.normcase(filename) and sep == "_" and number.isdigit():
            used.append(int(number))
    return folder, filename, max(used) + 1, subfolder


def metadata_disabled() -> bool:
    """Whether ComfyUI runs with ``--disable-metadata`` (never outside ComfyUI)."""
    if not IN_COMFY:
        return False
    try:
        from comfy.cli_args import args

        return bool(args.disable_metadata)
    except (ImportError, AttributeError):
        return False


# Tokenizer folders ComfyUI ships, by the encoder they belong to.
_COMFY_TOKENIZERS = {"t5": ("text_encoders", "t5_tokenizer"), "clip_l": ("sd1_tokenizer",)}


def comfy_tokenizer_dir(name: str) -> Path | None:
    """The tokenizer folder the host ComfyUI ships for ``name`` (``"t5"`` or ``"clip_l"``); ``None``
    outside ComfyUI or when that folder is missing."""
    if not IN_COMFY or name not in _COMFY_TOKENIZERS:
        return None
    folder = Path(_mm.__file__).resolve().parent.joinpath(*_COMFY_TOKENIZERS[name])
    return folder if folder.is_dir() else None
