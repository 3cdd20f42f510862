"""Model inputs derived from a conditioning, and how they are batched (ComfyUI's ``comfy.conds``).

``BaseModel.extra_conds`` wraps each input in one of these; the sampler batches conditionings that
``can_concat`` into one model call with ``concat``, after ``process_cond`` fits each to the batch size
and area.
"""
from __future__ import annotations

import logging
import math
from typing import Any, Optional, Sequence

import torch

logger = logging.getLogger(__name__)


def repeat_to_batch_size(tensor: torch.Tensor, batch_size: int, dim: int = 0) -> torch.Tensor:
    if tensor.shape[dim] > batch_size:
        return tensor.narrow(dim, 0, batch_size)
    if tensor.shape[dim] < batch_size:
        repeats = [1] * tensor.ndim
        repeats[dim] = math.ceil(batch_size / tensor.shape[dim])
        return tensor.repeat(repeats).narrow(dim, 0, batch_size)
    return tensor


class CONDRegular:
    """A tensor batched along its first dimension (SDXL's ADM vector ``y``)."""

    def __init__(self, cond: Any):
        self.cond = cond

    def _copy_with(self, cond: Any) -> "CONDRegular":
        return self.__class__(cond)

    def process_cond(self, batch_size: int, **kwargs: Any) -> "CONDRegular":
        return self._copy_with(repeat_to_batch_size(self.cond, batch_size))

    def can_concat(self, other: "CONDRegular") -> bool:
        if self.cond.shape != other.cond.shape:
            return False
        if self.cond.device != other.cond.device:
            logger.warning("conditionings are on different devices; not batching them")
            return False
        return True

    def concat(self, others: Sequence["CONDRegular"]) -> Any:
        return torch.cat([self.cond] + [other.cond for other in others])

    def size(self) -> list[int]:
        return list(self.cond.size())


class CONDNoiseShape(CONDRegular):
    """Shaped like the latent (inpainting's ``c_concat``): cropped to a conditioning's area."""

    def process_cond(self, batch_size: int, area: Optional[Sequence[int]] = None, **kwargs: Any) -> "CONDRegular":
        data = self.cond
        if area is not None:
            dims = len(area) // 2
            for index in range(dims):
                data = data.narrow(index + 2, area[index + dims], area[index])
        return self._copy_with(repeat_to_batch_size(data, batch_size))


class CONDCrossAttn(CONDRegular):
    """Text embeddings; prompts of different token lengths batch by repeating to a common multiple."""

    def can_concat(self, other: "CONDRegular") -> bool:
        first, second = self.cond.shape, other.cond.shape
        if first != second:
            if first[0] != second[0] or first[2] != second[2]:
                return False
            # Repeating a 77-token prompt to 4x its length is exact (attention over copies), beyond
            # that the batch costs more than it saves.
            if math.lcm(first[1], second[1]) // min(first[1], second[1]) > 4:
                return False
        if self.cond.device != other.cond.device:
            logger.warning("conditionings are on different devices; not batching them")
            return False
        return True

    def concat(self, others: Sequence["CONDRegular"]) -> torch.Tensor:
        conds = [self.cond] + [other.cond for other in others]
        length = self.cond.shape[1]
        for cond in conds[1:]:
            length = math.lcm(length, cond.shape[1])
        return torch.cat([cond.repeat(1, length // cond.shape[1], 1) if cond.shape[1] < length else cond
                          for cond in conds])


class CONDConstant(CONDRegular):
    """A value shared by the whole batch (not a tensor)."""

    def process_cond(self, batch_size: int, **kwargs: Any) -> "CONDRegular":
        return self._copy_with(self.cond)

    def can_concat(self, other: "CONDRegular") -> bool:
        return self.cond == other.cond

    def concat(self, others: Sequence["CONDRegular"]) -> Any:
        return self.cond

    def size(self) -> list[int]:
        return [1]


class CONDList(CONDRegular):
    """A list of tensors batched element-wise."""

    def process_cond(self, batch_size: int, **kwargs: Any) -> "CONDRegular":
        return self._copy_with([repeat_to_batch_size(cond, batch_size) for cond in self.cond])

    def can_concat(self, other: "CONDRegular") -> bool:
        return len(self.cond) == len(other.cond) and all(
            mine.shape == theirs.shape for mine, theirs in zip(self.cond, other.cond))

    def concat(self, others: Sequence["CONDRegular"]) -> list[torch.Tensor]:
        return [torch.cat([cond] + [other.cond[index] for other in others]) for index, cond in enumerate(self.cond)]

    def size(self) -> list[int]:
        total, width = 0, 1
        for cond in self.cond:
            total += math.prod(cond.size())
            if cond.ndim > 1:
                width = cond.shape[1]
        return [1, width, total // width]


__all__ = ["CONDConstant", "CONDCrossAttn", "CONDList", "CONDNoiseShape", "CONDRegular", "repeat_to_batch_size"]
