"""Small tensor helpers the samplers share (the legacy ``comfy.k_diffusion.utils``)."""
from __future__ import annotations

import torch


def append_dims(x: torch.Tensor, target_dims: int) -> torch.Tensor:
    """``x`` with trailing singleton dimensions added until it has ``target_dims`` of them."""
    missing = target_dims - x.ndim
    if missing < 0:
        raise ValueError(f"input has {x.ndim} dims but target_dims is {target_dims}, which is less")
    expanded = x[(...,) + (None,) * missing]
    # Indexing into new axes of an MPS tensor can read infinities; a detached copy avoids it.
    return expanded.detach().clone() if expanded.device.type == "mps" else expanded
