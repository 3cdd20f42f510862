"""The k-diffusion family of samplers, under the names and with the numerics ComfyUI users know.

Every sampler has the signature ``sample_<name>(model, x, sigmas, extra_args=None, callback=None,
disable=None, **options)``: ``model(x, sigma * s_in, **extra_args)`` returns the denoised prediction,
``x`` starts as noise scaled to ``sigmas[0]`` and the result is the sample at ``sigmas[-1]``.
``callback`` receives ``{"x", "i", "sigma", "sigma_hat", "denoised"}`` once per step. This module is
also the legacy ``comfy.k_diffusion.sampling``, so vanilla custom samplers find the helpers they use.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Optional, Sequence, Union

import torch
from tqdm.auto import tqdm, trange

from comfyui_samplers import solver_coefficients
from comfyui_samplers.k_utils import append_dims

NoiseSampler = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Callback = Optional[Callable[[dict[str, Any]], None]]

__all__ = [
    "append_zero", "get_sigmas_karras", "get_sigmas_exponential", "get_sigmas_polyexponential",
    "get_sigmas_vp", "get_sigmas_laplace", "to_d", "get_ancestral_step", "default_noise_sampler",
    "BatchedBrownianTree", "BrownianTreeNoiseSampler", "sigma_to_half_log_snr", "half_log_snr_to_sigma",
    "offset_first_sigma_for_snr", "ei_h_phi_1", "ei_h_phi_2", "linear_multistep_coeff",
    "PIDStepSizeController", "DPMSolver", "DDPMSampler_step", "generic_step_sampler", "res_multistep",
]


# --- noise schedules -------------------------------------------------------------------------

def append_zero(x: torch.Tensor) -> torch.Tensor:
    return torch.cat([x, x.new_zeros([1])])


def get_sigmas_karras(n: int, sigma_min: float, sigma_max: float, rho: float = 7.0,
                      device: Union[str, torch.device] = "cpu") -> torch.Tensor:
    """Karras et al. (2022): sigmas evenly spaced in sigma ** (1 / rho), then a final zero."""
    ramp = torch.linspace(0, 1, n, device=device)
    inv_rho_max = sigma_max ** (1 / rho)
    inv_rho_min = sigma_min ** (1 / rho)
    return append_zero((inv_rho_max + ramp * (inv_rho_min - inv_rho_max)) ** rho).to(device)


def get_sigmas_exponential(n: int, sigma_min: float, sigma_max: float,
                           device: Union[str, torch.device] = "cpu") -> torch.Tensor:
    """Sigmas evenly spaced in log sigma, then a final zero."""
    return append_zero(torch.linspace(math.log(sigma_max), math.log(sigma_min), n, device=device).exp())


def get_sigmas_polyexponential(n: int, sigma_min: float, sigma_max: float, rho: float = 1.0,
                               device: Union[str, torch.device] = "cpu") -> torch.Tensor:
    """Log sigma following a polynomial of degree ``rho`` in the step index, then a final zero."""
    ramp = torch.linspace(1, 0, n, device=device) ** rho
    log_min, log_max = math.log(sigma_min), math.log(sigma_max)
    return append_zero(torch.exp(ramp * (log_max - log_min) + log_min))


def get_sigmas_vp(n: int, beta_d: float = 19.9, beta_min: float = 0.1, eps_s: float = 1e-3,
                  device: Union[str, torch.device] = "cpu") -> torch.Tensor:
    """The continuous variance-preserving schedule, then a final zero."""
    t = torch.linspace(1, eps_s, n, device=device)
    return append_zero(torch.sqrt(torch.special.expm1(beta_d * t ** 2 / 2 + beta_min * t)))


def get_sigmas_laplace(n: int, sigma_min: float, sigma_max: float, mu: float = 0.0, beta: float = 0.5,
                       device: Union[str, torch.device] = "cpu") -> torch.Tensor:
    """Tiankai et al. (2024): log sigma from a Laplace quantile function, clamped to the range."""
    epsilon = 1e-5  # keeps the logarithm finite at the ends
    x = torch.linspace(0, 1, n, device=device)
    centred = 0.5 - x
    log_sigma = mu - beta * torch.sign(centred) * torch.log(1 - 2 * torch.abs(centred) + epsilon)
    return torch.clamp(torch.exp(log_sigma), min=sigma_min, max=sigma_max)


# --- shared step arithmetic ------------------------------------------------------------------

def to_d(x: torch.Tensor, sigma: torch.Tensor, denoised: torch.Tensor) -> torch.Tensor:
    """The derivative dx/dsigma of the probability-flow ODE for a denoised prediction."""
    return (x - denoised) / append_dims(sigma, x.ndim)


def get_ancestral_step(sigma_from, sigma_to, eta: float = 1.0):
    """Split a step into a deterministic part down to ``sigma_down`` and fresh noise ``sigma_up``."""
    if not eta:
        return sigma_to, 0.0
    sigma_up = min(sigma_to, eta * (sigma_to ** 2 * (sigma_from ** 2 - sigma_to ** 2) / sigma_from ** 2) ** 0.5)
    sigma_down = (sigma_to ** 2 - sigma_up ** 2) ** 0.5
    return sigma_down, sigma_up


def _report(callback: Callback, x, i, sigma, sigma_hat, denoised) -> None:
    if callback is not None:
        callback({"x": x, "i": i, "sigma": sigma, "sigma_hat": sigma_hat, "denoised": denoised})


def _churn_and_predict(model, x, sigmas, i, s_in, extra_args, callback, s_churn, s_tmin, s_tmax, s_noise):
    """Step ``i`` of the Karras samplers: stochastic churn, then the prediction at the raised level.

    Returns ``x`` (noised up to ``sigma_hat`` where churn applies), ``sigma_hat`` and the
    probability-flow derivative there; the step's prediction is reported to ``callback``.
    """
    gamma = 0.0
    if s_churn > 0 and s_tmin <= sigmas[i] <= s_tmax:
        gamma = min(s_churn / (len(sigmas) - 1), 2 ** 0.5 - 1)
    sigma_hat = sigmas[i] * (gamma + 1)
    if gamma > 0:
        # Global generator, as ComfyUI: churn is off by default so seeds stay reproducible.
        x = x + torch.randn_like(x) * s_noise * (sigma_hat ** 2 - sigmas[i] ** 2) ** 0.5
    denoised = model(x, sigma_hat * s_in, **extra_args)
    d = to_d(x, sigma_hat, denoised)
    _report(callback, x, i, sigmas[i], sigma_hat, denoised)
    return x, sigma_hat, d


def _extra(extra_args: Optional[dict]) -> dict:
    return {} if extra_args is None else extra_args


# --- noise samplers ---------------------------------------------------------------------------

def default_noise_sampler(x: torch.Tensor, seed: Optional[int] = None) -> NoiseSampler:
    """Fresh Gaussian noise shaped like ``x`` for each step, from a generator seeded with ``seed``.

    On the CPU the generator is seeded with ``seed + 1`` so its stream differs from the initial
    noise, which ComfyUI draws from a CPU generator seeded with ``seed``.
    """
    generator = None
    if seed is not None:
        generator = torch.Generator(device=x.device)
        generator.manual_seed(seed + 1 if x.device == torch.device("cpu") else seed)

    def sample(sigma, sigma_next):
        return torch.randn(x.size(), dtype=x.dtype, layout=x.layout, device=x.device, generator=generator)

    return sample


class BatchedBrownianTree:
    """One ``torchsde.BrownianTree`` per seed; a list of seeds gives each batch item its own tree."""

    def __init__(self, x: torch.Tensor, t0: torch.Tensor, t1: torch.Tensor,
                 seed: Union[None, int, Sequence[int]] = None, cpu: bool = True, w0: Optional[torch.Tensor] = None):
        import torchsde

        self.cpu_tree = cpu
        t0, t1, self.sign = self.sort(t0, t1)
        if w0 is None:
            w0 = torch.zeros_like(x)
        self.batched = isinstance(seed, (tuple, list))
        if seed is None:
            seeds: Sequence[int] = (torch.randint(0, 2 ** 63 - 1, ()).item(),)
        elif self.batched:
            if len(seed) != x.shape[0]:
                raise ValueError("Passing a list or tuple of seeds to BatchedBrownianTree requires a "
                                 "length matching the batch size.")
            seeds = seed
            w0 = w0[0]
        else:
            seeds = (seed,)
        if cpu:
            t0, w0, t1 = t0.detach().cpu(), w0.detach().cpu(), t1.detach().cpu()
        self.trees = tuple(torchsde.BrownianTree(t0, w0, t1, entropy=s) for s in seeds)

    @staticmethod
    def sort(a, b):
        return (a, b, 1) if a < b else (b, a, -1)

    def __call__(self, t0: torch.Tensor, t1: torch.Tensor) -> torch.Tensor:
        t0, t1, sign = self.sort(t0, t1)
        device, dtype = t0.device, t0.dtype
        if self.cpu_tree:
            t0, t1 = t0.detach().cpu().float(), t1.detach().cpu().float()
        increments = torch.stack([tree(t0, t1) for tree in self.trees]).to(device=device, dtype=dtype)
        increments = increments * (self.sign * sign)
        return increments if self.batched else increments[0]


class BrownianTreeNoiseSampler:
    """Noise for SDE samplers from a Brownian tree over [sigma_min, sigma_max].

    The same seed gives the same Brownian path whatever the step sizes, which is what keeps the
    SDE samplers' results stable when steps change. ``transform`` maps sigma to the tree's time.
    """

    def __init__(self, x: torch.Tensor, sigma_min, sigma_max, seed: Union[None, int, Sequence[int]] = None,
                 transform: Callable[[torch.Tensor], torch.Tensor] = lambda t: t, cpu: bool = False):
        self.transform = transform
        t0 = self.transform(torch.as_tensor(sigma_min))
        t1 = self.transform(torch.as_tensor(sigma_max))
        self.tree = BatchedBrownianTree(x, t0, t1, seed, cpu=cpu)

    def __call__(self, sigma, sigma_next) -> torch.Tensor:
        t0 = self.transform(torch.as_tensor(sigma))
        t1 = self.transform(torch.as_tensor(sigma_next))
        return self.tree(t0, t1) / (t1 - t0).abs().sqrt()


def _brownian_noise(x: torch.Tensor, sigmas: torch.Tensor, extra_args: dict, cpu: bool) -> BrownianTreeNoiseSampler:
    positive = sigmas[sigmas > 0]
    return BrownianTreeNoiseSampler(x, positive.min(), sigmas.max(), seed=extra_args.get("seed"), cpu=cpu)


def _noise_or_default(noise_sampler: Optional[NoiseSampler], x: torch.Tensor, extra_args: dict) -> NoiseSampler:
    return default_noise_sampler(x, seed=extra_args.get("seed")) if noise_sampler is None else noise_sampler


# --- model sampling helpers (half log-SNR time) ----------------------------------------------

def _model_sampling(model) -> Any:
    """The ``model_sampling`` object behind the denoiser a sampler was handed."""
    return model.inner_model.model_patcher.get_model_object("model_sampling")


def _is_flow(model_sampling) -> bool:
    # Rectified-flow schedules subclass ComfyUI's CONST, whichever module defines it.
    return any(cls.__name__ == "CONST" for cls in type(model_sampling).__mro__)


def sigma_to_half_log_snr(sigma: torch.Tensor, model_sampling) -> torch.Tensor:
    """lambda = log(alpha / sigma) for the model's parameterisation."""
    if _is_flow(model_sampling):
        return sigma.logit().neg()
    return sigma.log().neg()


def half_log_snr_to_sigma(half_log_snr: torch.Tensor, model_sampling) -> torch.Tensor:
    if _is_flow(model_sampling):
        return half_log_snr.neg().sigmoid()
    return half_log_snr.neg().exp()


def offset_first_sigma_for_snr(sigmas: torch.Tensor, model_sampling, percent_offset: float = 1e-4) -> torch.Tensor:
    """A flow model's first sigma of 1 has an infinite log-SNR; nudge it just inside."""
    if len(sigmas) <= 1 or not _is_flow(model_sampling) or sigmas[0] < 1:
        return sigmas
    sigmas = sigmas.clone()
    sigmas[0] = model_sampling.percent_to_sigma(percent_offset)
    return sigmas


def ei_h_phi_1(h: torch.Tensor) -> torch.Tensor:
    """h * phi_1(h) of exponential integrators."""
    return torch.expm1(h)


def ei_h_phi_2(h: torch.Tensor) -> torch.Tensor:
    """h * phi_2(h) of exponential integrators."""
    return (torch.expm1(h) - h) / h


def _log_time(sigma: torch.Tensor) -> torch.Tensor:
    return sigma.log().neg()


def _sigma_of_log_time(t: torch.Tensor) -> torch.Tensor:
    return t.neg().exp()


def _uncond_capture(extra_args: dict) -> Callable[[], torch.Tensor]:
    """Make the guider report the unconditional prediction of each call (for the CFG++ samplers).

    Returns a getter for the latest one. CFG++ needs the unconditional branch even at cfg 1.
    """
    from comfyui_samplers.guidance import with_post_cfg_function

    captured: list[torch.Tensor] = []

    def keep_uncond(args: dict) -> torch.Tensor:
        captured[:] = [args["uncond_denoised"]]
        return args["denoised"]

    options = dict(extra_args.get("model_options", {}))
    extra_args["model_options"] = with_post_cfg_function(options, keep_uncond, disable_cfg1_optimization=True)
    return lambda: captured[0]


# --- first-order and Heun-type samplers ------------------------------------------------------

@torch.no_grad()
def sample_euler(model, x, sigmas, extra_args=None, callback=None, disable=None,
                 s_churn=0.0, s_tmin=0.0, s_tmax=float("inf"), s_noise=1.0):
    """Euler steps of the probability-flow ODE (Karras et al. 2022, Algorithm 2 without Heun)."""
    extra_args = _extra(extra_args)
    s_in = x.new_ones([x.shape[0]])
    for i in trange(len(sigmas) - 1, disable=disable):
        x, sigma_hat, d = _churn_and_predict(model, x, sigmas, i, s_in, extra_args, callback, s_churn, s_tmin,
                                             s_tmax, s_noise)
        x = x + d * (sigmas[i + 1] - sigma_hat)
    return x


@torch.no_grad()
def sample_euler_ancestral(model, x, sigmas, extra_args=None, callback=None, disable=None,
                           eta=1.0, s_noise=1.0, noise_sampler=None):
    """Euler steps down to sigma_down, then fresh noise up to the next sigma."""
    if _is_flow(_model_sampling(model)):
        return _sample_euler_ancestral_flow(model, x, sigmas, extra_args, callback, disable, eta, s_noise, noise_sampler)
    extra_args = _extra(extra_args)
    noise_sampler = _noise_or_default(noise_sampler, x, extra_args)
    s_in = x.new_ones([x.shape[0]])
    for i in trange(len(sigmas) - 1, disable=disable):
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        sigma_down, sigma_up = get_ancestral_step(sigmas[i], sigmas[i + 1], eta=eta)
        _report(callback, x, i, sigmas[i], sigmas[i], denoised)
        if sigma_down == 0:
            x = denoised
            continue
        d = to_d(x, sigmas[i], denoised)
        x = x + d * (sigma_down - sigmas[i]) + noise_sampler(sigmas[i], sigmas[i + 1]) * s_noise * sigma_up
    return x


def _flow_ancestral_split(sigma, sigma_next, eta):
    """For flow models: the down-step sigma, the rescale of x and the renoise amount."""
    sigma_down = sigma_next * (1 + (sigma_next / sigma - 1) * eta)
    alpha_next = 1 - sigma_next
    alpha_down = 1 - sigma_down
    renoise = (sigma_next ** 2 - sigma_down ** 2 * alpha_next ** 2 / alpha_down ** 2) ** 0.5
    return sigma_down, alpha_next / alpha_down, renoise


def _sample_euler_ancestral_flow(model, x, sigmas, extra_args, callback, disable, eta, s_noise, noise_sampler):
    extra_args = _extra(extra_args)
    noise_sampler = _noise_or_default(noise_sampler, x, extra_args)
    s_in = x.new_ones([x.shape[0]])
    for i in trange(len(sigmas) - 1, disable=disable):
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        _report(callback, x, i, sigmas[i], sigmas[i], denoised)
        if sigmas[i + 1] == 0:
            x = denoised
            continue
        sigma_down, rescale, renoise = _flow_ancestral_split(sigmas[i], sigmas[i + 1], eta)
        ratio = sigma_down / sigmas[i]
        x = ratio * x + (1 - ratio) * denoised
        if eta > 0:
            x = rescale * x + noise_sampler(sigmas[i], sigmas[i + 1]) * s_noise * renoise
    return x


@torch.no_grad()
def sample_heun(model, x, sigmas, extra_args=None, callback=None, disable=None,
                s_churn=0.0, s_tmin=0.0, s_tmax=float("inf"), s_noise=1.0):
    """Heun's second-order method (Karras et al. 2022, Algorithm 2); Euler on the last step to 0."""
    extra_args = _extra(extra_args)
    s_in = x.new_ones([x.shape[0]])
    for i in trange(len(sigmas) - 1, disable=disable):
        x, sigma_hat, d = _churn_and_predict(model, x, sigmas, i, s_in, extra_args, callback, s_churn, s_tmin,
                                             s_tmax, s_noise)
        dt = sigmas[i + 1] - sigma_hat
        if sigmas[i + 1] == 0:
            x = x + d * dt
            continue
        x_2 = x + d * dt
        d_2 = to_d(x_2, sigmas[i + 1], model(x_2, sigmas[i + 1] * s_in, **extra_args))
        x = x + (d + d_2) / 2 * dt
    return x


@torch.no_grad()
def sample_heunpp2(model, x, sigmas, extra_args=None, callback=None, disable=None,
                   s_churn=0.0, s_tmin=0.0, s_tmax=float("inf"), s_noise=1.0):
    """Heun++: a three-evaluation step weighting derivatives by sigma relative to the first sigma."""
    extra_args = _extra(extra_args)
    s_in = x.new_ones([x.shape[0]])
    s_end = sigmas[-1]
    for i in trange(len(sigmas) - 1, disable=disable):
        x, sigma_hat, d = _churn_and_predict(model, x, sigmas, i, s_in, extra_args, callback, s_churn, s_tmin,
                                             s_tmax, s_noise)
        dt = sigmas[i + 1] - sigma_hat
        if sigmas[i + 1] == s_end:
            x = x + d * dt
        elif sigmas[i + 2] == s_end:
            x_2 = x + d * dt
            d_2 = to_d(x_2, sigmas[i + 1], model(x_2, sigmas[i + 1] * s_in, **extra_args))
            w_2 = sigmas[i + 1] / (2 * sigmas[0])
            x = x + (d * (1 - w_2) + d_2 * w_2) * dt
        else:
            x_2 = x + d * dt
            d_2 = to_d(x_2, sigmas[i + 1], model(x_2, sigmas[i + 1] * s_in, **extra_args))
            x_3 = x_2 + d_2 * (sigmas[i + 2] - sigmas[i + 1])
            d_3 = to_d(x_3, sigmas[i + 2], model(x_3, sigmas[i + 2] * s_in, **extra_args))
            scale = 3 * sigmas[0]
            w_2 = sigmas[i + 1] / scale
            w_3 = sigmas[i + 2] / scale
            x = x + ((1 - w_2 - w_3) * d + w_2 * d_2 + w_3 * d_3) * dt
    return x


@torch.no_grad()
def sample_dpm_2(model, x, sigmas, extra_args=None, callback=None, disable=None,
                 s_churn=0.0, s_tmin=0.0, s_tmax=float("inf"), s_noise=1.0):
    """DPM-Solver-2 style midpoint steps (in log sigma); Euler on the last step to 0."""
    extra_args = _extra(extra_args)
    s_in = x.new_ones([x.shape[0]])
    for i in trange(len(sigmas) - 1, disable=disable):
        x, sigma_hat, d = _churn_and_predict(model, x, sigmas, i, s_in, extra_args, callback, s_churn, s_tmin,
                                             s_tmax, s_noise)
        if sigmas[i + 1] == 0:
            x = x + d * (sigmas[i + 1] - sigma_hat)
            continue
        x = _midpoint_step(model, x, d, sigma_hat, sigmas[i + 1], s_in, extra_args)
    return x


def _midpoint_step(model, x, d, sigma, sigma_to, s_in, extra_args):
    sigma_mid = sigma.log().lerp(sigma_to.log(), 0.5).exp()
    x_2 = x + d * (sigma_mid - sigma)
    d_2 = to_d(x_2, sigma_mid, model(x_2, sigma_mid * s_in, **extra_args))
    return x + d_2 * (sigma_to - sigma)


@torch.no_grad()
def sample_dpm_2_ancestral(model, x, sigmas, extra_args=None, callback=None, disable=None,
                           eta=1.0, s_noise=1.0, noise_sampler=None):
    """DPM-Solver-2 midpoint steps down to sigma_down, then fresh noise."""
    flow = _is_flow(_model_sampling(model))
    extra_args = _extra(extra_args)
    noise_sampler = _noise_or_default(noise_sampler, x, extra_args)
    s_in = x.new_ones([x.shape[0]])
    for i in trange(len(sigmas) - 1, disable=disable):
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        if flow:
            sigma_down, rescale, sigma_up = _flow_ancestral_split(sigmas[i], sigmas[i + 1], eta)
        else:
            (sigma_down, sigma_up), rescale = get_ancestral_step(sigmas[i], sigmas[i + 1], eta=eta), None
        _report(callback, x, i, sigmas[i], sigmas[i], denoised)
        d = to_d(x, sigmas[i], denoised)
        if sigma_down == 0:
            x = x + d * (sigma_down - sigmas[i])
            continue
        x = _midpoint_step(model, x, d, sigmas[i], sigma_down, s_in, extra_args)
        noise = noise_sampler(sigmas[i], sigmas[i + 1]) * s_noise * sigma_up
        x = rescale * x + noise if flow else x + noise
    return x


# --- linear multistep -------------------------------------------------------------------------

def linear_multistep_coeff(order: int, t, i: int, j: int) -> float:
    """Integral over [t[i], t[i+1]] of the Lagrange basis polynomial of node ``i - j``."""
    if order - 1 > i:
        raise ValueError(f"Order {order} too high for step {i}")
    return solver_coefficients.lagrange_basis_integral([t[i - k] for k in range(order)], j, t[i], t[i + 1])


@torch.no_grad()
def sample_lms(model, x, sigmas, extra_args=None, callback=None, disable=None, order=4):
    """Linear multistep on the ODE derivatives, with the exact Lagrange integrals in float64."""
    extra_args = _extra(extra_args)
    s_in = x.new_ones([x.shape[0]])
    sigmas_cpu = sigmas.detach().cpu().numpy()
    history: list[torch.Tensor] = []
    for i in trange(len(sigmas) - 1, disable=disable):
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        history.append(to_d(x, sigmas[i], denoised))
        del history[:max(0, len(history) - order)]
        _report(callback, x, i, sigmas[i], sigmas[i], denoised)
        if sigmas[i + 1] == 0:
            x = denoised
            continue
        current = min(i + 1, order)
        coeffs = [linear_multistep_coeff(current, sigmas_cpu, i, j) for j in range(current)]
        x = x + sum(c * d for c, d in zip(coeffs, reversed(history)))
    return x


# --- DPM-Solver (fast and adaptive) -----------------------------------------------------------

class PIDStepSizeController:
    """A PID controller proposing the next step size of an adaptive ODE solver."""

    def __init__(self, h, pcoeff, icoeff, dcoeff, order=1, accept_safety=0.81, eps=1e-8):
        self.h = h
        self.b1 = (pcoeff + icoeff + dcoeff) / order
        self.b2 = -(pcoeff + 2 * dcoeff) / order
        self.b3 = dcoeff / order
        self.accept_safety = accept_safety
        self.eps = eps
        self.errs: list[float] = []

    @staticmethod
    def limiter(x):
        return 1 + math.atan(x - 1)

    def propose_step(self, error) -> bool:
        inv_error = 1 / (float(error) + self.eps)
        if not self.errs:
            self.errs = [inv_error] * 3
        self.errs[0] = inv_error
        factor = self.limiter(self.errs[0] ** self.b1 * self.errs[1] ** self.b2 * self.errs[2] ** self.b3)
        accept = factor >= self.accept_safety
        if accept:
            self.errs[2], self.errs[1] = self.errs[1], self.errs[0]
        self.h *= factor
        return accept


class DPMSolver:
    """DPM-Solver (Lu et al. 2022) in noise prediction, with time t = -log(sigma)."""

    def __init__(self, model, extra_args=None, eps_callback=None, info_callback=None):
        self.model = model
        self.extra_args = _extra(extra_args)
        self.eps_callback = eps_callback
        self.info_callback = info_callback

    @staticmethod
    def t(sigma):
        return sigma.log().neg()

    @staticmethod
    def sigma(t):
        return t.neg().exp()

    def eps(self, cache: dict, key: str, x, t):
        """The noise prediction at (x, t), computed once per key within a step."""
        if key not in cache:
            sigma = self.sigma(t) * x.new_ones([x.shape[0]])
            cache[key] = (x - self.model(x, sigma, **self.extra_args)) / self.sigma(t)
            if self.eps_callback is not None:
                self.eps_callback()
        return cache[key]

    def dpm_solver_1_step(self, x, t, t_next, cache):
        h = t_next - t
        return x - self.sigma(t_next) * h.expm1() * self.eps(cache, "eps", x, t)

    def dpm_solver_2_step(self, x, t, t_next, cache, r1=1 / 2):
        h = t_next - t
        eps = self.eps(cache, "eps", x, t)
        s1 = t + r1 * h
        u1 = x - self.sigma(s1) * (r1 * h).expm1() * eps
        eps_r1 = self.eps(cache, "eps_r1", u1, s1)
        return (x - self.sigma(t_next) * h.expm1() * eps
                - self.sigma(t_next) / (2 * r1) * h.expm1() * (eps_r1 - eps))

    def dpm_solver_3_step(self, x, t, t_next, cache, r1=1 / 3, r2=2 / 3):
        h = t_next - t
        eps = self.eps(cache, "eps", x, t)
        s1 = t + r1 * h
        s2 = t + r2 * h
        u1 = x - self.sigma(s1) * (r1 * h).expm1() * eps
        eps_r1 = self.eps(cache, "eps_r1", u1, s1)
        u2 = (x - self.sigma(s2) * (r2 * h).expm1() * eps
              - self.sigma(s2) * (r2 / r1) * ((r2 * h).expm1() / (r2 * h) - 1) * (eps_r1 - eps))
        eps_r2 = self.eps(cache, "eps_r2", u2, s2)
        return (x - self.sigma(t_next) * h.expm1() * eps
                - self.sigma(t_next) / r2 * (h.expm1() / h - 1) * (eps_r2 - eps))

    def _step(self, order: int, x, t, t_next, cache, low_order_r1: float = 1 / 2):
        if order == 1:
            return self.dpm_solver_1_step(x, t, t_next, cache)
        if order == 2:
            return self.dpm_solver_2_step(x, t, t_next, cache, r1=low_order_r1)
        return self.dpm_solver_3_step(x, t, t_next, cache)

    def _ancestral_target(self, t, t_next, t_end, eta, clamp):
        """Where the deterministic part of a step ends, and the noise to add after it."""
        if not eta:
            return t_next, 0.0
        sigma_down, _ = get_ancestral_step(self.sigma(t), self.sigma(t_next), eta)
        t_down = clamp(t_end, self.t(sigma_down))
        return t_down, (self.sigma(t_next) ** 2 - self.sigma(t_down) ** 2) ** 0.5

    def dpm_solver_fast(self, x, t_start, t_end, nfe, eta=0.0, s_noise=1.0, noise_sampler=None):
        noise_sampler = _noise_or_default(noise_sampler, x, self.extra_args)
        if not t_end > t_start and eta:
            raise ValueError("eta must be 0 for reverse sampling")
        m = math.floor(nfe / 3) + 1
        ts = torch.linspace(t_start, t_end, m + 1, device=x.device)
        orders = [3] * (m - 2) + [2, 1] if nfe % 3 == 0 else [3] * (m - 1) + [nfe % 3]
        for i, order in enumerate(orders):
            cache: dict = {}
            t, t_next = ts[i], ts[i + 1]
            t_target, noise_amount = self._ancestral_target(t, t_next, t_end, eta, torch.minimum)
            eps = self.eps(cache, "eps", x, t)
            if self.info_callback is not None:
                self.info_callback({"x": x, "i": i, "t": ts[i], "t_up": t, "denoised": x - self.sigma(t) * eps})
            x = self._step(order, x, t, t_target, cache)
            x = x + noise_amount * s_noise * noise_sampler(self.sigma(t), self.sigma(t_next))
        return x

    def dpm_solver_adaptive(self, x, t_start, t_end, order=3, rtol=0.05, atol=0.0078, h_init=0.05,
                            pcoeff=0.0, icoeff=1.0, dcoeff=0.0, accept_safety=0.81, eta=0.0, s_noise=1.0,
                            noise_sampler=None):
        noise_sampler = _noise_or_default(noise_sampler, x, self.extra_args)
        if order not in {2, 3}:
            raise ValueError("order should be 2 or 3")
        forward = t_end > t_start
        if not forward and eta:
            raise ValueError("eta must be 0 for reverse sampling")
        h_init = abs(h_init) * (1 if forward else -1)
        atol = torch.tensor(atol)
        rtol = torch.tensor(rtol)
        s = t_start
        x_prev = x
        pid = PIDStepSizeController(h_init, pcoeff, icoeff, dcoeff, 1.5 if eta else order, accept_safety)
        info = {"steps": 0, "nfe": 0, "n_accept": 0, "n_reject": 0}
        clamp = torch.minimum if forward else torch.maximum

        def unfinished():
            return s < t_end - 1e-5 if forward else s > t_end + 1e-5

        while unfinished():
            cache: dict = {}
            t = clamp(t_end, s + pid.h)
            t_target, noise_amount = self._ancestral_target(s, t, t_end, eta, torch.minimum)
            eps = self.eps(cache, "eps", x, s)
            denoised = x - self.sigma(s) * eps
            # An embedded pair: the lower-order result estimates the local error.
            x_low = self._step(order - 1, x, s, t_target, cache, low_order_r1=1 / 3)
            x_high = self._step(order, x, s, t_target, cache)
            delta = torch.maximum(atol, rtol * torch.maximum(x_low.abs(), x_prev.abs()))
            error = torch.linalg.norm((x_low - x_high) / delta) / x.numel() ** 0.5
            if pid.propose_step(error):
                x_prev = x_low
                x = x_high + noise_amount * s_noise * noise_sampler(self.sigma(s), self.sigma(t))
                s = t
                info["n_accept"] += 1
            else:
                info["n_reject"] += 1
            info["nfe"] += order
            info["steps"] += 1
            if self.info_callback is not None:
                self.info_callback({"x": x, "i": info["steps"] - 1, "t": s, "t_up": s, "denoised": denoised,
                                    "error": error, "h": pid.h, **info})
        return x, info


def _dpm_info_callback(solver: DPMSolver, callback: Callback):
    if callback is None:
        return None
    return lambda info: callback({"sigma": solver.sigma(info["t"]), "sigma_hat": solver.sigma(info["t_up"]), **info})


@torch.no_grad()
def sample_dpm_fast(model, x, sigma_min, sigma_max, n, extra_args=None, callback=None, disable=None,
                    eta=0.0, s_noise=1.0, noise_sampler=None):
    """DPM-Solver-Fast: fixed steps of orders 3, 2, 1 spending ``n`` model evaluations."""
    if sigma_min <= 0 or sigma_max <= 0:
        raise ValueError("sigma_min and sigma_max must not be 0")
    with tqdm(total=n, disable=disable) as pbar:
        solver = DPMSolver(model, extra_args, eps_callback=pbar.update)
        solver.info_callback = _dpm_info_callback(solver, callback)
        return solver.dpm_solver_fast(x, solver.t(torch.as_tensor(sigma_max)), solver.t(torch.as_tensor(sigma_min)),
                                      n, eta, s_noise, noise_sampler)


@torch.no_grad()
def sample_dpm_adaptive(model, x, sigma_min, sigma_max, extra_args=None, callback=None, disable=None,
                        order=3, rtol=0.05, atol=0.0078, h_init=0.05, pcoeff=0.0, icoeff=1.0, dcoeff=0.0,
                        accept_safety=0.81, eta=0.0, s_noise=1.0, noise_sampler=None, return_info=False):
    """DPM-Solver-12 / 23 with adaptive step sizes."""
    if sigma_min <= 0 or sigma_max <= 0:
        raise ValueError("sigma_min and sigma_max must not be 0")
    with tqdm(disable=disable) as pbar:
        solver = DPMSolver(model, extra_args, eps_callback=pbar.update)
        solver.info_callback = _dpm_info_callback(solver, callback)
        x, info = solver.dpm_solver_adaptive(x, solver.t(torch.as_tensor(sigma_max)), solver.t(torch.as_tensor(sigma_min)),
                                             order, rtol, atol, h_init, pcoeff, icoeff, dcoeff, accept_safety,
                                             eta, s_noise, noise_sampler)
    return (x, info) if return_info else x


# --- DPM-Solver++ -----------------------------------------------------------------------------

@torch.no_grad()
def sample_dpmpp_2s_ancestral(model, x, sigmas, extra_args=None, callback=None, disable=None,
                              eta=1.0, s_noise=1.0, noise_sampler=None):
    """DPM-Solver++(2S) single-step second order, down to sigma_down, then fresh noise."""
    if _is_flow(_model_sampling(model)):
        return _sample_dpmpp_2s_ancestral_flow(model, x, sigmas, extra_args, callback, disable, eta, s_noise,
                                               noise_sampler)
    extra_args = _extra(extra_args)
    noise_sampler = _noise_or_default(noise_sampler, x, extra_args)
    s_in = x.new_ones([x.shape[0]])
    for i in trange(len(sigmas) - 1, disable=disable):
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        sigma_down, sigma_up = get_ancestral_step(sigmas[i], sigmas[i + 1], eta=eta)
        _report(callback, x, i, sigmas[i], sigmas[i], denoised)
        if sigma_down == 0:
            x = x + to_d(x, sigmas[i], denoised) * (sigma_down - sigmas[i])
        else:
            t, t_next = _log_time(sigmas[i]), _log_time(sigma_down)
            h = t_next - t
            s = t + h / 2
            x_2 = (_sigma_of_log_time(s) / _sigma_of_log_time(t)) * x - (-h * 0.5).expm1() * denoised
            denoised_2 = model(x_2, _sigma_of_log_time(s) * s_in, **extra_args)
            x = (_sigma_of_log_time(t_next) / _sigma_of_log_time(t)) * x - (-h).expm1() * denoised_2
        if sigmas[i + 1] > 0:
            x = x + noise_sampler(sigmas[i], sigmas[i + 1]) * s_noise * sigma_up
    return x


def _sample_dpmpp_2s_ancestral_flow(model, x, sigmas, extra_args, callback, disable, eta, s_noise, noise_sampler):
    extra_args = _extra(extra_args)
    noise_sampler = _noise_or_default(noise_sampler, x, extra_args)
    s_in = x.new_ones([x.shape[0]])

    def flow_lambda(sigma):
        return ((1 - sigma) / sigma).log()

    for i in trange(len(sigmas) - 1, disable=disable):
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        sigma_down, rescale, renoise = _flow_ancestral_split(sigmas[i], sigmas[i + 1], eta)
        _report(callback, x, i, sigmas[i], sigmas[i], denoised)
        if sigmas[i + 1] == 0:
            x = x + to_d(x, sigmas[i], denoised) * (sigma_down - sigmas[i])
        else:
            if sigmas[i] == 1.0:
                sigma_s = 0.9999
            else:
                lam, lam_down = flow_lambda(sigmas[i]), flow_lambda(sigma_down)
                sigma_s = ((lam + (lam_down - lam) / 2).exp() + 1) ** -1
            ratio_s = sigma_s / sigmas[i]
            u = ratio_s * x + (1 - ratio_s) * denoised
            d_mid = model(u, sigma_s * s_in, **extra_args)
            ratio_down = sigma_down / sigmas[i]
            x = ratio_down * x + (1 - ratio_down) * d_mid
        if sigmas[i + 1] > 0 and eta > 0:
            x = rescale * x + noise_sampler(sigmas[i], sigmas[i + 1]) * s_noise * renoise
    return x


@torch.no_grad()
def sample_dpmpp_sde(model, x, sigmas, extra_args=None, callback=None, disable=None,
                     eta=1.0, s_noise=1.0, noise_sampler=None, r=1 / 2):
    """DPM-Solver++ (stochastic), two model calls per step, Brownian-tree noise on the CPU."""
    if len(sigmas) <= 1:
        return x
    extra_args = _extra(extra_args)
    if noise_sampler is None:
        noise_sampler = _brownian_noise(x, sigmas, extra_args, cpu=True)
    return _dpmpp_sde(model, x, sigmas, extra_args, callback, disable, eta, s_noise, noise_sampler, r)


@torch.no_grad()
def sample_dpmpp_sde_gpu(model, x, sigmas, extra_args=None, callback=None, disable=None,
                         eta=1.0, s_noise=1.0, noise_sampler=None, r=1 / 2):
    """DPM-Solver++ (stochastic) with the Brownian tree on the model's device."""
    if len(sigmas) <= 1:
        return x
    extra_args = _extra(extra_args)
    if noise_sampler is None:
        noise_sampler = _brownian_noise(x, sigmas, extra_args, cpu=False)
    return _dpmpp_sde(model, x, sigmas, extra_args, callback, disable, eta, s_noise, noise_sampler, r)


def _dpmpp_sde(model, x, sigmas, extra_args, callback, disable, eta, s_noise, noise_sampler, r):
    s_in = x.new_ones([x.shape[0]])
    model_sampling = _model_sampling(model)
    sigmas = offset_first_sigma_for_snr(sigmas, model_sampling)
    inject = eta > 0 and s_noise > 0

    for i in trange(len(sigmas) - 1, disable=disable):
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        _report(callback, x, i, sigmas[i], sigmas[i], denoised)
        if sigmas[i + 1] == 0:
            x = denoised
            continue
        lambda_s = sigma_to_half_log_snr(sigmas[i], model_sampling)
        lambda_t = sigma_to_half_log_snr(sigmas[i + 1], model_sampling)
        h = lambda_t - lambda_s
        lambda_mid = lambda_s + r * h
        sigma_mid = half_log_snr_to_sigma(lambda_mid, model_sampling)
        alpha_s = sigmas[i] * lambda_s.exp()
        alpha_mid = sigma_mid * lambda_mid.exp()
        alpha_t = sigmas[i + 1] * lambda_t.exp()

        # First stage: to the intermediate point, with its own share of noise.
        sigma_down, sigma_up = get_ancestral_step(lambda_s.neg().exp(), lambda_mid.neg().exp(), eta)
        h_down = sigma_down.log().neg() - lambda_s
        x_2 = (alpha_mid / alpha_s) * (-h_down).exp() * x - alpha_mid * (-h_down).expm1() * denoised
        if inject:
            x_2 = x_2 + alpha_mid * noise_sampler(sigmas[i], sigma_mid) * s_noise * sigma_up
        denoised_2 = model(x_2, sigma_mid * s_in, **extra_args)

        # Second stage: the full step with the blended prediction.
        sigma_down, sigma_up = get_ancestral_step(lambda_s.neg().exp(), lambda_t.neg().exp(), eta)
        h_down = sigma_down.log().neg() - lambda_s
        fac = 1 / (2 * r)
        blended = (1 - fac) * denoised + fac * denoised_2
        x = (alpha_t / alpha_s) * (-h_down).exp() * x - alpha_t * (-h_down).expm1() * blended
        if inject:
            x = x + alpha_t * noise_sampler(sigmas[i], sigmas[i + 1]) * s_noise * sigma_up
    return x


@torch.no_grad()
def sample_dpmpp_2m(model, x, sigmas, extra_args=None, callback=None, disable=None):
    """DPM-Solver++(2M): second-order multistep in data prediction."""
    extra_args = _extra(extra_args)
    s_in = x.new_ones([x.shape[0]])
    previous = None
    for i in trange(len(sigmas) - 1, disable=disable):
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        _report(callback, x, i, sigmas[i], sigmas[i], denoised)
        t, t_next = _log_time(sigmas[i]), _log_time(sigmas[i + 1])
        h = t_next - t
        target = denoised
        if previous is not None and sigmas[i + 1] != 0:
            r = (t - _log_time(sigmas[i - 1])) / h
            target = (1 + 1 / (2 * r)) * denoised - (1 / (2 * r)) * previous
        x = (_sigma_of_log_time(t_next) / _sigma_of_log_time(t)) * x - (-h).expm1() * target
        previous = denoised
    return x


def _sde_first_order_step(x, denoised, sigma, sigma_next, model_sampling, eta):
    """DPM-Solver++ SDE's first-order update in half log-SNR time, with h, h * (eta + 1) and alpha_t."""
    lambda_s = sigma_to_half_log_snr(sigma, model_sampling)
    lambda_t = sigma_to_half_log_snr(sigma_next, model_sampling)
    h = lambda_t - lambda_s
    h_eta = h * (eta + 1)
    alpha_t = sigma_next * lambda_t.exp()
    x = sigma_next / sigma * (-h * eta).exp() * x + alpha_t * (-h_eta).expm1().neg() * denoised
    return x, h, h_eta, alpha_t


def _sde_step_noise(x, noise_sampler, sigma, sigma_next, h, eta, s_noise):
    """The fresh noise a DPM-Solver++ SDE step of length ``h`` adds at ``sigma_next``."""
    if eta > 0 and s_noise > 0:
        noise = noise_sampler(sigma, sigma_next)
        x = x + noise * sigma_next * (-2 * h * eta).expm1().neg().sqrt() * s_noise
    return x


def _dpmpp_2m_sde(model, x, sigmas, extra_args, callback, disable, eta, s_noise, noise_sampler, solver_type):
    if solver_type not in {"heun", "midpoint"}:
        raise ValueError("solver_type must be 'heun' or 'midpoint'")
    s_in = x.new_ones([x.shape[0]])
    model_sampling = _model_sampling(model)
    sigmas = offset_first_sigma_for_snr(sigmas, model_sampling)
    previous, h_last = None, None
    for i in trange(len(sigmas) - 1, disable=disable):
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        _report(callback, x, i, sigmas[i], sigmas[i], denoised)
        if sigmas[i + 1] == 0:
            x = denoised
        else:
            x, h, h_eta, alpha_t = _sde_first_order_step(x, denoised, sigmas[i], sigmas[i + 1], model_sampling, eta)
            if previous is not None:
                r = h_last / h
                if solver_type == "heun":
                    x = x + alpha_t * ((-h_eta).expm1().neg() / (-h_eta) + 1) * (1 / r) * (denoised - previous)
                else:
                    x = x + 0.5 * alpha_t * (-h_eta).expm1().neg() * (1 / r) * (denoised - previous)
            x = _sde_step_noise(x, noise_sampler, sigmas[i], sigmas[i + 1], h, eta, s_noise)
            h_last = h
        previous = denoised
    return x


def _sde_sampler(solver: Callable, cpu: bool, **fixed: Any) -> Callable:
    """A public SDE sampler: Brownian-tree noise (CPU or model device) around a shared solver."""

    @torch.no_grad()
    def sample(model, x, sigmas, extra_args=None, callback=None, disable=None, eta=1.0, s_noise=1.0,
               noise_sampler=None, **options):
        if len(sigmas) <= 1:
            return x
        extra_args = _extra(extra_args)
        if noise_sampler is None:
            noise_sampler = _brownian_noise(x, sigmas, extra_args, cpu=cpu)
        return solver(model, x, sigmas, extra_args, callback, disable, eta, s_noise, noise_sampler,
                      **{**fixed, **options})

    return sample


def _dpmpp_3m_sde(model, x, sigmas, extra_args, callback, disable, eta, s_noise, noise_sampler):
    s_in = x.new_ones([x.shape[0]])
    model_sampling = _model_sampling(model)
    sigmas = offset_first_sigma_for_snr(sigmas, model_sampling)
    denoised_1 = denoised_2 = None
    h = h_1 = h_2 = None
    for i in trange(len(sigmas) - 1, disable=disable):
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        _report(callback, x, i, sigmas[i], sigmas[i], denoised)
        if sigmas[i + 1] == 0:
            x = denoised
        else:
            x, h, h_eta, alpha_t = _sde_first_order_step(x, denoised, sigmas[i], sigmas[i + 1], model_sampling, eta)
            phi_2 = h_eta.neg().expm1() / h_eta + 1
            if h_2 is not None:
                r0, r1 = h_1 / h, h_2 / h
                d1_0 = (denoised - denoised_1) / r0
                d1_1 = (denoised_1 - denoised_2) / r1
                d1 = d1_0 + (d1_0 - d1_1) * r0 / (r0 + r1)
                d2 = (d1_0 - d1_1) / (r0 + r1)
                phi_3 = phi_2 / h_eta - 0.5
                x = x + (alpha_t * phi_2) * d1 - (alpha_t * phi_3) * d2
            elif h_1 is not None:
                x = x + (alpha_t * phi_2) * ((denoised - denoised_1) / (h_1 / h))
            x = _sde_step_noise(x, noise_sampler, sigmas[i], sigmas[i + 1], h, eta, s_noise)
        denoised_1, denoised_2 = denoised, denoised_1
        h_1, h_2 = h, h_1
    return x


sample_dpmpp_2m_sde = _sde_sampler(_dpmpp_2m_sde, cpu=True, solver_type="midpoint")
sample_dpmpp_2m_sde.__doc__ = "DPM-Solver++(2M) SDE, midpoint correction, Brownian-tree noise on the CPU."
sample_dpmpp_2m_sde_gpu = _sde_sampler(_dpmpp_2m_sde, cpu=False, solver_type="midpoint")
sample_dpmpp_2m_sde_gpu.__doc__ = "DPM-Solver++(2M) SDE with the Brownian tree on the model's device."
sample_dpmpp_2m_sde_heun = _sde_sampler(_dpmpp_2m_sde, cpu=True, solver_type="heun")
sample_dpmpp_2m_sde_heun.__doc__ = "DPM-Solver++(2M) SDE, Heun correction, Brownian-tree noise on the CPU."
sample_dpmpp_2m_sde_heun_gpu = _sde_sampler(_dpmpp_2m_sde, cpu=False, solver_type="heun")
sample_dpmpp_2m_sde_heun_gpu.__doc__ = "DPM-Solver++(2M) SDE, Heun correction, tree on the model's device."
sample_dpmpp_3m_sde = _sde_sampler(_dpmpp_3m_sde, cpu=True)
sample_dpmpp_3m_sde.__doc__ = "DPM-Solver++(3M) SDE, Brownian-tree noise on the CPU."
sample_dpmpp_3m_sde_gpu = _sde_sampler(_dpmpp_3m_sde, cpu=False)
sample_dpmpp_3m_sde_gpu.__doc__ = "DPM-Solver++(3M) SDE with the Brownian tree on the model's device."


# --- DDPM, LCM -------------------------------------------------------------------------------

def DDPMSampler_step(x, sigma, sigma_prev, noise, noise_sampler):
    """One ancestral DDPM step in variance-preserving scale; ``noise`` is the eps prediction."""
    alpha_cumprod = 1 / ((sigma * sigma) + 1)
    alpha_cumprod_prev = 1 / ((sigma_prev * sigma_prev) + 1)
    alpha = alpha_cumprod / alpha_cumprod_prev
    mu = (1.0 / alpha).sqrt() * (x - (1 - alpha) * noise / (1 - alpha_cumprod).sqrt())
    if sigma_prev > 0:
        variance = (1 - alpha) * (1.0 - alpha_cumprod_prev) / (1.0 - alpha_cumprod)
        mu = mu + variance.sqrt() * noise_sampler(sigma, sigma_prev)
    return mu


def generic_step_sampler(model, x, sigmas, extra_args=None, callback=None, disable=None, noise_sampler=None,
                         step_function=None):
    """Run a variance-preserving ``step_function(x, sigma, sigma_next, eps, noise_sampler)`` per step."""
    extra_args = _extra(extra_args)
    noise_sampler = _noise_or_default(noise_sampler, x, extra_args)
    s_in = x.new_ones([x.shape[0]])
    for i in trange(len(sigmas) - 1, disable=disable):
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        _report(callback, x, i, sigmas[i], sigmas[i], denoised)
        eps = (x - denoised) / sigmas[i]
        x = step_function(x / torch.sqrt(1.0 + sigmas[i] ** 2.0), sigmas[i], sigmas[i + 1], eps, noise_sampler)
        if sigmas[i + 1] != 0:
            x = x * torch.sqrt(1.0 + sigmas[i + 1] ** 2.0)
    return x


@torch.no_grad()
def sample_ddpm(model, x, sigmas, extra_args=None, callback=None, disable=None, noise_sampler=None):
    """Ancestral DDPM sampling (Ho et al. 2020) on the given sigmas."""
    return generic_step_sampler(model, x, sigmas, extra_args, callback, disable, noise_sampler, DDPMSampler_step)


@torch.no_grad()
def sample_lcm(model, x, sigmas, extra_args=None, callback=None, disable=None, noise_sampler=None):
    """Latent consistency sampling: jump to the prediction, renoise to the next sigma."""
    extra_args = _extra(extra_args)
    noise_sampler = _noise_or_default(noise_sampler, x, extra_args)
    s_in = x.new_ones([x.shape[0]])
    model_sampling = _model_sampling(model)
    for i in trange(len(sigmas) - 1, disable=disable):
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        _report(callback, x, i, sigmas[i], sigmas[i], denoised)
        x = denoised
        if sigmas[i + 1] > 0:
            x = model_sampling.noise_scaling(sigmas[i + 1], noise_sampler(sigmas[i], sigmas[i + 1]), x)
    return x


# --- pseudo-numerical and DEIS multistep -----------------------------------------------------

def _push_history(history: list, value: torch.Tensor, keep: int) -> None:
    """Append ``value`` and keep only the newest ``keep`` entries."""
    history.append(value)
    del history[:max(0, len(history) - keep)]


# An iPNDM step's increment over ``step`` from the new derivative ``d`` and ``history`` (older ones, oldest first).
_MultistepCombination = Callable[[torch.Tensor, int, int, torch.Tensor, list[torch.Tensor], torch.Tensor],
                                 torch.Tensor]


def _ipndm(model, x, sigmas, extra_args, callback, disable, max_order: int, combination: _MultistepCombination):
    extra_args = _extra(extra_args)
    s_in = x.new_ones([x.shape[0]])
    history: list[torch.Tensor] = []  # previous derivatives, oldest first
    for i in trange(len(sigmas) - 1, disable=disable):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = model(x, sigma * s_in, **extra_args)
        _report(callback, x, i, sigma, sigma, denoised)
        d = (x - denoised) / sigma
        order = min(max_order, i + 1)
        if sigma_next == 0:
            x_next = denoised
        elif order == 1:
            x_next = x + (sigma_next - sigma) * d
        else:
            x_next = x + combination(sigmas, i, order, d, history, sigma_next - sigma)
        _push_history(history, d, max_order - 1)
        x = x_next
    return x


def _ipndm_combination(sigmas: torch.Tensor, i: int, order: int, d: torch.Tensor,
                       history: list[torch.Tensor], step: torch.Tensor) -> torch.Tensor:
    # Integer numerators over a common denominator, as the published weights are written; the step
    # multiplies the numerator before the division, the rounding order ComfyUI's results have.
    if order == 2:
        return step * (3 * d - history[-1]) / 2
    if order == 3:
        return step * (23 * d - 16 * history[-1] + 5 * history[-2]) / 12
    return step * (55 * d - 59 * history[-1] + 37 * history[-2] - 9 * history[-3]) / 24


def _ipndm_v_combination(sigmas: torch.Tensor, i: int, order: int, d: torch.Tensor,
                         history: list[torch.Tensor], step: torch.Tensor) -> torch.Tensor:
    weights = solver_coefficients.ipndm_v_weights(sigmas, i, order)
    combination = weights[0] * d
    for weight, previous in zip(weights[1:], reversed(history)):
        combination = combination + weight * previous
    return step * combination


@torch.no_grad()
def sample_ipndm(model, x, sigmas, extra_args=None, callback=None, disable=None, max_order=4):
    """Improved pseudo linear multistep (Zhang & Chen 2022) with fixed Adams-Bashforth weights."""
    return _ipndm(model, x, sigmas, extra_args, callback, disable, max_order, _ipndm_combination)


@torch.no_grad()
def sample_ipndm_v(model, x, sigmas, extra_args=None, callback=None, disable=None, max_order=4):
    """iPNDM with variable step sizes: the multistep weights follow the actual sigma spacing."""
    return _ipndm(model, x, sigmas, extra_args, callback, disable, max_order, _ipndm_v_combination)


@torch.no_grad()
def sample_deis(model, x, sigmas, extra_args=None, callback=None, disable=None, max_order=3, deis_mode="tab"):
    """DEIS (Zhang & Chen 2022): exponential-integrator multistep with precomputed coefficients."""
    extra_args = _extra(extra_args)
    s_in = x.new_ones([x.shape[0]])
    coefficients = solver_coefficients.deis_coefficients(sigmas, max_order, deis_mode=deis_mode)
    history: list[torch.Tensor] = []
    for i in trange(len(sigmas) - 1, disable=disable):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = model(x, sigma * s_in, **extra_args)
        _report(callback, x, i, sigma, sigma, denoised)
        d = (x - denoised) / sigma
        order = 1 if sigma_next <= 0 else min(max_order, i + 1)
        if order == 1:
            x_next = x + (sigma_next - sigma) * d
        else:
            step_coefficients = coefficients[i]
            x_next = x + step_coefficients[0] * d
            for coefficient, previous in zip(step_coefficients[1:], reversed(history)):
                x_next = x_next + coefficient * previous
        _push_history(history, d.detach(), max_order - 1)
        x = x_next
    return x


# --- CFG++ variants ---------------------------------------------------------------------------

@torch.no_grad()
def sample_euler_ancestral_cfg_pp(model, x, sigmas, extra_args=None, callback=None, disable=None,
                                  eta=1.0, s_noise=1.0, noise_sampler=None):
    """Euler ancestral with CFG++ (Chung et al. 2024): renoise along the unconditional direction."""
    extra_args = _extra(extra_args)
    noise_sampler = _noise_or_default(noise_sampler, x, extra_args)
    model_sampling = _model_sampling(model)
    uncond = _uncond_capture(extra_args)
    s_in = x.new_ones([x.shape[0]])
    for i in trange(len(sigmas) - 1, disable=disable):
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        _report(callback, x, i, sigmas[i], sigmas[i], denoised)
        if sigmas[i + 1] == 0:
            x = denoised
            continue
        alpha_s = sigmas[i] * sigma_to_half_log_snr(sigmas[i], model_sampling).exp()
        alpha_t = sigmas[i + 1] * sigma_to_half_log_snr(sigmas[i + 1], model_sampling).exp()
        d = to_d(x, sigmas[i], alpha_s * uncond())
        sigma_down, sigma_up = get_ancestral_step(sigmas[i] / alpha_s, sigmas[i + 1] / alpha_t, eta=eta)
        x = alpha_t * denoised + alpha_t * sigma_down * d
        if eta > 0 and s_noise > 0:
            x = x + alpha_t * noise_sampler(sigmas[i], sigmas[i + 1]) * s_noise * sigma_up
    return x


@torch.no_grad()
def sample_euler_cfg_pp(model, x, sigmas, extra_args=None, callback=None, disable=None):
    """Euler with CFG++: the deterministic case of the ancestral variant."""
    return sample_euler_ancestral_cfg_pp(model, x, sigmas, extra_args=extra_args, callback=callback,
                                         disable=disable, eta=0.0, s_noise=0.0)


@torch.no_grad()
def sample_dpmpp_2s_ancestral_cfg_pp(model, x, sigmas, extra_args=None, callback=None, disable=None,
                                     eta=1.0, s_noise=1.0, noise_sampler=None):
    """DPM-Solver++(2S) ancestral with CFG++."""
    extra_args = _extra(extra_args)
    noise_sampler = _noise_or_default(noise_sampler, x, extra_args)
    uncond = _uncond_capture(extra_args)
    s_in = x.new_ones([x.shape[0]])
    for i in trange(len(sigmas) - 1, disable=disable):
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        sigma_down, sigma_up = get_ancestral_step(sigmas[i], sigmas[i + 1], eta=eta)
        _report(callback, x, i, sigmas[i], sigmas[i], denoised)
        if sigma_down == 0:
            x = denoised + to_d(x, sigmas[i], uncond()) * sigma_down
        else:
            t, t_next = _log_time(sigmas[i]), _log_time(sigma_down)
            h = t_next - t
            s = t + 0.5 * h
            x_2 = ((_sigma_of_log_time(s) / _sigma_of_log_time(t)) * (x + (denoised - uncond()))
                   - (-h * 0.5).expm1() * denoised)
            denoised_2 = model(x_2, _sigma_of_log_time(s) * s_in, **extra_args)
            # ComfyUI shifts the full step by the unconditional prediction of the midpoint call, not the first.
            x = ((_sigma_of_log_time(t_next) / _sigma_of_log_time(t)) * (x + (denoised - uncond()))
                 - (-h).expm1() * denoised_2)
        if sigmas[i + 1] > 0:
            x = x + noise_sampler(sigmas[i], sigmas[i + 1]) * s_noise * sigma_up
    return x


@torch.no_grad()
def sample_dpmpp_2m_cfg_pp(model, x, sigmas, extra_args=None, callback=None, disable=None):
    """DPM-Solver++(2M) with CFG++."""
    extra_args = _extra(extra_args)
    s_in = x.new_ones([x.shape[0]])
    uncond = _uncond_capture(extra_args)
    previous_uncond = None
    for i in trange(len(sigmas) - 1, disable=disable):
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        _report(callback, x, i, sigmas[i], sigmas[i], denoised)
        t, t_next = _log_time(sigmas[i]), _log_time(sigmas[i + 1])
        h = t_next - t
        current_uncond = uncond()
        mix = -torch.exp(-h) * current_uncond
        if previous_uncond is not None and sigmas[i + 1] != 0:
            r = (t - _log_time(sigmas[i - 1])) / h
            mix = mix - torch.expm1(-h) * (1 / (2 * r)) * (denoised - previous_uncond)
        x = denoised + mix + torch.exp(-h) * x
        previous_uncond = current_uncond
    return x


# --- RES multistep, gradient estimation -------------------------------------------------------

@torch.no_grad()
def res_multistep(model, x, sigmas, extra_args=None, callback=None, disable=None, s_noise=1.0,
                  noise_sampler=None, eta=1.0, cfg_pp=False):
    """Second-order refined exponential solver (Zhang et al. 2023, arXiv:2308.02157)."""
    extra_args = _extra(extra_args)
    noise_sampler = _noise_or_default(noise_sampler, x, extra_args)
    s_in = x.new_ones([x.shape[0]])
    uncond = _uncond_capture(extra_args) if cfg_pp else None

    def phi_1(t):
        return torch.expm1(t) / t

    def phi_2(t):
        return (phi_1(t) - 1.0) / t

    previous = previous_sigma_down = None
    for i in trange(len(sigmas) - 1, disable=disable):
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        sigma_down, sigma_up = get_ancestral_step(sigmas[i], sigmas[i + 1], eta=eta)
        _report(callback, x, i, sigmas[i], sigmas[i], denoised)
        guide = uncond() if cfg_pp else denoised
        if sigma_down == 0 or previous is None:
            if cfg_pp:
                x = denoised + to_d(x, sigmas[i], guide) * sigma_down
            else:
                x = x + to_d(x, sigmas[i], denoised) * (sigma_down - sigmas[i])
        else:
            t, t_old = _log_time(sigmas[i]), _log_time(previous_sigma_down)
            t_next, t_prev = _log_time(sigma_down), _log_time(sigmas[i - 1])
            h = t_next - t
            c2 = (t_prev - t_old) / h
            p1, p2 = phi_1(-h), phi_2(-h)
            b1 = torch.nan_to_num(p1 - p2 / c2, nan=0.0)
            b2 = torch.nan_to_num(p2 / c2, nan=0.0)
            if cfg_pp:
                x = x + (denoised - guide)
            x = _sigma_of_log_time(h) * x + h * (b1 * guide + b2 * previous)
        if sigmas[i + 1] > 0:
            x = x + noise_sampler(sigmas[i], sigmas[i + 1]) * s_noise * sigma_up
        previous = guide
        previous_sigma_down = sigma_down
    return x


@torch.no_grad()
def sample_res_multistep(model, x, sigmas, extra_args=None, callback=None, disable=None, s_noise=1.0,
                         noise_sampler=None):
    return res_multistep(model, x, sigmas, extra_args, callback, disable, s_noise, noise_sampler, eta=0.0)


@torch.no_grad()
def sample_res_multistep_cfg_pp(model, x, sigmas, extra_args=None, callback=None, disable=None, s_noise=1.0,
                                noise_sampler=None):
    return res_multistep(model, x, sigmas, extra_args, callback, disable, s_noise, noise_sampler, eta=0.0,
                         cfg_pp=True)


@torch.no_grad()
def sample_res_multistep_ancestral(model, x, sigmas, extra_args=None, callback=None, disable=None, eta=1.0,
                                   s_noise=1.0, noise_sampler=None):
    return res_multistep(model, x, sigmas, extra_args, callback, disable, s_noise, noise_sampler, eta=eta)


@torch.no_grad()
def sample_res_multistep_ancestral_cfg_pp(model, x, sigmas, extra_args=None, callback=None, disable=None,
                                          eta=1.0, s_noise=1.0, noise_sampler=None):
    return res_multistep(model, x, sigmas, extra_args, callback, disable, s_noise, noise_sampler, eta=eta,
                         cfg_pp=True)


@torch.no_grad()
def sample_gradient_estimation(model, x, sigmas, extra_args=None, callback=None, disable=None, ge_gamma=2.0,
                               cfg_pp=False):
    """Euler with a gradient-estimation correction (Permenter & Yuan 2024)."""
    extra_args = _extra(extra_args)
    s_in = x.new_ones([x.shape[0]])
    uncond = _uncond_capture(extra_args) if cfg_pp else None
    previous_d = None
    for i in trange(len(sigmas) - 1, disable=disable):
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        d = to_d(x, sigmas[i], uncond() if cfg_pp else denoised)
        _report(callback, x, i, sigmas[i], sigmas[i], denoised)
        dt = sigmas[i + 1] - sigmas[i]
        if sigmas[i + 1] == 0:
            x = denoised
        else:
            x = denoised + d * sigmas[i + 1] if cfg_pp else x + d * dt
            if i >= 1:
                x = x + (ge_gamma - 1) * (d - previous_d) * dt
        previous_d = d
    return x


@torch.no_grad()
def sample_gradient_estimation_cfg_pp(model, x, sigmas, extra_args=None, callback=None, disable=None,
                                      ge_gamma=2.0):
    return sample_gradient_estimation(model, x, sigmas, extra_args, callback, disable, ge_gamma=ge_gamma,
                                      cfg_pp=True)


# --- ER-SDE, SEEDS, exponential Heun -----------------------------------------------------------

def _er_sde_default_noise_scaler(x: torch.Tensor) -> torch.Tensor:
    return x * ((x ** 0.3).exp() + 10.0)


@torch.no_grad()
def sample_er_sde(model, x, sigmas, extra_args=None, callback=None, disable=None, s_noise=1.0,
                  noise_sampler=None, noise_scaler=None, max_stage=3):
    """Extended reverse-time SDE solver, VP ER-SDE-Solver-3 (Cui et al. 2023, arXiv:2309.06169)."""
    extra_args = _extra(extra_args)
    noise_sampler = _noise_or_default(noise_sampler, x, extra_args)
    noise_scaler = _er_sde_default_noise_scaler if noise_scaler is None else noise_scaler
    s_in = x.new_ones([x.shape[0]])
    points = 200.0
    point_index = torch.arange(0, points, dtype=torch.float32, device=x.device)
    model_sampling = _model_sampling(model)
    sigmas = offset_first_sigma_for_snr(sigmas, model_sampling)
    er_lambdas = sigma_to_half_log_snr(sigmas, model_sampling).neg().exp()  # sigma_t / alpha_t
    previous = previous_d = None
    for i in trange(len(sigmas) - 1, disable=disable):
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        _report(callback, x, i, sigmas[i], sigmas[i], denoised)
        stage = min(max_stage, i + 1)
        if sigmas[i + 1] == 0:
            x = denoised
        else:
            lam_s, lam_t = er_lambdas[i], er_lambdas[i + 1]
            alpha_s, alpha_t = sigmas[i] / lam_s, sigmas[i + 1] / lam_t
            r = noise_scaler(lam_t) / noise_scaler(lam_s)
            x = (alpha_t / alpha_s) * r * x + alpha_t * (1 - r) * denoised
            if stage >= 2:
                dt = lam_t - lam_s
                step = -dt / points
                positions = lam_t + point_index * step
                scaled = noise_scaler(positions)
                integral = torch.sum(1 / scaled) * step
                denoised_d = (denoised - previous) / (lam_s - er_lambdas[i - 1])
                x = x + alpha_t * (dt + integral * noise_scaler(lam_t)) * denoised_d
                if stage >= 3:
                    integral_u = torch.sum((positions - lam_s) / scaled) * step
                    denoised_u = (denoised_d - previous_d) / ((lam_s - er_lambdas[i - 2]) / 2)
                    x = x + alpha_t * ((dt ** 2) / 2 + integral_u * noise_scaler(lam_t)) * denoised_u
                previous_d = denoised_d
            if s_noise > 0:
                spread = (lam_t ** 2 - lam_s ** 2 * r ** 2).sqrt().nan_to_num(nan=0.0)
                x = x + alpha_t * noise_sampler(sigmas[i], sigmas[i + 1]) * s_noise * spread
        previous = denoised
    return x


@torch.no_grad()
def sample_seeds_2(model, x, sigmas, extra_args=None, callback=None, disable=None, eta=1.0, s_noise=1.0,
                   noise_sampler=None, r=0.5, solver_type="phi_1"):
    """SEEDS-2 (Gonzalez et al. 2023, arXiv:2305.14267), VP data prediction, two stages."""
    if solver_type not in {"phi_1", "phi_2"}:
        raise ValueError("solver_type must be 'phi_1' or 'phi_2'")
    extra_args = _extra(extra_args)
    noise_sampler = _noise_or_default(noise_sampler, x, extra_args)
    s_in = x.new_ones([x.shape[0]])
    inject = eta > 0 and s_noise > 0
    model_sampling = _model_sampling(model)
    sigmas = offset_first_sigma_for_snr(sigmas, model_sampling)
    fac = 1 / (2 * r)
    for i in trange(len(sigmas) - 1, disable=disable):
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        _report(callback, x, i, sigmas[i], sigmas[i], denoised)
        if sigmas[i + 1] == 0:
            x = denoised
            continue
        lambda_s = sigma_to_half_log_snr(sigmas[i], model_sampling)
        lambda_t = sigma_to_half_log_snr(sigmas[i + 1], model_sampling)
        h = lambda_t - lambda_s
        h_eta = h * (eta + 1)
        lambda_1 = torch.lerp(lambda_s, lambda_t, r)
        sigma_1 = half_log_snr_to_sigma(lambda_1, model_sampling)
        alpha_1 = sigma_1 * lambda_1.exp()
        alpha_t = sigmas[i + 1] * lambda_t.exp()

        x_2 = sigma_1 / sigmas[i] * (-r * h * eta).exp() * x - alpha_1 * ei_h_phi_1(-r * h_eta) * denoised
        if inject:
            sde_noise = (-2 * r * h * eta).expm1().neg().sqrt() * noise_sampler(sigmas[i], sigma_1)
            x_2 = x_2 + sde_noise * sigma_1 * s_noise
        denoised_2 = model(x_2, sigma_1 * s_in, **extra_args)

        decay = sigmas[i + 1] / sigmas[i] * (-h * eta).exp() * x
        if solver_type == "phi_1":
            x = decay - alpha_t * ei_h_phi_1(-h_eta) * torch.lerp(denoised, denoised_2, fac)
        else:
            b2 = ei_h_phi_2(-h_eta) / r
            b1 = ei_h_phi_1(-h_eta) - b2
            x = decay - alpha_t * (b1 * denoised + b2 * denoised_2)
        if inject:
            segment = (r - 1) * h * eta
            sde_noise = sde_noise * segment.exp()
            sde_noise = sde_noise + segment.mul(2).expm1().neg().sqrt() * noise_sampler(sigma_1, sigmas[i + 1])
            x = x + sde_noise * sigmas[i + 1] * s_noise
    return x


@torch.no_grad()
def sample_exp_heun_2_x0(model, x, sigmas, extra_args=None, callback=None, disable=None, solver_type="phi_2"):
    """Deterministic exponential Heun in data prediction and log-SNR time."""
    return sample_seeds_2(model, x, sigmas, extra_args=extra_args, callback=callback, disable=disable, eta=0.0,
                          s_noise=0.0, r=1.0, solver_type=solver_type)


@torch.no_grad()
def sample_exp_heun_2_x0_sde(model, x, sigmas, extra_args=None, callback=None, disable=None, eta=1.0,
                             s_noise=1.0, noise_sampler=None, solver_type="phi_2"):
    """Stochastic exponential Heun in data prediction and log-SNR time."""
    return sample_seeds_2(model, x, sigmas, extra_args=extra_args, callback=callback, disable=disable, eta=eta,
                          s_noise=s_noise, noise_sampler=noise_sampler, r=1.0, solver_type=solver_type)


@torch.no_grad()
def sample_seeds_3(model, x, sigmas, extra_args=None, callback=None, disable=None, eta=1.0, s_noise=1.0,
                   noise_sampler=None, r_1=1.0 / 3, r_2=2.0 / 3):
    """SEEDS-3 (Gonzalez et al. 2023), VP data prediction, three stages."""
    extra_args = _extra(extra_args)
    noise_sampler = _noise_or_default(noise_sampler, x, extra_args)
    s_in = x.new_ones([x.shape[0]])
    inject = eta > 0 and s_noise > 0
    model_sampling = _model_sampling(model)
    sigmas = offset_first_sigma_for_snr(sigmas, model_sampling)
    for i in trange(len(sigmas) - 1, disable=disable):
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        _report(callback, x, i, sigmas[i], sigmas[i], denoised)
        if sigmas[i + 1] == 0:
            x = denoised
            continue
        lambda_s = sigma_to_half_log_snr(sigmas[i], model_sampling)
        lambda_t = sigma_to_half_log_snr(sigmas[i + 1], model_sampling)
        h = lambda_t - lambda_s
        h_eta = h * (eta + 1)
        lambda_1 = torch.lerp(lambda_s, lambda_t, r_1)
        lambda_2 = torch.lerp(lambda_s, lambda_t, r_2)
        sigma_1 = half_log_snr_to_sigma(lambda_1, model_sampling)
        sigma_2 = half_log_snr_to_sigma(lambda_2, model_sampling)
        alpha_1, alpha_2 = sigma_1 * lambda_1.exp(), sigma_2 * lambda_2.exp()
        alpha_t = sigmas[i + 1] * lambda_t.exp()

        x_2 = sigma_1 / sigmas[i] * (-r_1 * h * eta).exp() * x - alpha_1 * ei_h_phi_1(-r_1 * h_eta) * denoised
        if inject:
            sde_noise = (-2 * r_1 * h * eta).expm1().neg().sqrt() * noise_sampler(sigmas[i], sigma_1)
            x_2 = x_2 + sde_noise * sigma_1 * s_noise
        denoised_2 = model(x_2, sigma_1 * s_in, **extra_args)

        a3_2 = r_2 / r_1 * ei_h_phi_2(-r_2 * h_eta)
        a3_1 = ei_h_phi_1(-r_2 * h_eta) - a3_2
        x_3 = sigma_2 / sigmas[i] * (-r_2 * h * eta).exp() * x - alpha_2 * (a3_1 * denoised + a3_2 * denoised_2)
        if inject:
            segment = (r_1 - r_2) * h * eta
            sde_noise = sde_noise * segment.exp()
            sde_noise = sde_noise + segment.mul(2).expm1().neg().sqrt() * noise_sampler(sigma_1, sigma_2)
            x_3 = x_3 + sde_noise * sigma_2 * s_noise
        denoised_3 = model(x_3, sigma_2 * s_in, **extra_args)

        b3 = ei_h_phi_2(-h_eta) / r_2
        b1 = ei_h_phi_1(-h_eta) - b3
        x = sigmas[i + 1] / sigmas[i] * (-h * eta).exp() * x - alpha_t * (b1 * denoised + b3 * denoised_3)
        if inject:
            segment = (r_2 - 1) * h * eta
            sde_noise = sde_noise * segment.exp()
            sde_noise = sde_noise + segment.mul(2).expm1().neg().sqrt() * noise_sampler(sigma_2, sigmas[i + 1])
            x = x + sde_noise * sigmas[i + 1] * s_noise
    return x


# --- SA-Solver --------------------------------------------------------------------------------

@torch.no_grad()
def sample_sa_solver(model, x, sigmas, extra_args=None, callback=None, disable=False, tau_func=None,
                     s_noise=1.0, noise_sampler=None, predictor_order=3, corrector_order=4, use_pece=False,
                     simple_order_2=False):
    """Stochastic Adams predictor-corrector solver (Xue et al. 2023, arXiv:2309.05019)."""
    if len(sigmas) <= 1:
        return x
    extra_args = _extra(extra_args)
    noise_sampler = _noise_or_default(noise_sampler, x, extra_args)
    s_in = x.new_ones([x.shape[0]])
    model_sampling = _model_sampling(model)
    sigmas = offset_first_sigma_for_snr(sigmas, model_sampling)
    lambdas = sigma_to_half_log_snr(sigmas, model_sampling)
    if tau_func is None:
        tau_func = solver_coefficients.sa_solver_tau_interval(model_sampling.percent_to_sigma(0.2),
                                                              model_sampling.percent_to_sigma(0.8), eta=1.0)
    keep = max(predictor_order, corrector_order)
    x_pred = x
    h, tau, noise = 0.0, 0.0, 0.0
    predictions: list[torch.Tensor] = []
    # Lower the orders near the end when the schedule ends at zero, for stability.
    taper = sigmas[-1].item() == 0
    last = len(sigmas) - 1

    for i in trange(last, disable=disable):
        denoised = model(x_pred, sigmas[i] * s_in, **extra_args)
        _report(callback, x_pred, i, sigmas[i], sigmas[i], denoised)
        predictions.append(denoised)
        del predictions[:max(0, len(predictions) - keep)]

        p_order = min(predictor_order, len(predictions))
        no_correction = i == 0 or (sigmas[i + 1] == 0 and not use_pece)
        c_order = 0 if no_correction else min(corrector_order, len(predictions))
        if taper:
            p_order = min(p_order, last - 1 - i)
            c_order = min(c_order, last - i)

        if c_order == 0:
            x = x_pred
        else:
            b = solver_coefficients.sa_solver_b_coefficients(sigmas[i], lambdas[i - c_order + 1:i + 1], lambdas[i - 1],
                                                             lambdas[i], tau, simple_order_2, is_corrector_step=True)
            correction = torch.tensordot(torch.stack(predictions[-c_order:], dim=1), b, dims=([1], [0]))
            x = sigmas[i] / sigmas[i - 1] * (-(tau ** 2) * h).exp() * x + correction
            if tau > 0 and s_noise > 0:
                x = x + noise  # the previous predictor step's noise
            if use_pece:
                denoised = model(x, sigmas[i] * s_in, **extra_args)
                predictions[-1] = denoised

        if sigmas[i + 1] == 0:
            x_pred = denoised
            continue
        tau = tau_func(sigmas[i + 1])
        b = solver_coefficients.sa_solver_b_coefficients(sigmas[i + 1], lambdas[i - p_order + 1:i + 1], lambdas[i],
                                                         lambdas[i + 1], tau, simple_order_2, is_corrector_step=False)
        prediction = torch.tensordot(torch.stack(predictions[-p_order:], dim=1), b, dims=([1], [0]))
        h = lambdas[i + 1] - lambdas[i]
        x_pred = sigmas[i + 1] / sigmas[i] * (-(tau ** 2) * h).exp() * x + prediction
        if tau > 0 and s_noise > 0:
            noise = (noise_sampler(sigmas[i], sigmas[i + 1]) * sigmas[i + 1]
                     * (-2 * tau ** 2 * h).expm1().neg().sqrt() * s_noise)
            x_pred = x_pred + noise
    return x_pred


@torch.no_grad()
def sample_sa_solver_pece(model, x, sigmas, extra_args=None, callback=None, disable=False, tau_func=None,
                          s_noise=1.0, noise_sampler=None, predictor_order=3, corrector_order=4,
                          simple_order_2=False):
    """SA-Solver in predict-evaluate-correct-evaluate mode."""
    return sample_sa_solver(model, x, sigmas, extra_args=extra_args, callback=callback, disable=disable,
                            tau_func=tau_func, s_noise=s_noise, noise_sampler=noise_sampler,
                            predictor_order=predictor_order, corrector_order=corrector_order, use_pece=True,
                            simple_order_2=simple_order_2)
