"""Every sampler of KSampler's list on an exact Gaussian denoiser: convergence, seeds, guidance, masks."""
from __future__ import annotations

import math

import pytest
import torch

from analytic_model import DATA_STD, GaussianDenoiser, TinyPatcher, conditioning, exact_ode_end
from comfy.execution_context import ExecutionContext, InterruptProcessingException, enter_execution, leave_execution
from comfyui_samplers import k_sampling, samplers
from comfyui_samplers.noise import prepare_noise

# ComfyUI's KSampler sampler combo, in its order.
COMFYUI_SAMPLER_NAMES = [
    "euler", "euler_cfg_pp", "euler_ancestral", "euler_ancestral_cfg_pp", "heun", "heunpp2", "exp_heun_2_x0",
    "exp_heun_2_x0_sde", "dpm_2", "dpm_2_ancestral", "lms", "dpm_fast", "dpm_adaptive", "dpmpp_2s_ancestral",
    "dpmpp_2s_ancestral_cfg_pp", "dpmpp_sde", "dpmpp_sde_gpu", "dpmpp_2m", "dpmpp_2m_cfg_pp", "dpmpp_2m_sde",
    "dpmpp_2m_sde_gpu", "dpmpp_2m_sde_heun", "dpmpp_2m_sde_heun_gpu", "dpmpp_3m_sde", "dpmpp_3m_sde_gpu", "ddpm",
    "lcm", "ipndm", "ipndm_v", "deis", "res_multistep", "res_multistep_cfg_pp", "res_multistep_ancestral",
    "res_multistep_ancestral_cfg_pp", "gradient_estimation", "gradient_estimation_cfg_pp", "er_sde", "seeds_2",
    "seeds_3", "sa_solver", "sa_solver_pece", "ddim", "uni_pc", "uni_pc_bh2",
]

# Deterministic samplers follow the probability-flow ODE; these to within 0.02 in 30 steps.
HIGH_ORDER = {"heun", "exp_heun_2_x0", "dpm_2", "lms", "dpm_fast", "dpm_adaptive", "dpmpp_2m", "ipndm", "ipndm_v",
              "deis", "res_multistep", "uni_pc", "uni_pc_bh2"}
FIRST_ORDER = {"euler", "ddim", "heunpp2", "gradient_estimation"}

POSITIVE_MEAN, NEGATIVE_MEAN = 1.0, -1.0
SHAPE = (1, 4, 32, 32)


@pytest.fixture
def patcher() -> TinyPatcher:
    return TinyPatcher(GaussianDenoiser())


def run(patcher, name: str, seed: int = 42, cfg: float = 2.0, steps: int = 30, scheduler: str = "karras",
        latent=None, positive=None, negative=None, **kwargs):
    latent = torch.zeros(SHAPE) if latent is None else latent
    ksampler = samplers.KSampler(patcher, steps=steps, device="cpu", sampler=name, scheduler=scheduler)
    noise = prepare_noise(latent, seed)
    positive = conditioning(POSITIVE_MEAN) if positive is None else positive
    negative = conditioning(NEGATIVE_MEAN) if negative is None else negative
    out = ksampler.sample(noise, positive, negative, cfg, latent_image=latent, seed=seed, disable_pbar=True, **kwargs)
    return out, noise, ksampler.sigmas


def test_sampler_names_are_comfyuis_in_order():
    assert samplers.SAMPLER_NAMES == COMFYUI_SAMPLER_NAMES
    assert samplers.KSAMPLER_NAMES == COMFYUI_SAMPLER_NAMES[:-3]
    assert samplers.KSampler.SAMPLERS == COMFYUI_SAMPLER_NAMES


@pytest.mark.parametrize("name", COMFYUI_SAMPLER_NAMES)
def test_sampler_converges_to_the_data_distribution(patcher, name):
    if "cfg_pp" in name:
        # CFG++ renoises along the negative's prediction: with both prompts alike it samples their data.
        cfg, negative = 1.0, conditioning(POSITIVE_MEAN)
        guided_mean = POSITIVE_MEAN
    else:
        cfg, negative = 2.0, None
        guided_mean = NEGATIVE_MEAN + (POSITIVE_MEAN - NEGATIVE_MEAN) * cfg
    out, noise, sigmas = run(patcher, name, cfg=cfg, negative=negative)
    assert torch.isfinite(out).all()
    assert out.mean().item() == pytest.approx(guided_mean, abs=0.15)
    assert out.std().item() == pytest.approx(DATA_STD, abs=0.1) or name == "lcm"
    if name in HIGH_ORDER | FIRST_ORDER:
        start = float(sigmas[0])
        expected = exact_ode_end(noise * math.sqrt(1 + start ** 2), start, guided_mean)
        tolerance = 0.02 if name in HIGH_ORDER else 0.15
        assert (out - expected).abs().max().item() < tolerance


@pytest.mark.parametrize("name", ["euler", "euler_ancestral", "dpmpp_sde", "dpmpp_2m_sde_gpu", "dpmpp_3m_sde",
                                  "ddpm", "er_sde", "sa_solver", "uni_pc"])
def test_same_seed_same_result_other_seed_differs(patcher, name):
    first, _, _ = run(patcher, name, seed=7)
    second, _, _ = run(patcher, name, seed=7)
    other, _, _ = run(patcher, name, seed=8)
    assert torch.equal(first, second)
    assert not torch.allclose(first, other)


def test_ancestral_noise_is_seeded_from_seed_plus_one_on_the_cpu():
    x = torch.zeros(2, 4, 8, 8)
    sampler = k_sampling.default_noise_sampler(x, seed=5)
    expected = torch.randn(x.size(), generator=torch.Generator().manual_seed(6))
    assert torch.equal(sampler(torch.tensor(1.0), torch.tensor(0.5)), expected)


def test_brownian_tree_noise_is_reproducible_and_unit_variance():
    x = torch.zeros(1, 4, 32, 32)
    first = k_sampling.BrownianTreeNoiseSampler(x, torch.tensor(0.03), torch.tensor(14.6), seed=3, cpu=True)
    second = k_sampling.BrownianTreeNoiseSampler(x, torch.tensor(0.03), torch.tensor(14.6), seed=3, cpu=True)
    step = (torch.tensor(10.0), torch.tensor(5.0))
    noise = first(*step)
    assert torch.equal(noise, second(*step))
    assert noise.std().item() == pytest.approx(1.0, abs=0.1)
    batched = k_sampling.BrownianTreeNoiseSampler(torch.zeros(2, 4, 8, 8), torch.tensor(0.03), torch.tensor(14.6),
                                                  seed=[3, 4], cpu=True)
    pair = batched(*step)
    assert pair.shape == (2, 4, 8, 8) and not torch.equal(pair[0], pair[1])


def test_karras_sigmas_are_discarded_penultimate_for_dpm_2(patcher):
    ksampler = samplers.KSampler(patcher, steps=10, device="cpu", sampler="dpm_2", scheduler="karras")
    full = k_sampling.get_sigmas_karras(11, float(patcher.model.model_sampling.sigma_min),
                                        float(patcher.model.model_sampling.sigma_max))
    assert torch.equal(ksampler.sigmas, torch.cat([full[:-2], full[-1:]]))


def test_denoise_below_one_keeps_the_tail_of_a_longer_schedule(patcher):
    ksampler = samplers.KSampler(patcher, steps=10, device="cpu", sampler="euler", scheduler="normal", denoise=0.5)
    longer = samplers.KSampler(patcher, steps=20, device="cpu", sampler="euler", scheduler="normal")
    assert torch.equal(ksampler.sigmas, longer.sigmas[-11:])


def img2img(patcher, latent, denoise):
    ksampler = samplers.KSampler(patcher, steps=10, device="cpu", sampler="euler", scheduler="normal", denoise=denoise)
    return ksampler.sample(prepare_noise(latent, 1), conditioning(POSITIVE_MEAN), conditioning(NEGATIVE_MEAN), 1.0,
                           latent_image=latent, seed=1, disable_pbar=True)


def test_img2img_denoise_sets_how_far_the_latent_moves(patcher):
    latent = torch.full(SHAPE, 0.3)
    light, strong, full = (img2img(patcher, latent, denoise) for denoise in (0.05, 0.6, 1.0))
    assert (light - latent).abs().mean().item() < 0.25
    assert (light - latent).abs().mean().item() < (strong - latent).abs().mean().item()
    assert full.mean().item() == pytest.approx(POSITIVE_MEAN, abs=0.15)
    assert img2img(patcher, latent, 0.0) is latent


def test_start_and_end_steps_split_a_run(patcher):
    latent = torch.zeros(SHAPE)
    noise = prepare_noise(latent, 11)
    positive, negative = conditioning(POSITIVE_MEAN), conditioning(NEGATIVE_MEAN)
    whole = samplers.KSampler(patcher, steps=20, device="cpu", sampler="euler", scheduler="normal")
    full = whole.sample(noise, positive, negative, 2.0, latent_image=latent, seed=11, disable_pbar=True)
    first_half = samplers.KSampler(patcher, steps=20, device="cpu", sampler="euler", scheduler="normal").sample(
        noise, positive, negative, 2.0, latent_image=latent, last_step=10, force_full_denoise=False, seed=11,
        disable_pbar=True)
    second_half = samplers.KSampler(patcher, steps=20, device="cpu", sampler="euler", scheduler="normal").sample(
        torch.zeros_like(noise), positive, negative, 2.0, latent_image=first_half, start_step=10, seed=11,
        disable_pbar=True)
    assert torch.allclose(second_half, full, atol=1e-4)
    # Past the last step there is nothing to do: the latent comes back unchanged.
    untouched = whole.sample(noise, positive, negative, 2.0, latent_image=first_half, start_step=20, seed=11)
    assert untouched is first_half


def test_inpainting_changes_only_the_masked_region(patcher):
    latent = torch.full(SHAPE, 0.3)
    mask = torch.zeros(1, 32, 32)
    mask[:, :, :16] = 1.0
    out, _, _ = run(patcher, "dpmpp_2m", cfg=1.0, latent=latent, denoise_mask=mask)
    assert torch.equal(out[..., 16:], latent[..., 16:])
    assert out[..., :14].mean().item() == pytest.approx(POSITIVE_MEAN, abs=0.15)


def test_ddim_inpainting_keeps_the_unmasked_part_noised_by_its_own_seed(patcher):
    ddim = samplers.sampler_object("ddim")
    assert ddim.sampler_function is k_sampling.sample_euler and ddim.inpaint_options == {"random": True}
    seen = {}

    def record(model, x, sigmas, extra_args=None, callback=None, disable=None):
        seen["noise"] = model.noise
        return x

    latent = torch.full(SHAPE, 0.3)
    sigmas = samplers.calculate_sigmas(patcher.model.model_sampling, "normal", 4)
    samplers.sample(patcher, prepare_noise(latent, 9), conditioning(1.0), conditioning(1.0), 1.0, "cpu",
                    samplers.KSAMPLER(record, inpaint_options={"random": True}), sigmas, latent_image=latent,
                    denoise_mask=torch.ones(1, 32, 32), seed=9)
    assert torch.equal(seen["noise"], torch.randn(SHAPE, generator=torch.Generator().manual_seed(10)))


def test_area_conditioning_applies_to_its_region(patcher):
    # The second positive covers the left half of the latent (area in latent pixels: h, w, y, x).
    positive = conditioning(1.0) + conditioning(-2.0, area=(32, 16, 0, 0), strength=1.0)
    out, _, _ = run(patcher, "dpmpp_2m", cfg=1.0, positive=positive)
    right = out[..., 24:].mean().item()
    left = out[..., :8].mean().item()
    assert right == pytest.approx(1.0, abs=0.15)
    # Where both apply they are averaged by weight.
    assert left == pytest.approx(-0.5, abs=0.15)


def test_mask_conditioning_with_strength(patcher):
    mask = torch.zeros(1, 32, 32)
    mask[:, 16:, :] = 1.0
    positive = conditioning(1.0) + conditioning(-3.0, mask=mask, strength=3.0)
    out, _, _ = run(patcher, "dpmpp_2m", cfg=1.0, positive=positive)
    top = out[:, :, :16].mean().item()
    bottom = out[:, :, 16:].mean().item()
    assert top == pytest.approx(1.0, abs=0.15)
    assert bottom == pytest.approx((1.0 - 3.0 * 3.0) / 4.0, abs=0.2)


def test_timestep_ranges_switch_conditionings(patcher):
    early_then_late = conditioning(3.0, start_percent=0.0, end_percent=0.5) + conditioning(
        -1.0, start_percent=0.5, end_percent=1.0)
    out, _, _ = run(patcher, "dpmpp_2m", cfg=1.0, positive=early_then_late)
    early_only, _, _ = run(patcher, "dpmpp_2m", cfg=1.0, positive=conditioning(3.0))
    late_only, _, _ = run(patcher, "dpmpp_2m", cfg=1.0, positive=conditioning(-1.0))
    # The early conditioning steers the path at high noise, the late one decides the details.
    assert late_only.mean().item() < out.mean().item() < early_only.mean().item()
    assert abs(out.mean().item() - late_only.mean().item()) > 0.5


def test_cfg_one_skips_the_negative(patcher):
    run(patcher, "euler", cfg=1.0, steps=5)
    one = patcher.model.calls
    patcher.model.calls = 0
    run(patcher, "euler", cfg=3.0, steps=5)
    # cond and uncond are batched into one model call either way.
    assert one == patcher.model.calls == 5


def test_sampler_cfg_and_post_cfg_hooks_of_model_options(patcher):
    seen = []

    def only_positive(args):
        return args["cond"]  # x - positive prediction: the result is the positive prediction

    def post(args):
        seen.append(args["cond_scale"])
        return args["denoised"]

    patcher.model_options = {"transformer_options": {}, "sampler_cfg_function": only_positive,
                             "sampler_post_cfg_function": [post]}
    out, _, _ = run(patcher, "dpmpp_2m", cfg=5.0)
    assert out.mean().item() == pytest.approx(POSITIVE_MEAN, abs=0.15)
    assert seen and set(seen) == {5.0}


def test_interrupt_stops_sampling(patcher):
    context = ExecutionContext(prompt_id="p", emit=lambda event, data: None)
    context.interrupted.set()
    token = enter_execution(context)
    try:
        with pytest.raises(InterruptProcessingException):
            run(patcher, "euler", steps=5)
    finally:
        leave_execution(context, token)


def test_custom_sampler_function_sees_comfyuis_model_chain(patcher):
    seen = {}

    def my_sampler(model, x, sigmas, extra_args=None, callback=None, disable=None):
        seen["model_sampling"] = model.inner_model.inner_model.model_sampling
        seen["patcher"] = model.inner_model.model_patcher
        return k_sampling.sample_euler(model, x, sigmas, extra_args=extra_args, callback=callback, disable=disable)

    latent = torch.zeros(SHAPE)
    sigmas = samplers.calculate_sigmas(patcher.model.model_sampling, "karras", 10)
    steps = []
    out = samplers.sample(patcher, prepare_noise(latent, 3), conditioning(1.0), conditioning(-1.0), 2.0, "cpu",
                          samplers.KSAMPLER(my_sampler), sigmas, latent_image=latent, seed=3,
                          callback=lambda i, x0, x, total: steps.append((i, total)))
    assert seen["patcher"] is patcher and seen["model_sampling"] is patcher.model.model_sampling
    assert steps == [(i, 10) for i in range(10)]
    assert out.mean().item() == pytest.approx(3.0, abs=0.2)


def test_unknown_sampler_is_a_clear_error():
    with pytest.raises(samplers.UnknownSamplerError, match="no_such_sampler"):
        samplers.ksampler("no_such_sampler")
