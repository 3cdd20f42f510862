"""Sampler objects (the SAMPLER type), the sampler table and KSampler: the legacy ``comfy.samplers``.

A ``KSAMPLER`` wraps one sampling function with its options; ``sampler_object(name)`` makes one
from a KSampler combo name. Guidance and schedules are re-exported here because vanilla custom
nodes reach them through ``comfy.samplers``.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Optional

import torch

from comfyui_samplers import k_sampling, uni_pc
from comfyui_samplers.guidance import (CFGGuider, KSamplerX0Inpaint, calc_cond_batch, cfg_function, convert_cond,
                                       process_conds, sampling_function)
from comfyui_samplers.names import KSAMPLER_NAMES, SAMPLER_NAMES
from comfyui_samplers.schedulers import (SCHEDULER_HANDLERS, SCHEDULER_NAMES, SchedulerHandler, beta_scheduler,
                                         calculate_sigmas, ddim_scheduler, kl_optimal_scheduler,
                                         linear_quadratic_schedule, normal_scheduler, simple_scheduler)

__all__ = [
    "KSAMPLER_NAMES", "SAMPLER_NAMES", "SCHEDULER_NAMES", "SCHEDULER_HANDLERS", "SchedulerHandler", "Sampler",
    "KSAMPLER", "ksampler", "sampler_object", "KSampler", "sample", "CFGGuider", "KSamplerX0Inpaint",
    "calc_cond_batch", "cfg_function", "sampling_function", "process_conds", "convert_cond", "calculate_sigmas",
    "simple_scheduler", "ddim_scheduler", "normal_scheduler", "beta_scheduler", "linear_quadratic_schedule",
    "kl_optimal_scheduler",
]


class Sampler:
    """A SAMPLER: ``sample(model_wrap, sigmas, extra_args, callback, noise, latent_image, denoise_mask, disable_pbar)``."""

    def sample(self, *args, **kwargs) -> torch.Tensor:
        raise NotImplementedError

    @staticmethod
    def max_denoise(model_wrap: CFGGuider, sigmas: torch.Tensor) -> bool:
        """Whether the run starts from pure noise (its first sigma is the model's largest)."""
        max_sigma = float(model_wrap.inner_model.model_sampling.sigma_max)
        sigma = float(sigmas[0])
        return math.isclose(max_sigma, sigma, rel_tol=1e-05) or sigma > max_sigma


class KSAMPLER(Sampler):
    """A k-diffusion style sampling function with fixed options (eta, s_noise, order...)."""

    def __init__(self, sampler_function: Callable, extra_options: Optional[dict] = None,
                 inpaint_options: Optional[dict] = None):
        self.sampler_function = sampler_function
        self.extra_options = dict(extra_options or {})
        self.inpaint_options = dict(inpaint_options or {})

    def sample(self, model_wrap: CFGGuider, sigmas: torch.Tensor, extra_args: dict, callback, noise: torch.Tensor,
               latent_image: Optional[torch.Tensor] = None, denoise_mask: Optional[torch.Tensor] = None,
               disable_pbar: bool = False) -> torch.Tensor:
        extra_args["denoise_mask"] = denoise_mask
        denoiser = KSamplerX0Inpaint(model_wrap, sigmas)
        denoiser.latent_image = latent_image
        if self.inpaint_options.get("random", False):
            # DDIM-style inpainting keeps the unmasked part noised by its own fixed-seed noise.
            generator = torch.manual_seed(extra_args.get("seed", 41) + 1)
            denoiser.noise = torch.randn(noise.shape, generator=generator, device="cpu").to(noise.dtype).to(noise.device)
        else:
            denoiser.noise = noise
        model_sampling = model_wrap.inner_model.model_sampling
        noise = model_sampling.noise_scaling(sigmas[0], noise, latent_image, self.max_denoise(model_wrap, sigmas))
        total_steps = len(sigmas) - 1
        step_callback = None
        if callback is not None:
            def step_callback(step: dict[str, Any]) -> None:
                callback(step["i"], step["denoised"], step["x"], total_steps)
        samples = self.sampler_function(denoiser, noise, sigmas, extra_args=extra_args, callback=step_callback,
                                        disable=disable_pbar, **self.extra_options)
        return model_sampling.inverse_noise_scaling(sigmas[-1], samples)


def _lowest_positive_sigma(sigmas: torch.Tensor) -> torch.Tensor:
    return sigmas[-2] if sigmas[-1] == 0 else sigmas[-1]


def _dpm_fast(model, noise, sigmas, extra_args, callback, disable):
    if len(sigmas) <= 1:
        return noise
    return k_sampling.sample_dpm_fast(model, noise, _lowest_positive_sigma(sigmas), sigmas[0], len(sigmas) - 1,
                                      extra_args=extra_args, callback=callback, disable=disable)


def _dpm_adaptive(model, noise, sigmas, extra_args, callback, disable, **options):
    if len(sigmas) <= 1:
        return noise
    return k_sampling.sample_dpm_adaptive(model, noise, _lowest_positive_sigma(sigmas), sigmas[0],
                                          extra_args=extra_args, callback=callback, disable=disable, **options)


# dpm_fast and dpm_adaptive take a sigma range instead of a schedule.
_RANGE_SAMPLERS: dict[str, Callable] = {"dpm_fast": _dpm_fast, "dpm_adaptive": _dpm_adaptive}


class UnknownSamplerError(ValueError):
    """A sampler name no plugin provides."""


def ksampler(sampler_name: str, extra_options: Optional[dict] = None, inpaint_options: Optional[dict] = None) -> KSAMPLER:
    """The k-diffusion sampler ``sampler_name`` (a KSAMPLER_NAMES entry) with these options."""
    function = _RANGE_SAMPLERS.get(sampler_name) or getattr(k_sampling, f"sample_{sampler_name}", None)
    if function is None:
        raise UnknownSamplerError(f"unknown sampler {sampler_name!r}; known samplers: {', '.join(SAMPLER_NAMES)}")
    return KSAMPLER(function, extra_options, inpaint_options)


def sampler_object(name: str) -> KSAMPLER:
    """The SAMPLER for a KSampler combo name; ``ddim`` is Euler with DDIM's inpainting noise."""
    if name == "uni_pc":
        return KSAMPLER(uni_pc.sample_unipc)
    if name == "uni_pc_bh2":
        return KSAMPLER(uni_pc.sample_unipc_bh2)
    if name == "ddim":
        return ksampler("euler", inpaint_options={"random": True})
    return ksampler(name)


def sample(model, noise, positive, negative, cfg, device, sampler, sigmas, model_options=None, latent_image=None,
           denoise_mask=None, callback=None, disable_pbar=False, seed=None) -> torch.Tensor:
    """Classifier-free guided sampling of ``model`` (a ModelPatcher) with ``sampler`` over ``sigmas``."""
    guider = CFGGuider(model)
    guider.set_conds(positive, negative)
    guider.set_cfg(cfg)
    return guider.sample(noise, latent_image, sampler, sigmas, denoise_mask, callback, disable_pbar, seed)


class KSampler:
    """Sigmas for a sampler and scheduler by name, steps and denoise; ``sample`` runs the KSampler node's flow."""
    SCHEDULERS = SCHEDULER_NAMES
    SAMPLERS = SAMPLER_NAMES
    # These samplers take two model steps per sigma interval at the end; one more step, minus the last interval.
    DISCARD_PENULTIMATE_SIGMA_SAMPLERS = {"dpm_2", "dpm_2_ancestral", "uni_pc", "uni_pc_bh2"}

    def __init__(self, model, steps: int, device, sampler: Optional[str] = None, scheduler: Optional[str] = None,
                 denoise: Optional[float] = None, model_options: Optional[dict] = None):
        self.model = model
        self.device = device
        self.scheduler = scheduler if scheduler in self.SCHEDULERS else self.SCHEDULERS[0]
        self.sampler = sampler if sampler in self.SAMPLERS else self.SAMPLERS[0]
        self.denoise = denoise
        self.model_options = model_options or {}
        self.set_steps(steps, denoise)

    def calculate_sigmas(self, steps: int) -> torch.Tensor:
        discard_penultimate = self.sampler in self.DISCARD_PENULTIMATE_SIGMA_SAMPLERS
        if discard_penultimate:
            steps += 1
        sigmas = calculate_sigmas(self.model.get_model_object("model_sampling"), self.scheduler, steps)
        if discard_penultimate:
            sigmas = torch.cat([sigmas[:-2], sigmas[-1:]])
        return sigmas

    def set_steps(self, steps: int, denoise: Optional[float] = None) -> None:
        """``denoise`` below 1 keeps the last ``steps`` sigmas of a ``steps / denoise`` schedule (img2img)."""
        self.steps = steps
        if denoise is None or denoise > 0.9999:
            self.sigmas = self.calculate_sigmas(steps).to(self.device)
        elif denoise <= 0.0:
            self.sigmas = torch.FloatTensor([])
        else:
            self.sigmas = self.calculate_sigmas(int(steps / denoise)).to(self.device)[-(steps + 1):]

    def sample(self, noise, positive, negative, cfg, latent_image=None, start_step=None, last_step=None,
               force_full_denoise=False, denoise_mask=None, sigmas=None, callback=None, disable_pbar=False,
               seed=None) -> torch.Tensor:
        if sigmas is None:
            sigmas = self.sigmas
        if last_step is not None and last_step < len(sigmas) - 1:
            sigmas = sigmas[:last_step + 1]
            if force_full_denoise:
                sigmas[-1] = 0
        if start_step is not None:
            if start_step >= len(sigmas) - 1:
                return latent_image if latent_image is not None else torch.zeros_like(noise)
            sigmas = sigmas[start_step:]
        return sample(self.model, noise, positive, negative, cfg, self.device, sampler_object(self.sampler), sigmas,
                      self.model_options, latent_image=latent_image, denoise_mask=denoise_mask, callback=callback,
                      disable_pbar=disable_pbar, seed=seed)
