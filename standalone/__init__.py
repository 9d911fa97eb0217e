"""The command line without ComfyUI: options, workflow editing, the in-process workflow runner, downloads."""
