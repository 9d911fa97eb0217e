"""Tiny random checkpoints in the official file formats: one home for ``--smoke``, the tests and the benchmarks.

Each writer builds the pack's own module with a tiny configuration and saves its weights under the
released file's key layout, so the loaders read these files exactly like the real ones and nothing else
in the pipeline knows they are tiny. Outputs of such models are noise. Weights are seeded and never touch
the global RNG; every tensor is randomised (norm scales and condition inputs included) so that a wrong
layout shows in outputs.

Rooms: :mod:`.mmdit` (video and Flux-dev transformers, LoRA folders), :mod:`.autoencoders` (HunyuanVideo
VAE, Video DC-AE, Flux AE), :mod:`.text` (T5 / CLIP and their tokenizers), :mod:`.folder` (a whole
ComfyUI ``models`` folder with the released file names).
"""

from .folder import LORA_FOLDER, TinyModelFolder, write_tiny_model_folder
from .mmdit import write_tiny_lora

__all__ = ["LORA_FOLDER", "TinyModelFolder", "write_tiny_lora", "write_tiny_model_folder"]
