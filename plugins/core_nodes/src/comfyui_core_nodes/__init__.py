"""comfyui's core nodes: Stable Diffusion models, loading, model management and the standard nodes."""
