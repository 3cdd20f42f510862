"""ComfyUI's public node API for third-party packages; ``comfy_api.latest`` is the version to import."""
