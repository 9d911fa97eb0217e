"""The host outside ComfyUI (tests, the command line): plain PyTorch devices, model and output folders set
with :meth:`StandaloneHost.configure`, Cancel through :meth:`StandaloneHost.request_interrupt` and progress
through listeners."""

from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import torch

from .folders import MODEL_EXTENSIONS, check_filename_prefix, find_in_folders, has_extension, model_subfolders, walk_files
from .interface import Host, ProgressReporter

# Variables a filename prefix may hold, filled in when saving: %width%, %height%, then the local time.
_PREFIX_VARIABLE = re.compile(r"%(width|height|year|month|day|hour|minute|second)%")


class Interrupted(Exception):
    """Raised outside ComfyUI when :meth:`StandaloneHost.request_interrupt` was called (ComfyUI raises its
    own)."""


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


@dataclass
class StandaloneState:
    """Settings and running state of the standalone host (public so that tests can read and reset it)."""

    models_dir: Path | None = None  # holds diffusion_models/, text_encoders/, vae/...
    output_dir: Path | None = None
    device: torch.device | None = None  # None: CUDA when available, else the CPU
    interrupt_requested: bool = False
    progress_listeners: list[Callable[[int, int], None]] = field(default_factory=list)
    preview_listeners: list[Callable[[int, int, Any], None]] = field(default_factory=list)
    loaded_models: list[StandaloneModel] = field(default_factory=list)  # those on their load device


class StandaloneHost(Host):
    def __init__(self) -> None:
        self.state = StandaloneState()

    def configure(self, models_dir: str | os.PathLike | None = None, output_dir: str | os.PathLike | None = None,
                  device: str | torch.device | None = None) -> None:
        """Set the model folder root (``<root>/diffusion_models``, ``<root>/vae``...), the output folder and
        the device; ``None`` keeps the current value."""
        if models_dir is not None:
            self.state.models_dir = Path(models_dir)
        if output_dir is not None:
            self.state.output_dir = Path(output_dir)
        if device is not None:
            self.state.device = torch.device(device)

    # ------------------------------------------------------------------------------------- devices

    def torch_device(self) -> torch.device:
        if self.state.device is not None:
            return self.state.device
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")

    def offload_device(self) -> torch.device:
        return torch.device("cpu")

    def intermediate_device(self) -> torch.device:
        return torch.device("cpu")

    def free_device_memory(self, device: torch.device | None = None) -> int:
        device = device or self.torch_device()
        if device.type == "cuda":
            free, _total = torch.cuda.mem_get_info(device)
            return int(free)
        try:
            return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
        except (ValueError, OSError, AttributeError):  # no sysconf (Windows): assume a modest machine
            return 8 << 30

    def empty_cache(self) -> None:
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    # ------------------------------------------------------------------------------ managed models

    def manage_model(self, model: torch.nn.Module, load_device: torch.device | None = None) -> StandaloneModel:
        return StandaloneModel(model, load_device or self.torch_device(), self.offload_device())

    def load_models(self, managed: Iterable[Any], memory_required: int = 0) -> None:
        """Keep only the models asked for on their device, as ComfyUI does when memory is short: the text
        encoders and the VAE go back to RAM while the diffusion model samples (every other model goes,
        whatever ``memory_required`` says)."""
        managed = list(managed)
        loaded = self.state.loaded_models
        evicted = [m for m in loaded if all(m is not wanted for wanted in managed)]
        for handle in evicted:
            handle.offload()
            loaded.remove(handle)
        if evicted:
            self.empty_cache()
        for handle in managed:
            handle.load()
            if all(handle is not m for m in loaded):
                loaded.append(handle)

    # ------------------------------------------------------------------------- progress and Cancel

    def request_interrupt(self, value: bool = True) -> None:
        """Ask running work to stop at its next check (``False`` withdraws the request)."""
        self.state.interrupt_requested = value

    def check_interrupt(self) -> None:
        if self.state.interrupt_requested:
            self.state.interrupt_requested = False
            raise Interrupted("Processing interrupted")

    def add_progress_listener(self, listener: Callable[[int, int], None]) -> Callable[[], None]:
        """Call ``listener(value, total)`` on every progress update; returns a remover."""
        self.state.progress_listeners.append(listener)
        return lambda: self.state.progress_listeners.remove(listener)

    def progress_reporter(self, total: int) -> ProgressReporter:
        def report(value: int, preview: Any) -> None:  # no frontend: previews go to preview listeners
            for listener in list(self.state.progress_listeners):
                listener(value, total)
            for listener in list(self.state.preview_listeners) if preview is not None else ():
                listener(value, total, preview)
            self.check_interrupt()

        return report

    def add_preview_listener(self, listener: Callable[[int, int, Any], None]) -> Callable[[], None]:
        """Turn previews on and call ``listener(value, total, picture)`` with each one; returns a remover."""
        self.state.preview_listeners.append(listener)
        return lambda: self.state.preview_listeners.remove(listener)

    # ------------------------------------------------------------------------------------ frontend

    def show_text(self, text: str) -> None:
        """No frontend: nothing is shown (callers log the text)."""

    def previews_enabled(self) -> bool:
        """On while a preview listener is registered (``generate --preview-dir``)."""
        return bool(self.state.preview_listeners)

    def preview_decoders_allowed(self) -> bool:
        return True

    def metadata_disabled(self) -> bool:
        return False

    def comfy_tokenizer_dir(self, name: str) -> Path | None:
        return None

    # ------------------------------------------------------------------------------------- folders

    def register_folders(self) -> None:
        """Nothing to register: every file with a model extension is listed."""

    def folder_paths(self, folder: str) -> list[Path]:
        if self.state.models_dir is None:
            raise RuntimeError(
                "No model folder configured: outside ComfyUI call host.configure_standalone(models_dir=...)"
            )
        return [self.state.models_dir / folder]

    def list_files(self, folder: str, extensions: Iterable[str] = MODEL_EXTENSIONS,
                   directories: bool = False) -> list[str]:
        extensions = list(extensions)
        roots = self.folder_paths(folder)
        names = {n for root in roots if root.is_dir() for n in walk_files(root) if has_extension(n, extensions)}
        if directories:
            names |= model_subfolders(roots)
        return sorted(names)

    def resolve_file(self, folder: str, name: str) -> Path:
        return find_in_folders(folder, name, self.folder_paths(folder))

    def output_directory(self) -> Path:
        if self.state.output_dir is None:
            raise RuntimeError("No output folder configured: call host.configure_standalone(output_dir=...)")
        return self.state.output_dir

    def save_path(self, prefix: str, width: int = 0, height: int = 0) -> tuple[Path, str, int, str]:
        check_filename_prefix(prefix)
        prefix = os.path.normpath(_fill_prefix_variables(prefix, width, height))
        subfolder, filename = os.path.split(prefix)
        root = self.output_directory().resolve()
        folder = (root / subfolder).resolve()
        if folder != root and root not in folder.parents:  # a link inside the output folder leads out
            raise ValueError(f"filename_prefix '{prefix}' leads outside the output folder {root}.")
        folder.mkdir(parents=True, exist_ok=True)
        return folder, filename, _next_counter(folder, filename), subfolder


def _fill_prefix_variables(prefix: str, width: int, height: int) -> str:
    now = time.localtime()
    values = {"width": width, "height": height, "year": now.tm_year, "month": f"{now.tm_mon:02d}",
              "day": f"{now.tm_mday:02d}", "hour": f"{now.tm_hour:02d}", "minute": f"{now.tm_min:02d}",
              "second": f"{now.tm_sec:02d}"}
    return _PREFIX_VARIABLE.sub(lambda match: str(values[match[1]]), prefix)


def _next_counter(folder: Path, filename: str) -> int:
    """One past the highest ``<number>`` among ``<filename>_<number>_...`` files in ``folder`` (1 for none);
    names compare as the file system does (without case on Windows)."""
    numbered = re.compile(re.escape(os.path.normcase(filename)) + r"_(\d+)(?:_|\Z)")
    numbers = [int(found[1]) for entry in os.listdir(folder) if (found := numbered.match(os.path.normcase(entry)))]
    return max(numbers, default=0) + 1
