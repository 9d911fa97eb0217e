"""Schedules, noise, packing, denoisers and image conditions. Plain PyTorch, no ComfyUI imports."""
