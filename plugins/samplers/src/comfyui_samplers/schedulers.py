"""Noise schedules: the sigmas a sampler steps through, by ComfyUI's scheduler names.

Each scheduler turns a model's ``model_sampling`` (its discrete sigma table, ``sigma_min``,
``sigma_max``, ``timestep``/``sigma`` conversions) and a step count into a descending float32
tensor of ``steps + 1`` sigmas, usually ending at 0.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial
from typing import Any, Callable

import torch

from comfyui_samplers import k_sampling
from comfyui_samplers.names import SCHEDULER_NAMES  # noqa: F401  (callers read the names here too)


def simple_scheduler(model_sampling: Any, steps: int) -> torch.Tensor:
    """Evenly strided entries of the model's sigma table, from the top."""
    table = model_sampling.sigmas
    stride = len(table) / steps
    values = [float(table[-(1 + int(step * stride))]) for step in range(steps)]
    return torch.FloatTensor(values + [0.0])


def ddim_scheduler(model_sampling: Any, steps: int) -> torch.Tensor:
    """DDIM's uniform timestep spacing over the sigma table, starting from its second entry."""
    table = model_sampling.sigmas
    # A table whose first sigma is (nearly) zero already ends at zero: take one more step instead.
    ends_at_zero = math.isclose(float(table[1]), 0, abs_tol=0.00001)
    if ends_at_zero:
        steps += 1
    stride = max(len(table) // steps, 1)
    values = [float(table[index]) for index in range(1, len(table), stride)]
    values.reverse()
    return torch.FloatTensor(values if ends_at_zero else values + [0.0])


def normal_scheduler(model_sampling: Any, steps: int, sgm: bool = False, floor: bool = False) -> torch.Tensor:
    """Timesteps evenly spaced between the model's extremes, converted back to sigmas.

    ``sgm`` (sgm_uniform) spaces ``steps + 1`` timesteps and drops the last, as SGM samplers do.
    """
    start = model_sampling.timestep(model_sampling.sigma_max)
    end = model_sampling.timestep(model_sampling.sigma_min)
    append_zero = True
    if sgm:
        timesteps = torch.linspace(start, end, steps + 1)[:-1]
    else:
        if math.isclose(float(model_sampling.sigma(end)), 0, abs_tol=0.00001):
            steps += 1
            append_zero = False
        timesteps = torch.linspace(start, end, steps)
    values = [float(model_sampling.sigma(timestep)) for timestep in timesteps]
    return torch.FloatTensor(values + [0.0] if append_zero else values)


def beta_scheduler(model_sampling: Any, steps: int, alpha: float = 0.6, beta: float = 0.6) -> torch.Tensor:
    """Timesteps at the quantiles of a Beta(alpha, beta) distribution (Lee et al. 2024, arXiv:2407.12173).

    Repeated timesteps after rounding are dropped, so fewer than ``steps`` sigmas can come back.
    """
    import numpy as np
    from scipy.stats import beta as beta_distribution  # its inverse CDF defines the schedule

    last_timestep = len(model_sampling.sigmas) - 1
    quantiles = 1 - np.linspace(0, 1, steps, endpoint=False)
    timesteps = np.rint(beta_distribution.ppf(quantiles, alpha, beta) * last_timestep)
    values: list[float] = []
    previous = -1
    for timestep in timesteps:
        if timestep != previous:
            values.append(float(model_sampling.sigmas[int(timestep)]))
        previous = timestep
    return torch.FloatTensor(values + [0.0])


def linear_quadratic_schedule(model_sampling: Any, steps: int, threshold_noise: float = 0.025,
                              linear_steps: int | None = None) -> torch.Tensor:
    """Linear in the first half up to ``threshold_noise``, then quadratic to 1 (Genmo's Mochi schedule)."""
    if steps == 1:
        schedule = [1.0, 0.0]
    else:
        if linear_steps is None:
            linear_steps = steps // 2
        linear = [i * threshold_noise / linear_steps for i in range(linear_steps)]
        step_diff = linear_steps - threshold_noise * steps
        quadratic_steps = steps - linear_steps
        quadratic_coef = step_diff / (linear_steps * quadratic_steps ** 2)
        linear_coef = threshold_noise / linear_steps - 2 * step_diff / (quadratic_steps ** 2)
        const = quadratic_coef * (linear_steps ** 2)
        quadratic = [quadratic_coef * (i ** 2) + linear_coef * i + const for i in range(linear_steps, steps)]
        schedule = [1.0 - value for value in linear + quadratic + [1.0]]
    return torch.FloatTensor(schedule) * model_sampling.sigma_max.cpu()


def kl_optimal_scheduler(n: int, sigma_min: float, sigma_max: float) -> torch.Tensor:
    """Sigmas evenly spaced in arctan(sigma), the KL-optimal schedule of Sabour et al. (2024)."""
    fractions = torch.arange(n, dtype=torch.float).div_(n - 1)
    sigmas = fractions.new_zeros(n + 1)
    sigmas[:-1] = (fractions * math.atan(sigma_min) + (1 - fractions) * math.atan(sigma_max)).tan_()
    return sigmas


@dataclass(frozen=True)
class SchedulerHandler:
    """How to call a scheduler: with ``(model_sampling, steps)`` or ``(n, sigma_min, sigma_max)``."""
    handler: Callable[..., torch.Tensor]
    use_ms: bool = True


SCHEDULER_HANDLERS: dict[str, SchedulerHandler] = {
    "simple": SchedulerHandler(simple_scheduler),
    "sgm_uniform": SchedulerHandler(partial(normal_scheduler, sgm=True)),
    "karras": SchedulerHandler(k_sampling.get_sigmas_karras, use_ms=False),
    "exponential": SchedulerHandler(k_sampling.get_sigmas_exponential, use_ms=False),
    "ddim_uniform": SchedulerHandler(ddim_scheduler),
    "beta": SchedulerHandler(beta_scheduler),
    "normal": SchedulerHandler(normal_scheduler),
    "linear_quadratic": SchedulerHandler(linear_quadratic_schedule),
    "kl_optimal": SchedulerHandler(kl_optimal_scheduler, use_ms=False),
}


class UnknownSchedulerError(ValueError):
    """A scheduler name no plugin provides."""


def calculate_sigmas(model_sampling: Any, scheduler_name: str, steps: int) -> torch.Tensor:
    """The sigmas of ``scheduler_name`` for ``steps`` steps of the model behind ``model_sampling``."""
    handler = SCHEDULER_HANDLERS.get(scheduler_name)
    if handler is None:
        raise UnknownSchedulerError(f"error invalid scheduler {scheduler_name}; known schedulers: "
                                    f"{', '.join(SCHEDULER_HANDLERS)}")
    if handler.use_ms:
        return handler.handler(model_sampling, steps)
    return handler.handler(n=steps, sigma_min=float(model_sampling.sigma_min), sigma_max=float(model_sampling.sigma_max))
