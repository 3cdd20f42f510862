"""Layers whose weights may live on another device or in another dtype than their input.

Every model here is built from these. A layer computes as its torch parent does, except when
``comfy_cast_weights`` is set (manual casting, or a layer left in CPU memory by low-VRAM loading) or
weight functions are attached (LoRA patches computed on the fly): then the weight and bias are cast to
the input's dtype and device for each call. Construction skips random initialisation, since weights
are always loaded afterwards.
"""
from __future__ import annotations

from typing import Any, Callable, Optional

import torch
import torch.nn.functional as F


def cast_to(tensor: torch.Tensor, dtype: Optional[torch.dtype] = None, device: Any = None,
            non_blocking: bool = False, copy: bool = False) -> torch.Tensor:
    """``tensor`` in ``dtype`` on ``device``; a copy only when asked or needed."""
    same_device = device is None or tensor.device == torch.device(device)
    same_dtype = dtype is None or tensor.dtype == dtype
    if same_device and same_dtype:
        return tensor.clone() if copy else tensor
    return tensor.to(device=device if device is not None else tensor.device,
                     dtype=dtype if dtype is not None else tensor.dtype, non_blocking=non_blocking, copy=copy)


class CastWeightBias:
    """Mixin: per-call casting of ``weight``/``bias`` and the functions that patch them."""
    comfy_cast_weights = False
    weight_function: list[Callable[[torch.Tensor], torch.Tensor]] = []
    bias_function: list[Callable[[torch.Tensor], torch.Tensor]] = []

    def reset_parameters(self) -> None:
        return None

    def needs_cast(self) -> bool:
        return self.comfy_cast_weights or len(self.weight_function) > 0 or len(self.bias_function) > 0


def cast_bias_weight(module: Any, input: Optional[torch.Tensor] = None, dtype: Optional[torch.dtype] = None,
                     device: Any = None, bias_dtype: Optional[torch.dtype] = None
                     ) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """The module's weight and bias in the input's dtype and on its device, patch functions applied."""
    if input is not None:
        dtype = dtype if dtype is not None else input.dtype
        device = device if device is not None else input.device
        if bias_dtype is None:
            bias_dtype = dtype
    bias = None
    if module.bias is not None:
        bias = cast_to(module.bias, bias_dtype, device, copy=len(module.bias_function) > 0)
        for function in module.bias_function:
            bias = function(bias)
    weight = cast_to(module.weight, dtype, device, copy=len(module.weight_function) > 0)
    for function in module.weight_function:
        weight = function(weight)
    return weight, bias


class Linear(torch.nn.Linear, CastWeightBias):
    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if self.needs_cast():
            weight, bias = cast_bias_weight(self, input)
            return F.linear(input, weight, bias)
        return super().forward(input)


class Conv1d(torch.nn.Conv1d, CastWeightBias):
    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if self.needs_cast():
            weight, bias = cast_bias_weight(self, input)
            return self._conv_forward(input, weight, bias)
        return super().forward(input)


class Conv2d(torch.nn.Conv2d, CastWeightBias):
    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if self.needs_cast():
            weight, bias = cast_bias_weight(self, input)
            return self._conv_forward(input, weight, bias)
        return super().forward(input)


class Conv3d(torch.nn.Conv3d, CastWeightBias):
    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if self.needs_cast():
            weight, bias = cast_bias_weight(self, input)
            return self._conv_forward(input, weight, bias)
        return super().forward(input)


class GroupNorm(torch.nn.GroupNorm, CastWeightBias):
    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if self.needs_cast() and self.weight is not None:
            weight, bias = cast_bias_weight(self, input)
            return F.group_norm(input, self.num_groups, weight, bias, self.eps)
        return super().forward(input)


class LayerNorm(torch.nn.LayerNorm, CastWeightBias):
    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if self.needs_cast() and self.weight is not None:
            weight, bias = cast_bias_weight(self, input)
            return F.layer_norm(input, self.normalized_shape, weight, bias, self.eps)
        return super().forward(input)


class Embedding(torch.nn.Embedding, CastWeightBias):
    def forward(self, input: torch.Tensor, out_dtype: Optional[torch.dtype] = None) -> torch.Tensor:
        if self.needs_cast() or out_dtype is not None:
            weight = cast_to(self.weight, out_dtype if out_dtype is not None else self.weight.dtype, input.device,
                             copy=len(self.weight_function) > 0)
            for function in self.weight_function:
                weight = function(weight)
            return F.embedding(input, weight, self.padding_idx, self.max_norm, self.norm_type,
                               self.scale_grad_by_freq, self.sparse)
        return super().forward(input)


class _Operations:
    """A namespace of layer classes, passed to model constructors as ``operations``."""
    Linear: type = Linear
    Conv1d: type = Conv1d
    Conv2d: type = Conv2d
    Conv3d: type = Conv3d
    GroupNorm: type = GroupNorm
    LayerNorm: type = LayerNorm
    Embedding: type = Embedding

    @classmethod
    def conv_nd(cls, dims: int, *args: Any, **kwargs: Any) -> torch.nn.Module:
        if dims == 1:
            return cls.Conv1d(*args, **kwargs)
        if dims == 2:
            return cls.Conv2d(*args, **kwargs)
        if dims == 3:
            return cls.Conv3d(*args, **kwargs)
        raise ValueError(f"unsupported dimensions: {dims}")


class disable_weight_init(_Operations):
    """Layers that compute in their weights' dtype unless low-VRAM loading or patches ask for casting."""


def _always_cast(base: type) -> type:
    return type(base.__name__, (base,), {"comfy_cast_weights": True})


class manual_cast(_Operations):
    """Layers that always cast weights to the input's dtype (weights stored in another dtype)."""
    Linear = _always_cast(Linear)
    Conv1d = _always_cast(Conv1d)
    Conv2d = _always_cast(Conv2d)
    Conv3d = _always_cast(Conv3d)
    GroupNorm = _always_cast(GroupNorm)
    LayerNorm = _always_cast(LayerNorm)
    Embedding = _always_cast(Embedding)


Operations = type[_Operations]


def pick_operations(weight_dtype: Optional[torch.dtype], compute_dtype: Optional[torch.dtype]) -> Operations:
    """``manual_cast`` when weights are stored in another dtype than the model computes in."""
    if compute_dtype is None or weight_dtype == compute_dtype:
        return disable_weight_init
    return manual_cast


__all__ = ["CastWeightBias", "Conv1d", "Conv2d", "Conv3d", "Embedding", "GroupNorm", "LayerNorm", "Linear",
           "Operations", "cast_bias_weight", "cast_to", "disable_weight_init", "manual_cast", "pick_operations"]
