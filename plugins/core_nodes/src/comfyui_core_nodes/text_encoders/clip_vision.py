"""What vanilla custom nodes import from ``comfy.clip_vision``, under ComfyUI's names."""
from __future__ import annotations

from typing import Optional

import torch

from .vision import ClipVision, ClipVisionLoadError, Output, clip_preprocess, load_clip_vision, load_clip_vision_state_dict

ClipVisionModel = ClipVision
load = load_clip_vision


def load_clipvision_from_sd(sd: dict[str, torch.Tensor], prefix: str = "",
                            convert_keys: bool = False) -> Optional[ClipVision]:
    """A ClipVision from a state dict, or None when it holds no vision tower (``convert_keys`` is implied)."""
    try:
        return load_clip_vision_state_dict(sd, prefix)
    except ClipVisionLoadError:
        return None


__all__ = ["ClipVisionModel", "Output", "clip_preprocess", "load", "load_clipvision_from_sd"]
