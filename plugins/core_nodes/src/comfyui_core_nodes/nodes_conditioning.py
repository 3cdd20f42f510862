"""Conditioning nodes: text encoding, CLIP loaders and last layer, conditioning arithmetic, CLIP vision."""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from comfy_api.latest import io
from comfyui_core_nodes.nodes_loaders import _embedding_folders, _filenames, _full_path

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

MAX_RESOLUTION = 16384

Conditioning = list[list[Any]]

# CLIPLoader's and DualCLIPLoader's type lists as ComfyUI offers them; this plugin builds the
# Stable Diffusion ones (stable_diffusion, sdxl) and names the others in a clear error.
CLIP_LOADER_TYPES = ["stable_diffusion", "stable_cascade", "sd3", "stable_audio", "mochi", "ltxv", "pixart",
                     "cosmos", "lumina2", "wan", "hidream", "chroma", "ace", "omnigen2", "qwen_image",
                     "hunyuan_image", "flux2", "ovis"]
DUAL_CLIP_LOADER_TYPES = ["sdxl", "sd3", "flux", "hunyuan_video", "hidream", "hunyuan_image", "hunyuan_video_15",
                          "kandinsky5", "kandinsky5_image", "ltxv", "newbie"]


def set_values(conditioning: Conditioning, values: dict[str, Any], append: bool = False) -> Conditioning:
    """A copy of ``conditioning`` whose dicts get ``values`` (appended to lists already there with ``append``)."""
    out = []
    for cond, options in conditioning:
        options = options.copy()
        for key, value in values.items():
            if append and options.get(key) is not None:
                value = options[key] + value
            options[key] = value
        out.append([cond, options])
    return out


def _device_options(device: str) -> dict[str, torch.device]:
    if device == "cpu":
        import torch

        return {"load_device": torch.device("cpu"), "offload_device": torch.device("cpu")}
    return {}


# --- text encoding ----------------------------------------------------------------------------------

class CLIPTextEncode:
    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {"required": {
            "text": ("STRING", {"multiline": True, "dynamicPrompts": True, "tooltip": "The text to be encoded."}),
            "clip": ("CLIP", {"tooltip": "The CLIP model used for encoding the text."}),
        }}

    RETURN_TYPES = ("CONDITIONING",)
    OUTPUT_TOOLTIPS = ("A conditioning containing the embedded text used to guide the diffusion model.",)
    FUNCTION = "encode"
    CATEGORY = "conditioning"
    DESCRIPTION = ("Encodes a text prompt using a CLIP model into an embedding that can be used to guide the "
                   "diffusion model towards generating specific images.")
    SEARCH_ALIASES = ["text", "prompt", "text prompt", "positive prompt", "negative prompt", "encode text",
                      "text encoder", "encode prompt"]

    def encode(self, clip, text: str) -> tuple[Conditioning]:
        if clip is None:
            raise RuntimeError("ERROR: clip input is invalid: None\n\nIf the clip is from a checkpoint loader node "
                               "your checkpoint does not contain a valid clip or text encoder model.")
        return (clip.encode_from_tokens_scheduled(clip.tokenize(text)),)


class CLIPTextEncodeSDXL(io.ComfyNode):
    RELATIVE_PYTHON_MODULE = "comfy_extras.nodes_clip_sdxl"

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="CLIPTextEncodeSDXL",
            category="advanced/conditioning",
            inputs=[
                io.Clip.Input("clip"),
                io.Int.Input("width", default=1024, min=0, max=MAX_RESOLUTION),
                io.Int.Input("height", default=1024, min=0, max=MAX_RESOLUTION),
                io.Int.Input("crop_w", default=0, min=0, max=MAX_RESOLUTION),
                io.Int.Input("crop_h", default=0, min=0, max=MAX_RESOLUTION),
                io.Int.Input("target_width", default=1024, min=0, max=MAX_RESOLUTION),
                io.Int.Input("target_height", default=1024, min=0, max=MAX_RESOLUTION),
                io.String.Input("text_g", multiline=True, dynamic_prompts=True),
                io.String.Input("text_l", multiline=True, dynamic_prompts=True),
            ],
            outputs=[io.Conditioning.Output()],
        )

    @classmethod
    def execute(cls, clip, width: int, height: int, crop_w: int, crop_h: int, target_width: int,
                target_height: int, text_g: str, text_l: str) -> io.NodeOutput:
        tokens = clip.tokenize(text_g)
        tokens["l"] = clip.tokenize(text_l)["l"]
        # Both encoders need as many chunks: the shorter prompt gets empty-prompt chunks.
        if len(tokens["l"]) != len(tokens["g"]):
            empty = clip.tokenize("")
            while len(tokens["l"]) < len(tokens["g"]):
                tokens["l"] += empty["l"]
            while len(tokens["l"]) > len(tokens["g"]):
                tokens["g"] += empty["g"]
        sizes = {"width": width, "height": height, "crop_w": crop_w, "crop_h": crop_h,
                 "target_width": target_width, "target_height": target_height}
        return io.NodeOutput(clip.encode_from_tokens_scheduled(tokens, add_dict=sizes))


class CLIPTextEncodeSDXLRefiner(io.ComfyNode):
    RELATIVE_PYTHON_MODULE = "comfy_extras.nodes_clip_sdxl"

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="CLIPTextEncodeSDXLRefiner",
            category="advanced/conditioning",
            inputs=[
                io.Float.Input("ascore", default=6.0, min=0.0, max=1000.0, step=0.01),
                io.Int.Input("width", default=1024, min=0, max=MAX_RESOLUTION),
                io.Int.Input("height", default=1024, min=0, max=MAX_RESOLUTION),
                io.String.Input("text", multiline=True, dynamic_prompts=True),
                io.Clip.Input("clip"),
            ],
            outputs=[io.Conditioning.Output()],
        )

    @classmethod
    def execute(cls, clip, ascore: float, width: int, height: int, text: str) -> io.NodeOutput:
        tokens = clip.tokenize(text)
        return io.NodeOutput(clip.encode_from_tokens_scheduled(
            tokens, add_dict={"aesthetic_score": ascore, "width": width, "height": height}))


class CLIPSetLastLayer:
    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {"required": {"clip": ("CLIP",),
                             "stop_at_clip_layer": ("INT", {"default": -1, "min": -24, "max": -1, "step": 1})}}

    RETURN_TYPES = ("CLIP",)
    FUNCTION = "set_last_layer"
    CATEGORY = "conditioning"

    def set_last_layer(self, clip, stop_at_clip_layer: int) -> tuple:
        clip = clip.clone()
        clip.clip_layer(stop_at_clip_layer)
        return (clip,)


# --- loaders ----------------------------------------------------------------------------------------

class CLIPLoader:
    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {"required": {"clip_name": (_filenames("text_encoders"),),
                             "type": (CLIP_LOADER_TYPES,)},
                "optional": {"device": (["default", "cpu"], {"advanced": True})}}

    RETURN_TYPES = ("CLIP",)
    FUNCTION = "load_clip"
    CATEGORY = "advanced/loaders"
    DESCRIPTION = ("[Recipes]\n\nstable_diffusion: clip-l\nstable_cascade: clip-g\nsd3: t5 xxl/ clip-g / clip-l\n"
                   "stable_audio: t5 base\nmochi: t5 xxl\ncosmos: old t5 xxl\nlumina2: gemma 2 2B\nwan: umt5 xxl\n"
                   " hidream: llama-3.1 (Recommend) or t5\nomnigen2: qwen vl 2.5 3B")

    def load_clip(self, clip_name: str, type: str = "stable_diffusion", device: str = "default") -> tuple:
        from .text_encoders import load_text_encoder_files

        path = _full_path("text_encoders", clip_name)
        return (load_text_encoder_files([path], type, _embedding_folders(), **_device_options(device)),)


class DualCLIPLoader:
    @classmethod
    def INPUT_TYPES(cls) -> dict:
        names = _filenames("text_encoders")
        return {"required": {"clip_name1": (names,), "clip_name2": (names,), "type": (DUAL_CLIP_LOADER_TYPES,)},
                "optional": {"device": (["default", "cpu"], {"advanced": True})}}

    RETURN_TYPES = ("CLIP",)
    FUNCTION = "load_clip"
    CATEGORY = "advanced/loaders"
    DESCRIPTION = ("[Recipes]\n\nsdxl: clip-l, clip-g\nsd3: clip-l, clip-g / clip-l, t5 / clip-g, t5\n"
                   "flux: clip-l, t5\nhidream: at least one of t5 or llama, recommended t5 and llama\n"
                   "hunyuan_image: qwen2.5vl 7b and byt5 small\nnewbie: gemma-3-4b-it, jina clip v2")

    def load_clip(self, clip_name1: str, clip_name2: str, type: str, device: str = "default") -> tuple:
        from .text_encoders import load_text_encoder_files

        paths = [_full_path("text_encoders", clip_name1), _full_path("text_encoders", clip_name2)]
        return (load_text_encoder_files(paths, type, _embedding_folders(), **_device_options(device)),)


class CLIPVisionLoader:
    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {"required": {"clip_name": (_filenames("clip_vision"),)}}

    RETURN_TYPES = ("CLIP_VISION",)
    FUNCTION = "load_clip"
    CATEGORY = "loaders"

    def load_clip(self, clip_name: str) -> tuple:
        from .text_encoders.vision import load_clip_vision

        return (load_clip_vision(_full_path("clip_vision", clip_name)),)


# --- conditioning arithmetic ------------------------------------------------------------------------

class ConditioningCombine:
    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {"required": {"conditioning_1": ("CONDITIONING",), "conditioning_2": ("CONDITIONING",)}}

    RETURN_TYPES = ("CONDITIONING",)
    FUNCTION = "combine"
    CATEGORY = "conditioning"
    SEARCH_ALIASES = ["combine", "merge conditioning", "combine prompts", "merge prompts", "mix prompts",
                      "add prompt"]

    def combine(self, conditioning_1: Conditioning, conditioning_2: Conditioning) -> tuple[Conditioning]:
        return (conditioning_1 + conditioning_2,)


class ConditioningAverage:
    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {"required": {"conditioning_to": ("CONDITIONING",), "conditioning_from": ("CONDITIONING",),
                             "conditioning_to_strength": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0,
                                                                    "step": 0.01})}}

    RETURN_TYPES = ("CONDITIONING",)
    FUNCTION = "addWeighted"
    CATEGORY = "conditioning"
    SEARCH_ALIASES = ["blend prompts", "interpolate conditioning", "mix prompts", "style fusion", "weighted blend"]

    def addWeighted(self, conditioning_to: Conditioning, conditioning_from: Conditioning,
                    conditioning_to_strength: float) -> tuple[Conditioning]:
        import torch

        if len(conditioning_from) > 1:
            logger.warning("Warning: ConditioningAverage conditioning_from contains more than 1 cond, only the "
                           "first one will actually be applied to conditioning_to.")
        cond_from = conditioning_from[0][0]
        pooled_from = conditioning_from[0][1].get("pooled_output")
        strength = conditioning_to_strength
        out = []
        for cond_to, options in conditioning_to:
            source = cond_from[:, :cond_to.shape[1]]
            if source.shape[1] < cond_to.shape[1]:
                # A shorter source counts as zeros past its end.
                padding = torch.zeros((1, cond_to.shape[1] - source.shape[1], cond_to.shape[2]))
                source = torch.cat([source, padding], dim=1)
            blended = torch.mul(cond_to, strength) + torch.mul(source, 1.0 - strength)
            options = options.copy()
            pooled_to = options.get("pooled_output", pooled_from)
            if pooled_from is not None and pooled_to is not None:
                options["pooled_output"] = torch.mul(pooled_to, strength) + torch.mul(pooled_from, 1.0 - strength)
            elif pooled_from is not None:
                options["pooled_output"] = pooled_from
            out.append([blended, options])
        return (out,)


class ConditioningConcat:
    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {"required": {"conditioning_to": ("CONDITIONING",), "conditioning_from": ("CONDITIONING",)}}

    RETURN_TYPES = ("CONDITIONING",)
    FUNCTION = "concat"
    CATEGORY = "conditioning"

    def concat(self, conditioning_to: Conditioning, conditioning_from: Conditioning) -> tuple[Conditioning]:
        import torch

        if len(conditioning_from) > 1:
            logger.warning("Warning: ConditioningConcat conditioning_from contains more than 1 cond, only the "
                           "first one will actually be applied to conditioning_to.")
        cond_from = conditioning_from[0][0]
        return ([[torch.cat((cond_to, cond_from), 1), options.copy()] for cond_to, options in conditioning_to],)


class ConditioningSetArea:
    @classmethod
    def INPUT_TYPES(cls) -> dict:
        size = {"default": 64, "min": 64, "max": MAX_RESOLUTION, "step": 8}
        offset = {"default": 0, "min": 0, "max": MAX_RESOLUTION, "step": 8}
        return {"required": {"conditioning": ("CONDITIONING",),
                             "width": ("INT", size), "height": ("INT", size),
                             "x": ("INT", offset), "y": ("INT", offset),
                             "strength": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 10.0, "step": 0.01})}}

    RETURN_TYPES = ("CONDITIONING",)
    FUNCTION = "append"
    CATEGORY = "conditioning"
    SEARCH_ALIASES = ["regional prompt", "area prompt", "spatial conditioning", "localized prompt"]

    def append(self, conditioning: Conditioning, width: int, height: int, x: int, y: int,
               strength: float) -> tuple[Conditioning]:
        # Areas are kept in latent units (pixels / 8): (height, width, y, x).
        area = (height // 8, width // 8, y // 8, x // 8)
        return (set_values(conditioning, {"area": area, "strength": strength, "set_area_to_bounds": False}),)


class ConditioningSetAreaPercentage:
    @classmethod
    def INPUT_TYPES(cls) -> dict:
        fraction = {"default": 1.0, "min": 0, "max": 1.0, "step": 0.01}
        start = {"default": 0, "min": 0, "max": 1.0, "step": 0.01}
        return {"required": {"conditioning": ("CONDITIONING",),
                             "width": ("FLOAT", fraction), "height": ("FLOAT", fraction),
                             "x": ("FLOAT", start), "y": ("FLOAT", start),
                             "strength": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 10.0, "step": 0.01})}}

    RETURN_TYPES = ("CONDITIONING",)
    FUNCTION = "append"
    CATEGORY = "conditioning"

    def append(self, conditioning: Conditioning, width: float, height: float, x: float, y: float,
               strength: float) -> tuple[Conditioning]:
        area = ("percentage", height, width, y, x)
        return (set_values(conditioning, {"area": area, "strength": strength, "set_area_to_bounds": False}),)


class ConditioningSetMask:
    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {"required": {"conditioning": ("CONDITIONING",), "mask": ("MASK",),
                             "strength": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 10.0, "step": 0.01}),
                             "set_cond_area": (["default", "mask bounds"],)}}

    RETURN_TYPES = ("CONDITIONING",)
    FUNCTION = "append"
    CATEGORY = "conditioning"
    SEARCH_ALIASES = ["masked prompt", "regional inpaint conditioning", "mask conditioning"]

    def append(self, conditioning: Conditioning, mask: torch.Tensor, set_cond_area: str,
               strength: float) -> tuple[Conditioning]:
        if mask.dim() < 3:
            mask = mask.unsqueeze(0)
        values = {"mask": mask, "set_area_to_bounds": set_cond_area != "default", "mask_strength": strength}
        return (set_values(conditioning, values),)


class ConditioningZeroOut:
    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {"required": {"conditioning": ("CONDITIONING",)}}

    RETURN_TYPES = ("CONDITIONING",)
    FUNCTION = "zero_out"
    CATEGORY = "advanced/conditioning"
    SEARCH_ALIASES = ["null conditioning", "clear conditioning"]

    def zero_out(self, conditioning: Conditioning) -> tuple[Conditioning]:
        import torch

        out = []
        for cond, options in conditioning:
            options = options.copy()
            for key in ("pooled_output", "conditioning_lyrics"):
                if options.get(key) is not None:
                    options[key] = torch.zeros_like(options[key])
            out.append([torch.zeros_like(cond), options])
        return (out,)


class ConditioningSetTimestepRange:
    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {"required": {"conditioning": ("CONDITIONING",),
                             "start": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 1.0, "step": 0.001}),
                             "end": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.001})}}

    RETURN_TYPES = ("CONDITIONING",)
    FUNCTION = "set_range"
    CATEGORY = "advanced/conditioning"

    def set_range(self, conditioning: Conditioning, start: float, end: float) -> tuple[Conditioning]:
        return (set_values(conditioning, {"start_percent": start, "end_percent": end}),)


# --- CLIP vision ----------------------------------------------------------------------------------

class CLIPVisionEncode:
    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {"required": {"clip_vision": ("CLIP_VISION",), "image": ("IMAGE",), "crop": (["center", "none"],)}}

    RETURN_TYPES = ("CLIP_VISION_OUTPUT",)
    FUNCTION = "encode"
    CATEGORY = "conditioning"

    def encode(self, clip_vision, image: torch.Tensor, crop: str) -> tuple:
        return (clip_vision.encode_image(image, crop=crop == "center"),)


class unCLIPConditioning:
    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {"required": {"conditioning": ("CONDITIONING",), "clip_vision_output": ("CLIP_VISION_OUTPUT",),
                             "strength": ("FLOAT", {"default": 1.0, "min": -10.0, "max": 10.0, "step": 0.01}),
                             "noise_augmentation": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 1.0,
                                                              "step": 0.01})}}

    RETURN_TYPES = ("CONDITIONING",)
    FUNCTION = "apply_adm"
    CATEGORY = "conditioning"

    def apply_adm(self, conditioning: Conditioning, clip_vision_output, strength: float,
                  noise_augmentation: float) -> tuple[Conditioning]:
        if strength == 0:
            return (conditioning,)
        entry = {"clip_vision_output": clip_vision_output, "strength": strength,
                 "noise_augmentation": noise_augmentation}
        return (set_values(conditioning, {"unclip_conditioning": [entry]}, append=True),)


class InpaintModelConditioning:
    """Conditions an inpainting model on the masked image (the model's extra input channels) and returns the
    latent of the whole image, with the mask as its noise mask unless ``noise_mask`` is off."""

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {"required": {"positive": ("CONDITIONING",), "negative": ("CONDITIONING",), "vae": ("VAE",),
                             "pixels": ("IMAGE",), "mask": ("MASK",),
                             "noise_mask": ("BOOLEAN", {"default": True, "tooltip": (
                                 "Add a noise mask to the latent so sampling will only happen within the mask. "
                                 "Might improve results or completely break things depending on the model.")})}}

    RETURN_TYPES = ("CONDITIONING", "CONDITIONING", "LATENT")
    RETURN_NAMES = ("positive", "negative", "latent")
    FUNCTION = "encode"
    CATEGORY = "conditioning/inpaint"

    def encode(self, positive: Conditioning, negative: Conditioning, pixels: torch.Tensor, vae: Any,
               mask: torch.Tensor, noise_mask: bool = True) -> tuple[Conditioning, Conditioning, dict]:
        from comfyui_core_nodes.nodes_latent import inpaint_pixels

        # ComfyUI crops to multiples of 8 whatever the VAE, and encodes the uncropped image for the latent.
        masked, mask = inpaint_pixels(pixels, mask, 8)
        masked_latent = vae.encode(masked)
        latent = {"samples": vae.encode(pixels)}
        if noise_mask:
            latent["noise_mask"] = mask
        values = {"concat_latent_image": masked_latent, "concat_mask": mask}
        return set_values(positive, values), set_values(negative, values), latent


NODE_CLASS_MAPPINGS = {
    "CLIPTextEncode": CLIPTextEncode,
    "CLIPTextEncodeSDXL": CLIPTextEncodeSDXL,
    "CLIPTextEncodeSDXLRefiner": CLIPTextEncodeSDXLRefiner,
    "CLIPSetLastLayer": CLIPSetLastLayer,
    "CLIPLoader": CLIPLoader,
    "DualCLIPLoader": DualCLIPLoader,
    "CLIPVisionLoader": CLIPVisionLoader,
    "CLIPVisionEncode": CLIPVisionEncode,
    "unCLIPConditioning": unCLIPConditioning,
    "ConditioningCombine": ConditioningCombine,
    "ConditioningAverage": ConditioningAverage,
    "ConditioningConcat": ConditioningConcat,
    "ConditioningSetArea": ConditioningSetArea,
    "ConditioningSetAreaPercentage": ConditioningSetAreaPercentage,
    "ConditioningSetMask": ConditioningSetMask,
    "ConditioningZeroOut": ConditioningZeroOut,
    "ConditioningSetTimestepRange": ConditioningSetTimestepRange,
    "InpaintModelConditioning": InpaintModelConditioning,
}

# ComfyUI's display names; ConditioningAverage has none there (its entry's key has a trailing space).
NODE_DISPLAY_NAME_MAPPINGS = {
    "CLIPTextEncode": "CLIP Text Encode (Prompt)",
    "CLIPSetLastLayer": "CLIP Set Last Layer",
    "CLIPLoader": "Load CLIP",
    "CLIPVisionLoader": "Load CLIP Vision",
    "CLIPVisionEncode": "CLIP Vision Encode",
    "ConditioningCombine": "Conditioning (Combine)",
    "ConditioningConcat": "Conditioning (Concat)",
    "ConditioningSetArea": "Conditioning (Set Area)",
    "ConditioningSetAreaPercentage": "Conditioning (Set Area with Percentage)",
    "ConditioningSetMask": "Conditioning (Set Mask)",
}
