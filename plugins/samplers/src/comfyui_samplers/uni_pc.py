"""UniPC (Zhao et al. 2023, arXiv:2302.04867): unified predictor-corrector multistep sampling.

Data-prediction UniPC with the B(h) = h (bh1) or B(h) = e^h - 1 (bh2) variants, run in the
variance-preserving time of the k-diffusion sigmas: alpha = 1/sqrt(1 + sigma^2),
std = sigma/sqrt(1 + sigma^2), lambda = log(alpha / std). Orders up to 3, lowered for the first
and last steps, with the corrector at every step but the final one.
"""
from __future__ import annotations

from typing import Callable, Optional

import torch
from tqdm.auto import trange


def _log_alpha(sigma: torch.Tensor) -> torch.Tensor:
    return 0.5 * torch.log(1 / ((sigma * sigma) + 1))


def _alpha(sigma: torch.Tensor) -> torch.Tensor:
    return torch.exp(_log_alpha(sigma))


def _std(sigma: torch.Tensor) -> torch.Tensor:
    return torch.sqrt(1.0 - torch.exp(2.0 * _log_alpha(sigma)))


def _lambda(sigma: torch.Tensor) -> torch.Tensor:
    log_alpha = _log_alpha(sigma)
    return log_alpha - 0.5 * torch.log(1.0 - torch.exp(2.0 * log_alpha))


def _expand(v: torch.Tensor, dims: int) -> torch.Tensor:
    return v[(...,) + (None,) * (dims - 1)]


class _DataPrediction:
    """x0 from the k-diffusion denoiser, given a sample in variance-preserving scale."""

    def __init__(self, model: Callable, extra_args: dict):
        self.model = model
        self.extra_args = extra_args

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        if sigma.reshape((-1,)).shape[0] == 1:
            sigma = sigma.expand((x.shape[0]))
        # Round trip through the noise prediction, as the reference implementation does.
        scale = sigma.view(sigma.shape[:1] + (1,) * (x.ndim - 1))
        k_input = x * ((scale ** 2 + 1.0) ** 0.5)
        eps = (k_input - self.model(k_input, sigma, **self.extra_args)) / scale
        dims = x.dim()
        return (x - _expand(_std(sigma), dims) * eps) / _expand(_alpha(sigma), dims)


def _update(x: torch.Tensor, history: list[torch.Tensor], sigmas_prev: list[torch.Tensor], sigma: torch.Tensor,
            order: int, variant: str, predict: _DataPrediction, use_corrector: bool):
    """One UniPC step to ``sigma``: predictor (UniP) then, if asked, corrector (UniC).

    Returns the new sample and the model output at it (None without the corrector).
    """
    dims = x.dim()
    sigma_prev = sigmas_prev[-1]
    lambda_prev = _lambda(sigma_prev)
    lambda_t = _lambda(sigma)
    model_prev = history[-1]
    std_prev, std_t = _std(sigma_prev), _std(sigma)
    alpha_t = torch.exp(_log_alpha(sigma))
    h = lambda_t - lambda_prev

    rks, differences = [], []
    for i in range(1, order):
        rk = ((_lambda(sigmas_prev[-(i + 1)]) - lambda_prev) / h)[0]
        rks.append(rk)
        differences.append((history[-(i + 1)] - model_prev) / rk)
    rks.append(1.0)
    rks = torch.tensor(rks, device=x.device)

    hh = -h[0]
    h_phi_1 = torch.expm1(hh)
    h_phi_k = h_phi_1 / hh - 1
    if variant == "bh1":
        b_h = hh
    elif variant == "bh2":
        b_h = torch.expm1(hh)
    else:
        raise ValueError(f"unknown UniPC variant {variant!r}")
    rows, rhs = [], []
    factorial = 1
    for i in range(1, order + 1):
        rows.append(torch.pow(rks, i - 1))
        rhs.append(h_phi_k * factorial / b_h)
        factorial *= i + 1
        h_phi_k = h_phi_k / hh - 1 / factorial
    rows = torch.stack(rows)
    rhs = torch.tensor(rhs, device=x.device)

    stacked = torch.stack(differences, dim=1) if differences else None
    x_base = _expand(std_t / std_prev, dims) * x - _expand(alpha_t * h_phi_1, dims) * model_prev
    if stacked is not None:
        rhos_p = torch.tensor([0.5], device=x.device) if order == 2 else torch.linalg.solve(rows[:-1, :-1], rhs[:-1])
        x_t = x_base - _expand(alpha_t * b_h, dims) * torch.tensordot(stacked, rhos_p, dims=([1], [0]))
    else:
        x_t = x_base
    if not use_corrector:
        return x_t, None
    rhos_c = torch.tensor([0.5], device=x.device) if order == 1 else torch.linalg.solve(rows, rhs)
    model_t = predict(x_t, sigma)
    correction = torch.tensordot(stacked, rhos_c[:-1], dims=([1], [0])) if stacked is not None else 0
    x_t = x_base - _expand(alpha_t * b_h, dims) * (correction + rhos_c[-1] * (model_t - model_prev))
    return x_t, model_t


def sample_unipc(model, noise: torch.Tensor, sigmas: torch.Tensor, extra_args: Optional[dict] = None,
                 callback=None, disable: bool = False, variant: str = "bh1") -> torch.Tensor:
    """UniPC multistep sampling over ``sigmas`` (a final zero sigma is replaced by 0.001)."""
    extra_args = {} if extra_args is None else extra_args
    timesteps = sigmas.clone()
    if sigmas[-1] == 0:
        timesteps[-1] = 0.001
    predict = _DataPrediction(model, extra_args)
    x = noise / torch.sqrt(1.0 + timesteps[0] ** 2.0)
    order = min(3, len(timesteps) - 2)
    steps = len(timesteps) - 1
    batch = x.shape[0]

    history: list[torch.Tensor] = []
    sigmas_prev: list[torch.Tensor] = []
    for step_index in trange(steps, disable=disable):
        if step_index == 0:
            vec = timesteps[0].expand((batch,))
            history, sigmas_prev = [predict(x, vec)], [vec]
        elif step_index < order:
            # Warm-up: the first steps run at the order the history allows.
            vec = timesteps[step_index].expand(batch)
            x, model_x = _update(x, history, sigmas_prev, vec, step_index, variant, predict, use_corrector=True)
            history.append(model_x)
            sigmas_prev.append(vec)
        else:
            # The last step also takes the final predictor-only step to the end of the schedule.
            last = step_index + 1 if step_index == steps - 1 else step_index
            for step in range(step_index, last + 1):
                vec = timesteps[step].expand(batch)
                step_order = min(order, steps + 1 - step)
                x, model_x = _update(x, history, sigmas_prev, vec, step_order, variant, predict,
                                     use_corrector=step != steps)
                history[:-1], sigmas_prev[:-1] = history[1:order], sigmas_prev[1:order]
                sigmas_prev[-1] = vec
                if step < steps:
                    history[-1] = model_x if model_x is not None else predict(x, vec)
        if callback is not None:
            callback({"x": x, "i": step_index, "denoised": history[-1]})
    return x / _alpha(timesteps[-1])


def sample_unipc_bh2(model, noise: torch.Tensor, sigmas: torch.Tensor, extra_args: Optional[dict] = None,
                     callback=None, disable: bool = False) -> torch.Tensor:
    return sample_unipc(model, noise, sigmas, extra_args, callback, disable, variant="bh2")
