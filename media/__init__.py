"""Pixels and files: IMAGE <-> uint8 conversion, video/image/text writing, latent previews. No ComfyUI."""
