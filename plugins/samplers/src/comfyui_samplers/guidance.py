"""Classifier-free guidance over ComfyUI's CONDITIONING: areas, masks, strengths, timestep ranges.

``calc_cond_batch`` runs the model once per batch of compatible conditionings and blends their
predictions by area and mask; ``cfg_function`` combines positive and negative predictions with the
``sampler_cfg_function`` / ``sampler_post_cfg_function`` hooks of ``model_options``; ``CFGGuider``
prepares conditioning for a model, loads it and runs a sampler with itself as the denoiser;
``Guider_Basic`` and ``Guider_DualCFG`` are the BasicGuider and DualCFGGuider nodes' variants.
"""
from __future__ import annotations

import math
import uuid
from typing import Any, Callable, NamedTuple, Optional, Sequence

import torch

from comfy.execution_context import throw_exception_if_processing_interrupted

# Which list of conditionings a prediction belongs to: ComfyUI's COND / UNCOND.
COND = 0
UNCOND = 1


class CondChunk(NamedTuple):
    """One conditioning's share of a model call: its input crop, blend weights and model inputs."""
    input_x: torch.Tensor
    mult: torch.Tensor
    conditioning: dict[str, Any]
    area: Optional[list[int]]
    control: Any
    patches: Optional[dict]
    uuid: Any
    hooks: Any


def with_post_cfg_function(model_options: dict, post_cfg_function: Callable[[dict], torch.Tensor],
                           disable_cfg1_optimization: bool = False) -> dict:
    """``model_options`` with ``post_cfg_function`` appended to its ``sampler_post_cfg_function`` list."""
    options = dict(model_options)
    options["sampler_post_cfg_function"] = list(options.get("sampler_post_cfg_function", [])) + [post_cfg_function]
    if disable_cfg1_optimization:
        options["disable_cfg1_optimization"] = True
    return options


def clone_model_options(model_options: dict) -> dict:
    """A copy whose ``transformer_options`` (and its patch tables) can change without touching the original."""
    options = dict(model_options)
    transformer_options = dict(options.get("transformer_options", {}))
    for key in ("patches", "patches_replace", "wrappers", "callbacks"):
        if isinstance(transformer_options.get(key), dict):
            transformer_options[key] = {name: (dict(value) if isinstance(value, dict) else list(value))
                                        for name, value in transformer_options[key].items()}
    options["transformer_options"] = transformer_options
    return options


# --- conditioning preparation ----------------------------------------------------------------

def convert_cond(cond: Sequence) -> list[dict]:
    """CONDITIONING ``[[tensor, options], ...]`` as the dicts the guider works on."""
    converted = []
    for tensor, options in cond:
        entry = dict(options)
        entry["model_conds"] = entry.get("model_conds", {})
        if tensor is not None:
            entry["cross_attn"] = tensor
        entry["uuid"] = uuid.uuid4()
        converted.append(entry)
    return converted


def _add_area_dims(area: list, num_dims: int) -> list:
    """Pad a (sizes..., offsets...) area with whole-extent leading dimensions."""
    while len(area) // 2 < num_dims:
        half = len(area) // 2
        area = [2147483648] + area[:half] + [0] + area[half:]
    return area


def _mask_bounding_box(mask: torch.Tensor) -> Optional[tuple[int, int, int, int]]:
    """(x0, y0, x1, y1) of the nonzero pixels of a 2-D mask, or None when it is all zero."""
    if not torch.any(mask != 0):
        return None
    ys, xs = torch.where(mask != 0)
    return int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max())


def resolve_areas_and_cond_masks_multidim(conditions: list[dict], dims: Sequence[int], device) -> None:
    """Turn percentage areas into latent units and resize masks to the latent, in place."""
    for index, cond in enumerate(conditions):
        if "area" in cond and cond["area"][0] == "percentage":
            values = cond["area"][1:]
            half = len(values) // 2
            sizes = tuple(max(1, round(values[d] * dims[d])) for d in range(len(dims)))
            offsets = tuple(round(values[d + half] * dims[d]) for d in range(len(dims)))
            cond = dict(cond, area=sizes + offsets)
            conditions[index] = cond
        if "mask" in cond:
            mask = cond["mask"].to(device=device)
            if mask.ndim == len(dims):
                mask = mask.unsqueeze(0)
            if tuple(mask.shape[1:]) != tuple(dims):
                size = (dims[-2], dims[-1])
                if mask.ndim < 4:
                    mask = torch.nn.functional.interpolate(mask.unsqueeze(1), size=size, mode="bilinear").squeeze(1)
                else:
                    mask = torch.nn.functional.interpolate(mask, size=size, mode="bilinear")
            cond = dict(cond, mask=mask)
            if cond.get("set_area_to_bounds", False):
                box = _mask_bounding_box(torch.max(torch.abs(mask), dim=0).values)
                if box is None:
                    # An all-zero mask contributes nothing; the smallest area keeps it cheap.
                    cond["area"] = (8, 8, 0, 0)
                else:
                    x0, y0, x1, y1 = box
                    cond["area"] = (max(8, y1 - y0 + 1), max(8, x1 - x0 + 1), y0, x0)
            conditions[index] = cond


def _area_inside(area: list, other: list) -> bool:
    area = _add_area_dims(list(area), len(other) // 2)
    other = _add_area_dims(list(other), len(area) // 2)
    half, other_half = len(area) // 2, len(other) // 2
    for d in range(min(half, other_half)):
        if area[half + d] < other[other_half + d]:
            return False
        if area[d] + area[half + d] > other[d] + other[other_half + d]:
            return False
    return True


def create_cond_with_same_area_if_none(conds: list[dict], cond: dict) -> None:
    """Give the other side of CFG a conditioning covering ``cond``'s area, so both blend alike."""
    if "area" not in cond:
        return
    area = cond["area"]
    smallest = None
    for candidate in conds:
        if "area" in candidate:
            if not _area_inside(area, candidate["area"]):
                continue
            if smallest is None or "area" not in smallest:
                smallest = candidate
            else:
                candidate_area = candidate["area"]
                smallest_area = smallest["area"]
                if math.prod(smallest_area[:len(smallest_area) // 2]) > math.prod(candidate_area[:len(candidate_area) // 2]):
                    smallest = candidate
        elif smallest is None:
            smallest = candidate
    if smallest is None or smallest.get("area") == area:
        return
    conds.append(dict(cond, model_conds=dict(smallest["model_conds"])))


def calculate_start_end_timesteps(model: Any, conds: list[dict]) -> None:
    """Translate ``start_percent`` / ``end_percent`` into the sigmas where a conditioning is active."""
    model_sampling = model.model_sampling
    for index, cond in enumerate(conds):
        start = end = None
        if "clip_start_percent" in cond:
            start = model_sampling.percent_to_sigma(max(cond["clip_start_percent"], cond.get("start_percent", 0.0)))
            end = model_sampling.percent_to_sigma(min(cond["clip_end_percent"], cond.get("end_percent", 1.0)))
        else:
            if "start_percent" in cond:
                start = model_sampling.percent_to_sigma(cond["start_percent"])
            if "end_percent" in cond:
                end = model_sampling.percent_to_sigma(cond["end_percent"])
        if start is None and end is None:
            continue
        updated = dict(cond)
        if start is not None:
            updated["timestep_start"] = start
        if end is not None:
            updated["timestep_end"] = end
        conds[index] = updated


def pre_run_control(model: Any, conds: list[dict]) -> None:
    model_sampling = model.model_sampling
    for cond in conds:
        if "control" in cond:
            cond["control"].pre_run(model, lambda percent: model_sampling.percent_to_sigma(percent))


def apply_empty_x_to_equal_area(conds: list[dict], uncond: list[dict], name: str,
                                uncond_fill_func: Callable[[list, int], Any]) -> None:
    """Copy ``name`` (a ControlNet, GLIGEN) from area-less positives onto area-less negatives."""
    cond_values = [c[name] for c in conds if "area" not in c and c.get(name) is not None]
    uncond_values = [c[name] for c in uncond if "area" not in c and c.get(name) is not None]
    uncond_other = [(c, i) for i, c in enumerate(uncond) if "area" not in c and c.get(name) is None]
    if uncond_values:
        return
    for index in range(len(cond_values)):
        target, position = uncond_other[index % len(uncond_other)]
        filled = dict(target)
        filled[name] = uncond_fill_func(cond_values, index)
        if target.get(name) is not None:
            uncond.append(filled)
        else:
            uncond[position] = filled


def encode_model_conds(model_function: Callable[..., dict], conds: list[dict], noise: torch.Tensor, device,
                       prompt_type: str, **kwargs: Any) -> list[dict]:
    """Add the model's own inputs (``extra_conds``: cross attention, ADM vector, concat) to each."""
    for index, cond in enumerate(conds):
        params = dict(cond)
        params["device"] = device
        params["noise"] = noise
        # The model's pixel size defaults to 8 latent pixels per pixel.
        default_width = noise.shape[3] * 8 if noise.ndim >= 4 else None
        params["width"] = params.get("width", default_width)
        params["height"] = params.get("height", noise.shape[2] * 8)
        params["prompt_type"] = params.get("prompt_type", prompt_type)
        for key, value in kwargs.items():
            params.setdefault(key, value)
        model_conds = dict(cond["model_conds"])
        model_conds.update(model_function(**params))
        conds[index] = dict(cond, model_conds=model_conds)
    return conds


def process_conds(model: Any, noise: torch.Tensor, conds: dict[str, list[dict]], device, latent_image=None,
                  denoise_mask=None, seed=None) -> dict[str, list[dict]]:
    """Everything done to the conditionings once per sampling run, before the first step."""
    for key in conds:
        conds[key] = conds[key][:]
        resolve_areas_and_cond_masks_multidim(conds[key], noise.shape[2:], device)
    for key in conds:
        calculate_start_end_timesteps(model, conds[key])
    if hasattr(model, "extra_conds"):
        for key in conds:
            conds[key] = encode_model_conds(model.extra_conds, conds[key], noise, device, key,
                                            latent_image=latent_image, denoise_mask=denoise_mask, seed=seed)
    for key in conds:
        for cond in conds[key]:
            for other in conds:
                if other != key:
                    create_cond_with_same_area_if_none(conds[other], cond)
    for key in conds:
        pre_run_control(model, conds[key])
    if "positive" in conds:
        positive = conds["positive"]
        for key in conds:
            if key == "positive":
                continue
            to_uncond = [c for c in positive if c.get("control_apply_to_uncond", False)]
            apply_empty_x_to_equal_area(to_uncond, conds[key], "control", lambda values, i: values[i])
            apply_empty_x_to_equal_area(positive, conds[key], "gligen", lambda values, i: values[i])
    return conds


# --- one model evaluation -----------------------------------------------------------------------

def get_area_and_mult(conds: dict, x_in: torch.Tensor, timestep_in: torch.Tensor) -> Optional[CondChunk]:
    """The crop, weights and model inputs of one conditioning at this step, or None when inactive."""
    dims = tuple(x_in.shape[2:])
    if "timestep_start" in conds and timestep_in[0] > conds["timestep_start"]:
        return None
    if "timestep_end" in conds and timestep_in[0] < conds["timestep_end"]:
        return None
    area = None
    if "area" in conds:
        area = _add_area_dims(list(conds["area"]), len(dims))
        if len(area) // 2 > len(dims):
            area = area[:len(dims)] + area[len(area) // 2:len(area) // 2 + len(dims)]
    strength = conds.get("strength", 1.0)

    input_x = x_in
    if area is not None:
        for d in range(len(dims)):
            area[d] = min(input_x.shape[d + 2] - area[len(dims) + d], area[d])
            input_x = input_x.narrow(d + 2, area[len(dims) + d], area[d])

    if "mask" in conds:
        mask = conds["mask"][:input_x.shape[0]]
        if area is not None:
            for d in range(len(dims)):
                mask = mask.narrow(d + 1, area[len(dims) + d], area[d])
        mask = mask * conds.get("mask_strength", 1.0)
        mask = mask.unsqueeze(1).repeat((input_x.shape[0] // mask.shape[0], input_x.shape[1]) + (1,) * (mask.ndim - 1))
    else:
        mask = torch.ones_like(input_x)
    mult = mask * strength

    if "mask" not in conds and area is not None:
        # Feather the inner edges of an area over up to 8 latent pixels so areas blend.
        for d in range(len(dims)):
            ramp = min(8, mult.shape[2 + d] // 4)
            if area[len(dims) + d] != 0:
                for t in range(ramp):
                    mult.narrow(d + 2, t, 1).mul_((1.0 / ramp) * (t + 1))
            if area[d] + area[len(dims) + d] < x_in.shape[d + 2]:
                for t in range(ramp):
                    mult.narrow(d + 2, area[d] - 1 - t, 1).mul_((1.0 / ramp) * (t + 1))

    conditioning = {name: value.process_cond(batch_size=x_in.shape[0], area=area)
                    for name, value in conds["model_conds"].items()}
    patches = None
    if "gligen" in conds:
        kind, gligen_model = conds["gligen"][0], conds["gligen"][1]
        if kind == "position":
            patch = gligen_model.model.set_position(input_x.shape, conds["gligen"][2], input_x.device)
        else:
            patch = gligen_model.model.set_empty(input_x.shape, input_x.device)
        patches = {"middle_patch": [patch]}
    return CondChunk(input_x, mult, conditioning, area, conds.get("control"), patches, conds.get("uuid"),
                     conds.get("hooks"))


def cond_equal_size(c1: dict, c2: dict) -> bool:
    if c1 is c2:
        return True
    if c1.keys() != c2.keys():
        return False
    return all(c1[key].can_concat(c2[key]) for key in c1)


def can_concat_cond(c1: CondChunk, c2: CondChunk) -> bool:
    """Whether two conditionings can share one batched model call."""
    if c1.input_x.shape != c2.input_x.shape:
        return False
    for first, second in ((c1.control, c2.control), (c1.patches, c2.patches)):
        if (first is None) != (second is None) or (first is not None and first is not second):
            return False
    return cond_equal_size(c1.conditioning, c2.conditioning)


def cond_cat(c_list: list[dict]) -> dict[str, Any]:
    grouped: dict[str, list] = {}
    for conditioning in c_list:
        for key, value in conditioning.items():
            grouped.setdefault(key, []).append(value)
    return {key: values[0].concat(values[1:]) for key, values in grouped.items()}


def _free_memory(device) -> float:
    from comfyui_core_nodes import model_management

    return model_management.get_free_memory(device)


def calc_cond_batch(model: Any, conds: list[Optional[list[dict]]], x_in: torch.Tensor, timestep: torch.Tensor,
                    model_options: dict) -> list[torch.Tensor]:
    """The model's denoised prediction for each list of conditionings, areas and masks blended.

    Conditionings that fit together are batched into one ``apply_model`` call, as many as memory
    allows; each prediction is added into its list's output weighted by its mask and strength.
    """
    outputs = [torch.zeros_like(x_in) for _ in conds]
    counts = [torch.ones_like(x_in) * 1e-37 for _ in conds]
    to_run: list[tuple[CondChunk, int]] = []
    for index, cond_list in enumerate(conds):
        for cond in cond_list or ():
            chunk = get_area_and_mult(cond, x_in, timestep)
            if chunk is not None:
                to_run.append((chunk, index))

    while to_run:
        first = to_run[0][0]
        first_shape = first.input_x.shape
        compatible = [i for i in range(len(to_run)) if can_concat_cond(to_run[i][0], first)]
        compatible.reverse()
        to_batch = compatible[:1]
        free_memory = _free_memory(x_in.device)
        for divisor in range(1, len(compatible) + 1):
            candidate = compatible[:len(compatible) // divisor]
            input_shape = [len(candidate) * first_shape[0]] + list(first_shape)[1:]
            cond_shapes: dict[str, list] = {}
            for position in candidate:
                for name, value in to_run[position][0].conditioning.items():
                    cond_shapes.setdefault(name, []).append(value.size())
            if model.memory_required(input_shape, cond_shapes=cond_shapes) * 1.5 < free_memory:
                to_batch = candidate
                break

        chunks = [to_run.pop(i) for i in to_batch]
        input_x = torch.cat([chunk.input_x for chunk, _ in chunks])
        cond_or_uncond = [index for _, index in chunks]
        c = cond_cat([chunk.conditioning for chunk, _ in chunks])
        control, patches = chunks[-1][0].control, chunks[-1][0].patches
        timestep_ = torch.cat([timestep] * len(chunks))

        transformer_options = dict(model_options.get("transformer_options", {}))
        if patches is not None:
            merged = dict(transformer_options.get("patches", {}))
            for name, patch_list in patches.items():
                merged[name] = merged.get(name, []) + patch_list
            transformer_options["patches"] = merged
        transformer_options["cond_or_uncond"] = cond_or_uncond[:]
        transformer_options["uuids"] = [chunk.uuid for chunk, _ in chunks]
        transformer_options["sigmas"] = timestep
        c["transformer_options"] = transformer_options
        if control is not None:
            c["control"] = control.get_control(input_x, timestep_, c, len(cond_or_uncond), transformer_options)

        if "model_function_wrapper" in model_options:
            output = model_options["model_function_wrapper"](
                model.apply_model, {"input": input_x, "timestep": timestep_, "c": c, "cond_or_uncond": cond_or_uncond})
        else:
            output = model.apply_model(input_x, timestep_, **c)
        for (chunk, index), prediction in zip(chunks, output.chunk(len(chunks))):
            out, count = outputs[index], counts[index]
            if chunk.area is not None:
                half = len(chunk.area) // 2
                for d in range(half):
                    out = out.narrow(d + 2, chunk.area[d + half], chunk.area[d])
                    count = count.narrow(d + 2, chunk.area[d + half], chunk.area[d])
            out += prediction * chunk.mult
            count += chunk.mult

    for out, count in zip(outputs, counts):
        out /= count
    return outputs


def cfg_function(model: Any, cond_pred: torch.Tensor, uncond_pred: torch.Tensor, cond_scale: float,
                 x: torch.Tensor, timestep: torch.Tensor, model_options: Optional[dict] = None,
                 cond=None, uncond=None) -> torch.Tensor:
    """uncond + (cond - uncond) * scale, or the model's ``sampler_cfg_function``; then post-CFG hooks."""
    model_options = model_options or {}
    if "sampler_cfg_function" in model_options:
        args = {"cond": x - cond_pred, "uncond": x - uncond_pred, "cond_scale": cond_scale, "timestep": timestep,
                "input": x, "sigma": timestep, "cond_denoised": cond_pred, "uncond_denoised": uncond_pred,
                "model": model, "model_options": model_options, "input_cond": cond, "input_uncond": uncond}
        result = x - model_options["sampler_cfg_function"](args)
    else:
        result = uncond_pred + (cond_pred - uncond_pred) * cond_scale
    for post in model_options.get("sampler_post_cfg_function", []):
        result = post({"denoised": result, "cond": cond, "uncond": uncond, "cond_scale": cond_scale, "model": model,
                       "uncond_denoised": uncond_pred, "cond_denoised": cond_pred, "sigma": timestep,
                       "model_options": model_options, "input": x})
    return result


def sampling_function(model: Any, x: torch.Tensor, timestep: torch.Tensor, uncond, cond, cond_scale: float,
                      model_options: Optional[dict] = None, seed: Optional[int] = None) -> torch.Tensor:
    """The guided denoised prediction; at cfg 1 the negative is skipped unless a hook needs it."""
    throw_exception_if_processing_interrupted()
    model_options = model_options or {}
    skip_uncond = math.isclose(cond_scale, 1.0) and not model_options.get("disable_cfg1_optimization", False)
    uncond_ = None if skip_uncond else uncond
    conds = [cond, uncond_]
    if "sampler_calc_cond_batch_function" in model_options:
        out = model_options["sampler_calc_cond_batch_function"](
            {"conds": conds, "input": x, "sigma": timestep, "model": model, "model_options": model_options})
    else:
        out = calc_cond_batch(model, conds, x, timestep, model_options)
    for pre in model_options.get("sampler_pre_cfg_function", []):
        out = pre({"conds": conds, "conds_out": out, "cond_scale": cond_scale, "timestep": timestep, "input": x,
                   "sigma": timestep, "model": model, "model_options": model_options})
    return cfg_function(model, out[0], out[1], cond_scale, x, timestep, model_options=model_options, cond=cond,
                        uncond=uncond_)


# --- model loading around a run ---------------------------------------------------------------

def _models_in(conds: dict[str, list[dict]], key: str) -> list:
    found = []
    for cond_list in conds.values():
        for cond in cond_list:
            if key in cond:
                value = cond[key]
                found.extend(value if isinstance(value, list) else [value])
    return found


def prepare_sampling(model_patcher: Any, noise_shape: Sequence[int], conds: dict[str, list[dict]]):
    """Load the model, its ControlNets and other conditioning models for a run of this shape."""
    from comfyui_core_nodes import model_management

    extra_models: list = []
    inference_memory = 0
    for control in set(_models_in(conds, "control")):
        extra_models += control.get_models()
        inference_memory += control.inference_memory_requirements(model_patcher.model_dtype())
    extra_models += [gligen[1] for gligen in _models_in(conds, "gligen")]
    extra_models += _models_in(conds, "additional_models")
    base_model = model_patcher.model
    cond_shapes: dict[str, list] = {}
    largest_shapes: dict[str, list] = {}
    for cond_list in conds.values():
        for cond in cond_list:
            for name, shape in base_model.extra_conds_shapes(**cond).items():
                cond_shapes.setdefault(name, []).append(shape)
                if name not in largest_shapes or math.prod(shape) > math.prod(largest_shapes[name][0]):
                    largest_shapes[name] = [shape]
    # Enough for cond and uncond in one batch, at least enough for one at a time.
    memory_required = base_model.memory_required([noise_shape[0] * 2] + list(noise_shape[1:]), cond_shapes=cond_shapes)
    minimum_memory_required = base_model.memory_required([noise_shape[0]] + list(noise_shape[1:]),
                                                         cond_shapes=largest_shapes)
    model_management.load_models_gpu([model_patcher] + extra_models, memory_required=memory_required + inference_memory,
                                     minimum_memory_required=minimum_memory_required + inference_memory)
    return base_model, conds, extra_models


def cleanup_models(conds: dict[str, list[dict]], models: list) -> None:
    for model in models + list(set(_models_in(conds, "control"))):
        cleanup = getattr(model, "cleanup", None)
        if cleanup is not None:
            cleanup()


class KSamplerX0Inpaint:
    """The denoiser samplers call: the guider, with the inpainting mask applied around each call.

    Outside the mask the sample is held to the original latent noised to the current sigma, and
    the prediction there is the original latent, so only the masked part changes.
    """

    def __init__(self, model: "CFGGuider", sigmas: torch.Tensor):
        self.inner_model = model
        self.sigmas = sigmas
        self.latent_image: Optional[torch.Tensor] = None
        self.noise: Optional[torch.Tensor] = None

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, denoise_mask: Optional[torch.Tensor] = None,
                 model_options: Optional[dict] = None, seed: Optional[int] = None) -> torch.Tensor:
        model_options = model_options or {}
        if denoise_mask is not None:
            if "denoise_mask_function" in model_options:
                denoise_mask = model_options["denoise_mask_function"](
                    sigma, denoise_mask, extra_options={"model": self.inner_model, "sigmas": self.sigmas})
            latent_mask = 1.0 - denoise_mask
            kept = self.inner_model.inner_model.scale_latent_inpaint(x=x, sigma=sigma, noise=self.noise,
                                                                     latent_image=self.latent_image)
            x = x * denoise_mask + kept * latent_mask
        out = self.inner_model(x, sigma, model_options=model_options, seed=seed)
        if denoise_mask is not None:
            out = out * denoise_mask + self.latent_image * latent_mask
        return out


class CFGGuider:
    """Classifier-free guidance with a positive and a negative conditioning (the GUIDER type).

    Subclasses (DualCFGGuider, custom nodes) override ``set_conds`` and ``predict_noise``;
    during a run ``inner_model`` is the loaded BaseModel and ``conds`` the prepared conditionings.
    """

    def __init__(self, model_patcher: Any):
        self.model_patcher = model_patcher
        self.model_options = model_patcher.model_options
        self.original_conds: dict[str, list[dict]] = {}
        self.cfg = 1.0

    def set_conds(self, positive, negative) -> None:
        self.inner_set_conds({"positive": positive, "negative": negative})

    def set_cfg(self, cfg: float) -> None:
        self.cfg = cfg

    def inner_set_conds(self, conds: dict[str, Sequence]) -> None:
        for key, cond in conds.items():
            self.original_conds[key] = convert_cond(cond)

    def __call__(self, *args, **kwargs) -> torch.Tensor:
        return self.outer_predict_noise(*args, **kwargs)

    def outer_predict_noise(self, x, timestep, model_options=None, seed=None) -> torch.Tensor:
        return self.predict_noise(x, timestep, model_options or {}, seed)

    def predict_noise(self, x, timestep, model_options=None, seed=None) -> torch.Tensor:
        return sampling_function(self.inner_model, x, timestep, self.conds.get("negative"), self.conds.get("positive"),
                                 self.cfg, model_options=model_options, seed=seed)

    def inner_sample(self, noise, latent_image, device, sampler, sigmas, denoise_mask, callback, disable_pbar, seed):
        if latent_image is not None and torch.count_nonzero(latent_image) > 0:
            # An empty latent stays zero: only real latents move into the model's latent space.
            latent_image = self.inner_model.process_latent_in(latent_image)
        self.conds = process_conds(self.inner_model, noise, self.conds, device, latent_image, denoise_mask, seed)
        options = clone_model_options(self.model_options)
        options["transformer_options"]["sample_sigmas"] = sigmas
        extra_args = {"model_options": options, "seed": seed}
        samples = sampler.sample(self, sigmas, extra_args, callback, noise, latent_image, denoise_mask, disable_pbar)
        return self.inner_model.process_latent_out(samples.to(torch.float32))

    def outer_sample(self, noise, latent_image, sampler, sigmas, denoise_mask=None, callback=None, disable_pbar=False,
                     seed=None):
        self.inner_model, self.conds, self.loaded_models = prepare_sampling(self.model_patcher, noise.shape, self.conds)
        device = self.model_patcher.load_device
        try:
            output = self.inner_sample(noise.to(device), latent_image.to(device), device, sampler, sigmas.to(device),
                                       denoise_mask, callback, disable_pbar, seed)
        finally:
            cleanup_models(self.conds, self.loaded_models)
            del self.inner_model
            del self.loaded_models
        return output

    def sample(self, noise, latent_image, sampler, sigmas, denoise_mask=None, callback=None, disable_pbar=False,
               seed=None) -> torch.Tensor:
        """Run ``sampler`` from ``noise`` over ``sigmas``; returns the latent in the LATENT scale."""
        if sigmas.shape[-1] == 0:
            return latent_image
        if denoise_mask is not None:
            from comfyui_core_nodes.utils import reshape_mask

            denoise_mask = reshape_mask(denoise_mask, noise.shape).to(self.model_patcher.load_device)
        self.conds = {key: [dict(cond) for cond in conds] for key, conds in self.original_conds.items()}
        original_options = self.model_options
        self.model_options = clone_model_options(self.model_options)
        try:
            return self.outer_sample(noise, latent_image, sampler, sigmas, denoise_mask, callback, disable_pbar, seed)
        finally:
            self.model_options = original_options
            del self.conds


class Guider_Basic(CFGGuider):
    """Guidance by the positive conditioning alone (no CFG)."""

    def set_conds(self, positive) -> None:
        self.inner_set_conds({"positive": positive})


class Guider_DualCFG(CFGGuider):
    """Two conditionings guided against each other and against a negative (ComfyUI's Guider_DualCFG)."""

    def set_cfg(self, cfg1: float, cfg2: float, nested: bool = False) -> None:
        self.cfg1, self.cfg2, self.nested = cfg1, cfg2, nested

    def set_conds(self, positive, middle, negative) -> None:
        middle = [[tensor, dict(options, prompt_type="negative")] for tensor, options in middle]
        self.inner_set_conds({"positive": positive, "middle": middle, "negative": negative})

    def predict_noise(self, x, timestep, model_options=None, seed=None) -> torch.Tensor:
        model_options = model_options or {}
        negative = self.conds.get("negative")
        middle = self.conds.get("middle")
        positive = self.conds.get("positive")
        if self.nested:
            out = calc_cond_batch(self.inner_model, [negative, middle, positive], x, timestep, model_options)
            text = cfg_function(self.inner_model, out[2], out[1], self.cfg1, x, timestep, model_options=model_options,
                                cond=positive, uncond=middle)
            return out[0] + self.cfg2 * (text - out[0])
        if not model_options.get("disable_cfg1_optimization", False) and math.isclose(self.cfg2, 1.0):
            negative = None
            if math.isclose(self.cfg1, 1.0):
                middle = None
        out = calc_cond_batch(self.inner_model, [negative, middle, positive], x, timestep, model_options)
        return (cfg_function(self.inner_model, out[1], out[0], self.cfg2, x, timestep, model_options=model_options,
                             cond=middle, uncond=negative) + (out[2] - out[1]) * self.cfg1)
