"""Step coefficients of the multistep samplers: LMS, iPNDM-v, DEIS and SA-Solver."""
from __future__ import annotations

import math
from typing import Callable, Sequence, Union

import torch


def lagrange_basis_integral(nodes: Sequence[float], j: int, start: float, end: float) -> float:
    """Integral over [start, end] of the Lagrange polynomial that is 1 at ``nodes[j]``, 0 at the others.

    Integrated as ComfyUI integrates it, to its last digit: SciPy's adaptive quadrature (relative
    tolerance 1e-4) of the basis polynomial evaluated in the nodes' own type, so float32 sigmas keep
    the integrand in float32 under NumPy 2's promotion rules.
    """
    from scipy import integrate

    def basis(tau: float) -> float:
        value = 1.0
        for k, node in enumerate(nodes):
            if k != j:
                value *= (tau - node) / (nodes[j] - node)
        return value

    return integrate.quad(basis, start, end, epsrel=1e-4)[0]


def ipndm_v_weights(sigmas: torch.Tensor, i: int, order: int) -> list[torch.Tensor]:
    """Variable-step iPNDM weights of the current derivative and the ``order - 1`` before it.

    The weights generalise Adams-Bashforth to the actual spacing h_n, h_{n-1}, ... of the sigmas
    (Zhang et al., "Fast sampling of diffusion models via operator learning", iPNDM-v).
    """
    h_n = sigmas[i + 1] - sigmas[i]
    h_1 = sigmas[i] - sigmas[i - 1]
    base = [(2 + h_n / h_1) / 2, -(h_n / h_1) / 2]
    if order == 2:
        return base
    h_2 = sigmas[i - 1] - sigmas[i - 2]
    # Third-order correction term shared by the order-3 and order-4 weights.
    c3 = (1 - h_n / (3 * (h_n + h_1)) * (h_n * (h_n + h_1)) / (h_1 * (h_1 + h_2))) / 2
    if order == 3:
        return [base[0] + c3, base[1] - (1 + h_1 / h_2) * c3, c3 * h_1 / h_2]
    h_3 = sigmas[i - 2] - sigmas[i - 3]
    ratio_2 = h_1 * (h_1 + h_2) / (h_2 * (h_2 + h_3))
    c4 = (((1 - h_n / (3 * (h_n + h_1))) / 2 + (1 - h_n / (2 * (h_n + h_1))) * h_n / (6 * (h_n + h_1 + h_2)))
          * (h_n * (h_n + h_1) * (h_n + h_1 + h_2)) / (h_1 * (h_1 + h_2) * (h_1 + h_2 + h_3)))
    return [
        base[0] + c3 + c4,
        base[1] - (1 + h_1 / h_2) * c3 - (1 + (h_1 / h_2) + ratio_2) * c4,
        c3 * h_1 / h_2 + ((h_1 / h_2) + ratio_2 * (1 + h_2 / h_3)) * c4,
        -c4 * ratio_2 * h_1 / h_2,
    ]


# --- DEIS -----------------------------------------------------------------------------------

def _edm_to_vp_time(sigmas: torch.Tensor, epsilon_s: float = 1e-3, sigma_min: float = 0.002, sigma_max: int = 80):
    """Map EDM sigmas to the time of a VP SDE spanning [sigma_min, sigma_max] (the DEIS reference).

    The constants round as ComfyUI's do: log(sigma_min^2 + 1) by NumPy in float32, log(sigma_max^2 + 1)
    of the integer 80 in float64, and so the betas in float64.
    """
    import numpy as np

    log_min = torch.as_tensor(np.log((torch.tensor(sigma_min) ** 2 + 1).numpy()))
    log_max = torch.as_tensor(np.log((torch.tensor(sigma_max) ** 2 + 1).numpy()))
    beta_d = 2 * (log_min / epsilon_s - log_max) / (epsilon_s - 1)
    beta_min = log_max - 0.5 * beta_d
    sigmas = sigmas.detach().cpu()
    t = ((beta_min ** 2 + 2 * beta_d * (sigmas ** 2 + 1).log()).sqrt() - beta_min) / beta_d
    return t, beta_min, beta_d + beta_min


def _deis_integrand(beta_0: torch.Tensor, beta_1: torch.Tensor, taus: torch.Tensor) -> torch.Tensor:
    """-1/2 d log(alpha)/dtau / sqrt(alpha (1 - alpha)) for log alpha = -tau^2 (b1-b0)/2 - tau b0.

    The derivative comes from autograd through log(alpha), whose rounding ComfyUI's coefficients carry.
    """
    with torch.inference_mode(False), torch.enable_grad():
        taus = taus.clone().requires_grad_(True)
        alpha = torch.exp(-0.5 * taus ** 2 * (beta_1 - beta_0) - taus * beta_0)
        (d_log_alpha,) = torch.autograd.grad(alpha.log().sum(), taus)
    return -0.5 * d_log_alpha / torch.sqrt(alpha.detach() * (1 - alpha.detach()))


def _lagrange_at(nodes: torch.Tensor, j: int, taus: torch.Tensor) -> torch.Tensor:
    value = torch.ones_like(taus)
    for k in range(nodes.shape[0]):
        if k != j:
            value = value * ((taus - nodes[k]) / (nodes[j] - nodes[k]))
    return value


def _integral_2(a, b, start, end, c):
    """Integral over [start, end] of (tau - a)(tau - b) / ((c - a)(c - b))."""
    value = (end ** 3 - start ** 3) / 3 - (end ** 2 - start ** 2) * (a + b) / 2 + (end - start) * a * b
    return value / ((c - a) * (c - b))


def _integral_3(a, b, c, start, end, d):
    """Integral over [start, end] of (tau - a)(tau - b)(tau - c) / ((d - a)(d - b)(d - c))."""
    value = ((end ** 4 - start ** 4) / 4 - (end ** 3 - start ** 3) * (a + b + c) / 3
             + (end ** 2 - start ** 2) * (a * b + a * c + b * c) / 2 - (end - start) * a * b * c)
    return value / ((d - a) * (d - b) * (d - c))


def deis_coefficients(sigmas: torch.Tensor, max_order: int, samples: int = 10000, deis_mode: str = "tab") -> list:
    """Per step, the DEIS weights of the current and previous derivatives (empty for Euler steps).

    ``tab``: the exponential-integrator weights of Zhang & Chen (2022), integrated numerically over
    ``samples`` points in VP time. ``rhoab``: Adams-Bashforth weights integrated exactly in sigma.
    """
    coefficients: list = []
    if deis_mode == "tab":
        ts, beta_0, beta_1 = _edm_to_vp_time(sigmas)
        for i, (t_cur, t_next) in enumerate(zip(ts[:-1], ts[1:])):
            order = min(i + 1, max_order)
            if order == 1:
                coefficients.append([])
                continue
            taus = torch.linspace(t_cur, t_next, samples)
            dtau = (t_next - t_cur) / samples
            nodes = ts[[i - k for k in range(order)]]
            integrand = _deis_integrand(beta_0, beta_1, taus)
            coefficients.append([torch.sum(integrand * _lagrange_at(nodes, j, taus)) * dtau for j in range(order)])
    elif deis_mode == "rhoab":
        for i, (t_cur, t_next) in enumerate(zip(sigmas[:-1], sigmas[1:])):
            order = min(i, max_order)
            if order == 0:
                coefficients.append([])
                continue
            nodes = sigmas[[i - k for k in range(order + 1)]]
            if order == 1:
                coefficients.append([((t_next - nodes[1]) ** 2 - (t_cur - nodes[1]) ** 2) / (2 * (t_cur - nodes[1])),
                                     (t_next - t_cur) ** 2 / (2 * (nodes[1] - t_cur))])
            elif order == 2:
                coefficients.append([_integral_2(nodes[1], nodes[2], t_cur, t_next, t_cur),
                                     _integral_2(t_cur, nodes[2], t_cur, t_next, nodes[1]),
                                     _integral_2(t_cur, nodes[1], t_cur, t_next, nodes[2])])
            else:
                coefficients.append([_integral_3(nodes[1], nodes[2], nodes[3], t_cur, t_next, t_cur),
                                     _integral_3(t_cur, nodes[2], nodes[3], t_cur, t_next, nodes[1]),
                                     _integral_3(t_cur, nodes[1], nodes[3], t_cur, t_next, nodes[2]),
                                     _integral_3(t_cur, nodes[1], nodes[2], t_cur, t_next, nodes[3])])
    else:
        raise ValueError(f"deis_mode must be 'tab' or 'rhoab', not {deis_mode!r}")
    return coefficients


# --- SA-Solver --------------------------------------------------------------------------------

def _exponential_moments(s: torch.Tensor, t: torch.Tensor, count: int, tau: float) -> torch.Tensor:
    """E_p = a * integral_s^t exp(a (x - t)) x^p dx for p < count, with a = 1 + tau^2.

    Integration by parts unrolls to E_p = sum over q <= p of (-1)^(p-q) p!/q! a^(q-p) (t^q - s^q exp(-a h)).
    The weights come from log-factorials and apply as one lower-triangular matrix product, which
    rounds as ComfyUI's SA-Solver coefficients do.
    """
    a = 1 + tau ** 2
    powers = torch.arange(count, dtype=s.dtype, device=s.device)
    boundary = t ** powers - s ** powers * (-a * (t - s)).exp()
    depth = powers.unsqueeze(1) - powers.unsqueeze(0)
    log_factorials = (powers + 1).lgamma()
    log_weights = log_factorials.unsqueeze(1) - log_factorials.unsqueeze(0)
    if tau > 0:
        log_weights = log_weights - depth * math.log(a)
    signs = torch.where(depth % 2 == 0, 1.0, -1.0)
    return (log_weights.exp() * signs).tril() @ boundary


def sa_solver_b_coefficients(sigma_next: torch.Tensor, lambdas: torch.Tensor, lambda_s: torch.Tensor,
                             lambda_t: torch.Tensor, tau: float, simple_order_2: bool = False,
                             is_corrector_step: bool = False) -> torch.Tensor:
    """SA-Solver weights of the data predictions at ``lambdas`` for a step from lambda_s to lambda_t."""
    count = lambdas.shape[0]
    alpha_t = sigma_next * lambda_t.exp()
    if simple_order_2 and count == 2:
        # The paper's simplified second-order predictor and corrector (its appendix D).
        a = 1 + tau ** 2
        h = lambda_t - lambda_s
        if is_corrector_step:
            b_1 = alpha_t * (0.5 * a * h)
            b_2 = alpha_t * (-h * a).expm1().neg() - b_1
        else:
            b_2 = alpha_t * (0.5 * a * h ** 2) / (lambdas[-2] - lambda_s)
            b_1 = alpha_t * (-h * a).expm1().neg() - b_2
        return torch.stack([b_2, b_1])
    moments = _exponential_moments(lambda_s, lambda_t, count, tau)
    # Lagrange basis integrals: solve V^T w = moments for the Vandermonde matrix V of the nodes.
    vandermonde_t = torch.vander(lambdas, count, increasing=True).T
    return alpha_t * torch.linalg.solve(vandermonde_t, moments)


def sa_solver_tau_interval(start_sigma: float, end_sigma: float,
                           eta: float = 1.0) -> Callable[[Union[torch.Tensor, float]], float]:
    """Stochasticity ``eta`` for sigmas within [end_sigma, start_sigma], 0 (an ODE step) outside."""

    def tau(sigma: Union[torch.Tensor, float]) -> float:
        if eta <= 0:
            return 0.0
        value = sigma.item() if isinstance(sigma, torch.Tensor) else sigma
        return eta if start_sigma >= value >= end_sigma else 0.0

    return tau
