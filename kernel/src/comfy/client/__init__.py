"""Clients of comfyui: embedded (in-process) and, with the server plugin, remote."""
