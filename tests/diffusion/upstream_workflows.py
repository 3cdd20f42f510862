"""The workflows run on upstream ComfyUI and on ours, in ComfyUI's API format (node id -> class_type, inputs).

One table for the reference generator (upstream/generate_reference.py) and the parity test. Every
workflow ends in a SaveImage node with id "save" whose filename_prefix is the workflow's name.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from upstream_models import INPUT_IMAGE

# ComfyUI 0.3.64's KSampler choices (the generator checks them against upstream's /object_info).
SAMPLERS = ("euler", "euler_cfg_pp", "euler_ancestral", "euler_ancestral_cfg_pp", "heun", "heunpp2", "dpm_2",
            "dpm_2_ancestral", "lms", "dpm_fast", "dpm_adaptive", "dpmpp_2s_ancestral", "dpmpp_2s_ancestral_cfg_pp",
            "dpmpp_sde", "dpmpp_sde_gpu", "dpmpp_2m", "dpmpp_2m_cfg_pp", "dpmpp_2m_sde", "dpmpp_2m_sde_gpu",
            "dpmpp_2m_sde_heun", "dpmpp_2m_sde_heun_gpu", "dpmpp_3m_sde", "dpmpp_3m_sde_gpu", "ddpm", "lcm", "ipndm",
            "ipndm_v", "deis", "res_multistep", "res_multistep_cfg_pp", "res_multistep_ancestral",
            "res_multistep_ancestral_cfg_pp", "gradient_estimation", "gradient_estimation_cfg_pp", "er_sde",
            "seeds_2", "seeds_3", "sa_solver", "sa_solver_pece", "ddim", "uni_pc", "uni_pc_bh2")
SCHEDULERS = ("simple", "sgm_uniform", "karras", "exponential", "ddim_uniform", "beta", "normal", "linear_quadratic",
              "kl_optimal")

POSITIVE = "a lighthouse on a rocky coast at dusk, oil painting"
NEGATIVE = "blurry, low quality"
# Emphasis, de-emphasis, an escaped bracket and more than 77 tokens (two CLIP chunks).
LONG_WEIGHTED = ("(a lighthouse:1.3) on a [rocky] coast at dusk, ((stormy sky)), \\(oil\\) painting, "
                 + ", ".join(f"detail {word}" for word in ("waves", "foam", "gulls", "rain", "lamp", "rocks", "moss",
                                                           "sails", "boats", "cliffs", "clouds", "wind", "spray",
                                                           "light", "beam", "dusk", "stars", "moon", "shore",
                                                           "sand", "pier", "rope", "flags", "mist", "glow"))
                 + ", (masterpiece:0.8)")
SIZE = 64
SEED = 123456789
STEPS = 4
CFG = 6.0

# Which server configuration and models a workflow needs; SDXL's run with --fp16-unet so that base and
# refiner fit in memory together (fp16 weights, computed in fp32 on the CPU: the same numbers as fp32).
GROUP_OPTIONS: dict[str, dict[str, Any]] = {
    "sd15": {},
    "sd15_inpainting": {},
    "sd21": {},
    "sdxl": {"fp16_unet": True},
}
GROUP_MODELS: dict[str, tuple[str, ...]] = {
    "sd15": ("sd15", "lora_sd15", "controlnet_sd15", "t2i_adapter_sd15", "control_lora_sd15"),
    "sd15_inpainting": ("sd15_inpainting",),
    "sd21": ("sd21_768v",),
    "sdxl": ("sdxl_base", "sdxl_refiner"),
}


@dataclass(frozen=True)
class Workflow:
    name: str
    group: str
    prompt: dict[str, dict[str, Any]]


class _Prompt:
    """Builds an API-format prompt node by node; ``add`` returns the new node's first output."""

    def __init__(self) -> None:
        self.nodes: dict[str, dict[str, Any]] = {}

    def add(self, node_id: str, class_type: str, output: int = 0, **inputs: Any) -> list:
        self.nodes[node_id] = {"class_type": class_type, "inputs": inputs}
        return [node_id, output]

    def finish(self, name: str, latent: list, vae: list) -> dict[str, dict[str, Any]]:
        image = self.add("decode", "VAEDecode", samples=latent, vae=vae)
        self.add("save", "SaveImage", images=image, filename_prefix=name)
        return self.nodes


def _sd15(name: str, *, sampler: str = "euler", scheduler: str = "normal", steps: int = STEPS,
          positive: str = POSITIVE, clip_skip: int | None = None, lora: bool = False, source: str = "empty",
          denoise: float = 1.0, control: str | None = None, ckpt: str = "sd15.safetensors",
          patch: tuple[str, dict[str, Any]] | None = None, group: str = "sd15") -> Workflow:
    p = _Prompt()
    model, clip, vae = ([p.add("ckpt", "CheckpointLoaderSimple", index, ckpt_name=ckpt)[0], index]
                        for index in range(3))
    if patch is not None:
        model = p.add("patch", patch[0], model=model, **patch[1])
    if lora:
        model = p.add("lora", "LoraLoader", 0, model=model, clip=clip, lora_name="lora_sd15.safetensors",
                      strength_model=0.8, strength_clip=0.8)
        clip = ["lora", 1]
    if clip_skip is not None:
        clip = p.add("skip", "CLIPSetLastLayer", clip=clip, stop_at_clip_layer=clip_skip)
    pos = p.add("pos", "CLIPTextEncode", text=positive, clip=clip)
    neg = p.add("neg", "CLIPTextEncode", text=NEGATIVE, clip=clip)
    if source == "empty":
        latent = p.add("latent", "EmptyLatentImage", width=SIZE, height=SIZE, batch_size=1)
    else:
        pixels = p.add("load", "LoadImage", image=INPUT_IMAGE)
        mask = ["load", 1]
        if source == "inpaint_model_input":
            latent = p.add("latent", "VAEEncodeForInpaint", pixels=pixels, vae=vae, mask=mask, grow_mask_by=6)
        elif source == "inpaint_model_conditioning":
            pos = p.add("latent", "InpaintModelConditioning", 0, positive=pos, negative=neg, vae=vae, pixels=pixels,
                        mask=mask, noise_mask=True)
            neg, latent = ["latent", 1], ["latent", 2]
        else:
            latent = p.add("latent", "VAEEncode", pixels=pixels, vae=vae)
        if source == "soft_noise_mask":
            mask = p.add("feather", "FeatherMask", mask=mask, left=8, top=8, right=8, bottom=8)
        if source in ("noise_mask", "soft_noise_mask"):
            latent = p.add("masked", "SetLatentNoiseMask", samples=latent, mask=mask)
    if control in ("controlnet", "control_lora"):
        hint = p.add("hint", "LoadImage", image=INPUT_IMAGE)
        net = p.add("cnet", "ControlNetLoader", control_net_name=f"{control}_sd15.safetensors")
        pos = p.add("apply", "ControlNetApplyAdvanced", 0, positive=pos, negative=neg, control_net=net, image=hint,
                    strength=0.9, start_percent=0.0, end_percent=0.8)
        neg = ["apply", 1]
    elif control == "t2i_adapter":
        hint = p.add("hint", "LoadImage", image=INPUT_IMAGE)
        net = p.add("cnet", "ControlNetLoader", control_net_name="t2i_adapter_sd15.safetensors")
        pos = p.add("apply", "ControlNetApply", conditioning=pos, control_net=net, image=hint, strength=0.8)
    sampled = p.add("sample", "KSampler", model=model, seed=SEED, steps=steps, cfg=CFG, sampler_name=sampler,
                    scheduler=scheduler, positive=pos, negative=neg, latent_image=latent, denoise=denoise)
    return Workflow(name, group, p.finish(name, sampled, vae))


def _txt2img_inputs(p: _Prompt, ckpt: str) -> tuple[list, list, list, list, list]:
    """A checkpoint's MODEL and VAE, the positive and negative prompts encoded, an empty latent."""
    model, clip, vae = ([p.add("ckpt", "CheckpointLoaderSimple", index, ckpt_name=ckpt)[0], index]
                        for index in range(3))
    pos = p.add("pos", "CLIPTextEncode", text=POSITIVE, clip=clip)
    neg = p.add("neg", "CLIPTextEncode", text=NEGATIVE, clip=clip)
    latent = p.add("latent", "EmptyLatentImage", width=SIZE, height=SIZE, batch_size=1)
    return model, vae, pos, neg, latent


def _sd15_advanced(name: str) -> Workflow:
    """Two KSamplerAdvanced passes: the first stops at step 3 of 6 with its leftover noise, the second finishes."""
    p = _Prompt()
    model, vae, pos, neg, latent = _txt2img_inputs(p, "sd15.safetensors")
    common = dict(model=model, noise_seed=SEED, steps=6, cfg=CFG, sampler_name="dpmpp_2m", scheduler="karras",
                  positive=pos, negative=neg)
    first = p.add("first", "KSamplerAdvanced", add_noise="enable", latent_image=latent, start_at_step=0,
                  end_at_step=3, return_with_leftover_noise="enable", **common)
    second = p.add("second", "KSamplerAdvanced", add_noise="disable", latent_image=first, start_at_step=3,
                   end_at_step=10000, return_with_leftover_noise="disable", **common)
    return Workflow(name, "sd15", p.finish(name, second, vae))


EULER_ANCESTRAL = ("KSamplerSelect", {"sampler_name": "euler_ancestral"})
# KSampler's dpm_adaptive (rtol 0.05) takes over 80 model calls on these random weights: loose tolerances here.
DPM_ADAPTIVE_LOOSE = ("SamplerDPMAdaptative", {"order": 3, "rtol": 0.5, "atol": 0.2, "h_init": 0.05, "pcoeff": 0.0,
                                               "icoeff": 1.0, "dcoeff": 0.0, "accept_safety": 0.81, "eta": 0.0,
                                               "s_noise": 1.0})


def _sd15_custom(name: str, advanced: bool, sampler_node: tuple[str, dict[str, Any]] = EULER_ANCESTRAL) -> Workflow:
    """SamplerCustom (Karras sigmas) or SamplerCustomAdvanced (RandomNoise, CFGGuider, BasicScheduler)."""
    p = _Prompt()
    model, vae, pos, neg, latent = _txt2img_inputs(p, "sd15.safetensors")
    if advanced:
        sampler = p.add("select", "KSamplerSelect", sampler_name="dpmpp_2m_sde")
        sigmas = p.add("sigmas", "BasicScheduler", model=model, scheduler="exponential", steps=5, denoise=1.0)
        noise = p.add("noise", "RandomNoise", noise_seed=SEED)
        guider = p.add("guider", "CFGGuider", model=model, positive=pos, negative=neg, cfg=CFG)
        sampled = p.add("sample", "SamplerCustomAdvanced", noise=noise, guider=guider, sampler=sampler,
                        sigmas=sigmas, latent_image=latent)
    else:
        sampler = p.add("select", sampler_node[0], **sampler_node[1])
        sigmas = p.add("sigmas", "KarrasScheduler", steps=5, sigma_max=14.614642, sigma_min=0.0291675, rho=7.0)
        sampled = p.add("sample", "SamplerCustom", model=model, add_noise=True, noise_seed=SEED, cfg=CFG,
                        positive=pos, negative=neg, sampler=sampler, sigmas=sigmas, latent_image=latent)
    return Workflow(name, "sd15", p.finish(name, sampled, vae))


def _sd21_v(name: str, sampler: str, scheduler: str) -> Workflow:
    p = _Prompt()
    model, vae, pos, neg, latent = _txt2img_inputs(p, "sd21_768v.safetensors")
    sampled = p.add("sample", "KSampler", model=model, seed=SEED, steps=STEPS, cfg=CFG, sampler_name=sampler,
                    scheduler=scheduler, positive=pos, negative=neg, latent_image=latent, denoise=1.0)
    return Workflow(name, "sd21", p.finish(name, sampled, vae))


def _sdxl_encode(p: _Prompt, node_id: str, clip: list, text: str) -> list:
    return p.add(node_id, "CLIPTextEncodeSDXL", clip=clip, width=1024, height=1024, crop_w=0, crop_h=0,
                 target_width=1024, target_height=1024, text_g=text, text_l=text)


def _sdxl(name: str, refiner: bool) -> Workflow:
    """SDXL base alone, or base for 4 of 6 steps handing its noisy latent to the refiner."""
    p = _Prompt()
    model, clip, vae = ([p.add("base", "CheckpointLoaderSimple", index, ckpt_name="sdxl_base.safetensors")[0],
                         index] for index in range(3))
    pos = _sdxl_encode(p, "pos", clip, POSITIVE)
    neg = _sdxl_encode(p, "neg", clip, NEGATIVE)
    latent = p.add("latent", "EmptyLatentImage", width=SIZE, height=SIZE, batch_size=1)
    if not refiner:
        sampled = p.add("sample", "KSampler", model=model, seed=SEED, steps=STEPS, cfg=CFG, sampler_name="euler",
                        scheduler="normal", positive=pos, negative=neg, latent_image=latent, denoise=1.0)
        return Workflow(name, "sdxl", p.finish(name, sampled, vae))
    r_model, r_clip = ([p.add("refiner", "CheckpointLoaderSimple", index, ckpt_name="sdxl_refiner.safetensors")[0],
                        index] for index in range(2))
    r_pos = p.add("r_pos", "CLIPTextEncodeSDXLRefiner", ascore=6.0, width=1024, height=1024, text=POSITIVE,
                  clip=r_clip)
    r_neg = p.add("r_neg", "CLIPTextEncodeSDXLRefiner", ascore=2.5, width=1024, height=1024, text=NEGATIVE,
                  clip=r_clip)
    common = dict(noise_seed=SEED, steps=6, cfg=CFG, sampler_name="euler", scheduler="normal")
    first = p.add("first", "KSamplerAdvanced", model=model, add_noise="enable", positive=pos, negative=neg,
                  latent_image=latent, start_at_step=0, end_at_step=4, return_with_leftover_noise="enable", **common)
    second = p.add("second", "KSamplerAdvanced", model=r_model, add_noise="disable", positive=r_pos, negative=r_neg,
                   latent_image=first, start_at_step=4, end_at_step=10000, return_with_leftover_noise="disable",
                   **common)
    return Workflow(name, "sdxl", p.finish(name, second, vae))


def _all() -> dict[str, Workflow]:
    # Features and a representative sampler set first, so that a partial run is already useful.
    workflows = [
        _sd15("sd15_euler_normal"),
        _sd15("sd15_dpmpp_2m_karras", sampler="dpmpp_2m", scheduler="karras"),
        _sd15("sd15_long_weighted_prompt", positive=LONG_WEIGHTED),
        _sd15("sd15_clip_skip_2", clip_skip=-2),
        _sd15("sd15_img2img", source="image", denoise=0.6),
        _sd15("sd15_inpaint_noise_mask", source="noise_mask", sampler="dpmpp_2m", scheduler="karras"),
        _sd15("sd15_inpaint_vae_encode", source="inpaint_model_input"),
        _sd15("sd15_lora", lora=True),
        _sd15("sd15_controlnet", control="controlnet"),
        _sd15("sd15_t2i_adapter", control="t2i_adapter"),
        _sd15("sd15_control_lora", control="control_lora"),
        # Not FreeU_V2: at 64x64 its deepest feature map is one pixel, whose min-max normalisation is 0/0 (NaN
        # in ComfyUI as in ours).
        _sd15("sd15_freeu", patch=("FreeU", {"b1": 1.1, "b2": 1.2, "s1": 0.9, "s2": 0.2})),
        _sd15("sd15_differential_diffusion", source="soft_noise_mask", patch=("DifferentialDiffusion", {})),
        _sd15("sd15_inpainting_model_vae_encode", source="inpaint_model_input", ckpt="sd15_inpainting.safetensors",
              group="sd15_inpainting"),
        _sd15("sd15_inpainting_model_conditioning", source="inpaint_model_conditioning",
              ckpt="sd15_inpainting.safetensors", group="sd15_inpainting"),
        _sd15_advanced("sd15_ksampler_advanced"),
        _sd15_custom("sd15_sampler_custom", advanced=False),
        _sd15_custom("sd15_sampler_custom_advanced", advanced=True),
        _sd15_custom("sd15_dpm_adaptive_loose", advanced=False, sampler_node=DPM_ADAPTIVE_LOOSE),
        _sd21_v("sd21v_euler_normal", "euler", "normal"),
        _sd21_v("sd21v_dpmpp_2m_karras", "dpmpp_2m", "karras"),
        _sdxl("sdxl_base", refiner=False),
        _sdxl("sdxl_base_refiner", refiner=True),
    ]
    representative = ("euler_ancestral", "dpmpp_sde", "dpmpp_2m_sde", "uni_pc", "ddim")
    sweep = representative + tuple(sampler for sampler in SAMPLERS
                                   if sampler not in representative + ("euler", "dpm_adaptive"))
    workflows += [_sd15(f"sd15_{sampler}_normal", sampler=sampler) for sampler in sweep]
    workflows += [_sd15(f"sd15_euler_{scheduler}", scheduler=scheduler) for scheduler in SCHEDULERS
                  if scheduler != "normal"]
    return {workflow.name: workflow for workflow in workflows}


WORKFLOWS: dict[str, Workflow] = _all()
