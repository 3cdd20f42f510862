"""Model tweak nodes: FreeU (v1, v2), Differential Diffusion, ModelSamplingDiscrete, RescaleCFG, model merging and
CheckpointSave."""
from __future__ import annotations

import json
import logging
import os
from typing import TYPE_CHECKING, Any, Callable

from comfy_api.latest import io

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

RATIO = {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.01}


def fourier_filter(x: torch.Tensor, threshold: int, scale: float) -> torch.Tensor:
    """Scale the lowest spatial frequencies (a 2*threshold square around DC) of each channel by ``scale``."""
    import torch

    freq = torch.fft.fftshift(torch.fft.fftn(x.float(), dim=(-2, -1)), dim=(-2, -1))
    batch, channels, height, width = freq.shape
    mask = torch.ones((batch, channels, height, width), device=x.device)
    row, col = height // 2, width // 2
    mask[..., row - threshold:row + threshold, col - threshold:col + threshold] = scale
    freq = torch.fft.ifftshift(freq * mask, dim=(-2, -1))
    return torch.fft.ifftn(freq, dim=(-2, -1)).real.to(x.dtype)


def _freeu_patch(model: Any, b1: float, b2: float, s1: float, s2: float, adaptive: bool) -> Any:
    """FreeU: in the decoder, boost half the backbone features (by the feature mean's normalised map in v2) and
    damp the skip connections' low frequencies."""
    channels = model.model.model_config.unet_config["model_channels"]
    scales = {channels * 4: (b1, s1), channels * 2: (b2, s2)}

    def output_block_patch(h: torch.Tensor, hsp: torch.Tensor, transformer_options: dict
                           ) -> tuple[torch.Tensor, torch.Tensor]:
        scale = scales.get(int(h.shape[1]))
        if scale is None:
            return h, hsp
        half = h.shape[1] // 2
        if adaptive:
            mean = h.mean(1).unsqueeze(1)
            flat = mean.view(mean.shape[0], -1)
            high = flat.max(dim=-1, keepdim=True).values.unsqueeze(2).unsqueeze(3)
            low = flat.min(dim=-1, keepdim=True).values.unsqueeze(2).unsqueeze(3)
            mean = (mean - low) / (high - low)
            h[:, :half] = h[:, :half] * ((scale[0] - 1) * mean + 1)
        else:
            h[:, :half] = h[:, :half] * scale[0]
        if hsp.device.type == "mps":
            # torch.fft is missing on some backends; the filter runs on the CPU there.
            hsp = fourier_filter(hsp.cpu(), threshold=1, scale=scale[1]).to(hsp.device)
        else:
            hsp = fourier_filter(hsp, threshold=1, scale=scale[1])
        return h, hsp

    patched = model.clone()
    patched.set_model_output_block_patch(output_block_patch)
    return patched


class FreeU:
    """FreeU (v1): constant backbone scales."""
    RELATIVE_PYTHON_MODULE = "comfy_extras.nodes_freelunch"
    DEFAULTS = {"b1": 1.1, "b2": 1.2, "s1": 0.9, "s2": 0.2}
    ADAPTIVE = False

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        step = {"min": 0.0, "max": 10.0, "step": 0.01}
        return {"required": {"model": ("MODEL",),
                             **{name: ("FLOAT", {"default": value, **step}) for name, value in cls.DEFAULTS.items()}}}

    RETURN_TYPES = ("MODEL",)
    FUNCTION = "patch"
    CATEGORY = "model_patches/unet"

    def patch(self, model: Any, b1: float, b2: float, s1: float, s2: float) -> tuple[Any]:
        return (_freeu_patch(model, b1, b2, s1, s2, adaptive=self.ADAPTIVE),)


class FreeU_V2(FreeU):
    """FreeU v2: the backbone scale follows the features' normalised mean."""
    DEFAULTS = {"b1": 1.3, "b2": 1.4, "s1": 0.9, "s2": 0.2}
    ADAPTIVE = True


class DifferentialDiffusion(io.ComfyNode):
    """Inpainting with a soft mask: at each step only the mask values above the progress of the run are denoised,
    so a pixel's mask value says how early its change starts."""
    RELATIVE_PYTHON_MODULE = "comfy_extras.nodes_differential_diffusion"

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="DifferentialDiffusion", display_name="Differential Diffusion", category="_for_testing",
            inputs=[io.Model.Input("model"),
                    io.Float.Input("strength", default=1.0, min=0.0, max=1.0, step=0.01, optional=True)],
            outputs=[io.Model.Output()], is_experimental=True)

    @classmethod
    def execute(cls, model: Any, strength: float = 1.0) -> io.NodeOutput:
        patched = model.clone()
        patched.set_model_denoise_mask_function(
            lambda sigma, denoise_mask, extra_options: differential_mask(sigma, denoise_mask, extra_options, strength))
        return io.NodeOutput(patched)


def differential_mask(sigma: torch.Tensor, denoise_mask: torch.Tensor, extra_options: dict,
                      strength: float) -> torch.Tensor:
    """The mask thresholded at how far the run has come (in timesteps), blended back with ``strength`` < 1."""
    sampling = extra_options["model"].inner_model.model_sampling
    sigmas = extra_options["sigmas"]
    sigma_to = sigmas[-1] if sigmas[-1] > sampling.sigma_min else sampling.sigma_min
    start, end = sampling.timestep(sigmas[0]), sampling.timestep(sigma_to)
    threshold = (sampling.timestep(sigma[0]) - end) / (start - end)
    binary = (denoise_mask >= threshold).to(denoise_mask.dtype)
    if strength and strength < 1:
        return strength * binary + (1 - strength) * denoise_mask
    return binary


class ModelSamplingDiscrete:
    RELATIVE_PYTHON_MODULE = "comfy_extras.nodes_model_advanced"

    SAMPLING = ["eps", "v_prediction", "lcm", "x0", "img_to_img"]

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {"required": {"model": ("MODEL",), "sampling": (cls.SAMPLING,),
                             "zsnr": ("BOOLEAN", {"default": False})}}

    RETURN_TYPES = ("MODEL",)
    FUNCTION = "patch"
    CATEGORY = "advanced/model"

    def patch(self, model: Any, sampling: str, zsnr: bool) -> tuple[Any]:
        from comfyui_core_nodes import model_sampling

        schedule = (model_sampling.ModelSamplingDiscreteDistilled if sampling == "lcm"
                    else model_sampling.ModelSamplingDiscrete)
        patched = model.clone()
        patched.add_object_patch("model_sampling", model_sampling.model_sampling(
            sampling, model.model.model_config, zsnr=zsnr, schedule=schedule))
        return (patched,)


class RescaleCFG:
    """CFG rescaled to the conditional prediction's standard deviation (for v-prediction models)."""
    RELATIVE_PYTHON_MODULE = "comfy_extras.nodes_model_advanced"

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {"required": {"model": ("MODEL",),
                             "multiplier": ("FLOAT", {"default": 0.7, "min": 0.0, "max": 1.0, "step": 0.01})}}

    RETURN_TYPES = ("MODEL",)
    FUNCTION = "patch"
    CATEGORY = "advanced/model"

    def patch(self, model: Any, multiplier: float) -> tuple[Any]:
        import torch

        def rescale_cfg(args: dict) -> torch.Tensor:
            cond, uncond, cond_scale = args["cond"], args["uncond"], args["cond_scale"]
            sigma = args["sigma"].view(args["sigma"].shape[:1] + (1,) * (cond.ndim - 1))
            x_orig = args["input"]
            # In v-prediction space, where the rescaling was defined.
            x = x_orig / (sigma * sigma + 1.0)
            cond = ((x - (x_orig - cond)) * (sigma ** 2 + 1.0) ** 0.5) / sigma
            uncond = ((x - (x_orig - uncond)) * (sigma ** 2 + 1.0) ** 0.5) / sigma
            x_cfg = uncond + cond_scale * (cond - uncond)
            std_cond = torch.std(cond, dim=(1, 2, 3), keepdim=True)
            std_cfg = torch.std(x_cfg, dim=(1, 2, 3), keepdim=True)
            x_final = multiplier * (x_cfg * (std_cond / std_cfg)) + (1.0 - multiplier) * x_cfg
            return x_orig - (x - x_final * sigma / (sigma * sigma + 1.0) ** 0.5)

        patched = model.clone()
        patched.set_model_sampler_cfg_function(rescale_cfg)
        return (patched,)


def _merge(model1: Any, model2: Any, ratio_for: Callable[[str], float]) -> Any:
    """model1 weighted by ratio plus model2 by 1 - ratio, key by key, as weight patches on a clone."""
    merged = model1.clone()
    for key, patches in model2.get_key_patches("diffusion_model.").items():
        ratio = ratio_for(key[len("diffusion_model."):])
        merged.add_patches({key: patches}, 1.0 - ratio, ratio)
    return merged


class ModelMergeSimple:
    RELATIVE_PYTHON_MODULE = "comfy_extras.nodes_model_merging"

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {"required": {"model1": ("MODEL",), "model2": ("MODEL",), "ratio": ("FLOAT", dict(RATIO))}}

    RETURN_TYPES = ("MODEL",)
    FUNCTION = "merge"
    CATEGORY = "advanced/model_merging"

    def merge(self, model1: Any, model2: Any, ratio: float) -> tuple[Any]:
        return (_merge(model1, model2, lambda key: ratio),)


class ModelMergeBlocks:
    """A ratio per block group: keys starting with the longest matching input name use its ratio."""
    RELATIVE_PYTHON_MODULE = "comfy_extras.nodes_model_merging"

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {"required": {"model1": ("MODEL",), "model2": ("MODEL",), "input": ("FLOAT", dict(RATIO)),
                             "middle": ("FLOAT", dict(RATIO)), "out": ("FLOAT", dict(RATIO))}}

    RETURN_TYPES = ("MODEL",)
    FUNCTION = "merge"
    CATEGORY = "advanced/model_merging"

    def merge(self, model1: Any, model2: Any, **ratios: float) -> tuple[Any]:
        default = next(iter(ratios.values()))

        def ratio_for(key: str) -> float:
            matching = [name for name in ratios if key.startswith(name)]
            return ratios[max(matching, key=len)] if matching else default

        return (_merge(model1, model2, ratio_for),)


class CheckpointSave:
    """Saves the model, text encoders and VAE as one .safetensors checkpoint under the output folder."""
    RELATIVE_PYTHON_MODULE = "comfy_extras.nodes_model_merging"

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {"required": {"model": ("MODEL",), "clip": ("CLIP",), "vae": ("VAE",),
                             "filename_prefix": ("STRING", {"default": "checkpoints/ComfyUI"})},
                "hidden": {"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO"}}

    RETURN_TYPES = ()
    FUNCTION = "save"
    OUTPUT_NODE = True
    CATEGORY = "advanced/model_merging"

    def save(self, model: Any, clip: Any, vae: Any, filename_prefix: str, prompt: Any = None,
             extra_pnginfo: Any = None) -> dict:
        from comfy import paths
        from comfy.cli_args import args

        from comfyui_core_nodes import sd
        from comfyui_core_nodes.model_base import ModelType, SDXL, SDXLRefiner

        folder, filename, counter, _, _ = paths.get_save_image_path(filename_prefix, paths.get_output_directory())
        base = model.model
        metadata: dict[str, str] = {}
        architecture = {SDXL: "stable-diffusion-xl-v1-base", SDXLRefiner: "stable-diffusion-xl-v1-refiner"}.get(
            type(base))
        if architecture is not None:
            metadata.update({"modelspec.sai_model_spec": "1.0.0", "modelspec.implementation": "sgm",
                             "modelspec.architecture": architecture,
                             "modelspec.title": f"{filename} {counter}"})
        if base.model_type == ModelType.EPS:
            metadata["modelspec.predict_key"] = "epsilon"
        elif base.model_type == ModelType.V_PREDICTION:
            metadata["modelspec.predict_key"] = "v"
        if not args.get("disable_metadata", False):
            metadata["prompt"] = json.dumps(prompt) if prompt is not None else ""
            for key, value in (extra_pnginfo or {}).items():
                metadata[key] = json.dumps(value)
        sd.save_checkpoint(os.path.join(folder, f"{filename}_{counter:05}_.safetensors"), model, clip, vae,
                           metadata=metadata)
        return {}


NODE_CLASS_MAPPINGS = {
    "FreeU": FreeU,
    "FreeU_V2": FreeU_V2,
    "DifferentialDiffusion": DifferentialDiffusion,
    "ModelSamplingDiscrete": ModelSamplingDiscrete,
    "RescaleCFG": RescaleCFG,
    "ModelMergeSimple": ModelMergeSimple,
    "ModelMergeBlocks": ModelMergeBlocks,
    "CheckpointSave": CheckpointSave,
}

NODE_DISPLAY_NAME_MAPPINGS = {
    "CheckpointSave": "Save Checkpoint",
}
