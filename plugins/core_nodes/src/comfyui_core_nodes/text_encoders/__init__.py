"""Text encoders: CLIP-L and the OpenCLIP ViT-H / ViT-bigG text towers, their tokenizer and loaders."""
from __future__ import annotations

from .model import heads_for_width

__all__ = ["heads_for_width"]
