"""The KSampler flow: noise, sigmas, guidance and a sampler run, with progress, previews and interrupts.

This is also the legacy ``comfy.sample`` (``prepare_noise``, ``sample``, ``sample_custom``,
``fix_empty_latent_channels``) that vanilla custom nodes call.
"""
from __future__ import annotations

from typing import Any, Optional

import torch

from comfyui_core_nodes.preview import prepare_callback
from comfyui_samplers import samplers
from comfyui_samplers.noise import prepare_noise

__all__ = ["prepare_noise", "fix_empty_latent_channels", "sample", "sample_custom", "prepare_callback",
           "common_ksampler"]


def fix_empty_latent_channels(model: Any, latent_image: torch.Tensor) -> torch.Tensor:
    """An all-zero latent with the wrong channel count is widened to the model's latent channels."""
    latent_format = model.get_model_object("latent_format")
    if latent_format.latent_channels != latent_image.shape[1] and torch.count_nonzero(latent_image) == 0:
        repeats = [1] * latent_image.ndim
        repeats[1] = -(-latent_format.latent_channels // latent_image.shape[1])
        latent_image = latent_image.repeat(repeats).narrow(1, 0, latent_format.latent_channels)
    return latent_image


def _intermediate_device() -> torch.device:
    from comfyui_core_nodes import model_management

    return model_management.intermediate_device()


def sample(model, noise, steps, cfg, sampler_name, scheduler, positive, negative, latent_image, denoise=1.0,
           disable_noise=False, start_step=None, last_step=None, force_full_denoise=False, noise_mask=None,
           sigmas=None, callback=None, disable_pbar=False, seed=None) -> torch.Tensor:
    """Sample ``model`` by sampler and scheduler name (what the KSampler nodes run)."""
    ksampler = samplers.KSampler(model, steps=steps, device=model.load_device, sampler=sampler_name,
                                 scheduler=scheduler, denoise=denoise, model_options=model.model_options)
    samples = ksampler.sample(noise, positive, negative, cfg=cfg, latent_image=latent_image, start_step=start_step,
                              last_step=last_step, force_full_denoise=force_full_denoise, denoise_mask=noise_mask,
                              sigmas=sigmas, callback=callback, disable_pbar=disable_pbar, seed=seed)
    return samples.to(_intermediate_device())


def sample_custom(model, noise, cfg, sampler, sigmas, positive, negative, latent_image, noise_mask=None,
                  callback=None, disable_pbar=False, seed=None) -> torch.Tensor:
    """Sample ``model`` with a SAMPLER object and explicit SIGMAS (what SamplerCustom runs)."""
    samples = samplers.sample(model, noise, positive, negative, cfg, model.load_device, sampler, sigmas,
                              model_options=model.model_options, latent_image=latent_image, denoise_mask=noise_mask,
                              callback=callback, disable_pbar=disable_pbar, seed=seed)
    return samples.to(_intermediate_device())


def common_ksampler(model, seed: int, steps: int, cfg: float, sampler_name: str, scheduler: str, positive, negative,
                    latent: dict, denoise: float = 1.0, disable_noise: bool = False, start_step: Optional[int] = None,
                    last_step: Optional[int] = None, force_full_denoise: bool = False) -> tuple[dict]:
    """The KSampler / KSamplerAdvanced node body: a LATENT in, the sampled LATENT out."""
    latent_image = fix_empty_latent_channels(model, latent["samples"])
    if disable_noise:
        noise = torch.zeros(latent_image.size(), dtype=latent_image.dtype, layout=latent_image.layout, device="cpu")
    else:
        noise = prepare_noise(latent_image, seed, latent.get("batch_index"))
    callback = prepare_callback(model, steps)
    samples = sample(model, noise, steps, cfg, sampler_name, scheduler, positive, negative, latent_image,
                     denoise=denoise, disable_noise=disable_noise, start_step=start_step, last_step=last_step,
                     force_full_denoise=force_full_denoise, noise_mask=latent.get("noise_mask"), callback=callback,
                     seed=seed)
    out = dict(latent)
    out["samples"] = samples
    return (out,)
