"""Latent spaces: the scale between VAE latents and what the diffusion model sees, and colours for previews."""
from __future__ import annotations

from typing import Optional

import torch


class LatentFormat:
    scale_factor = 1.0
    latent_channels = 4
    latent_dimensions = 2
    latent_rgb_factors: Optional[list[list[float]]] = None
    latent_rgb_factors_bias: Optional[list[float]] = None
    latent_rgb_factors_reshape = None
    taesd_decoder_name: Optional[str] = None

    def process_in(self, latent: torch.Tensor) -> torch.Tensor:
        """VAE latent -> model latent."""
        return latent * self.scale_factor

    def process_out(self, latent: torch.Tensor) -> torch.Tensor:
        """Model latent -> VAE latent."""
        return latent / self.scale_factor


class SD15(LatentFormat):
    """SD 1.x and 2.x."""
    taesd_decoder_name = "taesd_decoder"
    # Per latent channel, its (R, G, B) contribution: a linear approximation of the VAE decoder.
    latent_rgb_factors = [
        [0.3512, 0.2297, 0.3227],
        [0.3250, 0.4974, 0.2350],
        [-0.2829, 0.1762, 0.2721],
        [-0.2120, -0.2616, -0.7177],
    ]

    def __init__(self, scale_factor: float = 0.18215):
        self.scale_factor = scale_factor


class SDXL(LatentFormat):
    scale_factor = 0.13025
    taesd_decoder_name = "taesdxl_decoder"
    latent_rgb_factors = [
        [0.3651, 0.4232, 0.4341],
        [-0.2533, -0.0042, 0.1068],
        [0.1076, 0.1111, -0.0362],
        [-0.3165, -0.2492, -0.2188],
    ]
    latent_rgb_factors_bias = [0.1084, -0.0175, -0.0011]


__all__ = ["LatentFormat", "SD15", "SDXL"]
