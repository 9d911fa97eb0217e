"""The host inside ComfyUI: its device and memory manager, ModelPatcher, ProgressBar and Cancel, its
model/output folders and its frontend. The only module of the pack that imports ComfyUI; importing it
elsewhere fails, which is how ``host/__init__.py`` tells the two hosts apart."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable

import comfy.model_management as model_management
import comfy.model_patcher
import comfy.utils
import folder_paths as comfy_folders
import torch

from .folders import (
    DIFFUSION_MODELS,
    MODEL_EXTENSIONS,
    TEXT_ENCODERS,
    VAE,
    VAE_APPROX,
    check_filename_prefix,
    find_in_folders,
    has_extension,
    model_subfolders,
)
from .interface import Host, ProgressReporter

# Tokenizer folders ComfyUI ships inside its ``comfy`` package, by the encoder they belong to.
_SHIPPED_TOKENIZERS = {"t5": ("text_encoders", "t5_tokenizer"), "clip_l": ("sd1_tokenizer",)}


class ComfyHost(Host):
    # ------------------------------------------------------------------------------------- devices

    def torch_device(self) -> torch.device:
        return model_management.get_torch_device()

    def offload_device(self) -> torch.device:
        return model_management.unet_offload_device()

    def intermediate_device(self) -> torch.device:
        return model_management.intermediate_device()

    def free_device_memory(self, device: torch.device | None = None) -> int:
        return int(model_management.get_free_memory(device or self.torch_device()))

    def empty_cache(self) -> None:
        model_management.soft_empty_cache()

    # ------------------------------------------------------------------------------ managed models

    def manage_model(self, model: torch.nn.Module, load_device: torch.device | None = None) -> Any:
        return comfy.model_patcher.ModelPatcher(
            model, load_device=load_device or self.torch_device(), offload_device=self.offload_device()
        )

    def load_models(self, managed: Iterable[Any], memory_required: int = 0) -> None:
        model_management.load_models_gpu(list(managed), memory_required=memory_required)

    # ------------------------------------------------------------------------- progress and Cancel

    def check_interrupt(self) -> None:
        model_management.throw_exception_if_processing_interrupted()

    def progress_reporter(self, total: int) -> ProgressReporter:
        bar = comfy.utils.ProgressBar(total)  # made now: it belongs to the node running now

        def report(value: int, preview: Any) -> None:  # the bar also checks Cancel
            bar.update_absolute(value, total, ("JPEG", preview, 512) if preview is not None else None)

        return report

    # ------------------------------------------------------------------------------------ frontend

    def show_text(self, text: str) -> None:
        """The node's progress-text line."""
        try:
            from comfy_execution.utils import get_executing_context
            from server import PromptServer

            context = get_executing_context()
            if context is not None and PromptServer.instance is not None:
                PromptServer.instance.send_progress_text(text, context.node_id)
        except (ImportError, AttributeError):  # an older ComfyUI without progress text: the log still has it
            pass

    def previews_enabled(self) -> bool:
        """``--preview-method`` other than none."""
        try:
            from comfy.cli_args import LatentPreviewMethod, args

            return args.preview_method != LatentPreviewMethod.NoPreviews
        except (ImportError, AttributeError):
            return False

    def preview_decoders_allowed(self) -> bool:
        """Not with ``--preview-method latent2rgb`` (the user asked for the cheap projection)."""
        try:
            from comfy.cli_args import LatentPreviewMethod, args

            return args.preview_method != LatentPreviewMethod.Latent2RGB
        except (ImportError, AttributeError):
            return True

    def metadata_disabled(self) -> bool:
        """``--disable-metadata``."""
        try:
            from comfy.cli_args import args

            return bool(args.disable_metadata)
        except (ImportError, AttributeError):
            return False

    def comfy_tokenizer_dir(self, name: str) -> Path | None:
        if name not in _SHIPPED_TOKENIZERS:
            return None
        folder = Path(model_management.__file__).resolve().parent.joinpath(*_SHIPPED_TOKENIZERS[name])
        return folder if folder.is_dir() else None

    # ------------------------------------------------------------------------------------- folders

    def register_folders(self) -> None:
        for name in (DIFFUSION_MODELS, TEXT_ENCODERS, VAE, VAE_APPROX):
            if name in comfy_folders.folder_names_and_paths:
                paths, extensions = comfy_folders.folder_names_and_paths[name]
                extensions = set(extensions) | MODEL_EXTENSIONS if extensions else extensions
                comfy_folders.folder_names_and_paths[name] = (paths, extensions)

    def folder_paths(self, folder: str) -> list[Path]:
        return [Path(p) for p in comfy_folders.get_folder_paths(folder)]

    def list_files(self, folder: str, extensions: Iterable[str] = MODEL_EXTENSIONS,
                   directories: bool = False) -> list[str]:
        extensions = list(extensions)
        names = {n for n in comfy_folders.get_filename_list(folder) if has_extension(n, extensions)}
        if directories:
            names |= model_subfolders(self.folder_paths(folder))
        return sorted(names)

    def resolve_file(self, folder: str, name: str) -> Path:
        found = comfy_folders.get_full_path(folder, name)  # ComfyUI's own lookup first (its file cache)
        if found:
            return Path(found)
        return find_in_folders(folder, name, self.folder_paths(folder))

    def output_directory(self) -> Path:
        return Path(comfy_folders.get_output_directory())

    def save_path(self, prefix: str, width: int = 0, height: int = 0) -> tuple[Path, str, int, str]:
        check_filename_prefix(prefix)
        folder, filename, counter, subfolder, _ = comfy_folders.get_save_image_path(
            prefix, comfy_folders.get_output_directory(), width, height
        )
        return Path(folder), filename, int(counter), subfolder
