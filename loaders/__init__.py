"""Checkpoint files -> modules: safetensors reading, key layouts, strict checks. No ComfyUI imports."""
