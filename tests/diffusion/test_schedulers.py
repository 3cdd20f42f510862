"""Schedules against values computed here from the published formulas, for SD's discrete schedule."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from comfyui_core_nodes.model_sampling import model_sampling
from comfyui_samplers import k_sampling
from comfyui_samplers.schedulers import SCHEDULER_NAMES, UnknownSchedulerError, calculate_sigmas

COMFYUI_SCHEDULER_NAMES = ["simple", "sgm_uniform", "karras", "exponential", "ddim_uniform", "beta", "normal",
                           "linear_quadratic", "kl_optimal"]


def sd_sigma_table() -> np.ndarray:
    """SD's 1000 sigmas: betas linear in sqrt from 0.00085 to 0.012, sigma = sqrt((1 - abar) / abar)."""
    betas = np.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=np.float64) ** 2
    alphas_cumprod = np.cumprod(1.0 - betas)
    return np.sqrt((1 - alphas_cumprod) / alphas_cumprod).astype(np.float32).astype(np.float64)


TABLE = sd_sigma_table()


def sigma_at(timestep: float) -> float:
    low, high = math.floor(timestep), math.ceil(timestep)
    weight = timestep - low
    return math.exp((1 - weight) * math.log(TABLE[low]) + weight * math.log(TABLE[high]))


@pytest.fixture(scope="module")
def sd() -> object:
    return model_sampling("eps")


def check(actual: torch.Tensor, expected, rel: float = 1e-5) -> None:
    assert actual.dtype == torch.float32
    assert actual.tolist() == pytest.approx(list(expected), rel=rel, abs=1e-7)


def test_names_and_order_are_comfyuis():
    assert SCHEDULER_NAMES == COMFYUI_SCHEDULER_NAMES


def test_sd_extremes_are_the_known_constants(sd):
    # ComfyUI's KarrasScheduler defaults are these two numbers.
    assert float(sd.sigma_max) == pytest.approx(14.614642, abs=2e-6)
    assert float(sd.sigma_min) == pytest.approx(0.0291675, abs=5e-7)


def test_karras_rho_7(sd):
    n, rho = 20, 7.0
    low, high = TABLE[0] ** (1 / rho), TABLE[-1] ** (1 / rho)
    expected = [(high + k / (n - 1) * (low - high)) ** rho for k in range(n)] + [0.0]
    check(calculate_sigmas(sd, "karras", n), expected)
    # By hand: the ends are the model's extremes, then the appended zero.
    sigmas = calculate_sigmas(sd, "karras", n)
    assert sigmas[0].item() == pytest.approx(14.614642, abs=1e-5) and sigmas[-1].item() == 0.0


def test_exponential(sd):
    n = 10
    expected = [math.exp(math.log(TABLE[-1]) + k / (n - 1) * (math.log(TABLE[0]) - math.log(TABLE[-1])))
                for k in range(n)] + [0.0]
    check(calculate_sigmas(sd, "exponential", n), expected)


def test_normal_uses_evenly_spaced_timesteps(sd):
    # linspace(999, 0, 10) hits whole timesteps 999, 888, ..., 0.
    check(calculate_sigmas(sd, "normal", 10), [TABLE[999 - 111 * k] for k in range(10)] + [0.0])


def test_sgm_uniform_drops_the_last_of_steps_plus_one(sd):
    check(calculate_sigmas(sd, "sgm_uniform", 10), [sigma_at(999 - 99.9 * k) for k in range(10)] + [0.0], rel=1e-4)


def test_simple_strides_the_table(sd):
    check(calculate_sigmas(sd, "simple", 10), [TABLE[999 - 100 * k] for k in range(10)] + [0.0])


def test_ddim_uniform_starts_from_the_second_entry(sd):
    check(calculate_sigmas(sd, "ddim_uniform", 10), [TABLE[1 + 100 * k] for k in reversed(range(10))] + [0.0])


def _beta_ppf(q: float, a: float, b: float) -> float:
    """Beta quantile by bisection on a fine trapezoid integral of the density (no scipy)."""
    x = np.linspace(0, 1, 2_000_001)[1:-1]
    pdf = x ** (a - 1) * (1 - x) ** (b - 1)
    cdf = np.concatenate([[0.0], np.cumsum((pdf[1:] + pdf[:-1]) / 2 * (x[1] - x[0]))])
    cdf /= cdf[-1]
    return float(np.interp(q, cdf, x[:])) if 0 < q < 1 else float(q)


def test_beta_uses_beta_quantiles_of_the_timesteps(sd):
    steps = 10
    timesteps = [round(_beta_ppf(1 - k / steps, 0.6, 0.6) * 999) for k in range(steps)]
    expected = []
    for t in timesteps:
        if not expected or t != expected[-1][0]:
            expected.append((t, TABLE[t]))
    check(calculate_sigmas(sd, "beta", steps), [sigma for _, sigma in expected] + [0.0])


def test_linear_quadratic(sd):
    steps, threshold = 10, 0.025
    linear_steps = steps // 2
    linear = [i * threshold / linear_steps for i in range(linear_steps)]
    diff = linear_steps - threshold * steps
    quadratic_coef = diff / (linear_steps * (steps - linear_steps) ** 2)
    linear_coef = threshold / linear_steps - 2 * diff / (steps - linear_steps) ** 2
    const = quadratic_coef * linear_steps ** 2
    quadratic = [quadratic_coef * i ** 2 + linear_coef * i + const for i in range(linear_steps, steps)]
    expected = [(1.0 - value) * TABLE[-1] for value in linear + quadratic + [1.0]]
    check(calculate_sigmas(sd, "linear_quadratic", steps), expected)


def test_kl_optimal(sd):
    n = 10
    expected = [math.tan(k / (n - 1) * math.atan(TABLE[0]) + (1 - k / (n - 1)) * math.atan(TABLE[-1]))
                for k in range(n)] + [0.0]
    check(calculate_sigmas(sd, "kl_optimal", n), expected)


@pytest.mark.parametrize("name", COMFYUI_SCHEDULER_NAMES)
@pytest.mark.parametrize("steps", [1, 2, 7, 30])
def test_every_schedule_descends_to_zero(sd, name, steps):
    if name == "kl_optimal" and steps == 1:
        pytest.skip("kl_optimal divides by steps - 1, as ComfyUI's does")
    sigmas = calculate_sigmas(sd, name, steps)
    assert sigmas[-1].item() == 0.0
    assert torch.all(sigmas[:-1] > sigmas[1:])
    if name == "ddim_uniform":
        # The stride is 1000 // steps, so uneven step counts get a few more sigmas (as in ComfyUI).
        assert len(sigmas) == len(range(1, 1000, 1000 // steps)) + 1
    else:
        assert len(sigmas) <= steps + 1


def test_v_prediction_uses_the_same_table():
    v = model_sampling("v_prediction")
    check(calculate_sigmas(v, "normal", 10), [TABLE[999 - 111 * k] for k in range(10)] + [0.0])


def test_other_sigma_helpers():
    check(k_sampling.get_sigmas_polyexponential(5, 0.1, 10.0, rho=1.0), np.geomspace(10.0, 0.1, 5).tolist() + [0.0])
    vp = k_sampling.get_sigmas_vp(3)
    assert vp[0].item() == pytest.approx(math.sqrt(math.expm1(19.9 / 2 + 0.1)), rel=1e-5) and vp[-1].item() == 0


def test_unknown_scheduler_is_a_clear_error(sd):
    with pytest.raises(UnknownSchedulerError, match="nonesuch"):
        calculate_sigmas(sd, "nonesuch", 10)
