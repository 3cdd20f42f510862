"""The sampling nodes: KSampler, KSamplerAdvanced and the custom-sampling family of ComfyUI.

Also the legacy ``comfy_extras.nodes_custom_sampler``, whose NOISE and GUIDER classes
(``Noise_RandomNoise``, ``Guider_Basic``...) vanilla custom nodes import by those names.
Declaring the nodes imports no torch; each node imports the sampling modules when it runs.
"""
from __future__ import annotations

import math
import re
from typing import TYPE_CHECKING, Any

from comfy_api.latest import io
from comfyui_samplers.names import SAMPLER_NAMES, SCHEDULER_NAMES
from comfyui_samplers.noise import Noise_EmptyNoise, Noise_RandomNoise

if TYPE_CHECKING:
    from comfyui_samplers.samplers import KSAMPLER

SEED_MAX = 0xffffffffffffffff
SIGMA_MAX_DEFAULT = 14.614642  # SD1.x's largest sigma
SIGMA_MIN_DEFAULT = 0.0291675  # and its smallest


class KSampler:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": ("MODEL", {"tooltip": "The model used for denoising the input latent."}),
            "seed": ("INT", {"default": 0, "min": 0, "max": SEED_MAX, "control_after_generate": True,
                             "tooltip": "The random seed used for creating the noise."}),
            "steps": ("INT", {"default": 20, "min": 1, "max": 10000,
                              "tooltip": "The number of steps used in the denoising process."}),
            "cfg": ("FLOAT", {"default": 8.0, "min": 0.0, "max": 100.0, "step": 0.1, "round": 0.01,
                              "tooltip": "The Classifier-Free Guidance scale balances creativity and adherence to "
                                         "the prompt. Higher values result in images more closely matching the "
                                         "prompt however too high values will negatively impact quality."}),
            "sampler_name": (SAMPLER_NAMES, {"tooltip": "The algorithm used when sampling, this can affect the "
                                                        "quality, speed, and style of the generated output."}),
            "scheduler": (SCHEDULER_NAMES, {"tooltip": "The scheduler controls how noise is gradually removed "
                                                       "to form the image."}),
            "positive": ("CONDITIONING", {"tooltip": "The conditioning describing the attributes you want to "
                                                     "include in the image."}),
            "negative": ("CONDITIONING", {"tooltip": "The conditioning describing the attributes you want to "
                                                     "exclude from the image."}),
            "latent_image": ("LATENT", {"tooltip": "The latent image to denoise."}),
            "denoise": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.01,
                                  "tooltip": "The amount of denoising applied, lower values will maintain the "
                                             "structure of the initial image allowing for image to image "
                                             "sampling."}),
        }}

    RETURN_TYPES = ("LATENT",)
    OUTPUT_TOOLTIPS = ("The denoised latent.",)
    FUNCTION = "sample"
    CATEGORY = "sampling"
    DESCRIPTION = "Uses the provided model, positive and negative conditioning to denoise the latent image."
    SEARCH_ALIASES = ["sampler", "sample", "generate", "denoise", "diffuse", "txt2img", "img2img"]

    def sample(self, model, seed, steps, cfg, sampler_name, scheduler, positive, negative, latent_image, denoise=1.0):
        from comfyui_samplers.sample import common_ksampler

        return common_ksampler(model, seed, steps, cfg, sampler_name, scheduler, positive, negative, latent_image,
                               denoise=denoise)


class KSamplerAdvanced:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": ("MODEL",),
            "add_noise": (["enable", "disable"],),
            "noise_seed": ("INT", {"default": 0, "min": 0, "max": SEED_MAX, "control_after_generate": True}),
            "steps": ("INT", {"default": 20, "min": 1, "max": 10000}),
            "cfg": ("FLOAT", {"default": 8.0, "min": 0.0, "max": 100.0, "step": 0.1, "round": 0.01}),
            "sampler_name": (SAMPLER_NAMES,),
            "scheduler": (SCHEDULER_NAMES,),
            "positive": ("CONDITIONING",),
            "negative": ("CONDITIONING",),
            "latent_image": ("LATENT",),
            "start_at_step": ("INT", {"default": 0, "min": 0, "max": 10000}),
            "end_at_step": ("INT", {"default": 10000, "min": 0, "max": 10000}),
            "return_with_leftover_noise": (["disable", "enable"],),
        }}

    RETURN_TYPES = ("LATENT",)
    FUNCTION = "sample"
    CATEGORY = "sampling"

    def sample(self, model, add_noise, noise_seed, steps, cfg, sampler_name, scheduler, positive, negative,
               latent_image, start_at_step, end_at_step, return_with_leftover_noise, denoise=1.0):
        from comfyui_samplers.sample import common_ksampler

        return common_ksampler(model, noise_seed, steps, cfg, sampler_name, scheduler, positive, negative,
                               latent_image, denoise=denoise, disable_noise=add_noise == "disable",
                               start_step=start_at_step, last_step=end_at_step,
                               force_full_denoise=return_with_leftover_noise != "enable")


# --- schedulers -------------------------------------------------------------------------------

SCHEDULERS_CATEGORY = "sampling/custom_sampling/schedulers"
SIGMAS_CATEGORY = "sampling/custom_sampling/sigmas"
SAMPLERS_CATEGORY = "sampling/custom_sampling/samplers"
GUIDERS_CATEGORY = "sampling/custom_sampling/guiders"
NOISE_CATEGORY = "sampling/custom_sampling/noise"


class _CustomSamplingNode(io.ComfyNode):
    """The custom-sampling nodes, which ComfyUI defines in comfy_extras/nodes_custom_sampler.py; /object_info
    names that module."""
    RELATIVE_PYTHON_MODULE = "comfy_extras.nodes_custom_sampler"


def _sigma_range_inputs() -> list:
    return [io.Float.Input("sigma_max", default=SIGMA_MAX_DEFAULT, min=0.0, max=5000.0, step=0.01, round=False),
            io.Float.Input("sigma_min", default=SIGMA_MIN_DEFAULT, min=0.0, max=5000.0, step=0.01, round=False)]


class BasicScheduler(_CustomSamplingNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="BasicScheduler", category=SCHEDULERS_CATEGORY,
            inputs=[io.Model.Input("model"), io.Combo.Input("scheduler", options=SCHEDULER_NAMES),
                    io.Int.Input("steps", default=20, min=1, max=10000),
                    io.Float.Input("denoise", default=1.0, min=0.0, max=1.0, step=0.01)],
            outputs=[io.Sigmas.Output()])

    @classmethod
    def execute(cls, model, scheduler, steps, denoise) -> io.NodeOutput:
        import torch

        from comfyui_samplers.schedulers import calculate_sigmas

        total_steps = steps
        if denoise < 1.0:
            if denoise <= 0.0:
                return io.NodeOutput(torch.FloatTensor([]))
            total_steps = int(steps / denoise)
        sigmas = calculate_sigmas(model.get_model_object("model_sampling"), scheduler, total_steps).cpu()
        return io.NodeOutput(sigmas[-(steps + 1):])


class KarrasScheduler(_CustomSamplingNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="KarrasScheduler", category=SCHEDULERS_CATEGORY,
            inputs=[io.Int.Input("steps", default=20, min=1, max=10000), *_sigma_range_inputs(),
                    io.Float.Input("rho", default=7.0, min=0.0, max=100.0, step=0.01, round=False)],
            outputs=[io.Sigmas.Output()])

    @classmethod
    def execute(cls, steps, sigma_max, sigma_min, rho) -> io.NodeOutput:
        from comfyui_samplers import k_sampling

        return io.NodeOutput(k_sampling.get_sigmas_karras(n=steps, sigma_min=sigma_min, sigma_max=sigma_max, rho=rho))


class ExponentialScheduler(_CustomSamplingNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="ExponentialScheduler", category=SCHEDULERS_CATEGORY,
            inputs=[io.Int.Input("steps", default=20, min=1, max=10000), *_sigma_range_inputs()],
            outputs=[io.Sigmas.Output()])

    @classmethod
    def execute(cls, steps, sigma_max, sigma_min) -> io.NodeOutput:
        from comfyui_samplers import k_sampling

        return io.NodeOutput(k_sampling.get_sigmas_exponential(n=steps, sigma_min=sigma_min, sigma_max=sigma_max))


class PolyexponentialScheduler(_CustomSamplingNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="PolyexponentialScheduler", category=SCHEDULERS_CATEGORY,
            inputs=[io.Int.Input("steps", default=20, min=1, max=10000), *_sigma_range_inputs(),
                    io.Float.Input("rho", default=1.0, min=0.0, max=100.0, step=0.01, round=False)],
            outputs=[io.Sigmas.Output()])

    @classmethod
    def execute(cls, steps, sigma_max, sigma_min, rho) -> io.NodeOutput:
        from comfyui_samplers import k_sampling

        return io.NodeOutput(k_sampling.get_sigmas_polyexponential(n=steps, sigma_min=sigma_min, sigma_max=sigma_max,
                                                                   rho=rho))


class LaplaceScheduler(_CustomSamplingNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="LaplaceScheduler", category=SCHEDULERS_CATEGORY,
            inputs=[io.Int.Input("steps", default=20, min=1, max=10000), *_sigma_range_inputs(),
                    io.Float.Input("mu", default=0.0, min=-10.0, max=10.0, step=0.1, round=False),
                    io.Float.Input("beta", default=0.5, min=0.0, max=10.0, step=0.1, round=False)],
            outputs=[io.Sigmas.Output()])

    @classmethod
    def execute(cls, steps, sigma_max, sigma_min, mu, beta) -> io.NodeOutput:
        from comfyui_samplers import k_sampling

        return io.NodeOutput(k_sampling.get_sigmas_laplace(n=steps, sigma_min=sigma_min, sigma_max=sigma_max, mu=mu,
                                                           beta=beta))


class SDTurboScheduler(_CustomSamplingNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="SDTurboScheduler", category=SCHEDULERS_CATEGORY,
            inputs=[io.Model.Input("model"), io.Int.Input("steps", default=1, min=1, max=10),
                    io.Float.Input("denoise", default=1.0, min=0, max=1.0, step=0.01)],
            outputs=[io.Sigmas.Output()])

    @classmethod
    def execute(cls, model, steps, denoise) -> io.NodeOutput:
        import torch

        # SD Turbo was distilled on the ten timesteps 999, 899, ..., 99.
        start_step = 10 - int(10 * denoise)
        timesteps = torch.flip(torch.arange(1, 11) * 100 - 1, (0,))[start_step:start_step + steps]
        sigmas = model.get_model_object("model_sampling").sigma(timesteps)
        return io.NodeOutput(torch.cat([sigmas, sigmas.new_zeros([1])]))


class BetaSamplingScheduler(_CustomSamplingNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="BetaSamplingScheduler", category=SCHEDULERS_CATEGORY,
            inputs=[io.Model.Input("model"), io.Int.Input("steps", default=20, min=1, max=10000),
                    io.Float.Input("alpha", default=0.6, min=0.0, max=50.0, step=0.01, round=False),
                    io.Float.Input("beta", default=0.6, min=0.0, max=50.0, step=0.01, round=False)],
            outputs=[io.Sigmas.Output()])

    @classmethod
    def execute(cls, model, steps, alpha, beta) -> io.NodeOutput:
        from comfyui_samplers.schedulers import beta_scheduler

        return io.NodeOutput(beta_scheduler(model.get_model_object("model_sampling"), steps, alpha=alpha, beta=beta))


class VPScheduler(_CustomSamplingNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="VPScheduler", category=SCHEDULERS_CATEGORY,
            inputs=[io.Int.Input("steps", default=20, min=1, max=10000),
                    io.Float.Input("beta_d", default=19.9, min=0.0, max=5000.0, step=0.01, round=False),
                    io.Float.Input("beta_min", default=0.1, min=0.0, max=5000.0, step=0.01, round=False),
                    io.Float.Input("eps_s", default=0.001, min=0.0, max=1.0, step=0.0001, round=False)],
            outputs=[io.Sigmas.Output()])

    @classmethod
    def execute(cls, steps, beta_d, beta_min, eps_s) -> io.NodeOutput:
        from comfyui_samplers import k_sampling

        return io.NodeOutput(k_sampling.get_sigmas_vp(n=steps, beta_d=beta_d, beta_min=beta_min, eps_s=eps_s))


# --- sigma tools --------------------------------------------------------------------------------

class SplitSigmas(_CustomSamplingNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="SplitSigmas", category=SIGMAS_CATEGORY,
            inputs=[io.Sigmas.Input("sigmas"), io.Int.Input("step", default=0, min=0, max=10000)],
            outputs=[io.Sigmas.Output(display_name="high_sigmas"), io.Sigmas.Output(display_name="low_sigmas")])

    @classmethod
    def execute(cls, sigmas, step) -> io.NodeOutput:
        return io.NodeOutput(sigmas[:step + 1], sigmas[step:])


class SplitSigmasDenoise(_CustomSamplingNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="SplitSigmasDenoise", category=SIGMAS_CATEGORY,
            inputs=[io.Sigmas.Input("sigmas"), io.Float.Input("denoise", default=1.0, min=0.0, max=1.0, step=0.01)],
            outputs=[io.Sigmas.Output(display_name="high_sigmas"), io.Sigmas.Output(display_name="low_sigmas")])

    @classmethod
    def execute(cls, sigmas, denoise) -> io.NodeOutput:
        total_steps = round(max(sigmas.shape[-1] - 1, 0) * denoise)
        return io.NodeOutput(sigmas[:-total_steps], sigmas[-(total_steps + 1):])


class FlipSigmas(_CustomSamplingNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(node_id="FlipSigmas", category=SIGMAS_CATEGORY, inputs=[io.Sigmas.Input("sigmas")],
                         outputs=[io.Sigmas.Output()])

    @classmethod
    def execute(cls, sigmas) -> io.NodeOutput:
        if len(sigmas) == 0:
            return io.NodeOutput(sigmas)
        sigmas = sigmas.flip(0)
        if sigmas[0] == 0:
            # Sampling upward cannot start from sigma 0.
            sigmas[0] = 0.0001
        return io.NodeOutput(sigmas)


class SetFirstSigma(_CustomSamplingNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="SetFirstSigma", category=SIGMAS_CATEGORY,
            inputs=[io.Sigmas.Input("sigmas"),
                    io.Float.Input("sigma", default=136.0, min=0.0, max=20000.0, step=0.001, round=False)],
            outputs=[io.Sigmas.Output()])

    @classmethod
    def execute(cls, sigmas, sigma) -> io.NodeOutput:
        sigmas = sigmas.clone()
        sigmas[0] = sigma
        return io.NodeOutput(sigmas)


_SPACINGS = {"linear": lambda x: x, "cosine": lambda x: (x * math.pi / 2).sin(),
             "sine": lambda x: 1 - (x * math.pi / 2).cos()}


class ExtendIntermediateSigmas(_CustomSamplingNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="ExtendIntermediateSigmas", search_aliases=["interpolate sigmas"], category=SIGMAS_CATEGORY,
            inputs=[io.Sigmas.Input("sigmas"), io.Int.Input("steps", default=2, min=1, max=100),
                    io.Float.Input("start_at_sigma", default=-1.0, min=-1.0, max=20000.0, step=0.01, round=False),
                    io.Float.Input("end_at_sigma", default=12.0, min=0.0, max=20000.0, step=0.01, round=False),
                    io.Combo.Input("spacing", options=list(_SPACINGS))],
            outputs=[io.Sigmas.Output()])

    @classmethod
    def execute(cls, sigmas, steps, start_at_sigma, end_at_sigma, spacing) -> io.NodeOutput:
        import torch

        if start_at_sigma < 0:
            start_at_sigma = float("inf")
        fractions = _SPACINGS[spacing](torch.linspace(0, 1, steps + 1, device=sigmas.device)[1:-1])
        extended: list[float] = []
        for current, following in zip(sigmas[:-1], sigmas[1:]):
            extended.append(current)
            if end_at_sigma <= current <= start_at_sigma:
                extended.extend((fractions * (following - current) + current).tolist())
        if len(sigmas) > 0:
            extended.append(sigmas[-1])
        return io.NodeOutput(torch.FloatTensor(extended))


class SamplingPercentToSigma(_CustomSamplingNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="SamplingPercentToSigma", category=SIGMAS_CATEGORY,
            inputs=[io.Model.Input("model"),
                    io.Float.Input("sampling_percent", default=0.0, min=0.0, max=1.0, step=0.0001),
                    io.Boolean.Input("return_actual_sigma", default=False,
                                     tooltip="Return the actual sigma value instead of the value used for interval "
                                             "checks.\nThis only affects results at 0.0 and 1.0.")],
            outputs=[io.Float.Output(display_name="sigma_value")])

    @classmethod
    def execute(cls, model, sampling_percent, return_actual_sigma) -> io.NodeOutput:
        model_sampling = model.get_model_object("model_sampling")
        sigma = model_sampling.percent_to_sigma(sampling_percent)
        if return_actual_sigma and sampling_percent == 0.0:
            sigma = model_sampling.sigma_max.item()
        elif return_actual_sigma and sampling_percent == 1.0:
            sigma = model_sampling.sigma_min.item()
        return io.NodeOutput(sigma)


class ManualSigmas(_CustomSamplingNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="ManualSigmas", search_aliases=["custom noise schedule", "define sigmas"],
            category="_for_testing/custom_sampling", is_experimental=True,
            inputs=[io.String.Input("sigmas", default="1, 0.5", multiline=False)], outputs=[io.Sigmas.Output()])

    @classmethod
    def execute(cls, sigmas) -> io.NodeOutput:
        import torch

        return io.NodeOutput(torch.FloatTensor([float(value) for value in re.findall(r"[-+]?(?:\d*\.*\d+)", sigmas)]))


# --- samplers -----------------------------------------------------------------------------------

class KSamplerSelect(_CustomSamplingNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(node_id="KSamplerSelect", category=SAMPLERS_CATEGORY,
                         inputs=[io.Combo.Input("sampler_name", options=SAMPLER_NAMES)],
                         outputs=[io.Sampler.Output()])

    @classmethod
    def execute(cls, sampler_name) -> io.NodeOutput:
        from comfyui_samplers import samplers

        return io.NodeOutput(samplers.sampler_object(sampler_name))


def _ksampler(sampler_name: str, extra_options: dict[str, Any]) -> KSAMPLER:
    """``samplers.ksampler``, imported when a node runs: the sampler implementations import torch."""
    from comfyui_samplers import samplers

    return samplers.ksampler(sampler_name, extra_options)


def _eta_noise_inputs(eta_max: float = 100.0, s_noise_max: float = 100.0) -> list:
    return [io.Float.Input("eta", default=1.0, min=0.0, max=eta_max, step=0.01, round=False),
            io.Float.Input("s_noise", default=1.0, min=0.0, max=s_noise_max, step=0.01, round=False)]


def _noise_device_input():
    return io.Combo.Input("noise_device", options=["gpu", "cpu"])


def _by_device(name: str, noise_device: str) -> str:
    return name if noise_device == "cpu" else f"{name}_gpu"


class SamplerDPMPP_3M_SDE(_CustomSamplingNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(node_id="SamplerDPMPP_3M_SDE", category=SAMPLERS_CATEGORY,
                         inputs=[*_eta_noise_inputs(), _noise_device_input()], outputs=[io.Sampler.Output()])

    @classmethod
    def execute(cls, eta, s_noise, noise_device) -> io.NodeOutput:
        return io.NodeOutput(_ksampler(_by_device("dpmpp_3m_sde", noise_device), {"eta": eta, "s_noise": s_noise}))


class SamplerDPMPP_2M_SDE(_CustomSamplingNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(node_id="SamplerDPMPP_2M_SDE", category=SAMPLERS_CATEGORY,
                         inputs=[io.Combo.Input("solver_type", options=["midpoint", "heun"]), *_eta_noise_inputs(),
                                 _noise_device_input()],
                         outputs=[io.Sampler.Output()])

    @classmethod
    def execute(cls, solver_type, eta, s_noise, noise_device) -> io.NodeOutput:
        return io.NodeOutput(_ksampler(_by_device("dpmpp_2m_sde", noise_device),
                                               {"eta": eta, "s_noise": s_noise, "solver_type": solver_type}))


class SamplerDPMPP_SDE(_CustomSamplingNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(node_id="SamplerDPMPP_SDE", category=SAMPLERS_CATEGORY,
                         inputs=[*_eta_noise_inputs(),
                                 io.Float.Input("r", default=0.5, min=0.0, max=100.0, step=0.01, round=False),
                                 _noise_device_input()],
                         outputs=[io.Sampler.Output()])

    @classmethod
    def execute(cls, eta, s_noise, r, noise_device) -> io.NodeOutput:
        return io.NodeOutput(_ksampler(_by_device("dpmpp_sde", noise_device),
                                               {"eta": eta, "s_noise": s_noise, "r": r}))


class SamplerDPMPP_2S_Ancestral(_CustomSamplingNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(node_id="SamplerDPMPP_2S_Ancestral", category=SAMPLERS_CATEGORY,
                         inputs=_eta_noise_inputs(), outputs=[io.Sampler.Output()])

    @classmethod
    def execute(cls, eta, s_noise) -> io.NodeOutput:
        return io.NodeOutput(_ksampler("dpmpp_2s_ancestral", {"eta": eta, "s_noise": s_noise}))


class SamplerEulerAncestral(_CustomSamplingNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(node_id="SamplerEulerAncestral", category=SAMPLERS_CATEGORY,
                         inputs=_eta_noise_inputs(), outputs=[io.Sampler.Output()])

    @classmethod
    def execute(cls, eta, s_noise) -> io.NodeOutput:
        return io.NodeOutput(_ksampler("euler_ancestral", {"eta": eta, "s_noise": s_noise}))


class SamplerEulerAncestralCFGPP(_CustomSamplingNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(node_id="SamplerEulerAncestralCFGPP", display_name="SamplerEulerAncestralCFG++",
                         category=SAMPLERS_CATEGORY, inputs=_eta_noise_inputs(eta_max=1.0, s_noise_max=10.0),
                         outputs=[io.Sampler.Output()])

    @classmethod
    def execute(cls, eta, s_noise) -> io.NodeOutput:
        return io.NodeOutput(_ksampler("euler_ancestral_cfg_pp", {"eta": eta, "s_noise": s_noise}))


class SamplerLMS(_CustomSamplingNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(node_id="SamplerLMS", category=SAMPLERS_CATEGORY,
                         inputs=[io.Int.Input("order", default=4, min=1, max=100)], outputs=[io.Sampler.Output()])

    @classmethod
    def execute(cls, order) -> io.NodeOutput:
        return io.NodeOutput(_ksampler("lms", {"order": order}))


class SamplerDPMAdaptative(_CustomSamplingNode):
    @classmethod
    def define_schema(cls):
        def number(name, default):
            return io.Float.Input(name, default=default, min=0.0, max=100.0, step=0.01, round=False)

        return io.Schema(
            node_id="SamplerDPMAdaptative", category=SAMPLERS_CATEGORY,
            inputs=[io.Int.Input("order", default=3, min=2, max=3), number("rtol", 0.05), number("atol", 0.0078),
                    number("h_init", 0.05), number("pcoeff", 0.0), number("icoeff", 1.0), number("dcoeff", 0.0),
                    number("accept_safety", 0.81), number("eta", 0.0), number("s_noise", 1.0)],
            outputs=[io.Sampler.Output()])

    @classmethod
    def execute(cls, order, rtol, atol, h_init, pcoeff, icoeff, dcoeff, accept_safety, eta, s_noise) -> io.NodeOutput:
        return io.NodeOutput(_ksampler("dpm_adaptive", {
            "order": order, "rtol": rtol, "atol": atol, "h_init": h_init, "pcoeff": pcoeff, "icoeff": icoeff,
            "dcoeff": dcoeff, "accept_safety": accept_safety, "eta": eta, "s_noise": s_noise}))


class SamplerER_SDE(_CustomSamplingNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="SamplerER_SDE", category=SAMPLERS_CATEGORY,
            inputs=[io.Combo.Input("solver_type", options=["ER-SDE", "Reverse-time SDE", "ODE"]),
                    io.Int.Input("max_stage", default=3, min=1, max=3),
                    io.Float.Input("eta", default=1.0, min=0.0, max=100.0, step=0.01, round=False,
                                   tooltip="Stochastic strength of reverse-time SDE.\nWhen eta=0, it reduces to "
                                           "deterministic ODE. This setting doesn't apply to ER-SDE solver type."),
                    io.Float.Input("s_noise", default=1.0, min=0.0, max=100.0, step=0.01, round=False)],
            outputs=[io.Sampler.Output()])

    @classmethod
    def execute(cls, solver_type, max_stage, eta, s_noise) -> io.NodeOutput:
        if solver_type == "ODE" or (solver_type == "Reverse-time SDE" and eta == 0):
            eta, s_noise = 0, 0
        noise_scaler = None  # ER-SDE's own scaler
        if solver_type != "ER-SDE":
            def noise_scaler(x):
                return x ** (eta + 1)
        return io.NodeOutput(_ksampler("er_sde", {"s_noise": s_noise, "noise_scaler": noise_scaler,
                                                          "max_stage": max_stage}))


class SamplerSASolver(_CustomSamplingNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="SamplerSASolver", category=SAMPLERS_CATEGORY,
            inputs=[io.Model.Input("model"),
                    io.Float.Input("eta", default=1.0, min=0.0, max=10.0, step=0.01, round=False),
                    io.Float.Input("sde_start_percent", default=0.2, min=0.0, max=1.0, step=0.001),
                    io.Float.Input("sde_end_percent", default=0.8, min=0.0, max=1.0, step=0.001),
                    io.Float.Input("s_noise", default=1.0, min=0.0, max=100.0, step=0.01, round=False),
                    io.Int.Input("predictor_order", default=3, min=1, max=6),
                    io.Int.Input("corrector_order", default=4, min=0, max=6),
                    io.Boolean.Input("use_pece"), io.Boolean.Input("simple_order_2")],
            outputs=[io.Sampler.Output()])

    @classmethod
    def execute(cls, model, eta, sde_start_percent, sde_end_percent, s_noise, predictor_order, corrector_order,
                use_pece, simple_order_2) -> io.NodeOutput:
        from comfyui_samplers import solver_coefficients

        model_sampling = model.get_model_object("model_sampling")
        tau_func = solver_coefficients.sa_solver_tau_interval(model_sampling.percent_to_sigma(sde_start_percent),
                                                              model_sampling.percent_to_sigma(sde_end_percent), eta=eta)
        return io.NodeOutput(_ksampler("sa_solver", {
            "tau_func": tau_func, "s_noise": s_noise, "predictor_order": predictor_order,
            "corrector_order": corrector_order, "use_pece": use_pece, "simple_order_2": simple_order_2}))


class SamplerSEEDS2(_CustomSamplingNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="SamplerSEEDS2", category=SAMPLERS_CATEGORY,
            inputs=[io.Combo.Input("solver_type", options=["phi_1", "phi_2"]),
                    io.Float.Input("eta", default=1.0, min=0.0, max=100.0, step=0.01, round=False,
                                   tooltip="Stochastic strength"),
                    io.Float.Input("s_noise", default=1.0, min=0.0, max=100.0, step=0.01, round=False,
                                   tooltip="SDE noise multiplier"),
                    io.Float.Input("r", default=0.5, min=0.01, max=1.0, step=0.01, round=False,
                                   tooltip="Relative step size for the intermediate stage (c2 node)")],
            outputs=[io.Sampler.Output()],
            description=("This sampler node can represent multiple samplers:\n\nseeds_2\n- default setting\n\n"
                         "exp_heun_2_x0\n- solver_type=phi_2, r=1.0, eta=0.0\n\nexp_heun_2_x0_sde\n"
                         "- solver_type=phi_2, r=1.0, eta=1.0, s_noise=1.0"))

    @classmethod
    def execute(cls, solver_type, eta, s_noise, r) -> io.NodeOutput:
        return io.NodeOutput(_ksampler("seeds_2", {"eta": eta, "s_noise": s_noise, "r": r,
                                                           "solver_type": solver_type}))


# --- noise and guiders ---------------------------------------------------------------------------

class RandomNoise(_CustomSamplingNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(node_id="RandomNoise", category=NOISE_CATEGORY,
                         inputs=[io.Int.Input("noise_seed", default=0, min=0, max=SEED_MAX, control_after_generate=True)],
                         outputs=[io.Noise.Output()])

    @classmethod
    def execute(cls, noise_seed) -> io.NodeOutput:
        return io.NodeOutput(Noise_RandomNoise(noise_seed))


class DisableNoise(_CustomSamplingNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(node_id="DisableNoise", search_aliases=["zero noise"], category=NOISE_CATEGORY, inputs=[],
                         outputs=[io.Noise.Output()])

    @classmethod
    def execute(cls) -> io.NodeOutput:
        return io.NodeOutput(Noise_EmptyNoise())


class BasicGuider(_CustomSamplingNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(node_id="BasicGuider", category=GUIDERS_CATEGORY,
                         inputs=[io.Model.Input("model"), io.Conditioning.Input("conditioning")],
                         outputs=[io.Guider.Output()])

    @classmethod
    def execute(cls, model, conditioning) -> io.NodeOutput:
        from comfyui_samplers import guidance

        guider = guidance.Guider_Basic(model)
        guider.set_conds(conditioning)
        return io.NodeOutput(guider)


class CFGGuider(_CustomSamplingNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(node_id="CFGGuider", category=GUIDERS_CATEGORY,
                         inputs=[io.Model.Input("model"), io.Conditioning.Input("positive"),
                                 io.Conditioning.Input("negative"),
                                 io.Float.Input("cfg", default=8.0, min=0.0, max=100.0, step=0.1, round=0.01)],
                         outputs=[io.Guider.Output()])

    @classmethod
    def execute(cls, model, positive, negative, cfg) -> io.NodeOutput:
        from comfyui_samplers import guidance

        guider = guidance.CFGGuider(model)
        guider.set_conds(positive, negative)
        guider.set_cfg(cfg)
        return io.NodeOutput(guider)


class DualCFGGuider(_CustomSamplingNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="DualCFGGuider", search_aliases=["dual prompt guidance"], category=GUIDERS_CATEGORY,
            inputs=[io.Model.Input("model"), io.Conditioning.Input("cond1"), io.Conditioning.Input("cond2"),
                    io.Conditioning.Input("negative"),
                    io.Float.Input("cfg_conds", default=8.0, min=0.0, max=100.0, step=0.1, round=0.01),
                    io.Float.Input("cfg_cond2_negative", default=8.0, min=0.0, max=100.0, step=0.1, round=0.01),
                    io.Combo.Input("style", options=["regular", "nested"])],
            outputs=[io.Guider.Output()])

    @classmethod
    def execute(cls, model, cond1, cond2, negative, cfg_conds, cfg_cond2_negative, style) -> io.NodeOutput:
        from comfyui_samplers import guidance

        guider = guidance.Guider_DualCFG(model)
        guider.set_conds(cond1, cond2, negative)
        guider.set_cfg(cfg_conds, cfg_cond2_negative, nested=style == "nested")
        return io.NodeOutput(guider)


# --- custom sampling ------------------------------------------------------------------------------

def _denoised_output(model_patcher, latent: dict, out: dict, x0_output: dict) -> dict:
    """The last denoised prediction as a LATENT (``denoised_output``), or the output itself."""
    if "x0" not in x0_output:
        return out
    denoised = dict(latent)
    denoised["samples"] = model_patcher.model.process_latent_out(x0_output["x0"].cpu())
    return denoised


def _latent_outputs():
    return [io.Latent.Output(display_name="output"), io.Latent.Output(display_name="denoised_output")]


class SamplerCustom(_CustomSamplingNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="SamplerCustom", category="sampling/custom_sampling",
            inputs=[io.Model.Input("model"), io.Boolean.Input("add_noise", default=True),
                    io.Int.Input("noise_seed", default=0, min=0, max=SEED_MAX, control_after_generate=True),
                    io.Float.Input("cfg", default=8.0, min=0.0, max=100.0, step=0.1, round=0.01),
                    io.Conditioning.Input("positive"), io.Conditioning.Input("negative"),
                    io.Sampler.Input("sampler"), io.Sigmas.Input("sigmas"), io.Latent.Input("latent_image")],
            outputs=_latent_outputs())

    @classmethod
    def execute(cls, model, add_noise, noise_seed, cfg, positive, negative, sampler, sigmas,
                latent_image) -> io.NodeOutput:
        from comfyui_samplers.sample import fix_empty_latent_channels, prepare_callback, sample_custom

        latent = dict(latent_image)
        latent["samples"] = fix_empty_latent_channels(model, latent["samples"])
        noise = (Noise_RandomNoise(noise_seed) if add_noise else Noise_EmptyNoise()).generate_noise(latent)
        x0_output: dict = {}
        callback = prepare_callback(model, sigmas.shape[-1] - 1, x0_output)
        samples = sample_custom(model, noise, cfg, sampler, sigmas, positive, negative, latent["samples"],
                                noise_mask=latent.get("noise_mask"), callback=callback, seed=noise_seed)
        out = dict(latent, samples=samples)
        return io.NodeOutput(out, _denoised_output(model, latent, out, x0_output))


class SamplerCustomAdvanced(_CustomSamplingNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="SamplerCustomAdvanced", category="sampling/custom_sampling",
            inputs=[io.Noise.Input("noise"), io.Guider.Input("guider"), io.Sampler.Input("sampler"),
                    io.Sigmas.Input("sigmas"), io.Latent.Input("latent_image")],
            outputs=_latent_outputs())

    @classmethod
    def execute(cls, noise, guider, sampler, sigmas, latent_image) -> io.NodeOutput:
        from comfyui_core_nodes import model_management
        from comfyui_samplers.sample import fix_empty_latent_channels, prepare_callback

        latent = dict(latent_image)
        latent["samples"] = fix_empty_latent_channels(guider.model_patcher, latent["samples"])
        x0_output: dict = {}
        callback = prepare_callback(guider.model_patcher, sigmas.shape[-1] - 1, x0_output)
        samples = guider.sample(noise.generate_noise(latent), latent["samples"], sampler, sigmas,
                                denoise_mask=latent.get("noise_mask"), callback=callback, seed=noise.seed)
        out = dict(latent, samples=samples.to(model_management.intermediate_device()))
        return io.NodeOutput(out, _denoised_output(guider.model_patcher, latent, out, x0_output))


class AddNoise(_CustomSamplingNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="AddNoise", category="_for_testing/custom_sampling/noise", is_experimental=True,
            inputs=[io.Model.Input("model"), io.Noise.Input("noise"), io.Sigmas.Input("sigmas"),
                    io.Latent.Input("latent_image")],
            outputs=[io.Latent.Output()])

    @classmethod
    def execute(cls, model, noise, sigmas, latent_image) -> io.NodeOutput:
        import torch

        if len(sigmas) == 0:
            return io.NodeOutput(latent_image)
        samples = latent_image["samples"]
        noisy = noise.generate_noise(latent_image)
        base_model = model.model
        scale = torch.abs(sigmas[0] - sigmas[-1]) if len(sigmas) > 1 else sigmas[0]
        if torch.count_nonzero(samples) > 0:
            samples = base_model.process_latent_in(samples)
        noisy = model.get_model_object("model_sampling").noise_scaling(scale, noisy, samples)
        noisy = torch.nan_to_num(base_model.process_latent_out(noisy), nan=0.0, posinf=0.0, neginf=0.0)
        return io.NodeOutput(dict(latent_image, samples=noisy))


CUSTOM_SAMPLING_NODES: list[type[_CustomSamplingNode]] = [
    SamplerCustom, BasicScheduler, KarrasScheduler, ExponentialScheduler, PolyexponentialScheduler, LaplaceScheduler,
    VPScheduler, BetaSamplingScheduler, SDTurboScheduler, KSamplerSelect, SamplerEulerAncestral,
    SamplerEulerAncestralCFGPP, SamplerLMS, SamplerDPMPP_3M_SDE, SamplerDPMPP_2M_SDE, SamplerDPMPP_SDE,
    SamplerDPMPP_2S_Ancestral, SamplerDPMAdaptative, SamplerER_SDE, SamplerSASolver, SamplerSEEDS2, SplitSigmas,
    SplitSigmasDenoise, FlipSigmas, SetFirstSigma, ExtendIntermediateSigmas, SamplingPercentToSigma, CFGGuider,
    DualCFGGuider, BasicGuider, RandomNoise, DisableNoise, AddNoise, SamplerCustomAdvanced, ManualSigmas,
]

NODE_CLASS_MAPPINGS = {
    "KSampler": KSampler,
    "KSamplerAdvanced": KSamplerAdvanced,
    **{node.define_schema().node_id: node for node in CUSTOM_SAMPLING_NODES},
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "KSampler": "KSampler",
    "KSamplerAdvanced": "KSampler (Advanced)",
}

# The legacy module's guider classes build on the torch-backed CFGGuider: they load when first asked for.
_GUIDER_CLASSES = ("Guider_Basic", "Guider_DualCFG")


def __getattr__(name: str) -> Any:
    if name in _GUIDER_CLASSES:
        from comfyui_samplers import guidance

        return getattr(guidance, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
