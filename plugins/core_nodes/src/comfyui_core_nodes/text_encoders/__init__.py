"""Text encoders: CLIP-L and the OpenCLIP ViT-H / ViT-bigG text towers, their tokenizer and loaders."""
from __future__ import annotations

from .clip import CLIP
from .loading import (
    FAMILIES,
    TextEncoderLoadError,
    build_clip,
    checkpoint_state_dict,
    classify_text_encoder,
    detect_checkpoint_family,
    load_from_checkpoint,
    load_text_encoder_files,
    load_text_encoder_state_dicts,
    text_encoder_key_map,
)
from .model import heads_for_width

__all__ = [
    "CLIP",
    "FAMILIES",
    "TextEncoderLoadError",
    "build_clip",
    "checkpoint_state_dict",
    "classify_text_encoder",
    "detect_checkpoint_family",
    "heads_for_width",
    "load_from_checkpoint",
    "load_text_encoder_files",
    "load_text_encoder_state_dicts",
    "text_encoder_key_map",
]
