"""ComfyUI's ``comfy.utils`` helpers that nodes use: file loading, resizing, tiling, batch fitting, progress."""
from __future__ import annotations

import itertools
import logging
import math
import struct
from typing import Any, Callable, Mapping, Optional, Sequence, Union

import torch

import comfy.progress
from comfyui_core_nodes.conds import repeat_to_batch_size
from comfyui_core_nodes.loading import (count_parameters, load_torch_file, state_dict_dtype,
                                        state_dict_prefix_replace)
from comfyui_core_nodes.lora import unet_to_diffusers
from comfyui_core_nodes.model_patcher import get_attr, set_attr, set_attr_param

logger = logging.getLogger(__name__)

PROGRESS_BAR_ENABLED = True
_progress_hook: Optional[Callable[..., Any]] = None


def set_progress_bar_enabled(enabled: bool) -> None:
    global PROGRESS_BAR_ENABLED
    PROGRESS_BAR_ENABLED = enabled


def set_progress_bar_global_hook(function: Optional[Callable[..., Any]]) -> None:
    """``function(value, total, preview, node_id=...)`` is called on every progress update, besides the events."""
    global _progress_hook
    _progress_hook = function


class ProgressBar(comfy.progress.ProgressBar):
    """The kernel's progress bar, also reporting to a hook set with ``set_progress_bar_global_hook``."""

    def update_absolute(self, value: int, total: Optional[int] = None, preview: Any = None) -> None:
        super().update_absolute(value, total, preview)
        if _progress_hook is not None:
            _progress_hook(self.current, self.total, preview, node_id=self._node_id)


def save_torch_file(sd: Mapping[str, torch.Tensor], ckpt: str, metadata: Optional[dict[str, str]] = None) -> None:
    import safetensors.torch

    safetensors.torch.save_file({key: value.contiguous() for key, value in sd.items()}, ckpt, metadata=metadata)


def safetensors_header(path: str, max_size: int = 100 * 1024 * 1024) -> Optional[bytes]:
    with open(path, "rb") as handle:
        length = struct.unpack("<Q", handle.read(8))[0]
        if length > max_size:
            return None
        return handle.read(length)


def calculate_parameters(sd: Mapping[str, torch.Tensor], prefix: str = "") -> int:
    return count_parameters(sd, prefix)


def weight_dtype(sd: Mapping[str, torch.Tensor], prefix: str = "") -> Optional[torch.dtype]:
    return state_dict_dtype(sd, prefix)


def state_dict_key_replace(state_dict: dict[str, Any], keys_to_replace: Mapping[str, str]) -> dict[str, Any]:
    for old, new in keys_to_replace.items():
        if old in state_dict:
            state_dict[new] = state_dict.pop(old)
    return state_dict


def convert_sd_to(state_dict: dict[str, torch.Tensor], dtype: torch.dtype) -> dict[str, torch.Tensor]:
    for key in list(state_dict):
        state_dict[key] = state_dict[key].to(dtype)
    return state_dict


def copy_to_param(obj: Any, attr: str, value: torch.Tensor) -> None:
    get_attr(obj, attr).data.copy_(value)


def resize_to_batch_size(tensor: torch.Tensor, batch_size: int) -> torch.Tensor:
    """Pick (not repeat) items so that ``batch_size`` of them spread evenly over the input batch."""
    current = tensor.shape[0]
    if current == batch_size:
        return tensor
    if batch_size <= 1:
        return tensor[:batch_size]
    out = torch.empty([batch_size] + list(tensor.shape)[1:], dtype=tensor.dtype, device=tensor.device)
    if batch_size < current:
        scale = (current - 1) / (batch_size - 1)
        for index in range(batch_size):
            out[index] = tensor[min(round(index * scale), current - 1)]
    else:
        scale = current / batch_size
        for index in range(batch_size):
            out[index] = tensor[min(math.floor((index + 0.5) * scale), current - 1)]
    return out


def resize_list_to_batch_size(items: list, batch_size: int) -> list:
    current = len(items)
    if current == batch_size or current == 0:
        return items
    if batch_size <= 1:
        return items[:batch_size]
    if batch_size < current:
        scale = (current - 1) / (batch_size - 1)
        return [items[min(round(index * scale), current - 1)] for index in range(batch_size)]
    scale = current / batch_size
    return [items[min(math.floor((index + 0.5) * scale), current - 1)] for index in range(batch_size)]


def bislerp(samples: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """Resize by spherical interpolation between neighbouring latent vectors (keeps their norm)."""

    def slerp(b1: torch.Tensor, b2: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
        channels = b1.shape[-1]
        n1, n2 = torch.norm(b1, dim=-1, keepdim=True), torch.norm(b2, dim=-1, keepdim=True)
        u1, u2 = b1 / n1, b2 / n2
        u1[n1.expand(-1, channels) == 0.0] = 0.0
        u2[n2.expand(-1, channels) == 0.0] = 0.0
        dot = (u1 * u2).sum(1)
        omega = torch.acos(dot)
        so = torch.sin(omega)
        result = (torch.sin((1.0 - r.squeeze(1)) * omega) / so).unsqueeze(1) * u1 \
            + (torch.sin(r.squeeze(1) * omega) / so).unsqueeze(1) * u2
        result *= (n1 * (1.0 - r) + n2 * r).expand(-1, channels)
        result[dot > 1 - 1e-5] = b1[dot > 1 - 1e-5]
        result[dot < 1e-5 - 1] = (b1 * (1.0 - r) + b2 * r)[dot < 1e-5 - 1]
        return result

    def neighbours(old: int, new: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        coords = torch.arange(old, dtype=torch.float32, device=device).reshape((1, 1, 1, -1))
        coords = torch.nn.functional.interpolate(coords, size=(1, new), mode="bilinear")
        ratios = coords - coords.floor()
        first = coords.to(torch.int64)
        second = torch.arange(old, dtype=torch.float32, device=device).reshape((1, 1, 1, -1)) + 1
        second[:, :, :, -1] -= 1
        second = torch.nn.functional.interpolate(second, size=(1, new), mode="bilinear").to(torch.int64)
        return ratios, first, second

    dtype = samples.dtype
    samples = samples.float()
    n, c, h, w = samples.shape
    ratios, first, second = neighbours(w, width, samples.device)
    first, second = first.expand((n, c, h, -1)), second.expand((n, c, h, -1))
    ratios = ratios.expand((n, 1, h, -1)).movedim(1, -1).reshape((-1, 1))
    result = slerp(samples.gather(-1, first).movedim(1, -1).reshape((-1, c)),
                   samples.gather(-1, second).movedim(1, -1).reshape((-1, c)), ratios)
    result = result.reshape(n, h, width, c).movedim(-1, 1)

    ratios, first, second = neighbours(h, height, samples.device)
    first = first.reshape((1, 1, -1, 1)).expand((n, c, -1, width))
    second = second.reshape((1, 1, -1, 1)).expand((n, c, -1, width))
    ratios = ratios.reshape((1, 1, -1, 1)).expand((n, 1, -1, width)).movedim(1, -1).reshape((-1, 1))
    result = slerp(result.gather(-2, first).movedim(1, -1).reshape((-1, c)),
                   result.gather(-2, second).movedim(1, -1).reshape((-1, c)), ratios)
    return result.reshape(n, height, width, c).movedim(-1, 1).to(dtype)


def lanczos(samples: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """Lanczos through PIL on 8-bit images (as ComfyUI does; for images, not latents)."""
    import numpy as np
    from PIL import Image

    frames = samples.squeeze(1) if samples.shape[1] == 1 else samples.movedim(1, -1)
    images = [Image.fromarray(np.clip(255.0 * frame.cpu().numpy(), 0, 255).astype(np.uint8)) for frame in frames]
    images = [image.resize((width, height), resample=Image.Resampling.LANCZOS) for image in images]
    tensors = [torch.from_numpy(np.array(image).astype(np.float32) / 255.0) for image in images]
    tensors = [tensor.unsqueeze(0) if tensor.ndim == 2 else tensor.movedim(-1, 0) for tensor in tensors]
    return torch.stack(tensors).to(samples.device, samples.dtype)


def common_upscale(samples: torch.Tensor, width: int, height: int, upscale_method: str, crop: str) -> torch.Tensor:
    """Resize (B, C, H, W) (or with extra leading dims) to width x height; ``crop="center"`` keeps the aspect."""
    shape = tuple(samples.shape)
    if len(shape) > 4:
        samples = samples.reshape(shape[0], shape[1], -1, shape[-2], shape[-1]).movedim(2, 1)
        samples = samples.reshape(-1, shape[1], shape[-2], shape[-1])
    if crop == "center":
        old_width, old_height = samples.shape[-1], samples.shape[-2]
        old_aspect, new_aspect = old_width / old_height, width / height
        x = y = 0
        if old_aspect > new_aspect:
            x = round((old_width - old_width * (new_aspect / old_aspect)) / 2)
        elif old_aspect < new_aspect:
            y = round((old_height - old_height * (old_aspect / new_aspect)) / 2)
        samples = samples.narrow(-2, y, old_height - y * 2).narrow(-1, x, old_width - x * 2)
    if upscale_method == "bislerp":
        out = bislerp(samples, width, height)
    elif upscale_method == "lanczos":
        out = lanczos(samples, width, height)
    else:
        out = torch.nn.functional.interpolate(samples, size=(height, width), mode=upscale_method)
    if len(shape) == 4:
        return out
    out = out.reshape((shape[0], -1, shape[1]) + (height, width))
    return out.movedim(2, 1).reshape(shape[:-2] + (height, width))


def get_tiled_scale_steps(width: int, height: int, tile_x: int, tile_y: int, overlap: int) -> int:
    rows = 1 if height <= tile_y else math.ceil((height - overlap) / (tile_y - overlap))
    cols = 1 if width <= tile_x else math.ceil((width - overlap) / (tile_x - overlap))
    return rows * cols


@torch.inference_mode()
def tiled_scale_multidim(samples: torch.Tensor, function: Callable[[torch.Tensor], torch.Tensor],
                         tile: Sequence[int] = (64, 64), overlap: Union[int, Sequence[int]] = 8,
                         upscale_amount: Union[float, Sequence[float]] = 4, out_channels: int = 3,
                         output_device: Any = "cpu", downscale: bool = False, index_formulas: Any = None,
                         pbar: Optional[ProgressBar] = None) -> torch.Tensor:
    """Apply ``function`` (which scales by ``upscale_amount``) over overlapping tiles, feathering the seams."""
    dims = len(tile)
    scales = list(upscale_amount) if isinstance(upscale_amount, (tuple, list)) else [upscale_amount] * dims
    overlaps = list(overlap) if isinstance(overlap, (tuple, list)) else [overlap] * dims

    def scaled(dim: int, value: float) -> float:
        return value / scales[dim] if downscale else scales[dim] * value

    out_shape = [round(scaled(d, size)) for d, size in enumerate(samples.shape[2:])]
    output = torch.empty([samples.shape[0], out_channels] + out_shape, device=output_device)
    for b in range(samples.shape[0]):
        s = samples[b:b + 1]
        if all(s.shape[d + 2] <= tile[d] for d in range(dims)):
            output[b:b + 1] = function(s).to(output_device)
            if pbar is not None:
                pbar.update(1)
            continue
        out = torch.zeros([1, out_channels] + out_shape, device=output_device)
        out_div = torch.zeros([1, out_channels] + out_shape, device=output_device)
        positions = [range(0, s.shape[d + 2] - overlaps[d], tile[d] - overlaps[d]) if s.shape[d + 2] > tile[d]
                     else [0] for d in range(dims)]
        for corner in itertools.product(*positions):
            piece = s
            starts = []
            for d in range(dims):
                position = max(0, min(s.shape[d + 2] - overlaps[d], corner[d]))
                length = min(tile[d], s.shape[d + 2] - position)
                piece = piece.narrow(d + 2, position, length)
                starts.append(round(scaled(d, position)))
            result = function(piece).to(output_device)
            mask = torch.ones_like(result)
            for d in range(2, dims + 2):
                feather = round(scaled(d - 2, overlaps[d - 2]))
                if feather >= mask.shape[d]:
                    continue
                for t in range(feather):
                    factor = (t + 1) / feather
                    mask.narrow(d, t, 1).mul_(factor)
                    mask.narrow(d, mask.shape[d] - 1 - t, 1).mul_(factor)
            target, target_div = out, out_div
            for d in range(dims):
                target = target.narrow(d + 2, starts[d], mask.shape[d + 2])
                target_div = target_div.narrow(d + 2, starts[d], mask.shape[d + 2])
            target.add_(result * mask)
            target_div.add_(mask)
            if pbar is not None:
                pbar.update(1)
        output[b:b + 1] = out / out_div
    return output


def tiled_scale(samples: torch.Tensor, function: Callable[[torch.Tensor], torch.Tensor], tile_x: int = 64,
                tile_y: int = 64, overlap: int = 8, upscale_amount: float = 4, out_channels: int = 3,
                output_device: Any = "cpu", pbar: Optional[ProgressBar] = None) -> torch.Tensor:
    return tiled_scale_multidim(samples, function, (tile_y, tile_x), overlap=overlap, upscale_amount=upscale_amount,
                                out_channels=out_channels, output_device=output_device, pbar=pbar)


def reshape_mask(input_mask: torch.Tensor, output_shape: Sequence[int]) -> torch.Tensor:
    """A MASK resized to a latent's spatial size and repeated over its channels and batch."""
    dims = len(output_shape) - 2
    if dims == 1:
        mode = "linear"
    elif dims == 2:
        input_mask = input_mask.reshape((-1, 1, input_mask.shape[-2], input_mask.shape[-1]))
        mode = "bilinear"
    elif dims == 3:
        if input_mask.ndim < 5:
            input_mask = input_mask.reshape((1, 1, -1, input_mask.shape[-2], input_mask.shape[-1]))
        mode = "trilinear"
    else:
        raise ValueError(f"a mask cannot be shaped for a latent of {len(output_shape)} dimensions")
    mask = torch.nn.functional.interpolate(input_mask, size=tuple(output_shape[2:]), mode=mode)
    if mask.shape[1] < output_shape[1]:
        mask = mask.repeat((1, output_shape[1]) + (1,) * dims)[:, :output_shape[1]]
    return repeat_to_batch_size(mask, output_shape[0])


def pil2tensor(image: Any) -> torch.Tensor:
    import numpy as np

    return torch.from_numpy(np.array(image).astype(np.float32) / 255.0).unsqueeze(0)


def tensor2pil(t_image: torch.Tensor) -> Any:
    import numpy as np
    from PIL import Image

    return Image.fromarray(np.clip(255.0 * t_image.cpu().numpy().squeeze(), 0, 255).astype(np.uint8))


__all__ = ["PROGRESS_BAR_ENABLED", "ProgressBar", "bislerp", "calculate_parameters", "common_upscale",
           "convert_sd_to", "copy_to_param", "get_attr", "get_tiled_scale_steps", "lanczos", "load_torch_file",
           "pil2tensor", "repeat_to_batch_size", "reshape_mask", "resize_list_to_batch_size", "resize_to_batch_size",
           "safetensors_header", "save_torch_file", "set_attr", "set_attr_param", "set_progress_bar_enabled",
           "set_progress_bar_global_hook", "state_dict_key_replace", "state_dict_prefix_replace",
           "tensor2pil", "tiled_scale", "tiled_scale_multidim", "unet_to_diffusers", "weight_dtype"]
