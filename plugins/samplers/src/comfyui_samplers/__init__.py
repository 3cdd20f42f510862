"""comfyui's samplers plugin: samplers, schedulers, noise, guidance and the sampling nodes."""
