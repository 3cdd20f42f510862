"""A real denoiser with a known answer, for testing samplers without a network.

The data are i.i.d. Gaussian, x0 ~ N(m, s0^2), with the mean m given by the conditioning (the mean
of its embedding tensor). For such data the optimal denoiser is exact:
E[x0 | x0 + sigma * eps = x] = m + s0^2 / (s0^2 + sigma^2) * (x - m), and the probability-flow ODE
from x_T at sigma_T ends at m + s0 * (x_T - m) / sqrt(s0^2 + sigma_T^2). The model runs through the
same interfaces a checkpoint's model does: a BaseModel-like module with ``apply_model``,
``extra_conds``, ``model_sampling`` and a latent format, inside a patcher that model management
can load.
"""
from __future__ import annotations

import math
from typing import Any, Optional, Sequence

import torch

from comfyui_core_nodes import conds
from comfyui_core_nodes.model_sampling import model_sampling

DATA_STD = 0.5


class IdentityLatentFormat:
    scale_factor = 1.0
    latent_channels = 4
    latent_dimensions = 2
    latent_rgb_factors = None
    latent_rgb_factors_bias = None
    latent_rgb_factors_reshape = None
    taesd_decoder_name = None

    def process_in(self, latent: torch.Tensor) -> torch.Tensor:
        return latent

    def process_out(self, latent: torch.Tensor) -> torch.Tensor:
        return latent


class GaussianDenoiser(torch.nn.Module):
    """The exact denoiser of N(m, DATA_STD^2) data, m read from the cross-attention conditioning."""

    def __init__(self, prediction: str = "eps"):
        super().__init__()
        self.model_sampling = model_sampling(prediction)
        self.latent_format = IdentityLatentFormat()
        self.calls = 0

    def apply_model(self, x: torch.Tensor, t: torch.Tensor, c_concat=None, c_crossattn=None, control=None,
                    transformer_options=None, **kwargs: Any) -> torch.Tensor:
        self.calls += 1
        mean = c_crossattn.mean(dim=(1, 2)).view(-1, 1, 1, 1)
        sigma = t.view(-1, 1, 1, 1)
        return mean + DATA_STD ** 2 / (DATA_STD ** 2 + sigma ** 2) * (x - mean)

    def extra_conds(self, **kwargs: Any) -> dict:
        return {"c_crossattn": conds.CONDCrossAttn(kwargs["cross_attn"])}

    def extra_conds_shapes(self, **kwargs: Any) -> dict:
        return {}

    def memory_required(self, input_shape: Sequence[int], cond_shapes: Optional[dict] = None) -> float:
        return 1024.0 * math.prod(input_shape)

    def process_latent_in(self, latent: torch.Tensor) -> torch.Tensor:
        return self.latent_format.process_in(latent)

    def process_latent_out(self, latent: torch.Tensor) -> torch.Tensor:
        return self.latent_format.process_out(latent)

    def scale_latent_inpaint(self, sigma, noise, latent_image, **kwargs):
        return self.model_sampling.noise_scaling(sigma.reshape([sigma.shape[0]] + [1] * (noise.ndim - 1)), noise,
                                                 latent_image)


class TinyPatcher:
    """Holds the denoiser the way a ModelPatcher holds a BaseModel (weights-free, always on the CPU)."""

    def __init__(self, model: GaussianDenoiser):
        self.model = model
        self.model_options: dict = {"transformer_options": {}}
        self.load_device = self.offload_device = torch.device("cpu")

    def get_model_object(self, name: str) -> Any:
        return getattr(self.model, name)

    def model_dtype(self) -> torch.dtype:
        return torch.float32

    def model_size(self) -> int:
        return 0

    def loaded_size(self) -> int:
        return 0

    def current_loaded_device(self) -> torch.device:
        return self.load_device

    def is_clone(self, other: Any) -> bool:
        return other is self

    def model_patches_models(self) -> list:
        return []

    def model_patches_to(self, device: Any) -> None:
        pass

    def load(self, device_to, lowvram_model_memory=0, force_patch_weights=False, full_load=False) -> None:
        pass

    def partially_unload(self, device_to, memory_to_free=0) -> int:
        return 0

    def detach(self, unpatch_all: bool = True) -> None:
        pass


def conditioning(mean: float, tokens: int = 77, batch: int = 1, **options: Any) -> list:
    """A CONDITIONING whose embedding has the given mean, so the data the model denoises have it too."""
    return [[torch.full((batch, tokens, 8), float(mean)), dict(options)]]


def exact_ode_end(x_start: torch.Tensor, sigma_start: float, mean: float) -> torch.Tensor:
    """Where the probability-flow ODE from ``x_start`` at ``sigma_start`` arrives at sigma 0."""
    return mean + DATA_STD * (x_start - mean) / math.sqrt(DATA_STD ** 2 + sigma_start ** 2)
