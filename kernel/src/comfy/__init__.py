"""comfyui's kernel: hook specifications, graph execution, caching, configuration and paths."""
