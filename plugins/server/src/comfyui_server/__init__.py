"""comfyui's web server: ComfyUI's HTTP and websocket API and the official frontend, as a plugin."""
