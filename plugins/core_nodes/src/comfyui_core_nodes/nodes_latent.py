"""Latent nodes: empty latents, resizing, compositing, batches, noise masks and the VAE encode/decode nodes."""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

MAX_RESOLUTION = 16384
UPSCALE_METHODS = ["nearest-exact", "bilinear", "area", "bicubic", "bislerp"]
CROP_METHODS = ["disabled", "center"]
Latent = dict[str, Any]


def _position(maximum: int = MAX_RESOLUTION, default: int = 0, minimum: int = 0) -> dict[str, int]:
    return {"default": default, "min": minimum, "max": maximum, "step": 8}


_TEMPORAL_OVERLAP_TOOLTIP = "Only used for video VAEs: Amount of frames to overlap."


def _require_vae(vae: Any) -> Any:
    if vae is None:
        raise ValueError("No VAE: the checkpoint this comes from holds none; load one with a VAELoader node")
    return vae


class EmptyLatentImage:
    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {"required": {
            "width": ("INT", {**_position(default=512, minimum=16),
                              "tooltip": "The width of the latent images in pixels."}),
            "height": ("INT", {**_position(default=512, minimum=16),
                               "tooltip": "The height of the latent images in pixels."}),
            "batch_size": ("INT", {"default": 1, "min": 1, "max": 4096,
                                   "tooltip": "The number of latent images in the batch."})}}

    RETURN_TYPES = ("LATENT",)
    OUTPUT_TOOLTIPS = ("The empty latent image batch.",)
    FUNCTION = "generate"
    CATEGORY = "latent"
    DESCRIPTION = "Create a new batch of empty latent images to be denoised via sampling."

    def generate(self, width: int, height: int, batch_size: int = 1) -> tuple[Latent]:
        import torch

        from comfyui_core_nodes import model_management

        latent = torch.zeros([batch_size, 4, height // 8, width // 8], device=model_management.intermediate_device())
        return ({"samples": latent},)


class LatentUpscale:
    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {"required": {"samples": ("LATENT",), "upscale_method": (UPSCALE_METHODS,),
                             "width": ("INT", _position(default=512)), "height": ("INT", _position(default=512)),
                             "crop": (CROP_METHODS,)}}

    RETURN_TYPES = ("LATENT",)
    FUNCTION = "upscale"
    CATEGORY = "latent"

    def upscale(self, samples: Latent, upscale_method: str, width: int, height: int, crop: str) -> tuple[Latent]:
        from comfyui_core_nodes.utils import common_upscale

        if width == 0 and height == 0:
            return (samples,)
        latent = samples["samples"]
        # A zero side follows the other one's scale; neither goes below 64 pixels.
        if width == 0:
            height = max(64, height)
            width = max(64, round(latent.shape[-1] * height / latent.shape[-2]))
        elif height == 0:
            width = max(64, width)
            height = max(64, round(latent.shape[-2] * width / latent.shape[-1]))
        else:
            width, height = max(64, width), max(64, height)
        out = dict(samples)
        out["samples"] = common_upscale(latent, width // 8, height // 8, upscale_method, crop)
        return (out,)


class LatentUpscaleBy:
    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {"required": {"samples": ("LATENT",), "upscale_method": (UPSCALE_METHODS,),
                             "scale_by": ("FLOAT", {"default": 1.5, "min": 0.01, "max": 8.0, "step": 0.01})}}

    RETURN_TYPES = ("LATENT",)
    FUNCTION = "upscale"
    CATEGORY = "latent"

    def upscale(self, samples: Latent, upscale_method: str, scale_by: float) -> tuple[Latent]:
        from comfyui_core_nodes.utils import common_upscale

        latent = samples["samples"]
        out = dict(samples)
        out["samples"] = common_upscale(latent, round(latent.shape[-1] * scale_by),
                                        round(latent.shape[-2] * scale_by), upscale_method, "disabled")
        return (out,)


class LatentComposite:
    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {"required": {"samples_to": ("LATENT",), "samples_from": ("LATENT",), "x": ("INT", _position()),
                             "y": ("INT", _position()), "feather": ("INT", _position())}}

    RETURN_TYPES = ("LATENT",)
    FUNCTION = "composite"
    CATEGORY = "latent"

    def composite(self, samples_to: Latent, samples_from: Latent, x: int, y: int, composite_method: str = "normal",
                  feather: int = 0) -> tuple[Latent]:
        import torch

        x, y, feather = x // 8, y // 8, feather // 8
        target = samples_to["samples"]
        source = samples_from["samples"][:, :, :target.shape[2] - y, :target.shape[3] - x]
        result = target.clone()
        region = result[:, :, y:y + source.shape[2], x:x + source.shape[3]]
        if feather == 0:
            region[...] = source
        else:
            # Ramp the pasted latent in over ``feather`` rows/columns on each side that is inside the target.
            mask = torch.ones_like(source)
            for t in range(feather):
                weight = (1.0 / feather) * (t + 1)
                if y != 0:
                    mask[:, :, t:1 + t, :] *= weight
                if y + source.shape[2] < target.shape[2]:
                    mask[:, :, mask.shape[2] - 1 - t:mask.shape[2] - t, :] *= weight
                if x != 0:
                    mask[:, :, :, t:1 + t] *= weight
                if x + source.shape[3] < target.shape[3]:
                    mask[:, :, :, mask.shape[3] - 1 - t:mask.shape[3] - t] *= weight
            region[...] = source * mask + region * (torch.ones_like(mask) - mask)
        out = dict(samples_to)
        out["samples"] = result
        return (out,)


class LatentBlend:
    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {"required": {"samples1": ("LATENT",), "samples2": ("LATENT",),
                             "blend_factor": ("FLOAT", {"default": 0.5, "min": 0, "max": 1, "step": 0.01})}}

    RETURN_TYPES = ("LATENT",)
    FUNCTION = "blend"
    CATEGORY = "_for_testing"

    def blend(self, samples1: Latent, samples2: Latent, blend_factor: float, blend_mode: str = "normal"
              ) -> tuple[Latent]:
        from comfyui_core_nodes.utils import common_upscale

        first, second = samples1["samples"], samples2["samples"]
        if first.shape != second.shape:
            second = common_upscale(second, first.shape[3], first.shape[2], "bicubic", crop="center")
        if blend_mode != "normal":
            raise ValueError(f"Unsupported blend mode: {blend_mode}")
        out = dict(samples1)
        out["samples"] = first * blend_factor + second * (1 - blend_factor)
        return (out,)


class LatentCrop:
    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {"required": {"samples": ("LATENT",), "width": ("INT", _position(default=512, minimum=64)),
                             "height": ("INT", _position(default=512, minimum=64)), "x": ("INT", _position()),
                             "y": ("INT", _position())}}

    RETURN_TYPES = ("LATENT",)
    FUNCTION = "crop"
    CATEGORY = "latent/transform"

    def crop(self, samples: Latent, width: int, height: int, x: int, y: int) -> tuple[Latent]:
        latent = samples["samples"]
        # The crop starts at least 8 latent pixels (64 image pixels) before the far edge.
        x = min(x // 8, latent.shape[3] - 8)
        y = min(y // 8, latent.shape[2] - 8)
        out = dict(samples)
        out["samples"] = latent[:, :, y:y + height // 8, x:x + width // 8]
        return (out,)


class LatentFlip:
    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {"required": {"samples": ("LATENT",),
                             "flip_method": (["x-axis: vertically", "y-axis: horizontally"],)}}

    RETURN_TYPES = ("LATENT",)
    FUNCTION = "flip"
    CATEGORY = "latent/transform"

    def flip(self, samples: Latent, flip_method: str) -> tuple[Latent]:
        import torch

        out = dict(samples)
        if flip_method.startswith("x"):
            out["samples"] = torch.flip(samples["samples"], dims=[2])
        elif flip_method.startswith("y"):
            out["samples"] = torch.flip(samples["samples"], dims=[3])
        return (out,)


class LatentRotate:
    ROTATIONS = ["none", "90 degrees", "180 degrees", "270 degrees"]

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {"required": {"samples": ("LATENT",), "rotation": (cls.ROTATIONS,)}}

    RETURN_TYPES = ("LATENT",)
    FUNCTION = "rotate"
    CATEGORY = "latent/transform"

    def rotate(self, samples: Latent, rotation: str) -> tuple[Latent]:
        import torch

        quarter_turns = self.ROTATIONS.index(rotation)
        out = dict(samples)
        out["samples"] = torch.rot90(samples["samples"], k=quarter_turns, dims=[3, 2])
        return (out,)


class RepeatLatentBatch:
    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {"required": {"samples": ("LATENT",), "amount": ("INT", {"default": 1, "min": 1, "max": 64})}}

    RETURN_TYPES = ("LATENT",)
    FUNCTION = "repeat"
    CATEGORY = "latent/batch"

    def repeat(self, samples: Latent, amount: int) -> tuple[Latent]:
        latent = samples["samples"]
        out = dict(samples)
        out["samples"] = latent.repeat((amount,) + (1,) * (latent.ndim - 1))
        mask = samples.get("noise_mask")
        if mask is not None and mask.shape[0] > 1:
            if mask.shape[0] < latent.shape[0]:
                mask = mask.repeat((math.ceil(latent.shape[0] / mask.shape[0]),) + (1,) * (mask.ndim - 1))
                mask = mask[:latent.shape[0]]
            out["noise_mask"] = mask.repeat((amount,) + (1,) * (mask.ndim - 1))
        if "batch_index" in out:
            offset = max(out["batch_index"]) - min(out["batch_index"]) + 1
            out["batch_index"] = out["batch_index"] + [index + copy * offset for copy in range(1, amount)
                                                       for index in out["batch_index"]]
        return (out,)


class LatentFromBatch:
    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {"required": {"samples": ("LATENT",), "batch_index": ("INT", {"default": 0, "min": 0, "max": 63}),
                             "length": ("INT", {"default": 1, "min": 1, "max": 64})}}

    RETURN_TYPES = ("LATENT",)
    FUNCTION = "frombatch"
    CATEGORY = "latent/batch"

    def frombatch(self, samples: Latent, batch_index: int, length: int) -> tuple[Latent]:
        latent = samples["samples"]
        batch_index = min(latent.shape[0] - 1, batch_index)
        length = min(latent.shape[0] - batch_index, length)
        out = dict(samples)
        out["samples"] = latent[batch_index:batch_index + length].clone()
        mask = samples.get("noise_mask")
        if mask is not None:
            if mask.shape[0] == 1:
                out["noise_mask"] = mask.clone()
            else:
                if mask.shape[0] < latent.shape[0]:
                    mask = mask.repeat(math.ceil(latent.shape[0] / mask.shape[0]), 1, 1, 1)[:latent.shape[0]]
                out["noise_mask"] = mask[batch_index:batch_index + length].clone()
        # batch_index keeps each latent's seed offset, so noise matches the whole batch's.
        if "batch_index" in samples:
            out["batch_index"] = samples["batch_index"][batch_index:batch_index + length]
        else:
            out["batch_index"] = list(range(batch_index, batch_index + length))
        return (out,)


class SetLatentNoiseMask:
    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {"required": {"samples": ("LATENT",), "mask": ("MASK",)}}

    RETURN_TYPES = ("LATENT",)
    FUNCTION = "set_mask"
    CATEGORY = "latent/inpaint"

    def set_mask(self, samples: Latent, mask: torch.Tensor) -> tuple[Latent]:
        out = dict(samples)
        out["noise_mask"] = mask.reshape((-1, 1, mask.shape[-2], mask.shape[-1]))
        return (out,)


class VAEDecode:
    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {"required": {"samples": ("LATENT", {"tooltip": "The latent to be decoded."}),
                             "vae": ("VAE", {"tooltip": "The VAE model used for decoding the latent."})}}

    RETURN_TYPES = ("IMAGE",)
    OUTPUT_TOOLTIPS = ("The decoded image.",)
    FUNCTION = "decode"
    CATEGORY = "latent"
    DESCRIPTION = "Decodes latent images back into pixel space images."

    def decode(self, vae: Any, samples: Latent) -> tuple[torch.Tensor]:
        return (_require_vae(vae).decode(samples["samples"]),)


class VAEDecodeTiled:
    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {"required": {"samples": ("LATENT",), "vae": ("VAE",),
                             "tile_size": ("INT", {"default": 512, "min": 64, "max": 4096, "step": 32}),
                             "overlap": ("INT", {"default": 64, "min": 0, "max": 4096, "step": 32}),
                             "temporal_size": ("INT", {"default": 64, "min": 8, "max": 4096, "step": 4,
                                                       "tooltip": "Only used for video VAEs: Amount of frames to "
                                                                  "decode at a time."}),
                             "temporal_overlap": ("INT", {"default": 8, "min": 4, "max": 4096, "step": 4,
                                                          "tooltip": _TEMPORAL_OVERLAP_TOOLTIP})}}

    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "decode"
    CATEGORY = "_for_testing"

    def decode(self, vae: Any, samples: Latent, tile_size: int, overlap: int = 64, temporal_size: int = 64,
               temporal_overlap: int = 8) -> tuple[torch.Tensor]:
        vae = _require_vae(vae)
        if tile_size < overlap * 4:
            overlap = tile_size // 4
        compression = vae.spacial_compression_decode()
        return (vae.decode_tiled(samples["samples"], tile_x=tile_size // compression, tile_y=tile_size // compression,
                                 overlap=overlap // compression),)


class VAEEncode:
    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {"required": {"pixels": ("IMAGE",), "vae": ("VAE",)}}

    RETURN_TYPES = ("LATENT",)
    FUNCTION = "encode"
    CATEGORY = "latent"

    def encode(self, vae: Any, pixels: torch.Tensor) -> tuple[Latent]:
        return ({"samples": _require_vae(vae).encode(pixels)},)


class VAEEncodeTiled:
    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {"required": {"pixels": ("IMAGE",), "vae": ("VAE",),
                             "tile_size": ("INT", {"default": 512, "min": 64, "max": 4096, "step": 64}),
                             "overlap": ("INT", {"default": 64, "min": 0, "max": 4096, "step": 32}),
                             "temporal_size": ("INT", {"default": 64, "min": 8, "max": 4096, "step": 4,
                                                       "tooltip": "Only used for video VAEs: Amount of frames to "
                                                                  "encode at a time."}),
                             "temporal_overlap": ("INT", {"default": 8, "min": 4, "max": 4096, "step": 4,
                                                          "tooltip": _TEMPORAL_OVERLAP_TOOLTIP})}}

    RETURN_TYPES = ("LATENT",)
    FUNCTION = "encode"
    CATEGORY = "_for_testing"

    def encode(self, vae: Any, pixels: torch.Tensor, tile_size: int, overlap: int, temporal_size: int = 64,
               temporal_overlap: int = 8) -> tuple[Latent]:
        return ({"samples": _require_vae(vae).encode_tiled(pixels, tile_x=tile_size, tile_y=tile_size,
                                                           overlap=overlap)},)


class VAEEncodeForInpaint:
    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {"required": {"pixels": ("IMAGE",), "vae": ("VAE",), "mask": ("MASK",),
                             "grow_mask_by": ("INT", {"default": 6, "min": 0, "max": 64, "step": 1})}}

    RETURN_TYPES = ("LATENT",)
    FUNCTION = "encode"
    CATEGORY = "latent/inpaint"

    def encode(self, vae: Any, pixels: torch.Tensor, mask: torch.Tensor, grow_mask_by: int = 6) -> tuple[Latent]:
        import torch

        vae = _require_vae(vae)
        pixels, mask = inpaint_pixels(pixels, mask, vae.spacial_compression_encode())
        height, width = pixels.shape[1], pixels.shape[2]
        # The noise mask grows a little so the new content blends into its surroundings in latent space.
        if grow_mask_by == 0:
            grown = mask
        else:
            kernel = torch.ones((1, 1, grow_mask_by, grow_mask_by))
            grown = torch.clamp(torch.nn.functional.conv2d(mask.round(), kernel,
                                                           padding=math.ceil((grow_mask_by - 1) / 2)), 0, 1)
        return ({"samples": vae.encode(pixels), "noise_mask": grown[:, :, :height, :width].round()},)


def inpaint_pixels(pixels: torch.Tensor, mask: torch.Tensor, ratio: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The image centre-cropped to a multiple of ``ratio`` with the masked pixels grey (0.5), as inpainting models
    were trained, and the mask (B, 1, H, W) resized to the image and cropped alike."""
    import torch

    height, width = (pixels.shape[1] // ratio) * ratio, (pixels.shape[2] // ratio) * ratio
    mask = torch.nn.functional.interpolate(mask.reshape((-1, 1, mask.shape[-2], mask.shape[-1])),
                                           size=(pixels.shape[1], pixels.shape[2]), mode="bilinear")
    pixels = pixels.clone()
    if pixels.shape[1] != height or pixels.shape[2] != width:
        top, left = (pixels.shape[1] % ratio) // 2, (pixels.shape[2] % ratio) // 2
        pixels = pixels[:, top:height + top, left:width + left, :]
        mask = mask[:, :, top:height + top, left:width + left]
    keep = (1.0 - mask.round()).squeeze(1)
    for channel in range(3):
        pixels[:, :, :, channel] -= 0.5
        pixels[:, :, :, channel] *= keep
        pixels[:, :, :, channel] += 0.5
    return pixels, mask


NODE_CLASS_MAPPINGS = {
    "EmptyLatentImage": EmptyLatentImage,
    "LatentUpscale": LatentUpscale,
    "LatentUpscaleBy": LatentUpscaleBy,
    "LatentComposite": LatentComposite,
    "LatentBlend": LatentBlend,
    "LatentCrop": LatentCrop,
    "LatentFlip": LatentFlip,
    "LatentRotate": LatentRotate,
    "RepeatLatentBatch": RepeatLatentBatch,
    "LatentFromBatch": LatentFromBatch,
    "SetLatentNoiseMask": SetLatentNoiseMask,
    "VAEEncode": VAEEncode,
    "VAEEncodeForInpaint": VAEEncodeForInpaint,
    "VAEDecode": VAEDecode,
    "VAEEncodeTiled": VAEEncodeTiled,
    "VAEDecodeTiled": VAEDecodeTiled,
}

NODE_DISPLAY_NAME_MAPPINGS = {
    "EmptyLatentImage": "Empty Latent Image",
    "LatentUpscale": "Upscale Latent",
    "LatentUpscaleBy": "Upscale Latent By",
    "LatentComposite": "Latent Composite",
    "LatentBlend": "Latent Blend",
    "LatentCrop": "Crop Latent",
    "LatentFlip": "Flip Latent",
    "LatentRotate": "Rotate Latent",
    "RepeatLatentBatch": "Repeat Latent Batch",
    "LatentFromBatch": "Latent From Batch",
    "SetLatentNoiseMask": "Set Latent Noise Mask",
    "VAEEncode": "VAE Encode",
    "VAEEncodeForInpaint": "VAE Encode (for Inpainting)",
    "VAEDecode": "VAE Decode",
    "VAEEncodeTiled": "VAE Encode (Tiled)",
    "VAEDecodeTiled": "VAE Decode (Tiled)",
}
