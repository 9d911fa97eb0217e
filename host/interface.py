"""What the pack asks of its host. Two implementations: :class:`~.comfy.ComfyHost` inside ComfyUI and
:class:`~.standalone.StandaloneHost` for the tests and the command line; ``host/__init__.py`` picks one at
import."""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, Callable, Iterable

import torch
from .folders import MODEL_EXTENSIONS

# Called with the new progress value and a preview (a PIL image, or None) on every progress update.
ProgressReporter = Callable[[int, Any], None]


class Host(ABC):
    """Devices, managed models, progress and Cancel, model and output folders, frontend features."""

    # ------------------------------------------------------------------------------------- devices

    @abstractmethod
    def torch_device(self) -> torch.device:
        """The device heavy work runs on."""

    @abstractmethod
    def offload_device(self) -> torch.device:
        """Where idle weights are kept."""

    @abstractmethod
    def intermediate_device(self) -> torch.device:
        """Where values handed between nodes (IMAGE frames, latents) live."""

    @abstractmethod
    def free_device_memory(self, device: torch.device | None = None) -> int:
        """Free memory on ``device`` (default: :meth:`torch_device`) in bytes (system RAM for the CPU)."""

    @abstractmethod
    def empty_cache(self) -> None:
        """Give cached allocator blocks back after large temporary work."""

    # ------------------------------------------------------------------------------ managed models

    @abstractmethod
    def manage_model(self, model: torch.nn.Module, load_device: torch.device | None = None) -> Any:
        """Wrap ``model`` so the host's memory manager can move it; ``.model`` is the module."""

    @abstractmethod
    def load_models(self, managed: Iterable[Any], memory_required: int = 0) -> None:
        """Bring managed models onto their device, letting the host evict others to make room."""

    # ------------------------------------------------------------------------- progress and Cancel

    @abstractmethod
    def check_interrupt(self) -> None:
        """Raise if the user asked running work to stop."""

    @abstractmethod
    def progress_reporter(self, total: int) -> ProgressReporter:
        """Where a new progress bar of ``total`` steps reports; reporting also checks Cancel."""

    # ------------------------------------------------------------------------------------ frontend

    @abstractmethod
    def show_text(self, text: str) -> None:
        """Show ``text`` on the running node (callers log it as well)."""

    @abstractmethod
    def previews_enabled(self) -> bool:
        """Whether the user turned latent previews on."""

    @abstractmethod
    def preview_decoders_allowed(self) -> bool:
        """Whether previews may use a learned decoder (TAEHV) rather than the cheap linear projection."""

    @abstractmethod
    def metadata_disabled(self) -> bool:
        """Whether saved files must carry no workflow metadata."""

    @abstractmethod
    def comfy_tokenizer_dir(self, name: str) -> Path | None:
        """The tokenizer folder the host ships for ``name`` (``"t5"`` or ``"clip_l"``), if any."""

    # ------------------------------------------------------------------------------------- folders

    @abstractmethod
    def register_folders(self) -> None:
        """Make sure the host lists ``.safetensors``/``.sft`` files in the folders this pack reads."""

    @abstractmethod
    def folder_paths(self, folder: str) -> list[Path]:
        """The directories of a model folder (all of them, for folders spread over several)."""

    @abstractmethod
    def list_files(self, folder: str, extensions: Iterable[str] = MODEL_EXTENSIONS,
                   directories: bool = False) -> list[str]:
        """Names (relative, ``/``-separated) of files in a model folder; with ``directories`` also the
        immediate sub-folders (Hugging Face model folders)."""

    @abstractmethod
    def resolve_file(self, folder: str, name: str) -> Path:
        """The full path of ``name`` in a model folder, or a FileNotFoundError that says where we looked.
        Links inside the folder are followed; names that climb out of it are refused."""

    @abstractmethod
    def output_directory(self) -> Path:
        """The folder outputs are saved in."""

    @abstractmethod
    def save_path(self, prefix: str, width: int = 0, height: int = 0) -> tuple[Path, str, int, str]:
        """Where to save an output: ``(folder, filename, counter, subfolder)``.

        Files are then named ``f"{filename}_{counter:05}_.{ext}"`` in ``folder`` (created if needed);
        ``subfolder`` is ``folder`` relative to the output folder, as the UI wants it; ``counter`` is one
        past the highest number already used for that name. ``%width%``/``%height%`` and date variables
        in ``prefix`` are filled in. Prefixes refused by ``check_filename_prefix`` raise ValueError.
        """
