"""Noise schedules and prediction types: how sigmas map to timesteps and model outputs to denoised latents.

SD1.x/SD2.x/SDXL use a discrete schedule of 1000 steps from linear betas (0.00085..0.012); the
model predicts noise (EPS) or velocity (V_PREDICTION). ``model_sampling(kind)`` combines the two as
ComfyUI's model_sampling objects do, with the same method names the samplers call.
"""
from __future__ import annotations

import math
from typing import Any, Optional, Union

import torch


def make_beta_schedule(schedule: str, n_timestep: int, linear_start: float = 1e-4, linear_end: float = 2e-2,
                       cosine_s: float = 8e-3) -> torch.Tensor:
    """Betas in float64 (the precision the released sigma tables were computed in)."""
    if schedule == "linear":
        return torch.linspace(linear_start ** 0.5, linear_end ** 0.5, n_timestep, dtype=torch.float64) ** 2
    if schedule == "cosine":
        steps = torch.arange(n_timestep + 1, dtype=torch.float64) / n_timestep + cosine_s
        alphas = torch.cos(steps / (1 + cosine_s) * math.pi / 2).pow(2)
        alphas = alphas / alphas[0]
        return torch.clamp(1 - alphas[1:] / alphas[:-1], min=0, max=0.999)
    if schedule == "squaredcos_cap_v2":
        def alpha_bar(t: float) -> float:
            return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2
        return torch.tensor([min(1 - alpha_bar((i + 1) / n_timestep) / alpha_bar(i / n_timestep), 0.999)
                             for i in range(n_timestep)], dtype=torch.float64)
    if schedule == "sqrt_linear":
        return torch.linspace(linear_start, linear_end, n_timestep, dtype=torch.float64)
    if schedule == "sqrt":
        return torch.linspace(linear_start, linear_end, n_timestep, dtype=torch.float64) ** 0.5
    raise ValueError(f"unknown beta schedule {schedule!r}")


def rescale_zero_terminal_snr_sigmas(sigmas: torch.Tensor) -> torch.Tensor:
    """Shift the schedule so its last step has zero SNR (for zsnr-trained models)."""
    alphas_bar_sqrt = (1 / (sigmas * sigmas + 1)).sqrt()
    first, last = alphas_bar_sqrt[0].clone(), alphas_bar_sqrt[-1].clone()
    alphas_bar_sqrt -= last
    alphas_bar_sqrt *= first / (first - last)
    alphas_bar = alphas_bar_sqrt ** 2
    alphas_bar[-1] = 4.8973451890853435e-08
    return ((1 - alphas_bar) / alphas_bar) ** 0.5


def _shaped(sigma: torch.Tensor, ndim: int) -> torch.Tensor:
    if sigma.nelement() == 1:
        return sigma.view(())
    return sigma.view(sigma.shape[:1] + (1,) * (ndim - 1))


class EPS:
    """The model predicts the noise."""
    sigma_data = 1.0

    def calculate_input(self, sigma: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        sigma = _shaped(sigma, noise.ndim)
        return noise / (sigma ** 2 + self.sigma_data ** 2) ** 0.5

    def calculate_denoised(self, sigma: torch.Tensor, model_output: torch.Tensor,
                           model_input: torch.Tensor) -> torch.Tensor:
        sigma = _shaped(sigma, model_output.ndim)
        return model_input - model_output * sigma

    def noise_scaling(self, sigma: torch.Tensor, noise: torch.Tensor, latent_image: torch.Tensor,
                      max_denoise: bool = False) -> torch.Tensor:
        sigma = _shaped(sigma, noise.ndim)
        if max_denoise:
            noise = noise * torch.sqrt(1.0 + sigma ** 2.0)
        else:
            noise = noise * sigma
        noise += latent_image
        return noise

    def inverse_noise_scaling(self, sigma: torch.Tensor, latent: torch.Tensor) -> torch.Tensor:
        return latent


class V_PREDICTION(EPS):
    """The model predicts velocity (SD 2.x 768-v)."""

    def calculate_denoised(self, sigma: torch.Tensor, model_output: torch.Tensor,
                           model_input: torch.Tensor) -> torch.Tensor:
        sigma = _shaped(sigma, model_output.ndim)
        return (model_input * self.sigma_data ** 2 / (sigma ** 2 + self.sigma_data ** 2)
                - model_output * sigma * self.sigma_data / (sigma ** 2 + self.sigma_data ** 2) ** 0.5)


class X0(EPS):
    """The model predicts the clean latent."""

    def calculate_denoised(self, sigma: torch.Tensor, model_output: torch.Tensor,
                           model_input: torch.Tensor) -> torch.Tensor:
        return model_output


class IMG_TO_IMG(X0):
    def calculate_input(self, sigma: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        return noise


class ModelSamplingDiscrete(torch.nn.Module):
    """A discrete schedule: ``sigmas`` ascending, one per training timestep."""

    def __init__(self, model_config: Any = None, zsnr: Optional[bool] = None):
        super().__init__()
        settings = dict(getattr(model_config, "sampling_settings", None) or {})
        if zsnr is None:
            zsnr = settings.get("zsnr", False)
        self._register_schedule(settings.get("beta_schedule", "linear"), settings.get("timesteps", 1000),
                                settings.get("linear_start", 0.00085), settings.get("linear_end", 0.012), zsnr)
        self.sigma_data = 1.0

    def _register_schedule(self, beta_schedule: str, timesteps: int, linear_start: float, linear_end: float,
                           zsnr: bool) -> None:
        betas = make_beta_schedule(beta_schedule, timesteps, linear_start=linear_start, linear_end=linear_end)
        alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)
        self.num_timesteps = int(betas.shape[0])
        self.linear_start, self.linear_end, self.zsnr = linear_start, linear_end, zsnr
        sigmas = ((1 - alphas_cumprod) / alphas_cumprod) ** 0.5
        if zsnr:
            sigmas = rescale_zero_terminal_snr_sigmas(sigmas)
        self.set_sigmas(sigmas)

    def set_sigmas(self, sigmas: torch.Tensor) -> None:
        self.register_buffer("sigmas", sigmas.float())
        self.register_buffer("log_sigmas", sigmas.log().float())

    @property
    def sigma_min(self) -> torch.Tensor:
        return self.sigmas[0]

    @property
    def sigma_max(self) -> torch.Tensor:
        return self.sigmas[-1]

    def timestep(self, sigma: torch.Tensor) -> torch.Tensor:
        """The nearest training timestep (in log-sigma) to each sigma."""
        distances = sigma.log().to(self.log_sigmas.device) - self.log_sigmas[:, None]
        return distances.abs().argmin(dim=0).view(sigma.shape).to(sigma.device)

    def sigma(self, timestep: torch.Tensor) -> torch.Tensor:
        """Sigma at a (fractional) timestep, interpolated in log space."""
        t = torch.clamp(timestep.float().to(self.log_sigmas.device), min=0, max=len(self.sigmas) - 1)
        low, high, weight = t.floor().long(), t.ceil().long(), t.frac()
        log_sigma = (1 - weight) * self.log_sigmas[low] + weight * self.log_sigmas[high]
        return log_sigma.exp().to(timestep.device)

    def percent_to_sigma(self, percent: float) -> float:
        if percent <= 0.0:
            return 999999999.9
        if percent >= 1.0:
            return 0.0
        return self.sigma(torch.tensor((1.0 - percent) * 999.0)).item()


class LCM(EPS):
    """Latent consistency models' boundary-condition output scaling."""

    def calculate_denoised(self, sigma: torch.Tensor, model_output: torch.Tensor,
                           model_input: torch.Tensor) -> torch.Tensor:
        timestep = self.timestep(sigma).view(sigma.shape[:1] + (1,) * (model_output.ndim - 1))
        sigma = sigma.view(sigma.shape[:1] + (1,) * (model_output.ndim - 1))
        x0 = model_input - model_output * sigma
        sigma_data = 0.5
        scaled_timestep = timestep * 10.0
        c_skip = sigma_data ** 2 / (scaled_timestep ** 2 + sigma_data ** 2)
        c_out = scaled_timestep / (scaled_timestep ** 2 + sigma_data ** 2) ** 0.5
        return c_out * x0 + c_skip * model_input


class ModelSamplingDiscreteDistilled(ModelSamplingDiscrete):
    """The 50 timesteps a distilled (LCM) model was trained on."""
    original_timesteps = 50

    def __init__(self, model_config: Any = None, zsnr: Optional[bool] = None):
        super().__init__(model_config, zsnr=zsnr)
        self.skip_steps = self.num_timesteps // self.original_timesteps
        valid = torch.zeros(self.original_timesteps, dtype=torch.float32)
        for index in range(self.original_timesteps):
            valid[self.original_timesteps - 1 - index] = self.sigmas[self.num_timesteps - 1 - index * self.skip_steps]
        self.set_sigmas(valid)

    def timestep(self, sigma: torch.Tensor) -> torch.Tensor:
        distances = sigma.log().to(self.log_sigmas.device) - self.log_sigmas[:, None]
        return (distances.abs().argmin(dim=0).view(sigma.shape) * self.skip_steps
                + (self.skip_steps - 1)).to(sigma.device)

    def sigma(self, timestep: torch.Tensor) -> torch.Tensor:
        t = torch.clamp(((timestep.float().to(self.log_sigmas.device) - (self.skip_steps - 1)) / self.skip_steps),
                        min=0, max=len(self.sigmas) - 1)
        low, high, weight = t.floor().long(), t.ceil().long(), t.frac()
        log_sigma = (1 - weight) * self.log_sigmas[low] + weight * self.log_sigmas[high]
        return log_sigma.exp().to(timestep.device)


PREDICTION_TYPES: dict[str, type] = {"eps": EPS, "v_prediction": V_PREDICTION, "x0": X0, "img_to_img": IMG_TO_IMG,
                                     "lcm": LCM}


def model_sampling(prediction: Union[str, type] = "eps", model_config: Any = None, zsnr: Optional[bool] = None,
                   schedule: type = ModelSamplingDiscrete) -> ModelSamplingDiscrete:
    """A schedule combined with a prediction type, e.g. ``model_sampling("v_prediction")``."""
    prediction_type = PREDICTION_TYPES[prediction] if isinstance(prediction, str) else prediction

    class ModelSampling(schedule, prediction_type):  # type: ignore[valid-type, misc]
        pass

    ModelSampling.__name__ = f"{schedule.__name__}_{prediction_type.__name__}"
    return ModelSampling(model_config, zsnr=zsnr)


__all__ = ["EPS", "IMG_TO_IMG", "LCM", "ModelSamplingDiscrete", "ModelSamplingDiscreteDistilled", "PREDICTION_TYPES",
           "V_PREDICTION", "X0", "make_beta_schedule", "model_sampling", "rescale_zero_terminal_snr_sigmas"]
