"""Latent previews during sampling (ComfyUI's ``latent_preview``): a linear latent-to-RGB map, or TAESD.

``--preview-method``: ``none``; ``latent2rgb``; ``taesd`` (the tiny autoencoder's decoder, when
``models/vae_approx/taesd_decoder.*`` or ``taesdxl_decoder.*`` is present); ``auto`` picks TAESD when
its weights are there, else latent2rgb. Previews travel as ``(format, PIL image, max size)``.
"""
from __future__ import annotations

import logging
from typing import Any, Callable, Optional

import torch
import torch.nn as nn

from comfyui_core_nodes import ops
from comfyui_core_nodes.options import option

logger = logging.getLogger(__name__)

PreviewMessage = tuple[str, Any, int]
StepCallback = Callable[[int, torch.Tensor, torch.Tensor, int], None]


def preview_to_image(latent_image: torch.Tensor, do_scale: bool = True) -> Any:
    """An (H, W, 3) tensor in [-1, 1] (or [0, 1] without ``do_scale``) as a PIL image."""
    from PIL import Image

    if do_scale:
        latent_image = (latent_image + 1.0) / 2.0
    pixels = latent_image.clamp(0, 1).mul(0xFF).to(device="cpu", dtype=torch.uint8)
    return Image.fromarray(pixels.numpy())


class LatentPreviewer:
    def decode_latent_to_preview(self, x0: torch.Tensor) -> Any:
        raise NotImplementedError

    def decode_latent_to_preview_image(self, preview_format: str, x0: torch.Tensor) -> PreviewMessage:
        return preview_format, self.decode_latent_to_preview(x0), option("preview_size")


class Latent2RGBPreviewer(LatentPreviewer):
    """Each latent channel's fixed RGB contribution, summed: instant and rough."""

    def __init__(self, latent_rgb_factors: list[list[float]], latent_rgb_factors_bias: Optional[list[float]] = None):
        self.latent_rgb_factors = torch.tensor(latent_rgb_factors, device="cpu").transpose(0, 1)
        self.latent_rgb_factors_bias = (torch.tensor(latent_rgb_factors_bias, device="cpu")
                                        if latent_rgb_factors_bias is not None else None)

    def decode_latent_to_preview(self, x0: torch.Tensor) -> Any:
        factors = self.latent_rgb_factors.to(dtype=x0.dtype, device=x0.device)
        bias = self.latent_rgb_factors_bias
        if bias is not None:
            bias = bias.to(dtype=x0.dtype, device=x0.device)
        return preview_to_image(torch.nn.functional.linear(x0[0].movedim(0, -1), factors, bias=bias))


def _conv(n_in: int, n_out: int, **kwargs: Any) -> nn.Module:
    return ops.disable_weight_init.Conv2d(n_in, n_out, 3, padding=1, **kwargs)


class _Clamp(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(x / 3) * 3


class _Block(nn.Module):
    def __init__(self, n_in: int, n_out: int):
        super().__init__()
        self.conv = nn.Sequential(_conv(n_in, n_out), nn.ReLU(), _conv(n_out, n_out), nn.ReLU(), _conv(n_out, n_out))
        self.skip = ops.disable_weight_init.Conv2d(n_in, n_out, 1, bias=False) if n_in != n_out else nn.Identity()
        self.fuse = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fuse(self.conv(x) + self.skip(x))


def taesd_decoder(latent_channels: int = 4) -> nn.Sequential:
    """TAESD's decoder in the layout of the released ``taesd_decoder`` weights."""
    layers: list[nn.Module] = [_Clamp(), _conv(latent_channels, 64), nn.ReLU()]
    for _ in range(3):
        layers += [_Block(64, 64), _Block(64, 64), _Block(64, 64), nn.Upsample(scale_factor=2),
                   _conv(64, 64, bias=False)]
    layers += [_Block(64, 64), _conv(64, 3)]
    return nn.Sequential(*layers)


class TAESDPreviewer(LatentPreviewer):
    """The tiny autoencoder's decoder: close to the real VAE's colours and detail, still fast."""

    def __init__(self, decoder: nn.Module):
        self.decoder = decoder

    def decode_latent_to_preview(self, x0: torch.Tensor) -> Any:
        weight = next(self.decoder.parameters())
        with torch.no_grad():
            image = self.decoder(x0[:1].to(device=weight.device, dtype=weight.dtype))
        return preview_to_image(image[0].sub(0.5).mul(2).movedim(0, 2).float())


def _taesd_file(latent_format: Any) -> Optional[str]:
    from comfy import paths

    name = getattr(latent_format, "taesd_decoder_name", None)
    if name is None:
        return None
    for filename in paths.get_filename_list("vae_approx"):
        if filename.startswith(name):
            return paths.get_full_path("vae_approx", filename)
    return None


def load_taesd_decoder(path: str, latent_channels: int, device: Any) -> nn.Module:
    from comfyui_core_nodes.loading import load_into, load_torch_file

    with torch.device("meta"):
        decoder = taesd_decoder(latent_channels)
    load_into(decoder, load_torch_file(path), torch.float32, what="TAESD decoder")
    return decoder.to(device).eval()


def get_previewer(device: Any, latent_format: Any) -> Optional[LatentPreviewer]:
    """The previewer ``--preview-method`` asks for, or None for no previews."""
    method = option("preview_method")
    method = getattr(method, "value", method)
    if method in (None, "none"):
        return None
    if method in ("auto", "taesd"):
        path = _taesd_file(latent_format)
        if path is not None:
            return TAESDPreviewer(load_taesd_decoder(path, latent_format.latent_channels, device))
        if method == "taesd":
            logger.warning("TAESD previews asked for, but models/vae_approx has no %s.* file; using latent2rgb",
                           getattr(latent_format, "taesd_decoder_name", "taesd_decoder"))
    if latent_format.latent_rgb_factors is None:
        return None
    return Latent2RGBPreviewer(latent_format.latent_rgb_factors, latent_format.latent_rgb_factors_bias)


def prepare_callback(model: Any, steps: int, x0_output_dict: Optional[dict] = None) -> StepCallback:
    """ComfyUI's per-step callback: progress with a preview of the current prediction, and interrupts.

    With ``x0_output_dict`` the latest denoised prediction is kept in it under ``"x0"``.
    """
    from comfy.execution_context import throw_exception_if_processing_interrupted
    from comfyui_core_nodes.utils import ProgressBar

    previewer = get_previewer(model.load_device, model.model.latent_format)
    progress = ProgressBar(steps)

    def callback(step: int, x0: torch.Tensor, x: torch.Tensor, total_steps: int) -> None:
        if x0_output_dict is not None:
            x0_output_dict["x0"] = x0
        preview = previewer.decode_latent_to_preview_image("JPEG", x0) if previewer is not None else None
        progress.update_absolute(step + 1, total_steps, preview)
        # ComfyUI's progress hook raises here when the prompt was interrupted.
        throw_exception_if_processing_interrupted()

    return callback


__all__ = ["Latent2RGBPreviewer", "LatentPreviewer", "TAESDPreviewer", "get_previewer", "load_taesd_decoder",
           "prepare_callback", "preview_to_image", "taesd_decoder"]
