"""The pack's only door to ComfyUI.

Every other module reaches the host through these functions: devices, managed models, progress and
Cancel, model/output folders and frontend features. The host is chosen once, here: :class:`ComfyHost`
when ComfyUI can be imported, else :class:`StandaloneHost` (tests, the command line), configured with
:func:`configure_standalone`. Each function's docstring is on :class:`~.interface.Host`.
"""

from __future__ import annotations

from typing import Any

import torch

from .folders import DIFFUSION_MODELS, MODEL_EXTENSIONS, TEXT_ENCODERS, VAE, VAE_APPROX, check_filename_prefix
from .interface import Host
from .standalone import Interrupted, StandaloneHost, StandaloneModel, StandaloneState

# Always present: the command line and the tests set it up even where ComfyUI could be imported.
_standalone = StandaloneHost()

try:
    from .comfy import ComfyHost
except ImportError:  # no ComfyUI on the path
    _host: Host = _standalone
else:  # pragma: no cover - exercised only inside a real ComfyUI
    _host = ComfyHost()

torch_device = _host.torch_device
offload_device = _host.offload_device
intermediate_device = _host.intermediate_device
free_device_memory = _host.free_device_memory
empty_cache = _host.empty_cache
manage_model = _host.manage_model
load_models = _host.load_models
check_interrupt = _host.check_interrupt
show_text = _host.show_text
previews_enabled = _host.previews_enabled
preview_decoders_allowed = _host.preview_decoders_allowed
metadata_disabled = _host.metadata_disabled
comfy_tokenizer_dir = _host.comfy_tokenizer_dir
register_folders = _host.register_folders
folder_paths = _host.folder_paths
list_files = _host.list_files
resolve_file = _host.resolve_file
output_directory = _host.output_directory
save_path = _host.save_path

# Outside ComfyUI only (ComfyUI has its own settings, Cancel button and progress display).
configure_standalone = _standalone.configure
request_interrupt = _standalone.request_interrupt
add_progress_listener = _standalone.add_progress_listener
add_preview_listener = _standalone.add_preview_listener


def standalone_state() -> StandaloneState:
    """The standalone host's settings (models and output folders, device) and running state (interrupt
    flag, progress listeners, models on their device), to read or, in tests, to reset."""
    return _standalone.state


def unwrap_model(managed: Any) -> torch.nn.Module:
    """The ``nn.Module`` inside a managed model (a ModelPatcher or a StandaloneModel)."""
    return managed.model


class Progress:
    """A progress bar: ComfyUI's ProgressBar inside ComfyUI (which also checks Cancel), else the progress
    listeners followed by an interrupt check."""

    def __init__(self, total: int):
        self.total = int(total)
        self.value = 0
        self._report = _host.progress_reporter(self.total)

    def update(self, steps: int = 1, preview: Any = None) -> None:
        """Advance by ``steps``; ``preview`` is a PIL image shown on the node when previews are on."""
        self.value = min(self.total, self.value + steps)
        self._report(self.value, preview)


__all__ = [
    "DIFFUSION_MODELS", "MODEL_EXTENSIONS", "TEXT_ENCODERS", "VAE", "VAE_APPROX", "Host", "Interrupted", "Progress",
    "StandaloneModel", "StandaloneState", "add_preview_listener", "add_progress_listener", "check_filename_prefix", "check_interrupt",
    "comfy_tokenizer_dir", "configure_standalone", "empty_cache", "folder_paths", "free_device_memory",
    "intermediate_device", "list_files", "load_models", "manage_model", "metadata_disabled", "offload_device",
    "output_directory", "preview_decoders_allowed", "previews_enabled", "register_folders", "request_interrupt", "resolve_file",
    "save_path", "show_text", "standalone_state", "torch_device", "unwrap_model",
]
